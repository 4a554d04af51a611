package device

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/entropykem/entropykem/pkg/envelope"
	"github.com/entropykem/entropykem/pkg/groupenv"
	"github.com/entropykem/entropykem/pkg/ratchet"
)

// The agent's key operations for local applications (the local key API,
// package keyapi, serves them): status, the device's own envelopes, and
// the cohort group key (schema/PROTOCOL.md §7.7, §7.8).

var (
	// ErrNoGroup: the device's last accepted ticket carried no group seed
	// (it is not a member of a cohort, or no ticket was accepted yet).
	ErrNoGroup = errors.New("device: not a member of a cohort (no group key)")
	// ErrUnknownKey: the key an envelope names is not held: a device
	// envelope this agent did not seal since it started (or already
	// opened), or a group envelope of an epoch or cohort whose group key
	// the device does not hold.
	ErrUnknownKey = errors.New("device: unknown key")
)

// maxSealed bounds the device envelopes an agent can open again.
const maxSealed = 1024

// keysState is the agent's in-memory state for its key operations. Its
// own mutex: it never holds Agent.mu while Agent.mu waits for it.
type keysState struct {
	mu sync.Mutex
	// sealed holds the keys of the device envelopes sealed since the
	// agent started (at most maxSealed, oldest dropped first), so a local
	// application can open them once; never persisted.
	sealed map[sealedID][]byte
	order  []sealedID
	// recv opens group envelopes, with a replay window per sender.
	recv *groupenv.Receiver
}

type sealedID struct{ epoch, ctr uint64 }

// Info is what the local key API's status shows: nothing secret.
type Info struct {
	DeviceID string
	// Epoch is the last accepted epoch (0 before the first ticket);
	// ExpiresAt when that ticket expires; Stale whether it has.
	Epoch     uint64
	ExpiresAt time.Time
	Stale     bool
	// NextCtr is the counter of the next ratchet key.
	NextCtr uint64
	// Cohort and GroupEpochs: the cohort the last ticket named and the
	// epochs whose group keys are held (empty if not a member).
	Cohort      string
	GroupEpochs []uint64
}

// Info returns the agent's key status.
func (a *Agent) Info() Info {
	a.mu.Lock()
	defer a.mu.Unlock()
	in := Info{DeviceID: a.cfg.ID, Epoch: a.st.Epoch}
	if a.st.Epoch > 0 {
		in.ExpiresAt = time.Unix(int64(a.st.IssuedAt+a.st.TTL), 0).UTC()
		in.Stale = a.st.Stale(unix(a.cfg.Now()), uint64(a.cfg.Skew/time.Second))
	}
	if a.st.Ratchet != nil {
		in.NextCtr = a.st.Ratchet.NextCtr()
	}
	if g := a.st.Group; g != nil {
		in.Cohort = g.Cohort
		for _, k := range g.Keys {
			in.GroupEpochs = append(in.GroupEpochs, k.Epoch)
		}
	}
	return in
}

// usable is NextKey's refusal, for the other sealing operations. Called
// with a.mu held.
func (a *Agent) usable() error {
	switch {
	case a.closed:
		return ErrClosed
	case a.st.Ratchet == nil:
		return ErrNoKey
	case !a.cfg.AllowStale && a.st.Stale(unix(a.cfg.Now()), uint64(a.cfg.Skew/time.Second)):
		return ErrStale
	}
	return nil
}

// SealKept seals plaintext like Seal and keeps the envelope's key in
// memory so that Open can open it once (a hand-off between local
// processes): the key is never persisted, and a restart forgets it.
func (a *Agent) SealKept(plaintext []byte) ([]byte, error) {
	if len(plaintext) > envelope.MaxPlaintext {
		return nil, fmt.Errorf("%w: plaintext of %d bytes exceeds %d", envelope.ErrBadInput, len(plaintext), envelope.MaxPlaintext)
	}
	k, err := a.NextKey()
	if err != nil {
		return nil, err
	}
	defer k.Wipe()
	env, err := envelope.Seal(a.cfg.ID, k, plaintext)
	if err != nil {
		return nil, err
	}
	a.keys.keep(k)
	return env, nil
}

func (s *keysState) keep(k ratchet.Key) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sealed == nil {
		s.sealed = map[sealedID][]byte{}
	}
	id := sealedID{k.Epoch, k.Ctr}
	s.sealed[id] = append([]byte(nil), k.Bytes...)
	s.order = append(s.order, id)
	for len(s.order) > maxSealed {
		if old, ok := s.sealed[s.order[0]]; ok {
			clear(old)
			delete(s.sealed, s.order[0])
		}
		s.order = s.order[1:]
	}
}

