// Package device is the entropykem device role as an embeddable SDK: an
// Agent holds one device's state (schema/PROTOCOL.md §8), registers its
// first KEM key, accepts the issuer's tickets, reports each outcome in a
// Status and hands out one-time message keys from its ratchet.
//
//	agent, err := device.New(device.Config{
//		ID: "dev-0001", Broker: "tcp://broker:1883", Password: pw,
//		StateDir: "/var/lib/ekem/dev-0001", Cohort: secret, IssuerKeys: pins,
//	})
//	if err != nil { ... }
//	defer agent.Close()
//	go agent.Run(ctx)                       // connects, registers, follows tickets
//	                                        // (or agent.Serve(ctx, t) over the embedder's Transport)
//	if err := agent.WaitEpoch(ctx, 1); err != nil { ... }
//	env, err := agent.Seal([]byte("reading")) // envelope under a fresh key
//
// Run (or Serve) processes everything on one goroutine (run.go); each
// ticket is decided under the agent's lock and reported after it
// (decide.go). On an accepted ticket the new
// state and its Status are persisted crash-safely before the Status is
// published (retained, QoS 1); on a rejection the state is unchanged and a
// Status with the rejection's reason is published; a harmless duplicate
// (retained re-delivery) publishes nothing. The files of the state
// directory and the encrypted state format are documented with
// StateFileVersion (store.go) and in PROTOCOL.md §8.5.
//
// Lifecycle (PROTOCOL.md §7.6, §8.7): New never makes a new key where the
// device had an identity (ErrIdentityLost, ErrStateKey; the directory is
// left untouched); Config.Reenroll makes one marked as a re-enrollment. A
// rejection that persists is reported once per epoch. When the issuer
// clears the device's ticket (a reset), the agent registers its live key.
// Run reconnects with jittered exponential backoff (internal/mqttc).
package device

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/envelope"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/ratchet"
	"github.com/entropykem/entropykem/pkg/trust"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Errors of an Agent's key and lifecycle operations.
var (
	// ErrClosed: the agent was closed.
	ErrClosed = errors.New("device: agent closed")
	// ErrRunning: Run was called while another Run is active.
	ErrRunning = errors.New("device: agent already running")
	// ErrNoKey: no ticket has been accepted yet, so there is no ratchet.
	ErrNoKey = errors.New("device: no ticket accepted yet")
	// ErrStale: the last accepted ticket expired and Config.AllowStale is
	// not set.
	ErrStale = errors.New("device: latest ticket expired (stale); waiting for a new ticket")
)

// EventKind names what happened.
type EventKind string

// Event kinds.
const (
	EventAccepted  EventKind = "accepted"  // a ticket was accepted; Epoch is the new epoch
	EventRejected  EventKind = "rejected"  // a ticket was rejected; Reason says why
	EventDuplicate EventKind = "duplicate" // a retained re-delivery of the accepted ticket
	EventStale     EventKind = "stale"     // the latest ticket expired; reported once per epoch
	EventFailed    EventKind = "failed"    // a local failure (storage, TPM); nothing was published
)

// Event is one outcome, passed to Config.OnEvent. It never holds a key.
type Event struct {
	Kind     EventKind
	DeviceID string
	// Epoch is the device's accepted epoch after the event.
	Epoch uint64
	// TicketEpoch is the epoch the ticket named (0 if it did not decode).
	TicketEpoch uint64
	// Gap and PrevEpoch: accepted with a gap since PrevEpoch.
	Gap       bool
	PrevEpoch uint64
	// Fingerprint identifies key_epoch of an accepted ticket: the first 8
	// bytes of SHA-256(key_epoch) in hex.
	Fingerprint string
	// State and Reason are what the published Status says.
	State  wire.State
	Reason accept.Reason
	// Err is the rejection or local failure.
	Err error
}

// Fingerprint returns the first 8 bytes of SHA-256(b) in hex: a name for a
// key that reveals nothing usable about it.
func Fingerprint(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}

