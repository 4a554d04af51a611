package device

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Defaults of Config.
const (
	DefaultSkew          = 30 * time.Second
	DefaultStaleInterval = 5 * time.Second
	// DefaultRootEpochs is how many epochs' roots an agent keeps.
	DefaultRootEpochs = 8
)

// ErrConfig is wrapped by every configuration error of New and Run.
var ErrConfig = errors.New("device: invalid configuration")

// Config configures an Agent. ID, StateDir and Cohort are required by New;
// IssuerKeys by Run and Serve, Broker by Run (Broker, Username, Password,
// ClientID, TLS and Timeout configure the connection Run dials; Serve uses
// the Transport it is given instead).
type Config struct {
	// ID is the device id (schema/PROTOCOL.md §3), also its broker
	// username and MQTT client id unless Username/ClientID say otherwise.
	ID string
	// Broker is the MQTT broker URL: tcp://host:port, ssl://host:port.
	Broker   string
	Username string // default ID
	Password string
	ClientID string // default ID
	TLS      *tls.Config
	// Prefix is the topic prefix, default wire.DefaultPrefix.
	Prefix string
	// StateDir is this device's own directory (created 0700 if missing).
	StateDir string
	// Cohort computes HMAC under the cohort secret (a TPM, or
	// cohort.NewSoftware for development).
	Cohort cohort.Secret
	// IssuerKeys are the pinned issuer public keys.
	IssuerKeys *signature.KeySet
	// KEM is the algorithm of the first device key (default kem.Default).
	// It only matters when New creates the state; a loaded state keeps
	// its algorithm.
	KEM kem.ID
	// Skew is the clock skew allowed around a ticket's validity (default
	// 30 s).
	Skew time.Duration
	// MaxJump bounds how many epochs ahead a ticket may be (default
	// accept.DefaultMaxJump).
	MaxJump uint64
	// StaleInterval is how often Run checks whether the last ticket
	// expired (default 5 s).
	StaleInterval time.Duration
	// AllowStale lets NextKey and Seal hand out keys after the last
	// ticket expired. By default they refuse with ErrStale.
	AllowStale bool
	// MustExist makes New fail with ErrNoState instead of creating a new
	// device when StateDir holds no state.
	MustExist bool
	// Reenroll makes New create a new device key whatever StateDir holds:
	// an earlier identity without its state (ErrIdentityLost), a state that
	// does not decrypt (ErrStateKey) or decode (ErrStateCorrupt), or a
	// working state. The old state.bin, status.cbor and registration.cbor
	// are removed (issuer-keys.cbor and cohort.blob stay), and the new
	// Registration is marked as a re-enrollment (schema/PROTOCOL.md §7.6),
	// which the issuer holds for an operator's approval or accepts under
	// its re-enrollment policy. Run publishes it like any registration.
	Reenroll bool
	// Timeout bounds every wait for the broker (default 10 s).
	Timeout time.Duration
	Logger  *slog.Logger
	Now     func() time.Time
	// OnEvent, if set, is called on the agent's goroutine for every
	// outcome of a ticket and every stale report. It must not block for
	// long and must not call Close.
	OnEvent func(Event)
}

// withDefaults validates c for New and fills in its defaults.
func (c Config) withDefaults() (Config, error) {
	if err := wire.ValidateDeviceID(c.ID); err != nil {
		return c, fmt.Errorf("%w: ID: %w", ErrConfig, err)
	}
	if c.StateDir == "" {
		return c, fmt.Errorf("%w: StateDir is required", ErrConfig)
	}
	if c.Cohort == nil {
		return c, fmt.Errorf("%w: Cohort is required", ErrConfig)
	}
	if c.Prefix == "" {
		c.Prefix = wire.DefaultPrefix
	}
	if _, err := wire.NewTopics(c.Prefix); err != nil {
		return c, fmt.Errorf("%w: Prefix: %w", ErrConfig, err)
	}
	if c.KEM == 0 {
		c.KEM = kem.Default
	}
	if _, err := kem.Lookup(c.KEM); err != nil {
		return c, fmt.Errorf("%w: KEM: %w", ErrConfig, err)
	}
	if c.Skew < 0 || c.StaleInterval < 0 || c.Timeout < 0 {
		return c, fmt.Errorf("%w: negative duration", ErrConfig)
	}
	if c.Skew == 0 {
		c.Skew = DefaultSkew
	}
	if c.MaxJump == 0 {
		c.MaxJump = accept.DefaultMaxJump
	}
	if c.StaleInterval == 0 {
		c.StaleInterval = DefaultStaleInterval
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Username == "" {
		c.Username = c.ID
	}
	if c.ClientID == "" {
		c.ClientID = c.ID
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}

// checkRun validates what Run needs beyond New.
func (c Config) checkRun() error {
	if c.Broker == "" {
		return fmt.Errorf("%w: Broker is required", ErrConfig)
	}
	if err := c.checkServe(); err != nil {
		return err
	}
	return c.checkCertIdentity()
}

// checkServe validates what Serve needs beyond New.
func (c Config) checkServe() error {
	if c.IssuerKeys.Len() == 0 {
		return fmt.Errorf("%w: IssuerKeys must pin at least one issuer key", ErrConfig)
	}
	return nil
}

// checkCertIdentity refuses a TLS client certificate whose subject CN is
// not the broker username: a broker that takes the certificate's identity
// as the username (Mosquitto's use_identity_as_username, the shipped
// configuration) would log the device in as another account, whose ACL
// lets it read no ticket of this id, and it would wait forever in silence.
func (c Config) checkCertIdentity() error {
	if c.TLS == nil || len(c.TLS.Certificates) == 0 || len(c.TLS.Certificates[0].Certificate) == 0 {
		return nil
	}
	leaf := c.TLS.Certificates[0].Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(c.TLS.Certificates[0].Certificate[0]); err != nil {
			return fmt.Errorf("%w: client certificate: %w", ErrConfig, err)
		}
	}
	if cn := leaf.Subject.CommonName; cn != c.Username {
		return fmt.Errorf("%w: the client certificate is for %q, not for this device's broker username %q: "+
			"the broker would take it as account %q (hint: use the certificate made for %q, e.g. mkcreds' certs/clients/%s.crt)",
			ErrConfig, cn, c.Username, cn, c.Username, c.Username)
	}
	return nil
}
