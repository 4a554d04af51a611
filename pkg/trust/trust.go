// Package trust tracks which issuer signing keys a device or monitor
// trusts for each epoch: the keys it was provisioned with, and successors
// announced by signed KeyRotation messages (schema/PROTOCOL.md §8.6). It is
// pure: no network, files or clock.
package trust

import (
	"bytes"
	"errors"
	"fmt"
	"slices"

	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Errors of Learn and Load.
var (
	// ErrUnverified: the announcement is malformed, or not signed
	// by a key that may announce a rotation (a pinned or learned key that
	// has not itself been rotated away).
	ErrUnverified = errors.New("trust: key rotation not verified")
	// ErrConflict: a key that already announced its successor
	// announced a different one. Both announcements are signed: the issuer
	// key equivocates, and an operator must look.
	ErrConflict = errors.New("trust: conflicting key rotation")
	// ErrLimit: more than MaxRotations rotations; the device must
	// be provisioned with the current issuer key.
	ErrLimit = errors.New("trust: too many key rotations")
	// ErrKnown: the announcement was already learned (the same
	// content, e.g. a retained message re-delivered). Harmless.
	ErrKnown = errors.New("trust: key rotation already known")
)

// MaxRotations bounds the rotations a Trust holds.
const MaxRotations = 16

// Rotation is one verified KeyRotation: roots of epochs from From on are
// signed by New, and the key whose kid is Old signs no epoch from From on.
type Rotation struct {
	// Signed is the COSE_Sign1 as published. It is self-authenticating, so
	// it is also the storage form (Load verifies it again).
	Signed []byte
	Old    []byte // kid of the signer, the key being retired
	New    *signature.PublicKey
	From   uint64
}

// Trust is the issuer keys a device or monitor trusts, per epoch: the keys
// provisioned (pinned) and those learned from verified KeyRotation
// announcements. A key is trusted for epoch e when it is pinned, or learned
// from a rotation with From <= e, and no rotation away from it has
// From <= e. A Trust is immutable; Learn returns a new one.
type Trust struct {
	pins      []*signature.PublicKey
	rotations []Rotation
}

// New returns the trust of a device provisioned with pins.
func New(pins *signature.KeySet) (*Trust, error) {
	if pins.Len() == 0 {
		return nil, fmt.Errorf("trust: trust needs at least one pinned issuer key")
	}
	return &Trust{pins: pins.Keys()}, nil
}

// Load rebuilds a Trust from its pins and the announcements Signed
// returned, verifying each again in order. Any failure is an error: the
// stored announcements are not what this device learned.
func Load(pins *signature.KeySet, signed [][]byte) (*Trust, error) {
	t, err := New(pins)
	if err != nil {
		return nil, err
	}
	for i, s := range signed {
		if t, _, err = t.Learn(s); err != nil {
			return nil, fmt.Errorf("trust: stored key rotation %d: %w", i, err)
		}
	}
	return t, nil
}

// Signed returns the learned announcements in the order learned.
func (t *Trust) Signed() [][]byte {
	out := make([][]byte, len(t.rotations))
	for i, r := range t.rotations {
		out[i] = bytes.Clone(r.Signed)
	}
	return out
}

// Rotations returns the learned rotations in the order learned.
func (t *Trust) Rotations() []Rotation { return append([]Rotation(nil), t.rotations...) }

// KeysAt returns the keys trusted to sign the root of epoch e.
func (t *Trust) KeysAt(e uint64) *signature.KeySet {
	var keys []*signature.PublicKey
	for _, k := range t.pins {
		if !t.retiredAt(k.KID(), e) {
			keys = append(keys, k)
		}
	}
	for _, r := range t.rotations {
		if r.From <= e && !t.retiredAt(r.New.KID(), e) {
			keys = append(keys, r.New)
		}
	}
	s, err := signature.NewKeySet(keys...)
	if err != nil {
		// Learn refuses a key already known, so kids are distinct.
		panic("trust: trust holds a key twice: " + err.Error())
	}
	return s
}

// retiredAt reports whether a rotation away from kid applies at epoch e.
func (t *Trust) retiredAt(kid []byte, e uint64) bool {
	for _, r := range t.rotations {
		if bytes.Equal(r.Old, kid) && r.From <= e {
			return true
		}
	}
	return false
}

// known returns the key with this kid, pinned or learned, and whether it
// has announced its successor already.
func (t *Trust) known(kid []byte) (k *signature.PublicKey, rotated *Rotation) {
	for _, p := range t.pins {
		if bytes.Equal(p.KID(), kid) {
			k = p
		}
	}
	for i, r := range t.rotations {
		if bytes.Equal(r.New.KID(), kid) {
			k = r.New
		}
		if bytes.Equal(r.Old, kid) {
			rotated = &t.rotations[i]
		}
	}
	return k, rotated
}

// Learn verifies a KeyRotation COSE_Sign1 and returns the Trust that
// includes it. The signer must be a known key (pinned or learned) that has
// not announced a successor yet; the new key must be unknown. Errors wrap
// ErrKnown (the same announcement again: harmless),
// ErrConflict (its signer already announced another successor),
// ErrUnverified or ErrLimit; t is never changed.
func (t *Trust) Learn(signed []byte) (*Trust, *Rotation, error) {
	p, err := signature.ParseSign1(signed)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrUnverified, err)
	}
	signer, rotated := t.known(p.KID)
	if signer == nil {
		return nil, nil, fmt.Errorf("%w: signer kid %x is not a trusted issuer key", ErrUnverified, p.KID)
	}
	ks, err := signature.NewKeySet(signer)
	if err != nil {
		return nil, nil, err
	}
	if _, err := p.Verify(ks); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrUnverified, err)
	}
	kr, err := wire.ParseKeyRotation(p.Payload)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrUnverified, err)
	}
	if rotated != nil {
		// ML-DSA signatures are hedged: the same announcement signed
		// again has other bytes. Only other content is a conflict.
		if bytes.Equal(rotated.New.Bytes(), kr.NewKey) && rotated.New.Alg() == kr.NewAlg && rotated.From == kr.FromEpoch {
			return nil, nil, ErrKnown
		}
		return nil, nil, fmt.Errorf("%w: key %x announced %x from epoch %d already", ErrConflict,
			p.KID, rotated.New.KID(), rotated.From)
	}
	next, err := signature.ParsePublicKey(kr.NewAlg, kr.NewKey)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: new key: %w", ErrUnverified, err)
	}
	if k, _ := t.known(next.KID()); k != nil {
		return nil, nil, fmt.Errorf("%w: new key %x is already known", ErrUnverified, next.KID())
	}
	if len(t.rotations) >= MaxRotations {
		return nil, nil, fmt.Errorf("%w: %d learned", ErrLimit, len(t.rotations))
	}
	r := Rotation{Signed: bytes.Clone(signed), Old: bytes.Clone(p.KID), New: next, From: kr.FromEpoch}
	n := &Trust{pins: t.pins, rotations: append(append([]Rotation(nil), t.rotations...), r)}
	return n, &r, nil
}