// Agent is one device. Its methods are safe for concurrent use.
type Agent struct {
	cfg    Config
	topics wire.Topics
	log    *slog.Logger
	reg    []byte // registration bytes, as stored and published
	lock   *os.File

	mu     sync.Mutex
	key    []byte // state key (secret)
	st     *accept.State
	seq    uint64
	status []byte // last Status, persisted before it was published
	// accepted is the Status of the last accepted ticket (state.bin's),
	// which a later rejection may have followed before it could be sent.
	acceptedStatus []byte
	counters       counters // counters.go
	reenrolled     bool     // the state was made by Config.Reenroll
	// seqFloor: a re-enrolled device numbers its Statuses above its
	// registration's created_at (see newStatus).
	seqFloor uint64
	changed  chan struct{} // closed and replaced when the epoch changes
	closed   bool
	// staleEpoch is the epoch whose expiry was last reported (stale).
	staleEpoch    uint64
	staleReported bool
	// rejectEpoch is the ticket epoch of the last rejection reported
	// since the agent started (rejectReported).
	rejectEpoch    uint64
	rejectReported bool
	strangerLogged bool      // the identity_mismatch hint was logged (Run goroutine)
	keys           keysState // the key operations' own state (keys.go)

	runMu   sync.Mutex
	running bool
	cancel  context.CancelFunc
	done    chan struct{}

	// Owned by the Run goroutine.
	trust       *trust.Trust      // issuer keys trusted per epoch
	heldKeys    map[string][]byte // key announcements not verified yet, by topic
	roots       map[uint64][]byte
	rootCache   *accept.RootCache // roots whose signature was verified
	ticket      []byte
	ticketEpoch uint64
	pending     bool        // the latest ticket waits for its epoch's root
	behind      behindState // resubscription of a stalled subscription (behind.go)
}

// New validates cfg, locks cfg.StateDir and loads the device's state from
// it, or, if the directory holds no state (and cfg.MustExist is not set),
// creates it: a new KEM key of cfg.KEM and its Registration. A state file
// that does not decrypt or decode is an error (ErrStateKey, ErrStateCorrupt)
// and is never replaced. A directory locked by another agent gives
// ErrLocked. Close releases the lock. With cfg.IssuerKeys set, the issuer
// keys learned from rotation announcements (issuer-keys.cbor) are verified
// again from the pins; a file that does not verify is ErrStateCorrupt.
func New(cfg Config) (*Agent, error) {
	return newAgent(cfg, accept.NewRootCache(DefaultRootEpochs))
}

// newAgent is New with the cache of verified roots to use.
func newAgent(cfg Config, rootCache *accept.RootCache) (*Agent, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	topics, _ := wire.NewTopics(cfg.Prefix) // validated by withDefaults
	if !cfg.Reenroll {
		// Refuse a lost or foreign identity before the directory is
		// touched (not even its lock file is created).
		if err := preflight(cfg); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("device: state directory: %w", err)
	}
	lock, err := lockDir(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	a := &Agent{
		cfg: cfg, topics: topics, lock: lock,
		log:     cfg.Logger.With("device", cfg.ID),
		changed: make(chan struct{}),
		roots:   make(map[uint64][]byte), heldKeys: make(map[string][]byte), rootCache: rootCache,
	}
	if err := a.open(); err != nil {
		clear(a.key)
		lock.Close()
		return nil, err
	}
	if cfg.IssuerKeys.Len() > 0 { // else Run refuses to start
		if a.trust, err = a.loadTrust(); err != nil {
			clear(a.key)
			lock.Close()
			return nil, err
		}
	}
	return a, nil
}

// preflight checks, without writing anything, that New may load or create
// the state in cfg.StateDir: a missing state.bin is fine only in a
// directory without an earlier identity (ErrIdentityLost), and a present
// one must decrypt and decode. open checks the same again under the lock.
func preflight(cfg Config) error {
	dir := cfg.StateDir
	path := filepath.Join(dir, stateFileName)
	data, err := readOptional(path, MaxStateFile)
	switch {
	case err != nil:
		return err
	case data == nil:
		found, err := earlierIdentity(dir)
		if err != nil {
			return err
		}
		if len(found) > 0 {
			return identityLost(dir, cfg.ID, found)
		}
		return nil
	}
	key, err := keyschedule.StateKey(cfg.Cohort, cfg.ID)
	if err != nil {
		return fmt.Errorf("device: state key: %w", err)
	}
	defer clear(key)
	l, err := openState(key, cfg.ID, data)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if l.st.Ratchet != nil {
		l.st.Ratchet.Wipe()
	}
	return nil
}

// open loads or creates the state; it runs under the directory lock.
// Temporary files a crash left are removed only once the state loaded.
func (a *Agent) open() error {
	dir := a.cfg.StateDir
	key, err := keyschedule.StateKey(a.cfg.Cohort, a.cfg.ID)
	if err != nil {
		return fmt.Errorf("device: state key: %w", err)
	}
	a.key = key
	if a.cfg.Reenroll {
		if err := a.reenroll(); err != nil {
			return err
		}
		return cleanTemps(dir)
	}
	data, err := readOptional(filepath.Join(dir, stateFileName), MaxStateFile)
	if err != nil {
		return err
	}
	if data == nil {
		found, err := earlierIdentity(dir)
		switch {
		case err != nil:
			return err
		case len(found) > 0:
			return identityLost(dir, a.cfg.ID, found)
		case a.cfg.MustExist:
			return fmt.Errorf("%w: %s", ErrNoState, dir)
		}
		if err := a.create(); err != nil {
			return err
		}
		return cleanTemps(dir)
	}
	l, err := openState(key, a.cfg.ID, data)
	if err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(dir, stateFileName), err)
	}
	file, err := readOptional(filepath.Join(dir, statusFileName), wire.MaxStatus)
	if err != nil {
		return err
	}
	if a.seq, a.status, err = mergeStatus(a.cfg.ID, l.seq, l.status, file); err != nil {
		return err
	}
	a.st = l.st
	a.acceptedStatus = l.status
	if a.status != nil {
		if s, err := wire.ParseStatus(a.status); err == nil && s.State == wire.StateStale && s.Epoch == a.st.Epoch {
			a.staleEpoch, a.staleReported = s.Epoch, true
		}
	}
	if err := a.loadRegistration(); err != nil {
		return err
	}
	return cleanTemps(dir)
}

