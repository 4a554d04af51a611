// Package ratchet is the device's forward-secure symmetric key ratchet
// (schema/PROTOCOL.md §Ratchet, design brief §Ratchet). It turns the epoch
// key key_e of each accepted ticket into a sequence of one-time message keys.
//
// # Formulas
//
// decimal(x) is the ASCII decimal of x without leading zeros, u64be(x) its
// 8-byte big-endian encoding, HKDF is HKDF-SHA256 (RFC 5869) with L = 32,
// and HMAC is HMAC-SHA256 (RFC 2104). A nil salt is HKDF's default all-zero
// salt.
//
//	Init at epoch e:   root  = key_e
//	                   chain = HKDF(IKM = root, salt = nil, info = "chain:" decimal(e))
//	                   ctr   = 0
//	Next key (n=ctr):  mk    = HMAC(chain, "msg:" purpose ";ctr=" decimal(n))   named (epoch, n)
//	                   chain = HMAC(chain, "ratchet")
//	                   ctr   = n + 1
//	Mix at e' > e:     root  = HKDF(IKM = root ‖ key_e', salt = u64be(e'), info = "mix:" decimal(e'))
//	                   chain = HKDF(IKM = root, salt = nil, info = "chain:" decimal(e'))
//	                   ctr   = 0, epoch = e'
//
// The previous chain and root are overwritten in place when they are
// replaced (a best-effort wipe: Go may have copied them elsewhere, e.g.
// inside the HMAC implementation).
//
// # Security property
//
// Forward secrecy inside an epoch holds only for the message keys, not for
// the state: the root is kept, because the next Mix needs it, and
// chain = HKDF(root, "chain:" e) can be recomputed from it. So an attacker
// who reads a State learns every key of the state's current epoch from
// ctr 0 on, including keys already handed out, and can follow the chain for
// the rest of that epoch. It learns nothing about the keys of earlier
// epochs: their roots and chains were overwritten, and the current root is
// an HKDF output from which the earlier root cannot be computed.
// Post-compromise security: once a ticket whose key_e' the attacker cannot
// compute (it cannot decapsulate the ticket, or lacks the cohort input) is
// mixed in, the new root — and with it every key of that and later epochs —
// is out of the attacker's reach again. The issuer, which knows each
// ticket's shared secret but not the cohort input, cannot follow the chain
// across a mix either, because the mix uses key_e' and not the raw secret.
//
// A State is not safe for concurrent use. Its serialized form
// (MarshalBinary) holds the root and chain in the clear: encrypt it before
// it is stored, and wipe the bytes after use.
package ratchet

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/entropykem/entropykem/pkg/cbor"
)

// KeySize is the size of an epoch key, the root, the chain key and every
// message key, in bytes.
const KeySize = 32

// MaxCtr is the exclusive upper bound of message counters: keys are handed
// out for ctr 0 … MaxCtr-1, after which Next returns ErrExhausted until the
// next Mix. Keeping counters below 2^63 lets every party store them in a
// signed 64-bit integer.
const MaxCtr uint64 = 1 << 63

// MaxPurposeLen is the longest purpose string accepted.
const MaxPurposeLen = 64

// MaxStateSize bounds a serialized State before it is decoded. The largest
// valid encoding (64-byte purpose, maximum integers) is 160 bytes.
const MaxStateSize = 256

// stateVersion is the version field of the serialized State.
const stateVersion = 1

var (
	// ErrStaleEpoch is returned by Mix for an epoch that is not newer than
	// the state's current epoch.
	ErrStaleEpoch = errors.New("ratchet: epoch not newer than current")
	// ErrExhausted is returned by Next when the counter reached MaxCtr.
	ErrExhausted = errors.New("ratchet: counter exhausted for this epoch")
	// ErrBadState is returned (wrapped) when a serialized State is
	// malformed or out of range, or a State was wiped.
	ErrBadState = errors.New("ratchet: bad state")
	// ErrBadKey is returned for an epoch key that is not KeySize bytes.
	ErrBadKey = errors.New("ratchet: epoch key must be 32 bytes")
	// ErrBadPurpose is returned for a purpose that is empty, longer than
	// MaxPurposeLen, or contains a byte outside printable ASCII
	// (0x21–0x7e) or a ';'.
	ErrBadPurpose = errors.New("ratchet: invalid purpose")
)

// Key is one message key, named by (Epoch, Ctr). It must be used for
// exactly one message. Bytes is secret: never log it (String and GoString
// leave it out).
type Key struct {
	Epoch, Ctr uint64
	Bytes      []byte
}

// String describes the key without its bytes.
func (k Key) String() string {
	return "ratchet.Key{epoch=" + strconv.FormatUint(k.Epoch, 10) +
		", ctr=" + strconv.FormatUint(k.Ctr, 10) + "}"
}