// MaxHeld bounds the announcements a caller of LearnAll keeps because
// they may verify later.
const MaxHeld = 2 * MaxRotations

// Outcome is what LearnAll made of one announcement.
type Outcome struct {
	Key      string    // the announcement's key in LearnAll's map
	Rotation *Rotation // set when it was learned
	Err      error     // set when it was not (Learn's errors)
}

// Retry reports whether an announcement not learned may verify later:
// its signer may be announced by one still to come. The caller keeps it
// (bounded by MaxHeld) and passes it to LearnAll again.
func (o Outcome) Retry() bool { return errors.Is(o.Err, ErrUnverified) }

// LearnAll learns every announcement of msgs it can (keyed by the caller,
// e.g. by MQTT topic), retrying those not verified after each one learned,
// so that a chain delivered in any order is learned. It returns the
// resulting Trust and one Outcome per announcement, in key order; msgs and
// t are not changed.
func (t *Trust) LearnAll(msgs map[string][]byte) (*Trust, []Outcome) {
	keys := make([]string, 0, len(msgs))
	for k := range msgs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make(map[string]Outcome, len(keys))
	for progress := true; progress; {
		progress = false
		for _, k := range keys {
			if o, done := out[k]; done && !o.Retry() {
				continue
			}
			next, r, err := t.Learn(msgs[k])
			if err == nil {
				t, progress = next, true
			}
			out[k] = Outcome{Key: k, Rotation: r, Err: err}
		}
	}
	outcomes := make([]Outcome, len(keys))
	for i, k := range keys {
		outcomes[i] = out[k]
	}
	return t, outcomes
}

// Sign makes the announcement that old hands over to next from
// epoch from on: a KeyRotation signed by old.
func Sign(old *signature.PrivateKey, next *signature.PublicKey, from, issuedAt uint64) ([]byte, error) {
	if bytes.Equal(old.Public().KID(), next.KID()) {
		return nil, fmt.Errorf("trust: a key cannot rotate to itself")
	}
	payload, err := (&wire.KeyRotation{Version: wire.Version, FromEpoch: from, NewAlg: next.Alg(),
		NewKey: next.Bytes(), IssuedAt: issuedAt}).Marshal()
	if err != nil {
		return nil, err
	}
	return signature.Sign1(old, payload)
}
