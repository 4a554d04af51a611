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
//	if err := agent.WaitEpoch(ctx, 1); err != nil { ... }
//	env, err := agent.Seal([]byte("reading")) // envelope under a fresh key
//
// Run processes everything on one goroutine. On an accepted ticket the new
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
	"strings"
	"sync"
	"time"

	"github.com/entropykem/entropykem/internal/mqttc"
	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/envelope"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/ratchet"
	"github.com/entropykem/entropykem/pkg/signature"
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

// publisher is what the agent goroutine needs of its MQTT client.
type publisher interface {
	Publish(topic string, payload []byte, retained bool) error
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
	counters       map[string]uint64
	reenrolled     bool // the state was made by Config.Reenroll
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
	strangerLogged bool // the identity_mismatch hint was logged

	runMu   sync.Mutex
	running bool
	cancel  context.CancelFunc
	done    chan struct{}

	// Owned by the Run goroutine.
	trust       *trust.Trust      // issuer keys trusted per epoch
	heldKeys    map[string][]byte // key announcements not verified yet, by topic
	roots       map[uint64][]byte
	ticket      []byte
	ticketEpoch uint64
	pending     bool // the latest ticket waits for its epoch's root
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
		log:      cfg.Logger.With("device", cfg.ID),
		counters: make(map[string]uint64), changed: make(chan struct{}),
		roots: make(map[uint64][]byte), heldKeys: make(map[string][]byte),
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

// onTicketCleared handles an empty publish on the device's ticket topic:
// the issuer cleared it, because an operator reset the device (its pinned
// key is forgotten and its next registration is pinned as the first) or
// revoked it. The retained registration may name a key the device no
// longer holds (keys rotate every epoch), and an issuer that pinned it
// would strand the device; so the device registers its newest live key
// (the announced next key, else the current one), keeping the
// re-enrollment mark of its registration, and publishes it. It never
// touches state.bin. A revoked device's registration is refused by the
// issuer and changes nothing there.
func (a *Agent) onTicketCleared(pub publisher) {
	a.mu.Lock()
	live := a.st.Current
	if a.st.Next != nil {
		live = a.st.Next
	}
	old, err := wire.ParseRegistration(a.reg)
	if err == nil && !bytes.Equal(old.PublicKey, live.PublicKey().Bytes()) {
		err = a.registerKey(live, old.Reenroll)
	}
	reg := a.reg
	a.mu.Unlock()
	if err != nil {
		a.count("failed")
		a.log.Error("cannot register the live key after the issuer cleared the ticket", "err", err)
		return
	}
	a.log.Warn("the issuer cleared this device's ticket (reset or revoke): registration of the live key republished",
		"pk_hash", hex.EncodeToString(live.PublicKey().Hash()[:8]))
	if err := pub.Publish(a.topics.Registration(a.cfg.ID), reg, true); err != nil {
		a.log.Warn("registration publish failed; retried on reconnect", "err", err)
	}
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

// Run connects to the broker, publishes the Registration (retained, the
// same stored bytes every time), subscribes to {prefix}/ticket/{id},
// {prefix}/root/+ and {prefix}/issuer/key/+ (issuer key rotations, which it
// learns once verified), and processes tickets until ctx ends or Close is
// called; then it disconnects and returns nil. After every (re)connection
// it republishes the Registration and the last Status unchanged. It
// returns an error only for a missing Broker or IssuerKeys, a closed
// agent, or a concurrent Run.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.cfg.checkRun(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := a.startRun(cancel); err != nil {
		return err
	}
	defer a.endRun()
	connected := make(chan struct{}, 1)
	cl, err := mqttc.Dial(ctx, mqttc.Options{
		Broker: a.cfg.Broker, ClientID: a.cfg.ClientID, Username: a.cfg.Username,
		Password: a.cfg.Password, TLS: a.cfg.TLS, Timeout: a.cfg.Timeout, Logger: a.log,
		OnConnect: func() {
			select {
			case connected <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("device: %w", err)
	}
	defer cl.Close()
	// Issuer key rotations first, so that their retained announcements
	// arrive before the roots the new keys signed (a root whose key is not
	// known yet would be reported as a rejection, then accepted once the
	// key is learned). Then the ticket: its one retained message is
	// acknowledged before the roots' subscription. (mochi, the embedded
	// broker, refuses a SUBSCRIBE whose packet id equals that of a QoS 1
	// message it is still delivering, with a SUBACK that paho reports as
	// success; subscribing to root/+ first made that race likely.) A ticket
	// that arrives before its root waits for it.
	for _, f := range []string{a.topics.AllIssuerKeys(), a.topics.Ticket(a.cfg.ID), a.topics.AllRoots()} {
		if err := cl.Subscribe(f); err != nil {
			a.log.Warn("subscribe failed; retried on reconnect", "filter", f, "err", err)
		}
	}
	a.loop(ctx, cl, connected)
	return nil
}

func (a *Agent) startRun(cancel context.CancelFunc) error {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	a.mu.Lock()
	closed := a.closed
	a.mu.Unlock()
	switch {
	case closed:
		return ErrClosed
	case a.running:
		return ErrRunning
	}
	a.running, a.cancel, a.done = true, cancel, make(chan struct{})
	return nil
}

func (a *Agent) endRun() {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	a.running = false
	close(a.done)
}

// loop is the agent goroutine: every message, reconnection and stale
// check is handled here, one at a time.
func (a *Agent) loop(ctx context.Context, cl *mqttc.Client, connected <-chan struct{}) {
	var pub publisher = cl
	msgs := make(chan mqttc.Message)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(msgs)
		for {
			m, ok := cl.Inbox().Next(ctx)
			if !ok {
				return
			}
			select {
			case msgs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	defer wg.Wait()
	tick := time.NewTicker(a.cfg.StaleInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-connected:
			a.onConnect(pub)
		case m, ok := <-msgs:
			if !ok {
				return
			}
			a.handle(pub, m)
		case <-tick.C:
			a.checkStale(pub)
		}
	}
}

// onConnect republishes what the broker must hold for this device.
func (a *Agent) onConnect(pub publisher) {
	a.mu.Lock()
	reg := a.reg
	a.mu.Unlock()
	if err := pub.Publish(a.topics.Registration(a.cfg.ID), reg, true); err != nil {
		a.log.Warn("registration publish failed; retried on reconnect", "err", err)
	}
	a.mu.Lock()
	status, accepted := a.status, a.acceptedStatus
	a.mu.Unlock()
	if status != nil {
		a.publishStatus(pub, status)
	}
	// Then the last acceptance, so that it is what the retained topic
	// holds: if the connection dropped before it was sent and a rejection
	// followed (say, of an old ticket a restored broker re-delivered), the
	// issuer still needs its confirm tag and next key. The issuer verifies
	// it though its seq is lower; the rejection was reported just before.
	if accepted != nil && !bytes.Equal(accepted, status) {
		a.publishStatus(pub, accepted)
	}
	a.checkStale(pub)
}

// handle dispatches one received message.
func (a *Agent) handle(pub publisher, m mqttc.Message) {
	if m.Topic == a.topics.Ticket(a.cfg.ID) {
		if len(m.Payload) == 0 {
			a.ticket = nil // retained ticket cleared
			a.onTicketCleared(pub)
			return
		}
		a.ticket = bounded(m.Payload, wire.MaxTicket)
		a.processTicket(pub)
		return
	}
	if strings.HasPrefix(m.Topic, a.topics.Prefix+"/issuer/key/") {
		a.onIssuerKey(pub, m.Topic, m.Payload)
		return
	}
	e, err := a.topics.EpochOf(m.Topic)
	if err != nil {
		a.log.Warn("ignoring message on unexpected topic", "topic", m.Topic, "err", err)
		return
	}
	if len(m.Payload) == 0 {
		delete(a.roots, e)
		return
	}
	a.roots[e] = bounded(m.Payload, signature.MaxSign1Size)
	for len(a.roots) > DefaultRootEpochs {
		delete(a.roots, minKey(a.roots))
	}
	// Retry the latest ticket if it waited for this root, or if it is not
	// accepted yet and the issuer replaced its epoch's root.
	if a.ticket != nil && a.ticketEpoch == e && (a.pending || e > a.Epoch()) {
		a.processTicket(pub)
	}
}

// bounded keeps at most max+1 bytes of b: enough for the decoder to see
// that it is too large, without holding an unbounded payload.
func bounded(b []byte, max int) []byte {
	if len(b) > max+1 {
		return b[:max+1]
	}
	return b
}

func minKey(m map[uint64][]byte) uint64 {
	first, min := true, uint64(0)
	for k := range m {
		if first || k < min {
			first, min = false, k
		}
	}
	return min
}

// processTicket runs the acceptance rules on the latest ticket if its
// epoch's root is here; otherwise the ticket waits for its root.
func (a *Agent) processTicket(pub publisher) {
	var root []byte
	tk, body, perr := wire.ParseTicket(a.ticket)
	a.ticketEpoch, a.pending = 0, false
	if perr == nil {
		a.ticketEpoch = body.Epoch
		epoch, hash := a.last()
		if body.Epoch == epoch && bytes.Equal(keyschedule.TicketHash(tk.Body), hash) {
			a.count("duplicate")
			a.emit(Event{Kind: EventDuplicate, Epoch: epoch, TicketEpoch: epoch})
			return
		}
		var ok bool
		if root, ok = a.roots[body.Epoch]; !ok {
			a.log.Debug("ticket waits for its epoch root", "ticket_epoch", body.Epoch)
			a.pending = true
			return
		}
	}
	a.decide(pub, a.ticket, root)
	a.checkStale(pub)
}

// decide applies accept.Accept and commits and reports the outcome.
func (a *Agent) decide(pub publisher, ticket, root []byte) {
	in := accept.Input{
		Ticket: ticket, Root: root, Pins: a.trust.KeysAt(a.ticketEpoch), Now: a.cfg.Now(),
		Policy: accept.Policy{Skew: a.cfg.Skew, MaxJump: a.cfg.MaxJump},
		Cohort: a.cfg.Cohort, Roots: a.cfg.Roots,
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	res, err := accept.Accept(a.st, in)
	switch {
	case err == nil:
		a.accepted(pub, res) // unlocks
	case errors.Is(err, accept.ErrDuplicate):
		epoch := a.st.Epoch
		a.mu.Unlock()
		a.count("duplicate")
		a.emit(Event{Kind: EventDuplicate, Epoch: epoch, TicketEpoch: epoch})
	case accept.IsRejection(err):
		a.rejected(pub, err) // unlocks
	default:
		epoch := a.st.Epoch
		a.mu.Unlock()
		a.failed(epoch, err)
	}
}

// accepted persists res with its Status, then publishes the Status.
// It is called with a.mu held and releases it.
func (a *Agent) accepted(pub publisher, res *accept.Result) {
	fp := Fingerprint(res.EpochKey)
	clear(res.EpochKey)
	// §8.1: a ticket not to the announced next key means the issuer did
	// not take it (a Status it refused, e.g. next_alg, or never got); the
	// new state already announces a fresh one. Said, never silent.
	notTaken := a.st.Next != nil && !bytes.Equal(res.Body.PKHash, a.st.Next.PublicKey().Hash())
	next := res.State.Next
	s := a.newStatus(res.State, wire.StateOK, accept.ReasonNone)
	s.Confirm, s.NextTag = res.Secrets.Confirm(), res.NextTag
	s.NextAlg, s.NextPK = next.Scheme().ID(), next.PublicKey().Bytes()
	if res.Gap {
		s.State, s.PrevEpoch = wire.StateGap, &res.PrevEpoch
	}
	sb, err := a.commitState(res.State, s)
	if err != nil {
		epoch := a.st.Epoch
		a.mu.Unlock()
		a.failed(epoch, err)
		return
	}
	a.staleReported = false
	close(a.changed)
	a.changed = make(chan struct{})
	a.mu.Unlock()

	a.count("accepted")
	if notTaken {
		a.count("next_key_not_taken")
		a.log.Warn("the issuer did not use the announced next key; announcing a fresh one", "epoch", s.Epoch,
			"reason", "next_key_not_taken")
	}
	a.log.Info("ticket accepted", "epoch", s.Epoch, "state", s.State.String(), "prev_epoch", res.PrevEpoch, "key", fp)
	a.publishStatus(pub, sb)
	a.emit(Event{Kind: EventAccepted, Epoch: s.Epoch, TicketEpoch: s.Epoch, Gap: res.Gap,
		PrevEpoch: res.PrevEpoch, Fingerprint: fp, State: s.State})
}

// commitState writes st and its Status s into state.bin and, only once
// that is durable, makes them the agent's. Called with a.mu held.
func (a *Agent) commitState(st *accept.State, s *wire.Status) ([]byte, error) {
	var sb []byte
	seq, status := a.seq, a.status
	if s != nil {
		var err error
		if sb, err = s.Marshal(); err != nil {
			return nil, fmt.Errorf("device: status: %w", err)
		}
		seq, status = s.Seq, sb
	}
	enc, err := sealState(a.key, a.cfg.ID, st, seq, status)
	if err != nil {
		return nil, err
	}
	if err := writeAtomic(a.cfg.StateDir, stateFileName, enc); err != nil {
		return nil, err
	}
	if old := a.st; old != st && old.Ratchet != nil && old.Ratchet != st.Ratchet {
		old.Ratchet.Wipe()
	}
	a.st, a.seq, a.status, a.acceptedStatus = st, seq, status, status
	return sb, nil
}

// rejected reports a rejection: the state is unchanged, the Status is
// written to status.cbor (state.bin is not rewritten) and then published.
// A rejection whose Status would repeat the last one (same state, reason,
// epoch and ticket_hash) is reported again only for a ticket of another
// epoch than the last reported one: a rejection that persists is reported
// once per epoch (so observers see it is still there, and when), while a
// retained bad ticket re-delivered after a reconnect or restart is counted
// and logged but not published again. Called with a.mu held; releases it.
func (a *Agent) rejected(pub publisher, rerr error) {
	reason := accept.ReasonOf(rerr)
	epoch, te, accepted := a.st.Epoch, a.ticketEpoch, a.acceptedStatus
	s := a.newStatus(a.st, accept.StateOf(rerr), reason)
	var sb []byte
	repeat := a.repeats(s) && (!a.rejectReported || a.rejectEpoch == te)
	if !repeat {
		var err error
		if sb, err = a.commitStatus(s); err != nil {
			a.mu.Unlock()
			a.failed(epoch, err)
			return
		}
	}
	// After a restart, the first repeat stands for the Status already
	// published (and republished on connect) for this ticket epoch.
	a.rejectReported, a.rejectEpoch = true, te
	a.mu.Unlock()

	a.count("rejected:" + reason.String())
	a.log.Warn("ticket rejected", "reason", reason.String(), "ticket_epoch", te, "epoch", epoch, "reported", !repeat, "err", rerr)
	switch {
	case reason != accept.ReasonWrongDeviceKey || epoch != 0 || a.strangerLogged:
	case a.reenrolled || a.seqFloor > 0:
		// Re-enrolled: the issuer still serves the earlier key until an
		// operator approves the new one.
		a.strangerLogged = true
		a.log.Warn("ticket for this device's earlier key: the re-enrollment awaits approval at the issuer (ekem-issuer approve "+a.cfg.ID+")",
			"reason", "awaiting_approval")
	default:
		// A device that never accepted a ticket gets one for a key it
		// never had: the issuer knows an earlier identity of this id.
		a.strangerLogged = true
		a.log.Error("the issuer holds another key for this device id: this device's earlier state is lost, or another device uses this id; "+
			"re-enroll it (ekem-device reenroll) and have the operator approve it, or have the operator approve its registration (ekem-issuer approve)",
			"reason", "identity_mismatch")
	}
	if !repeat {
		a.publishStatus(pub, sb)
		if te > 0 && te < epoch && accepted != nil {
			// An old ticket (a broker restored from an older save): the
			// retained topic goes back to the acceptance the issuer needs.
			a.publishStatus(pub, accepted)
		}
	}
	a.emit(Event{Kind: EventRejected, Epoch: epoch, TicketEpoch: te, State: s.State, Reason: reason, Err: rerr})
}

// repeats reports whether s says what the last Status said. Called with
// a.mu held.
func (a *Agent) repeats(s *wire.Status) bool {
	if a.status == nil {
		return false
	}
	last, err := wire.ParseStatus(a.status)
	return err == nil && last.State == s.State && last.Reason == s.Reason &&
		last.Epoch == s.Epoch && bytes.Equal(last.TicketHash, s.TicketHash)
}

// commitStatus persists a Status that changes no state (status.cbor).
// Called with a.mu held.
func (a *Agent) commitStatus(s *wire.Status) ([]byte, error) {
	sb, err := s.Marshal()
	if err != nil {
		return nil, fmt.Errorf("device: status: %w", err)
	}
	if err := writeAtomic(a.cfg.StateDir, statusFileName, sb); err != nil {
		return nil, err
	}
	a.seq, a.status = s.Seq, sb
	return sb, nil
}

// failed logs a local failure. Nothing is published: the ticket was not
// found wanting, the device was.
func (a *Agent) failed(epoch uint64, err error) {
	a.count("failed")
	a.log.Error("local failure while processing a ticket; state unchanged", "reason", accept.ReasonInternal.String(), "err", err)
	a.emit(Event{Kind: EventFailed, Epoch: epoch, TicketEpoch: a.ticketEpoch, Reason: accept.ReasonInternal, Err: err})
}

// checkStale publishes a stale Status once per expired epoch.
func (a *Agent) checkStale(pub publisher) {
	now := a.cfg.Now()
	a.mu.Lock()
	if a.closed || !a.st.Stale(unix(now), uint64(a.cfg.Skew/time.Second)) ||
		(a.staleReported && a.staleEpoch == a.st.Epoch) {
		a.mu.Unlock()
		return
	}
	s := a.newStatus(a.st, wire.StateStale, accept.ReasonStale)
	sb, err := a.commitStatus(s)
	epoch := a.st.Epoch
	if err == nil {
		a.staleEpoch, a.staleReported = epoch, true
	}
	a.mu.Unlock()
	if err != nil {
		a.count("failed")
		a.log.Error("cannot persist stale status", "err", err)
		return
	}
	a.count("stale")
	a.log.Warn("latest ticket expired; reporting stale", "epoch", epoch, "reason", accept.ReasonStale.String())
	a.publishStatus(pub, sb)
	a.emit(Event{Kind: EventStale, Epoch: epoch, State: wire.StateStale, Reason: accept.ReasonStale})
}

// newStatus starts the next Status for state st. Called with a.mu held.
// Its seq is the last one plus one; a re-enrolled device starts above its
// re-enrollment's created_at (schema/PROTOCOL.md §7.6), so that it never
// repeats a seq its earlier identity used: the issuer and the monitor would
// take that for a clone.
func (a *Agent) newStatus(st *accept.State, state wire.State, reason accept.Reason) *wire.Status {
	return &wire.Status{
		Version: wire.Version, DeviceID: a.cfg.ID, Epoch: st.Epoch, State: state,
		Reason: uint64(reason), Time: unix(a.cfg.Now()), Seq: max(a.seq, a.seqFloor) + 1,
		TicketHash: bytes.Clone(st.TicketHash),
	}
}

// publishStatus publishes a Status retained at QoS 1. A failure is only
// logged: the Status is persisted and republished after reconnecting.
func (a *Agent) publishStatus(pub publisher, sb []byte) {
	if err := pub.Publish(a.topics.Status(a.cfg.ID), sb, true); err != nil {
		a.count("publish_failed")
		a.log.Warn("status publish failed; republished on reconnect", "err", err)
	}
}

func (a *Agent) emit(e Event) {
	if a.cfg.OnEvent != nil {
		e.DeviceID = a.cfg.ID
		a.cfg.OnEvent(e)
	}
}

func (a *Agent) count(name string) {
	a.mu.Lock()
	a.counters[name]++
	a.mu.Unlock()
}

// last returns the last accepted epoch and ticket hash.
func (a *Agent) last() (uint64, []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.st.Epoch, a.st.TicketHash
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
// "stale", "failed" (local failures), "publish_failed" and
// "next_key_not_taken" (an accepted ticket was not encapsulated to the
// announced next key, PROTOCOL.md §8.1).
func (a *Agent) Counters() map[string]uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := make(map[string]uint64, len(a.counters))
	for k, v := range a.counters {
		m[k] = v
	}
	return m
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
	clear(a.key)
	return a.lock.Close()
}
