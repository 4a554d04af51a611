package envelope

import (
	"fmt"
	"sync"

	"github.com/entropykem/entropykem/pkg/ratchet"
)

// MaxSkipLimit bounds NewReceiver's maxSkip. An attacker who cannot forge
// envelopes can still make a receiver derive up to maxSkip keys per envelope
// (the keys are derived before the tag can be checked); at about 0.6 µs per
// key this caps that work at a few milliseconds.
const MaxSkipLimit = 4096

// minHistory is the smallest replay history a Receiver keeps.
const minHistory = 64

// keyID names a message key.
type keyID struct{ epoch, ctr uint64 }

// Receiver opens one device's envelopes with its own copy of the device's
// ratchet state. It accepts envelopes out of order within bounds:
//
//   - an envelope up to maxSkip keys ahead of the next counter opens, and
//     the keys it skips are kept for late envelopes;
//   - at most maxSkip skipped keys are kept, the oldest dropped first;
//   - a skipped key opens one envelope and is then deleted;
//   - every failure leaves the receiver exactly as it was.
//
// A Receiver is safe for concurrent use.
type Receiver struct {
	mu       sync.Mutex
	deviceID string
	st       *ratchet.State
	maxSkip  int

	skipped map[keyID][]byte // stored skipped keys, at most maxSkip
	order   []keyID          // the keys of skipped, oldest first

	seen     map[keyID]struct{} // replay history: recently opened keys
	seenRing []keyID            // the keys of seen in a ring, len = history size
	seenPos  int                // next slot of seenRing to overwrite
}

// NewReceiver returns a Receiver for deviceID that starts from a copy of st
// (st itself is not modified). maxSkip, 0 … MaxSkipLimit, bounds both how
// far ahead of the next counter an envelope may be and how many skipped keys
// are kept. The replay history holds the last max(maxSkip+1, 64) opened
// keys.
func NewReceiver(deviceID string, st *ratchet.State, maxSkip int) (*Receiver, error) {
	if err := checkDeviceID(deviceID); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadInput, err)
	}
	if st == nil {
		return nil, fmt.Errorf("%w: nil ratchet state", ErrBadInput)
	}
	if maxSkip < 0 || maxSkip > MaxSkipLimit {
		return nil, fmt.Errorf("%w: maxSkip %d outside 0…%d", ErrBadInput, maxSkip, MaxSkipLimit)
	}
	return &Receiver{
		deviceID: deviceID,
		st:       st.Clone(),
		maxSkip:  maxSkip,
		skipped:  make(map[keyID][]byte),
		seen:     make(map[keyID]struct{}),
		seenRing: make([]keyID, 0, max(maxSkip+1, minHistory)),
	}, nil
}

// Epoch returns the receiver's current epoch.
func (r *Receiver) Epoch() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st.Epoch()
}

// NextCtr returns the counter of the next key the receiver would derive.
func (r *Receiver) NextCtr() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st.NextCtr()
}

// Stored returns the number of skipped keys held (at most maxSkip).
func (r *Receiver) Stored() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.skipped)
}