// Open opens a device envelope this agent sealed with SealKept since it
// started, once: ErrUnknownKey for any other (another device's, one sealed
// before a restart or more than maxSealed envelopes ago, or one already
// opened), envelope.ErrMalformed or envelope.ErrAuth.
func (a *Agent) Open(env []byte) (envelope.Header, []byte, error) {
	h, err := envelope.ParseHeader(env)
	if err != nil {
		return envelope.Header{}, nil, err
	}
	if h.DeviceID != a.cfg.ID {
		return envelope.Header{}, nil, fmt.Errorf("%w: envelope of device %q", ErrUnknownKey, h.DeviceID)
	}
	s := &a.keys
	s.mu.Lock()
	defer s.mu.Unlock()
	id := sealedID{h.Epoch, h.Ctr}
	key, ok := s.sealed[id]
	if !ok {
		return envelope.Header{}, nil, fmt.Errorf("%w: (epoch %d, ctr %d)", ErrUnknownKey, h.Epoch, h.Ctr)
	}
	_, pt, err := envelope.OpenWithKey(a.cfg.ID, ratchet.Key{Epoch: h.Epoch, Ctr: h.Ctr, Bytes: key}, env)
	if err != nil {
		return envelope.Header{}, nil, err
	}
	clear(key)
	delete(s.sealed, id)
	s.order = slices.DeleteFunc(s.order, func(x sealedID) bool { return x == id })
	return h, pt, nil
}

// GroupSeal seals plaintext under the group key of the device's newest
// epoch as this device, with its next group counter: the advanced counter
// is persisted (state.bin) before the envelope is sealed, so a counter is
// never used twice, across crashes too. Errors: ErrNoGroup, ErrStale,
// ErrNoKey, ErrClosed, or a storage failure (nothing sealed, nothing
// changed).
func (a *Agent) GroupSeal(plaintext []byte) ([]byte, error) {
	if len(plaintext) > groupenv.MaxPlaintext {
		return nil, fmt.Errorf("%w: plaintext of %d bytes exceeds %d", groupenv.ErrBadInput, len(plaintext), groupenv.MaxPlaintext)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.usable(); err != nil {
		return nil, err
	}
	if a.st.Group == nil {
		return nil, ErrNoGroup
	}
	if a.st.Group.NextCtr >= groupenv.MaxCtr {
		return nil, fmt.Errorf("device: group counter exhausted for epoch %d", a.st.Group.Latest().Epoch)
	}
	next := a.st.Clone()
	g := next.Group
	latest := g.Latest()
	h := groupenv.Header{Cohort: g.Cohort, Epoch: latest.Epoch, Sender: a.cfg.ID, Ctr: g.NextCtr}
	g.NextCtr++
	old := a.st.Group
	if _, err := a.commitState(next, nil); err != nil {
		next.Group.Wipe()
		return nil, err
	}
	old.Wipe() // the state it belonged to is replaced
	return groupenv.Seal(latest.Key, h, plaintext)
}

// GroupOpen opens a group envelope of the device's cohort with a group key
// it holds (its two newest epochs), refusing a replay (a window per sender
// and epoch, in memory). Errors: ErrNoKey, ErrNoGroup, ErrUnknownKey (another cohort,
// an epoch whose key is not held), groupenv.ErrMalformed, groupenv.ErrAuth,
// groupenv.ErrReplay, groupenv.ErrTooOld, groupenv.ErrTooManySenders.
func (a *Agent) GroupOpen(env []byte) (groupenv.Header, []byte, error) {
	if _, err := groupenv.ParseHeader(env); err != nil {
		return groupenv.Header{}, nil, err
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return groupenv.Header{}, nil, ErrClosed
	}
	g := a.st.Group
	if g == nil {
		a.mu.Unlock()
		if a.st.Ratchet == nil {
			return groupenv.Header{}, nil, ErrNoKey
		}
		return groupenv.Header{}, nil, ErrNoGroup
	}
	cohort := g.Cohort
	keys := make(map[uint64][]byte, len(g.Keys))
	for _, k := range g.Keys {
		keys[k.Epoch] = append([]byte(nil), k.Key...)
	}
	a.mu.Unlock()
	defer func() {
		for _, k := range keys {
			clear(k)
		}
	}()

	s := &a.keys
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recv == nil || s.recv.Cohort() != cohort {
		r, err := groupenv.NewReceiver(cohort)
		if err != nil {
			return groupenv.Header{}, nil, err
		}
		s.recv = r
	}
	for e, k := range keys {
		if err := s.recv.SetKey(e, k); err != nil {
			return groupenv.Header{}, nil, err
		}
	}
	h, pt, err := s.recv.Open(env)
	if errors.Is(err, groupenv.ErrUnknownKey) {
		err = fmt.Errorf("%w: %w", ErrUnknownKey, err)
	}
	return h, pt, err
}
