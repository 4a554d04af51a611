package groupenv

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync"
)

// Receiver errors callers tell apart.
var (
	// ErrUnknownKey: the receiver holds no group key for the envelope's
	// cohort and epoch (another cohort, an epoch not reached yet, or one
	// older than the keys it keeps).
	ErrUnknownKey = errors.New("groupenv: no group key for this cohort and epoch")
	// ErrReplay: an envelope of this sender and counter was opened before.
	ErrReplay = errors.New("groupenv: replayed")
	// ErrTooOld: the counter is below the sender's replay window.
	ErrTooOld = errors.New("groupenv: counter below the replay window")
	// ErrTooManySenders: the epoch already has MaxSenders senders; a new
	// one is refused rather than evicting another's window (eviction
	// would let that sender's envelopes be replayed).
	ErrTooManySenders = errors.New("groupenv: too many senders in this epoch")
)

const (
	// Window is how many counters below a sender's highest opened one
	// are still accepted (once each).
	Window = 1024
	// MaxSenders bounds the senders a Receiver tracks per epoch.
	MaxSenders = 4096
	// KeepEpochs is how many epochs' keys a Receiver keeps: the newest
	// and the one before, for envelopes sealed just before a member
	// accepted the next ticket.
	KeepEpochs = 2
)

// window is one sender's replay state: the highest counter opened and a
// bitmap of the Window counters at and below it.
type window struct {
	top  uint64
	bits [Window / 64]uint64
	any  bool
}

// fresh reports whether ctr may be opened (not yet seen, not too old).
func (w *window) fresh(ctr uint64) error {
	switch {
	case !w.any || ctr > w.top:
		return nil
	case w.top-ctr >= Window:
		return ErrTooOld
	case w.bits[(ctr%Window)/64]&(1<<(ctr%64)) != 0:
		return ErrReplay
	}
	return nil
}

// mark records ctr as opened; fresh(ctr) must have passed.
func (w *window) mark(ctr uint64) {
	if !w.any || ctr > w.top {
		if !w.any || ctr-w.top >= Window {
			w.bits = [Window / 64]uint64{}
		} else {
			for c := w.top + 1; c < ctr; c++ { // clear the slots that leave the window
				w.bits[(c%Window)/64] &^= 1 << (c % 64)
			}
		}
		w.top, w.any = ctr, true
	}
	w.bits[(ctr%Window)/64] |= 1 << (ctr % 64)
}

type epochKeys struct {
	epoch   uint64
	key     []byte
	senders map[string]*window
}

// Receiver opens one cohort's group envelopes with the group keys of its
// KeepEpochs newest epochs, and refuses a replay: it keeps a window of
// Window counters per sender and epoch, for at most MaxSenders senders
// per epoch. Replay state lives in memory: a restarted receiver starts
// empty (an application that must refuse replays across restarts records
// what it processed). Every failure leaves it unchanged. Safe for
// concurrent use.
type Receiver struct {
	mu     sync.Mutex
	cohort string
	keys   []*epochKeys // newest last
}

// NewReceiver returns a Receiver for cohort without keys.
func NewReceiver(cohort string) (*Receiver, error) {
	if err := (Header{Cohort: cohort, Epoch: 1, Sender: "x"}).check(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadInput, err)
	}
	return &Receiver{cohort: cohort}, nil
}

// Cohort is the receiver's cohort id.
func (r *Receiver) Cohort() string { return r.cohort }

// SetKey gives the receiver the group key of epoch (a copy is kept). Only
// the KeepEpochs newest epochs are kept; an epoch older than all of them is
// ignored, and the same key again changes nothing.
func (r *Receiver) SetKey(epoch uint64, key []byte) error {
	if len(key) != KeySize {
		return fmt.Errorf("%w: group key of %d bytes", ErrBadInput, len(key))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range r.keys {
		if k.epoch == epoch {
			if !bytes.Equal(k.key, key) {
				return fmt.Errorf("%w: another key for epoch %d", ErrBadInput, epoch)
			}
			return nil
		}
	}
	r.keys = append(r.keys, &epochKeys{epoch: epoch, key: bytes.Clone(key), senders: map[string]*window{}})
	slices.SortFunc(r.keys, func(a, b *epochKeys) int { return cmpU64(a.epoch, b.epoch) })
	for len(r.keys) > KeepEpochs {
		clear(r.keys[0].key)
		r.keys = r.keys[1:]
	}
	return nil
}

// Epochs lists the epochs whose keys the receiver holds, oldest first.
func (r *Receiver) Epochs() []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]uint64, len(r.keys))
	for i, k := range r.keys {
		out[i] = k.epoch
	}
	return out
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Open authenticates and decrypts env, refusing a replay. Errors:
// ErrMalformed, ErrUnknownKey, ErrAuth, ErrReplay, ErrTooOld,
// ErrTooManySenders. The replay window changes only after the envelope
// authenticated.
func (r *Receiver) Open(env []byte) (Header, []byte, error) {
	h, ct, err := parse(env)
	if err != nil {
		return Header{}, nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if h.Cohort != r.cohort {
		return Header{}, nil, fmt.Errorf("%w: cohort %q (this receiver: %q)", ErrUnknownKey, h.Cohort, r.cohort)
	}
	var ek *epochKeys
	for _, k := range r.keys {
		if k.epoch == h.Epoch {
			ek = k
		}
	}
	if ek == nil {
		return Header{}, nil, fmt.Errorf("%w: epoch %d", ErrUnknownKey, h.Epoch)
	}
	w := ek.senders[h.Sender]
	if w != nil {
		if err := w.fresh(h.Ctr); err != nil {
			return Header{}, nil, fmt.Errorf("%w: sender %q ctr %d", err, h.Sender, h.Ctr)
		}
	} else if len(ek.senders) >= MaxSenders {
		return Header{}, nil, fmt.Errorf("%w: %d", ErrTooManySenders, MaxSenders)
	}
	pt, err := open(ek.key, h, ct)
	if err != nil {
		return Header{}, nil, err
	}
	if w == nil {
		w = &window{}
		ek.senders[h.Sender] = w
	}
	w.mark(h.Ctr)
	return h, pt, nil
}
