// Package issuer is entropykem's issuer role (schema/PROTOCOL.md §6, §10):
// it pins device KEM keys on first use, verifies device Status messages,
// and every epoch encapsulates fresh entropy to each active device, signs
// one Merkle root over all tickets (ML-DSA, FIPS 204, in COSE_Sign1, RFC
// 9052) and publishes roots and tickets retained at QoS 1.
//
// The issuer's bbolt store is the record; the broker is a cache. An epoch is
// persisted (epoch number, every device's ticket, chain head and the MAC keys
// derived from its ss, never ss itself) before anything is published, and
// after every (re)connection the issuer republishes the same bytes from the
// store.
//
// Bad input from the broker is rejected, counted (Counters) and logged with a
// stable "reason" attribute; it never stops the issuer, never changes a
// pinned key and never changes stored state.
package issuer

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/entropykem/entropykem/internal/mqttc"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Errors callers tell apart.
var (
	// ErrNoDevices: an epoch was requested while no device is active with
	// a pinned key. Nothing is issued and no epoch number is used.
	ErrNoDevices = errors.New("issuer: no active device to issue to")
	// ErrPublish: the epoch was persisted but some of its messages could
	// not be published; they are republished after the next reconnection.
	ErrPublish = errors.New("issuer: publishing failed")
	// ErrClosed: the issuer was closed.
	ErrClosed = errors.New("issuer: closed")
	// ErrStarted: Start was called twice.
	ErrStarted = errors.New("issuer: already started")
	// ErrStoreBehind: the store's last epoch went below an epoch this
	// running issuer committed (restored or replaced under it). Nothing
	// is issued.
	ErrStoreBehind = errors.New("issuer: the store went back below an epoch this issuer committed")
)

