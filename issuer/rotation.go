package issuer

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/trust"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Issuer signing-key rotation (schema/PROTOCOL.md §8.6).
//
// The operator announces the next key while the issuer is stopped
// (AnnounceKeyRotation, "ekem-issuer rotate-key"): the current key signs a
// wire.KeyRotation saying that the new key signs every epoch from From on,
// From = last issued epoch + 1 + overlap. The announcement is kept in the
// store and published retained on {prefix}/issuer/key/{new kid} at every
// connection, so devices learn the new key before its first root, and a
// device that was offline all along still learns it when it returns.
//
// Which key signs epoch e is decided by the stored announcements alone
// (keyChain.signerAt), never by which keys happen to be configured: the
// New key of the rotation with the largest From <= e; before the first
// rotation's From, that rotation's Old key; with no rotation at all,
// Config.Key. The issuer signs with whichever of Config.Key and
// Config.NextKey is that key, and refuses the epoch (ErrSigningKey) when
// neither is. So no root is ever signed by a retired key, nor by a new key
// before devices trust it.

// Errors of key rotation.
var (
	// ErrSigningKey: the key the stored key rotations require to sign an
	// epoch is neither Config.Key nor Config.NextKey, or a configured key
	// does not fit the stored rotations (see checkSigningKeys). Nothing is
	// issued.
	ErrSigningKey = errors.New("issuer: signing key does not match the stored key rotations")
	// ErrKeyRotation: AnnounceKeyRotation refused the rotation; the store
	// is unchanged.
	ErrKeyRotation = errors.New("issuer: key rotation refused")
)

// DefaultRotationOverlap is the default number of epochs between the
// announcement of a key rotation and the first epoch the new key signs:
// the epochs still signed by the current key while devices learn the new
// one.
const DefaultRotationOverlap = 3

// keyChain is the stored key rotations in order. loadRotations guarantees
// that each rotation's Old is the previous one's New, that From strictly
// increases, that no key appears twice, and that every announcement after
// the first verifies under the key it retires.
type keyChain []trust.Rotation

// signerAt returns the kid of the key that signs epoch e: the New key of
// the rotation with the largest From <= e, else the first rotation's Old
// key. ok is false when there is no rotation: then Config.Key signs every
// epoch.
func (c keyChain) signerAt(e uint64) (kid []byte, ok bool) {
	if len(c) == 0 {
		return nil, false
	}
	kid = c[0].Old
	for _, r := range c {
		if r.From <= e {
			kid = r.New.KID()
		}
	}
	return kid, true
}

// retiredAt reports whether a rotation away from kid applies at epoch e.
func (c keyChain) retiredAt(kid []byte, e uint64) bool {
	for _, r := range c {
		if bytes.Equal(r.Old, kid) && r.From <= e {
			return true
		}
	}
	return false
}

// announces reports whether kid is the New key of a stored rotation.
func (c keyChain) announces(kid []byte) bool {
	for _, r := range c {
		if bytes.Equal(r.New.KID(), kid) {
			return true
		}
	}
	return false
}

// contains reports whether kid is one of the chain's keys.
func (c keyChain) contains(kid []byte) bool {
	return len(c) > 0 && (bytes.Equal(c[0].Old, kid) || c.announces(kid))
}

// pending returns the first rotation that has not taken effect once epoch
// last is issued (From > last), or nil.
func (c keyChain) pending(last uint64) *trust.Rotation {
	for k := range c {
		if c[k].From > last {
			return &c[k]
		}
	}
	return nil
}

// parseRotation decodes a stored announcement without verifying its
// signature: a COSE_Sign1 whose payload is a valid wire.KeyRotation.
func parseRotation(signed []byte) (trust.Rotation, error) {
	p, err := signature.ParseSign1(signed)
	if err != nil {
		return trust.Rotation{}, err
	}
	kr, err := wire.ParseKeyRotation(p.Payload)
	if err != nil {
		return trust.Rotation{}, err
	}
	next, err := signature.ParsePublicKey(kr.NewAlg, kr.NewKey)
	if err != nil {
		return trust.Rotation{}, err
	}
	if bytes.Equal(next.KID(), p.KID) {
		return trust.Rotation{}, fmt.Errorf("key %x rotates to itself", p.KID)
	}
	return trust.Rotation{Signed: bytes.Clone(signed), Old: bytes.Clone(p.KID), New: next, From: kr.FromEpoch}, nil
}

