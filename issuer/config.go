package issuer

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/internal/brokerconn"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Defaults of Config fields left zero.
const (
	DefaultClientID  = brokerconfig.IssuerAccount
	DefaultLabel     = "default"
	DefaultKeepRoots = 4
	// DefaultChunkLeaves is the smallest chunk of a streamed epoch: 512
	// tickets (an epoch of up to 512 devices is one chunk).
	DefaultChunkLeaves = 512
	// MinKeepRoots is the fewest root topics kept: the current epoch's and
	// the previous one's (schema/PROTOCOL.md §3).
	MinKeepRoots = 2
	// DefaultTimeout bounds every wait for the broker.
	DefaultTimeout = 10 * time.Second
	// DefaultBrokerQuiet ends the retained burst read at start.
	DefaultBrokerQuiet = 500 * time.Millisecond
)

// ErrConfig is wrapped by every Config.Validate error.
var ErrConfig = errors.New("issuer: invalid configuration")

// Config configures an Issuer. Zero values mean the documented defaults.
type Config struct {
	// Broker is the MQTT broker URL (tcp://host:port, ssl://host:port,
	// ws://, wss://). It is only needed by Start and Run.
	Broker, Username, Password string
	// TLS, if set, is used for ssl:// and wss:// brokers.
	TLS *tls.Config
	// ClientID is the MQTT client id (default "ekem-issuer").
	ClientID string
	// Prefix is the topic prefix (default wire.DefaultPrefix).
	Prefix string
	// Key signs every epoch root. Required. Once a key rotation is stored
	// (AnnounceKeyRotation), the stored rotations decide which key signs
	// each epoch, and Key must be one of them (see checkSigningKeys).
	Key *signature.PrivateKey
	// NextKey is the key announced by the pending stored key rotation: it
	// signs every epoch from the rotation's From on, while Key signs the
	// epochs before. Optional; set it from the first start after the
	// announcement, and after the switch run with it as Key and no
	// NextKey. An epoch whose required key is neither Key nor NextKey is
	// refused (ErrSigningKey); New refuses a configuration that cannot
	// sign the next epoch, a NextKey no stored rotation announces, and a
	// retired Key.
	NextKey *signature.PrivateKey
	// StorePath is the bbolt file holding the issuer's durable record.
	// Required.
	StorePath string
	// Period is the epoch period used by Run and announced in EpochInfo:
	// 1 s to wire.MaxTTL seconds. Required.
	Period time.Duration
	// TTL is every ticket's ttl_s, a whole number of seconds in
	// 1 s..wire.MaxTTL s (default 2*Period, capped at wire.MaxTTL).
	TTL time.Duration
	// Purpose and Group are the labels in every ticket (default
	// "default"); see wire.ValidateLabel.
	Purpose, Group string
	// KeepRoots is how many root/{epoch} topics stay retained (default 4,
	// at least 2); older ones are cleared with an empty retained publish.
	KeepRoots int
	// ChunkLeaves is the smallest chunk of a streamed epoch
	// (schema/PROTOCOL.md §5.5), a power of two (default
	// DefaultChunkLeaves): an epoch of more devices is issued, persisted
	// and published chunk by chunk, in chunks of at least ChunkLeaves
	// tickets and at most wire.MaxChunks chunks; a smaller epoch is one
	// chunk.
	ChunkLeaves int
	// KEMs restricts the KEM algorithms accepted in registrations and next
	// keys (default: the whole allow-list of pkg/kem).
	KEMs []kem.ID
	// Reenroll is what a re-enrollment (schema/PROTOCOL.md §7.6) gets:
	// ReenrollHold (default) or ReenrollAuto.
	Reenroll ReenrollPolicy
	// Timeout bounds every wait for the broker (default 10 s).
	Timeout time.Duration
	// BrokerQuiet is how long a pause ends the burst of retained messages
	// the issuer reads from the broker at start (fencing) and in Recover
	// (default 500 ms).
	BrokerQuiet time.Duration
	// NudgeInterval, if set, makes the issuer republish the latest root
	// and the tickets of it not yet confirmed, NudgeInterval after
	// the epoch, then after 3, 7, ... intervals, at most 8 times per
	// epoch, and peek at their Statuses (nudge.go): for a broker that may
	// lose acknowledged retained messages, or stall a subscription, when a
	// node dies (a NATS cluster, broker-config/nats). 0 (default): never;
	// at least 1 s otherwise.
	NudgeInterval time.Duration
	// Enrollment is the policy for a device id's first registration
	// (enroll.go, DESIGN.md "Identity on the broker"): EnrollmentOpen
	// (default) pins it on first use; EnrollmentAllowlist pins only ids
	// imported with Admin.Enroll and holds any other id's registration
	// for an operator's approve or deny.
	Enrollment string
	// Logger receives structured logs (default slog.Default()).
	Logger *slog.Logger
	// Now is the wall clock; it only sets issued_at (default time.Now).
	Now func() time.Time
}