// reenroll removes the device's old identity (its state, last Status and
// registration, in that order: a crash in between leaves a directory that
// New refuses with ErrIdentityLost and that reenroll completes) and creates
// a new one whose Registration is marked as a re-enrollment.
func (a *Agent) reenroll() error {
	for _, n := range []string{stateFileName, statusFileName, regFileName} {
		if err := os.Remove(filepath.Join(a.cfg.StateDir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("device: re-enroll: %w", err)
		}
	}
	if err := syncDir(a.cfg.StateDir); err != nil {
		return fmt.Errorf("device: re-enroll: %w", err)
	}
	a.reenrolled = true
	if err := a.create(); err != nil {
		return err
	}
	a.log.Warn("re-enrolled with a new device key; the issuer must approve it (or accept re-enrollments by policy)",
		"pk_hash", hex.EncodeToString(a.st.Current.PublicKey().Hash()[:8]))
	return nil
}

// create makes a new device: a fresh KEM key, its state, its registration.
// The state is written first: a crash before the registration is written
// is repaired by loadRegistration (nothing was published yet).
func (a *Agent) create() error {
	sch, _ := kem.Lookup(a.cfg.KEM) // validated by withDefaults
	k, err := sch.GenerateKey()
	if err != nil {
		return fmt.Errorf("device: generate device key: %w", err)
	}
	st, err := accept.NewState(a.cfg.ID, k)
	if err != nil {
		return err
	}
	enc, err := sealState(a.key, a.cfg.ID, st, 0, nil)
	if err != nil {
		return err
	}
	// A status.cbor without a state belongs to a device that no longer
	// exists: its sequence numbers restart with the new key.
	if err := os.Remove(filepath.Join(a.cfg.StateDir, statusFileName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("device: %w", err)
	}
	if err := writeAtomic(a.cfg.StateDir, stateFileName, enc); err != nil {
		return err
	}
	a.st = st
	a.log.Info("created device state", "kem", a.cfg.KEM.String(), "dir", a.cfg.StateDir)
	return a.writeRegistration()
}

// writeRegistration encodes the registration of the current (first) key.
func (a *Agent) writeRegistration() error { return a.registerKey(a.st.Current, a.reenrolled) }

// registerKey writes (crash-safely) and adopts the Registration of key.
func (a *Agent) registerKey(key kem.PrivateKey, reenroll bool) error {
	r := wire.Registration{
		Version: wire.Version, DeviceID: a.cfg.ID, KEMAlg: key.Scheme().ID(),
		PublicKey: key.PublicKey().Bytes(), CreatedAt: unix(a.cfg.Now()),
		Reenroll: reenroll,
	}
	b, err := r.Marshal()
	if err != nil {
		return fmt.Errorf("device: registration: %w", err)
	}
	if err := writeAtomic(a.cfg.StateDir, regFileName, b); err != nil {
		return err
	}
	a.reg = b
	if r.Reenroll {
		a.seqFloor = max(a.seqFloor, r.CreatedAt)
	}
	return nil
}

// registerLiveKey makes sure the stored Registration names the device's
// newest live key (the announced next key, else the current one), keeping
// the re-enrollment mark, and returns it with that key.
func (a *Agent) registerLiveKey() ([]byte, kem.PublicKey, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	live := a.st.Current
	if a.st.Next != nil {
		live = a.st.Next
	}
	old, err := wire.ParseRegistration(a.reg)
	if err == nil && !bytes.Equal(old.PublicKey, live.PublicKey().Bytes()) {
		err = a.registerKey(live, old.Reenroll)
	}
	return a.reg, live.PublicKey(), err
}

// loadRegistration reads the stored registration and checks it against
// the state. A missing one is recreated only before the first ticket,
// while the registered key is still the current one.
func (a *Agent) loadRegistration() error {
	path := filepath.Join(a.cfg.StateDir, regFileName)
	b, err := readOptional(path, wire.MaxRegistration)
	if err != nil {
		return err
	}
	fresh := a.st.Epoch == 0 && a.st.Next == nil
	if b == nil {
		if !fresh {
			return fmt.Errorf("%w: %s is missing", ErrStateCorrupt, path)
		}
		return a.writeRegistration()
	}
	r, err := wire.ParseRegistration(b)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrStateCorrupt, path, err)
	}
	if r.DeviceID != a.cfg.ID {
		return fmt.Errorf("%w: %s is for device %q", ErrStateCorrupt, path, r.DeviceID)
	}
	if fresh && !bytes.Equal(r.PublicKey, a.st.Current.PublicKey().Bytes()) {
		return fmt.Errorf("%w: %s does not hold the device's key", ErrStateCorrupt, path)
	}
	a.reg = b
	if r.Reenroll {
		a.seqFloor = r.CreatedAt
	}
	return nil
}

