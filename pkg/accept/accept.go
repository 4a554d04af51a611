// Package accept is the device's ticket acceptance as a pure function
// (schema/PROTOCOL.md §Device acceptance): given the device's state, its
// pinned issuer keys, the time, a Ticket and its epoch's signed root, it
// returns the next state and the derived material, or exactly one named
// rejection. It performs no I/O of its own; randomness for the device's
// next KEM key comes from crypto/rand, and the cohort secret is reached
// through the cohort.Secret interface.
package accept

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/merkle"
	"github.com/entropykem/entropykem/pkg/ratchet"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Policy holds the device's configurable acceptance bounds.
type Policy struct {
	// Skew is the clock skew allowed on both ends of a ticket's validity.
	Skew time.Duration
	// MaxJump is how many epochs past the last accepted one a ticket may
	// be (rule 5, fast-forward). Zero means DefaultMaxJump.
	MaxJump uint64
}

// DefaultMaxJump allows a device to have missed a thousand epochs.
const DefaultMaxJump = 1000

// Input is one acceptance attempt.
type Input struct {
	Ticket []byte // the Ticket message as received
	Root   []byte // the COSE_Sign1 EpochRoot of the ticket's epoch
	Pins   *signature.KeySet
	Now    time.Time
	Policy Policy
	Cohort cohort.Secret
	// Roots, if not nil, remembers roots whose signature was verified, so
	// the signature is checked once per epoch rather than once per ticket.
	Roots *RootCache
}

// Result is an accepted ticket: the device's next state and what it
// derived. EpochKey and the ratchet inside State are secret.
type Result struct {
	State      *State
	Body       *wire.TicketBody
	TicketHash []byte
	// Gap is true when the ticket does not directly follow the last
	// accepted one (missed epochs, or a prev that does not match);
	// PrevEpoch is then the last accepted epoch (0 if none).
	Gap       bool
	PrevEpoch uint64
	EpochKey  []byte
	Secrets   keyschedule.TicketSecrets
	// NextTag authenticates State.Next's public key under this ticket.
	NextTag []byte
}

// Accept applies the device acceptance rules to in, in order, against st.
// On any error st is unchanged and no state is returned. ErrDuplicate is
// harmless (a retained re-delivery) and needs no Status.
func Accept(st *State, in Input) (*Result, error) {
	t, body, root, parsed, err := decode(in)
	if err != nil {
		return nil, err
	}
	rootID := sha256.Sum256(in.Root)
	cached := in.Roots.verified(root.Epoch, rootID)
	if err := checkProof(t, body, root, cached); err != nil {
		return nil, err
	}
	if err := checkSignature(in, parsed, root, rootID, cached); err != nil {
		return nil, err
	}
	key, err := checkDevice(st, body)
	if err != nil {
		return nil, err
	}
	th := keyschedule.TicketHash(t.Body)
	if err := checkOrder(st, body, th, in.Now, in.Policy); err != nil {
		return nil, err
	}
	return derive(st, in, body, th, key)
}

// decode is rule 1: size and strict decoding of ticket and root, the root's
// COSE structure and algorithm, and a pinned kid.
func decode(in Input) (*wire.Ticket, *wire.TicketBody, *wire.EpochRoot, *signature.Parsed, error) {
	t, body, err := wire.ParseTicket(in.Ticket)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	parsed, err := signature.ParseSign1(in.Root)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("%w: root: %w", ErrMalformed, err)
	}
	root, err := wire.ParseEpochRoot(parsed.Payload)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("%w: root payload: %w", ErrMalformed, err)
	}
	if _, ok := in.Pins.Lookup(parsed.KID); !ok {
		return nil, nil, nil, nil, fmt.Errorf("%w: kid %x", ErrUnknownIssuerKey, parsed.KID)
	}
	return t, body, root, parsed, nil
}

// checkProof is the first half of rule 2: the ticket's body is a leaf of
// the tree whose root the epoch's root message names. In a streamed epoch
// (PROTOCOL.md §5.5) the path proves inclusion in the ticket's chunk,
// against that chunk's root, and the chunk roots must hash to the root;
// that last check is skipped for a root already verified and cached, which
// passed it.
func checkProof(t *wire.Ticket, body *wire.TicketBody, root *wire.EpochRoot, cached bool) error {
	if root.Epoch != body.Epoch {
		return fmt.Errorf("%w: root is for epoch %d, ticket for %d", ErrBadProof, root.Epoch, body.Epoch)
	}
	if root.TreeSize != t.TreeSize {
		return fmt.Errorf("%w: root tree size %d, proof says %d", ErrBadProof, root.TreeSize, t.TreeSize)
	}
	leaf := merkle.LeafHash(t.Body)
	if !root.Chunked() {
		if err := merkle.VerifyInclusion(t.LeafIndex, t.TreeSize, leaf, t.Path, root.Root); err != nil {
			return fmt.Errorf("%w: %w", ErrBadProof, err)
		}
		return nil
	}
	if err := merkle.VerifyChunkInclusion(t.LeafIndex, t.TreeSize, root.ChunkHeight, leaf, t.Path, root.ChunkRoots); err != nil {
		return fmt.Errorf("%w: %w", ErrBadProof, err)
	}
	if !cached {
		if err := merkle.CheckChunkRoots(root.ChunkRoots, root.Root); err != nil {
			return fmt.Errorf("%w: %w", ErrBadProof, err)
		}
	}
	return nil
}