// withDefaults returns c with every zero field replaced by its default.
func (c Config) withDefaults() Config {
	if c.ClientID == "" {
		c.ClientID = DefaultClientID
	}
	if c.Prefix == "" {
		c.Prefix = wire.DefaultPrefix
	}
	if c.TTL == 0 && c.Period > 0 {
		c.TTL = min(2*c.Period, wire.MaxTTL*time.Second).Truncate(time.Second)
		c.TTL = max(c.TTL, time.Second)
	}
	if c.Purpose == "" {
		c.Purpose = DefaultLabel
	}
	if c.Group == "" {
		c.Group = DefaultLabel
	}
	if c.KeepRoots == 0 {
		c.KeepRoots = DefaultKeepRoots
	}
	if c.ChunkLeaves == 0 {
		c.ChunkLeaves = DefaultChunkLeaves
	}
	if len(c.KEMs) == 0 {
		c.KEMs = kem.IDs()
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.BrokerQuiet == 0 {
		c.BrokerQuiet = DefaultBrokerQuiet
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Validate reports the first invalid field of c (after defaults), with an
// error wrapping ErrConfig that names the field and the value it got.
func (c Config) Validate() error {
	c = c.withDefaults()
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, a...))
	}
	if c.Key == nil {
		return bad("no signing key")
	}
	if c.Enrollment != "" && c.Enrollment != EnrollmentOpen && c.Enrollment != EnrollmentAllowlist {
		return bad("enrollment policy %q: want %q or %q", c.Enrollment, EnrollmentOpen, EnrollmentAllowlist)
	}
	if c.NextKey != nil && c.NextKey.Public().Equal(c.Key.Public()) {
		return bad("next key %x is the signing key", c.Key.Public().KID())
	}
	if c.StorePath == "" {
		return bad("no store path")
	}
	if c.NudgeInterval != 0 && c.NudgeInterval < time.Second {
		return bad("nudge interval must be 0 (off) or at least 1s, got %v", c.NudgeInterval)
	}
	if c.Period < time.Second || c.Period > wire.MaxTTL*time.Second {
		return bad("period must be between 1s and %v, got %v", wire.MaxTTL*time.Second, c.Period)
	}
	if c.TTL < time.Second || c.TTL > wire.MaxTTL*time.Second {
		return bad("ttl must be between 1s and %v, got %v", wire.MaxTTL*time.Second, c.TTL)
	}
	if c.TTL%time.Second != 0 {
		return bad("ttl must be a whole number of seconds, got %v", c.TTL)
	}
	if _, err := wire.NewTopics(c.Prefix); err != nil {
		return bad("prefix: %v", err)
	}
	if err := wire.ValidateLabel(c.Purpose); err != nil {
		return bad("purpose %q: %v", c.Purpose, err)
	}
	if err := wire.ValidateLabel(c.Group); err != nil {
		return bad("group %q: %v", c.Group, err)
	}
	if c.KeepRoots < MinKeepRoots {
		return bad("keep roots must be at least %d, got %d", MinKeepRoots, c.KeepRoots)
	}
	if c.ChunkLeaves < 2 || c.ChunkLeaves&(c.ChunkLeaves-1) != 0 {
		return bad("chunk leaves must be a power of two of at least 2, got %d", c.ChunkLeaves)
	}
	for _, id := range c.KEMs {
		if _, err := kem.Lookup(id); err != nil {
			return bad("kem %v: %v", id, err)
		}
	}
	if !c.Reenroll.valid() {
		return bad("reenroll policy must be %q or %q, got %q", ReenrollHold, ReenrollAuto, c.Reenroll)
	}
	if c.Timeout < 0 {
		return bad("timeout must not be negative, got %v", c.Timeout)
	}
	if c.Broker != "" {
		if err := brokerconn.CheckURL(c.Broker); err != nil {
			return bad("broker: %v", err)
		}
	}
	return nil
}

// kemAllowed reports whether id is in the configured allow-list.
func (c Config) kemAllowed(id kem.ID) bool {
	for _, k := range c.KEMs {
		if k == id {
			return true
		}
	}
	return false
}
