package accept

import (
	"bytes"
	"fmt"

	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/ratchet"
	"github.com/entropykem/entropykem/pkg/wire"
)

// State is everything a device must remember between tickets. It holds
// secrets (decapsulation key seeds, the ratchet): persist it only
// encrypted (the device package does, under keyschedule.StateKey).
//
// Accept never modifies a State; it returns a new one.
type State struct {
	DeviceID string
	// Epoch, TicketHash, IssuedAt and TTL describe the last accepted
	// ticket; Epoch is 0 and TicketHash nil before the first.
	Epoch      uint64
	TicketHash []byte
	IssuedAt   uint64
	TTL        uint64
	// Current is the decapsulation key the issuer last used (at first the
	// registered one); Next is the key announced for the next epoch, or
	// nil. Tickets to either are accepted (rule 3).
	Current kem.PrivateKey
	Next    kem.PrivateKey
	// Ratchet is nil until the first ticket is accepted.
	Ratchet *ratchet.State
	// Group is the cohort group state, nil unless the last accepted
	// ticket carried a group seed.
	Group *Group
}

// NewState is the state of a device that has registered key and accepted
// no ticket yet.
func NewState(deviceID string, key kem.PrivateKey) (*State, error) {
	if err := wire.ValidateDeviceID(deviceID); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadState, err)
	}
	if key == nil {
		return nil, fmt.Errorf("%w: no device key", ErrBadState)
	}
	return &State{DeviceID: deviceID, Current: key}, nil
}

// Clone returns a deep copy of s.
func (s *State) Clone() *State {
	c := *s
	c.TicketHash = bytes.Clone(s.TicketHash)
	if s.Ratchet != nil {
		c.Ratchet = s.Ratchet.Clone()
	}
	c.Group = s.Group.clone()
	return &c
}

// Stale reports whether the last accepted ticket has expired at now
// (Unix seconds, allowing skew seconds): the device must say so rather
// than silently keep old keys (rule 5: a frozen retained topic).
func (s *State) Stale(now, skew uint64) bool {
	return s.Epoch > 0 && now > s.IssuedAt+s.TTL+skew
}

// liveKey returns the live decapsulation key whose public key hashes to
// pkHash, or nil.
func (s *State) liveKey(pkHash []byte) kem.PrivateKey {
	for _, k := range []kem.PrivateKey{s.Current, s.Next} {
		if k != nil && bytes.Equal(k.PublicKey().Hash(), pkHash) {
			return k
		}
	}
	return nil
}

// MaxState bounds an encoded State.
const MaxState = 1024

type keyWire struct {
	Alg  kem.ID `cbor:"0,keyasint"`
	Seed []byte `cbor:"1,keyasint"`
}

type stateWire struct {
	Version    uint64   `cbor:"0,keyasint"`
	DeviceID   string   `cbor:"1,keyasint"`
	Epoch      uint64   `cbor:"2,keyasint"`
	TicketHash []byte   `cbor:"3,keyasint,omitempty"`
	IssuedAt   uint64   `cbor:"4,keyasint"`
	TTL        uint64   `cbor:"5,keyasint"`
	Current    keyWire  `cbor:"6,keyasint"`
	Next       *keyWire `cbor:"7,keyasint,omitempty"`
	Ratchet    []byte   `cbor:"8,keyasint,omitempty"`
	// Group is the cohort group state (schema/PROTOCOL.md §7.7).
	Group *groupWire `cbor:"9,keyasint,omitempty"`
}

// MarshalBinary returns the deterministic CBOR encoding of s
// (schema/PROTOCOL.md §Device state).
func (s *State) MarshalBinary() ([]byte, error) {
	w := stateWire{
		Version: wire.Version, DeviceID: s.DeviceID, Epoch: s.Epoch,
		TicketHash: s.TicketHash, IssuedAt: s.IssuedAt, TTL: s.TTL,
		Current: keyWire{s.Current.Scheme().ID(), s.Current.Seed()},
	}
	if s.Next != nil {
		w.Next = &keyWire{s.Next.Scheme().ID(), s.Next.Seed()}
	}
	if s.Ratchet != nil {
		r, err := s.Ratchet.MarshalBinary()
		if err != nil {
			return nil, err
		}
		w.Ratchet = r
	}
	w.Group = s.Group.toWire()
	return cbor.Marshal(&w)
}

// UnmarshalState strictly decodes a State written by MarshalBinary.
func UnmarshalState(b []byte) (*State, error) {
	var w stateWire
	if err := cbor.Unmarshal(b, MaxState, &w); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadState, err)
	}
	if w.Version != wire.Version {
		return nil, fmt.Errorf("%w: version %d", ErrBadState, w.Version)
	}
	cur, err := w.Current.key()
	if err != nil {
		return nil, err
	}
	s, err := NewState(w.DeviceID, cur)
	if err != nil {
		return nil, err
	}
	if err := s.setLast(&w); err != nil {
		return nil, err
	}
	if w.Next != nil {
		if s.Next, err = w.Next.key(); err != nil {
			return nil, err
		}
	}
	if w.Ratchet != nil {
		if s.Ratchet, err = ratchet.UnmarshalState(w.Ratchet); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadState, err)
		}
	}
	if w.Group != nil {
		if s.Group, err = w.Group.group(); err != nil {
			return nil, err
		}
	}
	if (s.Epoch == 0) != (s.Ratchet == nil) {
		return nil, fmt.Errorf("%w: ratchet must exist exactly when a ticket was accepted", ErrBadState)
	}
	return s, nil
}

func (s *State) setLast(w *stateWire) error {
	if w.Epoch > wire.MaxEpoch || w.IssuedAt > wire.MaxTime || w.TTL > wire.MaxTTL {
		return fmt.Errorf("%w: epoch, issued_at or ttl out of range", ErrBadState)
	}
	if (w.Epoch == 0) != (w.TicketHash == nil) || (w.TicketHash != nil && len(w.TicketHash) != wire.HashSize) {
		return fmt.Errorf("%w: ticket hash must be 32 bytes exactly when epoch > 0", ErrBadState)
	}
	s.Epoch, s.TicketHash, s.IssuedAt, s.TTL = w.Epoch, w.TicketHash, w.IssuedAt, w.TTL
	return nil
}

func (k keyWire) key() (kem.PrivateKey, error) {
	sch, err := kem.Lookup(k.Alg)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadState, err)
	}
	pk, err := sch.NewPrivateKey(k.Seed)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadState, err)
	}
	return pk, nil
}