// GoString is String, so that %#v does not print the key bytes either.
func (k Key) GoString() string { return k.String() }

// Wipe overwrites the key bytes with zeros.
func (k Key) Wipe() { clear(k.Bytes) }

// State is a ratchet: the current epoch, the counter of the next key, the
// purpose bound into every key, the root and the chain key. The zero value
// is not usable; create one with Init or UnmarshalState.
type State struct {
	epoch   uint64
	ctr     uint64
	purpose string
	root    []byte // KeySize bytes
	chain   []byte // KeySize bytes
	wiped   bool
}

// Init starts a ratchet at epoch with the epoch key keyEpoch (KeySize
// bytes, copied) and the given purpose: root = keyEpoch,
// chain = HKDF(root, info = "chain:" decimal(epoch)), ctr = 0.
func Init(epoch uint64, keyEpoch []byte, purpose string) (*State, error) {
	if len(keyEpoch) != KeySize {
		return nil, fmt.Errorf("%w: got %d bytes", ErrBadKey, len(keyEpoch))
	}
	if err := checkPurpose(purpose); err != nil {
		return nil, err
	}
	chain, err := chainKey(keyEpoch, epoch)
	if err != nil {
		return nil, err
	}
	return &State{
		epoch:   epoch,
		purpose: purpose,
		root:    append(make([]byte, 0, KeySize), keyEpoch...),
		chain:   chain,
	}, nil
}

// Epoch returns the current epoch.
func (s *State) Epoch() uint64 { return s.epoch }

// NextCtr returns the counter of the key the next call to Next returns.
func (s *State) NextCtr() uint64 { return s.ctr }

// Purpose returns the purpose bound into every key.
func (s *State) Purpose() string { return s.purpose }

// String describes the state without its secrets.
func (s *State) String() string {
	return "ratchet.State{epoch=" + strconv.FormatUint(s.epoch, 10) +
		", ctr=" + strconv.FormatUint(s.ctr, 10) + ", purpose=" + strconv.Quote(s.purpose) + "}"
}

// GoString is String, so that %#v does not print the secrets either.
func (s *State) GoString() string { return s.String() }

// Next returns the key (epoch, n) for the current counter n,
// mk = HMAC(chain, "msg:" purpose ";ctr=" decimal(n)), and advances the
// chain, chain = HMAC(chain, "ratchet"), overwriting the old chain key. It
// returns ErrExhausted once n would reach MaxCtr. A key returned by Next is
// never returned again by this State; persisting the advanced state before
// the key is used is the caller's job.
func (s *State) Next() (Key, error) {
	if s.wiped {
		return Key{}, fmt.Errorf("%w: wiped", ErrBadState)
	}
	if s.ctr >= MaxCtr {
		return Key{}, ErrExhausted
	}
	n := s.ctr
	var label [4 + MaxPurposeLen + 5 + 20]byte
	msg := append(label[:0], "msg:"...)
	msg = append(msg, s.purpose...)
	msg = append(msg, ";ctr="...)
	msg = strconv.AppendUint(msg, n, 10)

	m := hmac.New(sha256.New, s.chain)
	m.Write(msg)
	mk := m.Sum(make([]byte, 0, KeySize))
	m.Reset()
	m.Write([]byte("ratchet"))
	m.Sum(s.chain[:0]) // overwrite the old chain key in place
	s.ctr = n + 1
	return Key{Epoch: s.epoch, Ctr: n, Bytes: mk}, nil
}

// Mix moves the ratchet to a newer epoch with that epoch's key keyEpoch:
// root = HKDF(root ‖ keyEpoch, salt = u64be(epoch), info = "mix:" decimal(epoch)),
// a new chain from it, ctr = 0. The old root and chain are overwritten. It
// returns ErrStaleEpoch if epoch is not greater than the current epoch; on
// any error the state is unchanged.
func (s *State) Mix(epoch uint64, keyEpoch []byte) error {
	if s.wiped {
		return fmt.Errorf("%w: wiped", ErrBadState)
	}
	if len(keyEpoch) != KeySize {
		return fmt.Errorf("%w: got %d bytes", ErrBadKey, len(keyEpoch))
	}
	if epoch <= s.epoch {
		return fmt.Errorf("%w: %d <= %d", ErrStaleEpoch, epoch, s.epoch)
	}
	var ikm [2 * KeySize]byte
	copy(ikm[:KeySize], s.root)
	copy(ikm[KeySize:], keyEpoch)
	var salt [8]byte
	binary.BigEndian.PutUint64(salt[:], epoch)
	root, err := hkdf.Key(sha256.New, ikm[:], salt[:], "mix:"+strconv.FormatUint(epoch, 10), KeySize)
	clear(ikm[:])
	if err != nil {
		return fmt.Errorf("ratchet: mix: %w", err)
	}
	chain, err := chainKey(root, epoch)
	if err != nil {
		clear(root)
		return err
	}
	copy(s.root, root)
	copy(s.chain, chain)
	clear(root)
	clear(chain)
	s.epoch, s.ctr = epoch, 0
	return nil
}