// loadRotations reads and validates the stored key rotations (a missing
// bucket is none). Each must parse (parseRotation) and the whole must be
// one chain (see keyChain); the first announcement's signature is verified
// too when its signer is among known. Any failure is ErrStoreCorrupt.
func loadRotations(tx ReadTx, known ...*signature.PublicKey) (keyChain, error) {
	stored, err := tx.Rotations()
	if err != nil || len(stored) == 0 {
		return nil, err
	}
	if len(stored) > trust.MaxRotations {
		return nil, fmt.Errorf("%w: more than %d key rotations", ErrStoreCorrupt, trust.MaxRotations)
	}
	var c keyChain
	for n, v := range stored {
		seq := n + 1
		r, err := parseRotation(v)
		if err != nil {
			return nil, fmt.Errorf("%w: key rotation %d: %w", ErrStoreCorrupt, seq, err)
		}
		if n := len(c); n > 0 {
			prev := c[n-1]
			if !bytes.Equal(r.Old, prev.New.KID()) || r.From <= prev.From {
				return nil, fmt.Errorf("%w: key rotation %d does not follow the previous one (key %x from epoch %d after key %x from epoch %d)",
					ErrStoreCorrupt, seq, r.New.KID(), r.From, prev.New.KID(), prev.From)
			}
		}
		if c.contains(r.New.KID()) {
			return nil, fmt.Errorf("%w: key rotation %d: key %x appears twice", ErrStoreCorrupt, seq, r.New.KID())
		}
		c = append(c, r)
	}
	// Verify the announcements as a device does (trust.Load): from the
	// first rotation's Old key if it is known, else from its New key.
	pin, signed := c[0].New, make([][]byte, 0, len(c))
	for _, r := range c[1:] {
		signed = append(signed, r.Signed)
	}
	for _, k := range known {
		if k != nil && bytes.Equal(k.KID(), c[0].Old) {
			pin, signed = k, append([][]byte{c[0].Signed}, signed...)
		}
	}
	pins, err := signature.NewKeySet(pin)
	if err != nil {
		return nil, fmt.Errorf("%w: key rotations: %w", ErrStoreCorrupt, err)
	}
	if _, err := trust.Load(pins, signed); err != nil {
		return nil, fmt.Errorf("%w: key rotations: %w", ErrStoreCorrupt, err)
	}
	return c, nil
}

// StoredRotations returns the key rotations stored in st, oldest first,
// validated as loadRotations does.
func StoredRotations(st Store) ([]trust.Rotation, error) {
	var c keyChain
	err := st.View(func(tx ReadTx) error {
		var err error
		c, err = loadRotations(tx)
		return err
	})
	return c, err
}

// RotationInfo describes a key rotation AnnounceKeyRotation stored.
type RotationInfo struct {
	OldKID, NewKID []byte
	// From is the first epoch the new key signs; LastEpoch the last epoch
	// issued when the rotation was announced. The epochs in between are
	// the overlap, still signed by the old key.
	From, LastEpoch uint64
	// Signed is the announcement: a COSE_Sign1 by the old key over a
	// wire.KeyRotation.
	Signed []byte
}