// Open authenticates and decrypts env and returns its header and plaintext.
//
// Errors: ErrMalformed (decoding), ErrWrongDevice, ErrTooFarAhead (more than
// maxSkip keys ahead, or an epoch not yet mixed in), ErrReplay (opened
// before, within the replay history), ErrTooOld (key dropped or never
// stored, e.g. an envelope of an old epoch the receiver never skipped past),
// ErrAuth (the tag does not verify). On any error the receiver is unchanged.
// If env parsed, the header is returned with the error too; it is
// authenticated only when err is nil.
func (r *Receiver) Open(env []byte) (Header, []byte, error) {
	h, ct, err := parse(env)
	if err != nil {
		return Header{}, nil, err
	}
	if h.DeviceID != r.deviceID {
		return h, nil, ErrWrongDevice
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	epoch, next := r.st.Epoch(), r.st.NextCtr()
	switch {
	case h.Epoch > epoch:
		return h, nil, fmt.Errorf("%w: epoch %d, receiver at %d", ErrTooFarAhead, h.Epoch, epoch)
	case h.Epoch == epoch && h.Ctr >= next:
		pt, err := r.openAhead(h, ct, h.Ctr-next)
		return h, pt, err
	default:
		pt, err := r.openStored(h, ct)
		return h, pt, err
	}
}

// openAhead opens an envelope skip keys ahead of the next counter. The keys
// are derived on a clone of the state, which replaces the state, together
// with storing the skipped keys, only after the envelope authenticated.
func (r *Receiver) openAhead(h Header, ct []byte, skip uint64) ([]byte, error) {
	if skip > uint64(r.maxSkip) {
		return nil, fmt.Errorf("%w: %d keys ahead, limit %d", ErrTooFarAhead, skip, r.maxSkip)
	}
	c := r.st.Clone()
	pending := make([]ratchet.Key, 0, skip)
	discard := func() {
		for _, k := range pending {
			k.Wipe()
		}
		c.Wipe()
	}
	for range skip {
		k, err := c.Next()
		if err != nil {
			discard()
			return nil, fmt.Errorf("envelope: derive: %w", err)
		}
		pending = append(pending, k)
	}
	k, err := c.Next()
	if err != nil {
		discard()
		return nil, fmt.Errorf("envelope: derive: %w", err)
	}
	pt, err := open(h, k.Bytes, ct)
	k.Wipe()
	if err != nil {
		discard()
		return nil, err
	}
	r.st.Wipe()
	r.st = c
	r.storeAll(pending)
	r.remember(keyID{h.Epoch, h.Ctr})
	return pt, nil
}

// openStored opens an envelope behind the next counter with its stored
// skipped key, which is deleted once it opened an envelope. A failed open
// keeps the key, so a forgery cannot destroy it.
func (r *Receiver) openStored(h Header, ct []byte) ([]byte, error) {
	id := keyID{h.Epoch, h.Ctr}
	key, ok := r.skipped[id]
	if !ok {
		if _, dup := r.seen[id]; dup {
			return nil, ErrReplay
		}
		return nil, ErrTooOld
	}
	pt, err := open(h, key, ct)
	if err != nil {
		return nil, err
	}
	r.drop(id)
	r.remember(id)
	return pt, nil
}

// storeAll keeps the skipped keys (given oldest first), dropping the oldest
// stored keys so that at most maxSkip remain.
func (r *Receiver) storeAll(keys []ratchet.Key) {
	if extra := len(keys) - r.maxSkip; extra > 0 {
		for _, k := range keys[:extra] {
			k.Wipe()
		}
		keys = keys[extra:]
	}
	if excess := len(r.order) + len(keys) - r.maxSkip; excess > 0 {
		for _, id := range r.order[:excess] {
			clear(r.skipped[id])
			delete(r.skipped, id)
		}
		r.order = r.order[:copy(r.order, r.order[excess:])]
	}
	for _, k := range keys {
		id := keyID{k.Epoch, k.Ctr}
		r.skipped[id] = k.Bytes
		r.order = append(r.order, id)
	}
}

// drop wipes and forgets a stored key.
func (r *Receiver) drop(id keyID) {
	clear(r.skipped[id])
	delete(r.skipped, id)
	for i, o := range r.order {
		if o == id {
			// Shift in place so the backing array never grows past maxSkip.
			r.order = append(r.order[:i], r.order[i+1:]...)
			break
		}
	}
}

// remember records an opened key in the bounded replay history.
func (r *Receiver) remember(id keyID) {
	if len(r.seenRing) < cap(r.seenRing) {
		r.seenRing = append(r.seenRing, id)
	} else {
		delete(r.seen, r.seenRing[r.seenPos])
		r.seenRing[r.seenPos] = id
		r.seenPos = (r.seenPos + 1) % len(r.seenRing)
	}
	r.seen[id] = struct{}{}
}

// Mix follows the sender to a newer epoch with that epoch's key (see
// ratchet.State.Mix; its errors, e.g. ratchet.ErrStaleEpoch, are returned
// and leave the receiver unchanged). Skipped keys of earlier epochs stay
// stored, within the same bound, so their late envelopes still open once;
// keys of the old epoch that were never derived are gone, and envelopes
// needing them fail with ErrTooOld.
func (r *Receiver) Mix(epoch uint64, keyEpoch []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.st.Mix(epoch, keyEpoch); err != nil {
		return fmt.Errorf("envelope: mix: %w", err)
	}
	return nil
}