func unix(t time.Time) uint64 {
	if s := t.Unix(); s > 0 {
		return uint64(s)
	}
	return 0
}

// ID returns the device id.
func (a *Agent) ID() string { return a.cfg.ID }

// Epoch returns the last accepted epoch (0 before the first ticket).
func (a *Agent) Epoch() uint64 {
	e, _ := a.last()
	return e
}

// WaitEpoch waits until the agent has accepted epoch e or a later one, or
// ctx ends.
func (a *Agent) WaitEpoch(ctx context.Context, e uint64) error {
	for {
		a.mu.Lock()
		cur, ch := a.st.Epoch, a.changed
		a.mu.Unlock()
		if cur >= e {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("device: waiting for epoch %d (at %d): %w", e, cur, ctx.Err())
		}
	}
}

// Status returns the last Status the agent published (or, after a restart
// or while disconnected, will republish); the zero Status before the first.
func (a *Agent) Status() wire.Status {
	a.mu.Lock()
	b := a.status
	a.mu.Unlock()
	if b == nil {
		return wire.Status{}
	}
	s, err := wire.ParseStatus(b)
	if err != nil { // cannot happen: every stored Status was validated
		return wire.Status{}
	}
	return *s
}

// StatusBytes returns the exact bytes of the last Status (nil before the
// first).
func (a *Agent) StatusBytes() []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	return bytes.Clone(a.status)
}

// Registration returns the Registration's bytes, as stored and published.
func (a *Agent) Registration() []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	return bytes.Clone(a.reg)
}

// Counters returns a snapshot of the agent's counters: "accepted",
// "duplicate", "rejected:<reason>" (one per rejected ticket or root, also
// when the Status it would publish repeats the last one and is not sent),
// "stale", "failed" (local failures), "publish_failed", "status_resent"
// (the accepted ticket came again and the Status was sent again),
// "resubscribed" (behind.go) and "next_key_not_taken" (an accepted ticket was not encapsulated to the
// announced next key, PROTOCOL.md §8.1).
func (a *Agent) Counters() map[string]uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.counters.names()
}

// NextKey advances the ratchet, persists the advanced state crash-safely,
// and only then returns the key: a crash never hands out the same (epoch,
// ctr) twice. Errors: ErrNoKey before the first ticket, ErrStale after the
// last ticket expired (unless Config.AllowStale), ErrClosed, or a storage
// failure (the key is then not handed out and the state is unchanged).
func (a *Agent) NextKey() (ratchet.Key, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.closed:
		return ratchet.Key{}, ErrClosed
	case a.st.Ratchet == nil:
		return ratchet.Key{}, ErrNoKey
	case !a.cfg.AllowStale && a.st.Stale(unix(a.cfg.Now()), uint64(a.cfg.Skew/time.Second)):
		return ratchet.Key{}, ErrStale
	}
	next := a.st.Clone()
	k, err := next.Ratchet.Next()
	if err != nil {
		return ratchet.Key{}, fmt.Errorf("device: %w", err)
	}
	if _, err := a.commitState(next, nil); err != nil {
		k.Wipe()
		next.Ratchet.Wipe()
		return ratchet.Key{}, err
	}
	return k, nil
}

// Seal seals plaintext in an envelope (schema/PROTOCOL.md §8.4) under a
// fresh key from NextKey.
func (a *Agent) Seal(plaintext []byte) ([]byte, error) {
	k, err := a.NextKey()
	if err != nil {
		return nil, err
	}
	defer k.Wipe()
	return envelope.Seal(a.cfg.ID, k, plaintext)
}

// Close stops Run (and waits for it), then releases the state directory.
// The agent cannot be used afterwards.
func (a *Agent) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	a.mu.Unlock()
	a.runMu.Lock()
	running, cancel, done := a.running, a.cancel, a.done
	a.runMu.Unlock()
	if running {
		cancel()
		<-done
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.st.Ratchet != nil {
		a.st.Ratchet.Wipe()
	}
	a.st.Group.Wipe()
	clear(a.key)
	return a.lock.Close()
}