// AnnounceKeyRotation stores the announcement that next takes over from
// current as the issuer's signing key, from epoch last issued + 1 +
// overlap on. The issuer must be stopped (the store is locked while it
// runs); the store must exist. It refuses, with an error wrapping
// ErrKeyRotation and the store file unchanged, when overlap is 0, when
// current is not the key that must sign the next epoch (under the stored
// rotations; with none, the key that signed the last root), when a stored
// rotation has not taken effect yet, when next is current or any key the
// issuer used before (devices refuse a key they already knew), or when
// trust.MaxRotations rotations are stored. The announcement is verified as
// a device will before it is stored. The issuer then needs
// Config.NextKey = next's secret key from its next start until the epoch
// From is issued.
func AnnounceKeyRotation(storePath string, current *signature.PrivateKey, next *signature.PublicKey, overlap uint64, now time.Time) (RotationInfo, error) {
	refusal := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrKeyRotation, fmt.Sprintf(format, a...))
	}
	refuse := func(format string, a ...any) (RotationInfo, error) { return RotationInfo{}, refusal(format, a...) }
	switch {
	case current == nil:
		return refuse("no current key")
	case next == nil:
		return refuse("no new key")
	case overlap < 1:
		return refuse("overlap must be at least 1 epoch, got %d", overlap)
	}
	curKID, nextKID := current.Public().KID(), next.KID()
	if bytes.Equal(curKID, nextKID) {
		return refuse("the new key is the current key (kid %x)", curKID)
	}
	if _, err := os.Stat(storePath); err != nil {
		return RotationInfo{}, fmt.Errorf("issuer: store %s: %w", storePath, err)
	}
	st, err := OpenStore(storePath, false)
	if err != nil {
		return RotationInfo{}, err
	}
	defer st.Close()
	var info RotationInfo
	err = st.Update(func(tx Tx) error {
		last, err := tx.LastEpoch()
		if err != nil {
			return err
		}
		chain, err := loadRotations(tx, current.Public())
		if err != nil {
			return err
		}
		if p := chain.pending(last); p != nil {
			return refusal("the rotation to key %x from epoch %d has not taken effect yet (last issued epoch %d)", p.New.KID(), p.From, last)
		}
		if want, ok := chain.signerAt(last + 1); ok && !bytes.Equal(want, curKID) {
			return refusal("key %x is not the issuer's current key: epoch %d is to be signed by key %x", curKID, last+1, want)
		}
		if len(chain) == 0 {
			if kid, found, err := lastRootKID(tx, last, current.Public()); err != nil {
				return err
			} else if found && !bytes.Equal(kid, curKID) {
				return refusal("key %x is not the issuer's current key: the root of epoch %d is signed by key %x", curKID, last, kid)
			}
		}
		if chain.contains(nextKID) {
			return refusal("key %x was the issuer's key before; devices refuse a key they already know", nextKID)
		}
		if len(chain) >= trust.MaxRotations {
			return refusal("%d key rotations are stored, the most a device learns; provision devices with a new key instead", len(chain))
		}
		if last+1 > wire.MaxEpoch || overlap > wire.MaxEpoch-last-1 {
			return refusal("overlap %d after epoch %d goes beyond the last epoch %d", overlap, last, uint64(wire.MaxEpoch))
		}
		from := last + 1 + overlap
		signed, err := trust.Sign(current, next, from, unixSeconds(now))
		if err != nil {
			return fmt.Errorf("issuer: sign key rotation: %w", err)
		}
		// Belt and braces: a device trusting current learns exactly this.
		if err := verifyAnnouncement(signed, current.Public(), next, from); err != nil {
			return err
		}
		if err := tx.AddRotation(signed); err != nil {
			return err
		}
		// The chain as the issuer will load it, with the new announcement.
		if _, err := loadRotations(tx, current.Public()); err != nil {
			return fmt.Errorf("issuer: key rotation not stored: %w", err)
		}
		info = RotationInfo{OldKID: curKID, NewKID: nextKID, From: from, LastEpoch: last, Signed: signed}
		return nil
	})
	if err != nil {
		return RotationInfo{}, err
	}
	return info, nil
}

// verifyAnnouncement checks that a device trusting only old learns from
// signed that next signs from epoch from on.
func verifyAnnouncement(signed []byte, old, next *signature.PublicKey, from uint64) error {
	pins, err := signature.NewKeySet(old)
	if err != nil {
		return err
	}
	t, err := trust.New(pins)
	if err != nil {
		return err
	}
	_, r, err := t.Learn(signed)
	if err != nil {
		return fmt.Errorf("issuer: key rotation does not verify: %w", err)
	}
	if !bytes.Equal(r.Old, old.KID()) || !r.New.Equal(next) || r.From != from {
		return fmt.Errorf("issuer: key rotation does not say what was signed")
	}
	return nil
}