// Issuer is one issuer: the protocol role (Start, Run, IssueEpoch and the
// message handling) and its lifecycle, with read-only views of its state.
// Its other jobs live apart: the operator actions on OnlineAdmin
// (Admin, admin.go), the HTTP surface in http.go and metrics.go, the test
// and embedding hooks in hooks.go. Its methods are safe for concurrent
// use.
type Issuer struct {
	cfg    Config
	topics wire.Topics
	log    *slog.Logger
	store  Store
	// chain is the stored key rotations, read once by New: they cannot
	// change while the issuer holds the store (AnnounceKeyRotation needs
	// it stopped, and the store is locked).
	chain keyChain

	// mu serialises every change of stored state: message handling,
	// epoch issuance and operator actions.
	mu sync.Mutex
	// pending holds, per device, the last registration refused because
	// its key changed, so that an operator Reset can pin it at once.
	pending map[string][]byte
	// badKeys are devices whose stored key did not parse while an epoch
	// was streamed: that epoch was abandoned, and later plans skip them
	// until the issuer restarts (each counted in store_bad_key). Under mu.
	badKeys map[string]bool

	// pubMu serialises publishing rounds (an epoch, a republish), so an
	// older ticket never overwrites a newer one on the broker.
	pubMu sync.Mutex

	cnt  counters   // event counters (counters.go)
	logs logLimiter // per-device log rate limit (loglimit.go)

	nmu     sync.Mutex
	changed chan struct{}

	client  atomic.Pointer[mqttc.Client]
	ready   chan struct{}
	started atomic.Bool
	since   time.Time
	active  atomic.Int64

	// lease is the leader lease of an instance of a cluster (cluster.go),
	// nil for a lone issuer: past its deadline nothing is published.
	lease atomic.Pointer[Lease]
	// committed is the last epoch this Issuer committed: the store's
	// last epoch never goes below it while the issuer runs.
	committed atomic.Uint64

	issueNanos atomic.Int64
	prom       promState // Prometheus registry (metrics.go)

	// closing is closed by Close: the issuer's end, which every wait of
	// its own goroutines also selects on. (Callers pass their contexts.)
	closing   chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New validates cfg and opens the store.
func New(cfg Config) (*Issuer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	topics, err := wire.NewTopics(cfg.Prefix)
	if err != nil {
		return nil, fmt.Errorf("issuer: %w", err)
	}
	st, err := OpenStore(cfg.StorePath, false)
	if err != nil {
		return nil, err
	}
	chain, last, err := signingState(st, cfg)
	if err == nil {
		err = checkSigningKeys(cfg, chain, last)
	}
	if err != nil {
		st.Close()
		return nil, err
	}
	i := &Issuer{
		cfg: cfg, topics: topics, log: cfg.Logger.With("role", "issuer"), store: st, chain: chain,
		pending: map[string][]byte{}, changed: make(chan struct{}),
		ready: make(chan struct{}), closing: make(chan struct{}),
	}
	if cfg.NudgeInterval > 0 {
		i.wg.Add(1)
		go i.nudgeLoop()
	}
	if p := chain.pending(last); p != nil {
		kid, _ := chain.signerAt(last + 1)
		i.log.Info("issuer key rotation pending", "signing_kid", fmt.Sprintf("%x", kid),
			"next_kid", fmt.Sprintf("%x", p.New.KID()), "next_from_epoch", p.From, "last_epoch", last)
		if cfg.NextKey == nil {
			i.log.Warn("the next issuer key is not configured: epochs from next_from_epoch on will be refused until the issuer is restarted with it",
				"reason", "next_key_missing", "next_kid", fmt.Sprintf("%x", p.New.KID()), "next_from_epoch", p.From)
		}
	}
	return i, nil
}

// signingState reads the stored key rotations (verifying the first one too
// when cfg holds its signer) and the last issued epoch.
func signingState(st Store, cfg Config) (keyChain, uint64, error) {
	var c keyChain
	var last uint64
	known := []*signature.PublicKey{cfg.Key.Public()}
	if cfg.NextKey != nil {
		known = append(known, cfg.NextKey.Public())
	}
	err := st.View(func(tx ReadTx) error {
		var err error
		if last, err = tx.LastEpoch(); err != nil {
			return err
		}
		if c, err = loadRotations(tx, known...); err != nil || len(c) > 0 {
			return err
		}
		// No rotation: the key must be the one that signed the last root.
		// Another key would strand every device, which pins the old one.
		kid, found, err := lastRootKID(tx, last, cfg.Key.Public())
		if err != nil || !found || bytes.Equal(kid, cfg.Key.Public().KID()) {
			return err
		}
		return fmt.Errorf("%w: key %x is not the key %x that signed epoch %d, and no key rotation announces it: "+
			"devices pin %x and would refuse every root; run with that key, or announce this one with rotate-key",
			ErrSigningKey, cfg.Key.Public().KID(), kid, last, kid)
	})
	return c, last, err
}

// Close publishes Online false (when connected), disconnects, stops message
// handling and closes the store. It is idempotent.
func (i *Issuer) Close() error {
	var err error
	i.closeOnce.Do(func() {
		if c := i.client.Load(); c != nil {
			if i.mayPublish() != nil {
				// Deposed: another instance leads and is online.
			} else if b, e := i.online(false); e == nil {
				if e := c.Publish(i.topics.Online(), b, true); e != nil {
					i.log.Warn("could not publish offline status", "err", e)
				}
			}
			c.Close()
		}
		close(i.closing)
		i.wg.Wait()
		i.mu.Lock()
		err = i.store.Close()
		i.mu.Unlock()
	})
	return err
}

// isClosed reports whether Close was called.
func (i *Issuer) isClosed() bool {
	select {
	case <-i.closing:
		return true
	default:
		return false
	}
}

// Devices returns a snapshot of every device, sorted by id. A store read
// error is logged and gives what was read.
func (i *Issuer) Devices() []DeviceInfo {
	d, err := readDevices(i.store, i.judge())
	if err != nil {
		i.log.Error("store read failed", "reason", "store_failure", "err", err)
	}
	return d
}

// Device returns one device's snapshot.
func (i *Issuer) Device(id string) (DeviceInfo, bool) {
	d, err := readDevice(i.store, id, i.judge())
	if err != nil && !errors.Is(err, ErrUnknownDevice) {
		i.log.Error("store read failed", "reason", "store_failure", "err", err)
	}
	return d, err == nil
}

// EpochInfo returns the EpochInfo of the last issued epoch, nil if none.
func (i *Issuer) EpochInfo() (*wire.EpochInfo, error) {
	var info *wire.EpochInfo
	err := i.store.View(func(tx ReadTx) (err error) {
		_, info, err = lastEpochInfo(tx)
		return err
	})
	return info, err
}

// LastEpoch returns the last issued epoch, 0 if none.
func (i *Issuer) LastEpoch() uint64 {
	e, err := readLastEpoch(i.store)
	if err != nil {
		i.log.Error("store read failed", "reason", "store_failure", "err", err)
	}
	return e
}

// Counters returns a copy of the event counters. Names: registrations_pinned,
// registrations_same, registrations_rekeyed, registrations_rejected:<reason>,
// statuses_verified, statuses_duplicate, status_rejected:<reason>,
// device_reported:<state>:<reason>, clone_detected,
// status_conflict_unauthenticated, log_lines_suppressed, tickets_issued, epochs,
// publish_failures, publish_retries, republished, store_failures,
// signing_key_missing.
func (i *Issuer) Counters() map[string]uint64 { return i.cnt.snapshot().names() }

func (i *Issuer) count(c counter, n uint64) { i.cnt.add(c, n) }

func (i *Issuer) idle() bool {
	if i.active.Load() != 0 {
		return false
	}
	c := i.client.Load()
	return c == nil || c.Inbox().Len() == 0
}

// Keygen returns a new issuer key pair of alg as PEM files (secret, public),
// schema/PROTOCOL.md §12. The secret file's bytes are secret.
func Keygen(alg signature.Alg) (priv, pub []byte, err error) {
	k, err := signature.GenerateKey(alg)
	if err != nil {
		return nil, nil, fmt.Errorf("issuer: keygen: %w", err)
	}
	return signature.MarshalPrivateKeyPEM(k), signature.MarshalPublicKeyPEM(k.Public()), nil
}

func (i *Issuer) online(on bool) ([]byte, error) {
	o := &wire.Online{Version: wire.Version, Online: on, Since: unixSeconds(i.since)}
	return o.Marshal()
}

// unixSeconds clamps t to the protocol's time range.
func unixSeconds(t time.Time) uint64 {
	s := t.Unix()
	if s < 0 {
		return 0
	}
	return min(uint64(s), wire.MaxTime)
}