// Clone returns an independent deep copy of s.
func (s *State) Clone() *State {
	c := *s
	c.root = append(make([]byte, 0, KeySize), s.root...)
	c.chain = append(make([]byte, 0, KeySize), s.chain...)
	return &c
}

// Wipe overwrites the root and chain with zeros. A wiped State returns
// ErrBadState from Next, Mix and MarshalBinary.
func (s *State) Wipe() {
	clear(s.root)
	clear(s.chain)
	s.wiped = true
}

// stateWire is the serialized State, a deterministic CBOR map
// (RFC 8949 §4.2.1):
//
//	ratchet-state = { 0: 1, 1: epoch, 2: ctr, 3: purpose, 4: bstr .size 32, 5: bstr .size 32 }
type stateWire struct {
	Version uint64 `cbor:"0,keyasint"`
	Epoch   uint64 `cbor:"1,keyasint"`
	Ctr     uint64 `cbor:"2,keyasint"`
	Purpose string `cbor:"3,keyasint"`
	Root    []byte `cbor:"4,keyasint"`
	Chain   []byte `cbor:"5,keyasint"`
}

// MarshalBinary returns the deterministic CBOR encoding of the state
// {0: 1, 1: epoch, 2: ctr, 3: purpose, 4: root, 5: chain}. The result holds
// secrets in the clear: encrypt it for storage and wipe it after use.
func (s *State) MarshalBinary() ([]byte, error) {
	if s.wiped {
		return nil, fmt.Errorf("%w: wiped", ErrBadState)
	}
	b, err := cbor.Marshal(stateWire{
		Version: stateVersion,
		Epoch:   s.epoch,
		Ctr:     s.ctr,
		Purpose: s.purpose,
		Root:    s.root,
		Chain:   s.chain,
	})
	if err != nil {
		return nil, fmt.Errorf("ratchet: marshal: %w", err)
	}
	return b, nil
}

// UnmarshalState strictly decodes a state written by MarshalBinary: at most
// MaxStateSize bytes, deterministic CBOR with exactly the six fields,
// version 1, ctr <= MaxCtr, a valid purpose, and root and chain of KeySize
// bytes. Every error wraps ErrBadState. b is not retained.
func UnmarshalState(b []byte) (*State, error) {
	var w stateWire
	if err := cbor.Unmarshal(b, MaxStateSize, &w); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadState, err)
	}
	defer clear(w.Root)
	defer clear(w.Chain)
	switch {
	case w.Version != stateVersion:
		return nil, fmt.Errorf("%w: version %d", ErrBadState, w.Version)
	case w.Ctr > MaxCtr:
		return nil, fmt.Errorf("%w: ctr out of range", ErrBadState)
	case len(w.Root) != KeySize:
		return nil, fmt.Errorf("%w: root is %d bytes", ErrBadState, len(w.Root))
	case len(w.Chain) != KeySize:
		return nil, fmt.Errorf("%w: chain is %d bytes", ErrBadState, len(w.Chain))
	}
	if err := checkPurpose(w.Purpose); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadState, err)
	}
	return &State{
		epoch:   w.Epoch,
		ctr:     w.Ctr,
		purpose: w.Purpose,
		root:    append(make([]byte, 0, KeySize), w.Root...),
		chain:   append(make([]byte, 0, KeySize), w.Chain...),
	}, nil
}

// chainKey computes HKDF(IKM = root, salt = nil, info = "chain:" decimal(epoch)).
func chainKey(root []byte, epoch uint64) ([]byte, error) {
	k, err := hkdf.Key(sha256.New, root, nil, "chain:"+strconv.FormatUint(epoch, 10), KeySize)
	if err != nil {
		return nil, fmt.Errorf("ratchet: chain: %w", err)
	}
	return k, nil
}

// checkPurpose enforces 1–MaxPurposeLen bytes of printable ASCII without
// spaces and without ';' (the separator of the key-schedule labels).
func checkPurpose(p string) error {
	if len(p) == 0 || len(p) > MaxPurposeLen {
		return fmt.Errorf("%w: length %d", ErrBadPurpose, len(p))
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c < 0x21 || c > 0x7e || c == ';' {
			return fmt.Errorf("%w: byte %d", ErrBadPurpose, i)
		}
	}
	return nil
}