// lastRootKID returns the kid that signed the stored root of epoch last,
// and whether there is one. A root that names current's kid must verify
// under it.
func lastRootKID(tx ReadTx, last uint64, current *signature.PublicKey) ([]byte, bool, error) {
	root, err := tx.Root(last)
	if err != nil || root == nil {
		return nil, false, err
	}
	p, err := signature.ParseSign1(root)
	if err != nil {
		return nil, false, fmt.Errorf("%w: root of epoch %d: %w", ErrStoreCorrupt, last, err)
	}
	if bytes.Equal(p.KID, current.KID()) {
		ks, err := signature.NewKeySet(current)
		if err != nil {
			return nil, false, err
		}
		if _, err := p.Verify(ks); err != nil {
			return nil, false, fmt.Errorf("%w: root of epoch %d: %w", ErrStoreCorrupt, last, err)
		}
	}
	return bytes.Clone(p.KID), true, nil
}

// checkSigningKeys checks the configured keys against the stored
// rotations once epoch last is issued, so a misconfigured start fails at
// once rather than at the switch. With no rotation, Config.Key signs
// every epoch and Config.NextKey must be nil (a next key needs its
// announcement: run rotate-key first). Otherwise, with e = last + 1:
//
//   - NextKey, if set, must be the New key of a stored rotation and not
//     retired at e (it signs some epoch from e on);
//   - Key must be a key of the chain, and not retired at e unless it is the
//     Old key of the rotation taking effect at e exactly (an issuer
//     restarted just before the switch with both keys); a retired key must
//     not stay loaded;
//   - the key that signs e (keyChain.signerAt) must be Key or NextKey.
//
// Every error wraps ErrSigningKey.
func checkSigningKeys(cfg Config, c keyChain, last uint64) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrSigningKey, fmt.Sprintf(format, a...))
	}
	e := last + 1
	if len(c) == 0 {
		if cfg.NextKey != nil {
			return bad("next key %x is not announced: store a key rotation first (ekem-issuer rotate-key)", cfg.NextKey.Public().KID())
		}
		return nil
	}
	if cfg.NextKey != nil {
		nk := cfg.NextKey.Public().KID()
		if !c.announces(nk) {
			return bad("next key %x is not announced by any stored key rotation", nk)
		}
		if c.retiredAt(nk, e) {
			return bad("next key %x is retired: it signs no epoch from %d on", nk, e)
		}
	}
	kk := cfg.Key.Public().KID()
	if !c.contains(kk) {
		return bad("key %x is none of the issuer keys in the stored key rotations", kk)
	}
	if c.retiredAt(kk, e) {
		if p := c.pending(last); p == nil || p.From != e || !bytes.Equal(p.Old, kk) {
			want, _ := c.signerAt(e)
			return bad("key %x is retired: it signs no epoch from %d on; run with key %x as the signing key and no next key", kk, e, want)
		}
	}
	_, _, err := signerFor(cfg, c, e)
	return err
}

// signerFor returns the configured key that signs epoch e and its kid, or
// an error wrapping ErrSigningKey naming the key and the epoch when
// neither Key nor NextKey is the one the rotations require.
func signerFor(cfg Config, c keyChain, e uint64) (*signature.PrivateKey, []byte, error) {
	kid, ok := c.signerAt(e)
	if !ok {
		return cfg.Key, cfg.Key.Public().KID(), nil
	}
	for _, k := range []*signature.PrivateKey{cfg.Key, cfg.NextKey} {
		if k != nil && bytes.Equal(k.Public().KID(), kid) {
			return k, kid, nil
		}
	}
	next := "none"
	if cfg.NextKey != nil {
		next = fmt.Sprintf("%x", cfg.NextKey.Public().KID())
	}
	return nil, kid, fmt.Errorf("%w: epoch %d must be signed by key %x, which is not configured (key %x, next key %s)",
		ErrSigningKey, e, kid, cfg.Key.Public().KID(), next)
}