// checkSignature is the second half of rule 2.
func checkSignature(in Input, parsed *signature.Parsed, root *wire.EpochRoot, id [32]byte, cached bool) error {
	if cached {
		return nil
	}
	if _, err := parsed.Verify(in.Pins); err != nil {
		return fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	in.Roots.add(root.Epoch, id)
	return nil
}

// checkDevice is rule 3: the ticket is for this device and encapsulated
// to one of its live keys.
func checkDevice(st *State, body *wire.TicketBody) (kem.PrivateKey, error) {
	if body.Aud != st.DeviceID {
		return nil, fmt.Errorf("%w: aud %q", ErrWrongAudience, body.Aud)
	}
	key := st.liveKey(body.PKHash)
	if key == nil {
		return nil, fmt.Errorf("%w: pk_hash %x", ErrWrongDeviceKey, body.PKHash[:8])
	}
	if key.Scheme().ID() != body.KEMAlg {
		return nil, fmt.Errorf("%w: ticket names %v for a %v key", ErrWrongDeviceKey, body.KEMAlg, key.Scheme().ID())
	}
	return key, nil
}

// checkOrder is rules 4 and 5: order against the last accepted ticket,
// freshness and the fast-forward bound.
func checkOrder(st *State, body *wire.TicketBody, th []byte, now time.Time, p Policy) error {
	switch {
	case body.Epoch < st.Epoch:
		return fmt.Errorf("%w: epoch %d after %d", ErrRollback, body.Epoch, st.Epoch)
	case body.Epoch == st.Epoch && bytes.Equal(th, st.TicketHash):
		return fmt.Errorf("%w: epoch %d", ErrDuplicate, body.Epoch)
	case body.Epoch == st.Epoch:
		return fmt.Errorf("%w: epoch %d", ErrEquivocation, body.Epoch)
	}
	skew := int64(p.Skew / time.Second)
	unix := now.Unix()
	if unix < int64(body.IssuedAt)-skew {
		return fmt.Errorf("%w: issued at %d, now %d", ErrNotYetValid, body.IssuedAt, unix)
	}
	if unix > int64(body.IssuedAt+body.TTL)+skew {
		return fmt.Errorf("%w: valid until %d, now %d", ErrExpired, body.IssuedAt+body.TTL, unix)
	}
	maxJump := p.MaxJump
	if maxJump == 0 {
		maxJump = DefaultMaxJump
	}
	if st.Epoch > 0 && body.Epoch-st.Epoch > maxJump {
		return fmt.Errorf("%w: epoch %d after %d, bound %d", ErrFastForward, body.Epoch, st.Epoch, maxJump)
	}
	return nil
}

// derive is rules 6 and 7: record a gap, decapsulate, derive, mix the
// ratchet and rotate the device's KEM key.
func derive(st *State, in Input, body *wire.TicketBody, th []byte, key kem.PrivateKey) (*Result, error) {
	ss, err := key.Decapsulate(body.Ciphertext)
	if err != nil {
		return nil, fmt.Errorf("accept: decapsulate: %w", err)
	}
	mix, err := keyschedule.CohortMix(in.Cohort, th)
	if err != nil {
		return nil, err
	}
	ek, err := keyschedule.EpochKey(ss, mix, body.Epoch, body.Purpose, body.Group)
	if err != nil {
		return nil, err
	}
	sec, err := keyschedule.DeriveTicketSecrets(ss, th)
	if err != nil {
		return nil, err
	}
	group, err := deriveGroup(st.Group, ss, body, in.Cohort)
	clear(ss)
	if err != nil {
		return nil, err
	}
	next := st.Clone()
	next.Group = group
	if err := advance(next, body, th, ek, key); err != nil {
		return nil, err
	}
	r := &Result{
		State: next, Body: body, TicketHash: th, EpochKey: ek, Secrets: sec,
		NextTag: sec.NextKeyTag(next.Next.PublicKey().Hash()),
	}
	r.Gap, r.PrevEpoch = gap(st, body)
	return r, nil
}

// gap reports whether body does not directly follow the last accepted
// ticket (rule 6): it follows directly if its epoch is the next one and
// prev names the last accepted ticket, or, for the first ticket, if prev is
// zero (the issuer's first ticket to this device, whatever its epoch: a
// device that registered late missed nothing).
func gap(st *State, body *wire.TicketBody) (bool, uint64) {
	var direct bool
	if st.TicketHash == nil {
		direct = bytes.Equal(body.Prev, make([]byte, wire.HashSize))
	} else {
		direct = body.Epoch == st.Epoch+1 && bytes.Equal(body.Prev, st.TicketHash)
	}
	return !direct, st.Epoch
}

// advance moves s (a clone) past the accepted ticket: last-ticket fields,
// the ratchet (init or mix), and the KEM keys (schema/PROTOCOL.md §8.1):
// the key the ticket used becomes current, every other key is deleted, and
// a fresh next key of the ticket's kem_alg is generated. A ticket to
// current therefore replaces an announced next key the issuer did not take
// (a Status it refused or never got), so rotation never stops on it.
func advance(s *State, body *wire.TicketBody, th, ek []byte, used kem.PrivateKey) error {
	var err error
	if s.Ratchet == nil {
		s.Ratchet, err = ratchet.Init(body.Epoch, ek, body.Purpose)
	} else {
		err = s.Ratchet.Mix(body.Epoch, ek)
	}
	if err != nil {
		return fmt.Errorf("accept: ratchet: %w", err)
	}
	s.Current = used
	if s.Next, err = used.Scheme().GenerateKey(); err != nil {
		return fmt.Errorf("accept: next device key: %w", err)
	}
	s.Epoch, s.TicketHash, s.IssuedAt, s.TTL = body.Epoch, th, body.IssuedAt, body.TTL
	return nil
}

// IsRejection reports whether err is one of the acceptance rules'
// rejections (as opposed to a local failure, or a harmless duplicate).
func IsRejection(err error) bool {
	r := ReasonOf(err)
	return r != ReasonNone && r != ReasonInternal && !errors.Is(err, ErrDuplicate)
}
