package keyschedule

import (
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/entropykem/entropykem/pkg/cohort"
)

// The cohort group key (schema/PROTOCOL.md §7.7):
//
//	seed_key    = HKDF(IKM = ss, salt = u64be(epoch),
//	                   info = "ekem/v1 group-seed;" cohort_id ";" aud)
//	sealed_seed = ChaCha20-Poly1305(seed_key, nonce = 12 zero bytes, g, ad = empty)
//	group_key   = HKDF(IKM = g ‖ HMAC(cohort_secret, "ekem/v1 group" ‖ H(g)),
//	                   salt = u64be(epoch), info = "group;" cohort_id ";" decimal(epoch))
//
// The issuer draws g, so it knows g, but not the cohort secret: it can seal
// the seed for every member and cannot compute group_key. Every member of
// the cohort holds the same cohort secret, so all compute the same key.

// Group labels, exactly as on the wire of the derivations.
const (
	LabelGroup     = "ekem/v1 group"
	LabelGroupSeed = "ekem/v1 group-seed;"
)

// GroupSeedSize is the size of a cohort's group seed g.
const GroupSeedSize = 32

// ErrGroupSeed is returned when a sealed group seed does not open under the
// ticket's ss: the ticket was not made for this device's key, or was
// altered (it cannot be, once its inclusion proof and root verified).
var ErrGroupSeed = errors.New("keyschedule: sealed group seed does not open")

// seedKey is HKDF(ss, salt = u64be(epoch), info = "ekem/v1 group-seed;"
// cohort_id ";" aud).
func seedKey(ss []byte, epoch uint64, cohortID, aud string) ([]byte, error) {
	if len(ss) != Size {
		return nil, fmt.Errorf("%w: ss of %d bytes", ErrInput, len(ss))
	}
	k, err := hkdf.Key(sha256.New, ss, U64(epoch), LabelGroupSeed+cohortID+";"+aud, Size)
	if err != nil {
		return nil, fmt.Errorf("keyschedule: group seed key: %w", err)
	}
	return k, nil
}

var groupNonce [chacha20poly1305.NonceSize]byte // seed_key seals one seed only

// SealGroupSeedTo seals seed (GroupSeedSize bytes) for the ticket whose ss
// is given, writing the 48-byte result into dst (len(dst) must be 48): the
// issuer fills a drafted body's field 12 in place.
func SealGroupSeedTo(dst, ss []byte, epoch uint64, cohortID, aud string, seed []byte) error {
	if len(seed) != GroupSeedSize || len(dst) != GroupSeedSize+chacha20poly1305.Overhead {
		return fmt.Errorf("%w: seed of %d bytes into %d", ErrInput, len(seed), len(dst))
	}
	k, err := seedKey(ss, epoch, cohortID, aud)
	if err != nil {
		return err
	}
	defer clear(k)
	aead, err := chacha20poly1305.New(k)
	if err != nil {
		return fmt.Errorf("keyschedule: %w", err)
	}
	aead.Seal(dst[:0], groupNonce[:], seed, nil)
	return nil
}

// OpenGroupSeed opens a ticket body's sealed group seed with the ticket's
// ss; ErrGroupSeed if it does not authenticate.
func OpenGroupSeed(ss []byte, epoch uint64, cohortID, aud string, sealed []byte) ([]byte, error) {
	if len(sealed) != GroupSeedSize+chacha20poly1305.Overhead {
		return nil, fmt.Errorf("%w: sealed seed of %d bytes", ErrInput, len(sealed))
	}
	k, err := seedKey(ss, epoch, cohortID, aud)
	if err != nil {
		return nil, err
	}
	defer clear(k)
	aead, err := chacha20poly1305.New(k)
	if err != nil {
		return nil, fmt.Errorf("keyschedule: %w", err)
	}
	g, err := aead.Open(nil, groupNonce[:], sealed, nil)
	if err != nil {
		return nil, ErrGroupSeed
	}
	return g, nil
}

// GroupMAC asks the cohort secret's holder (software or TPM) for
// HMAC(cohort_secret, "ekem/v1 group" ‖ H(g)).
func GroupMAC(c cohort.Secret, seed []byte) ([]byte, error) {
	if len(seed) != GroupSeedSize {
		return nil, fmt.Errorf("%w: group seed of %d bytes", ErrInput, len(seed))
	}
	h := sha256.Sum256(seed)
	m, err := c.MAC(append([]byte(LabelGroup), h[:]...))
	if err != nil {
		return nil, fmt.Errorf("keyschedule: group mac: %w", err)
	}
	if len(m) != Size {
		return nil, fmt.Errorf("keyschedule: group mac of %d bytes", len(m))
	}
	return m, nil
}

// GroupKeyFromMAC is group_key from g and GroupMAC's output. cohortID must
// already be a valid label.
func GroupKeyFromMAC(seed, groupMAC []byte, epoch uint64, cohortID string) ([]byte, error) {
	if len(seed) != GroupSeedSize || len(groupMAC) != Size {
		return nil, fmt.Errorf("%w: group seed of %d bytes, mac of %d", ErrInput, len(seed), len(groupMAC))
	}
	ikm := make([]byte, 0, GroupSeedSize+Size)
	ikm = append(append(ikm, seed...), groupMAC...)
	defer clear(ikm)
	k, err := hkdf.Key(sha256.New, ikm, U64(epoch), "group;"+cohortID+";"+strconv.FormatUint(epoch, 10), Size)
	if err != nil {
		return nil, fmt.Errorf("keyschedule: group key: %w", err)
	}
	return k, nil
}

// GroupKey derives the cohort's group key of epoch from g and the cohort
// secret.
func GroupKey(c cohort.Secret, seed []byte, epoch uint64, cohortID string) ([]byte, error) {
	m, err := GroupMAC(c, seed)
	if err != nil {
		return nil, err
	}
	defer clear(m)
	return GroupKeyFromMAC(seed, m, epoch, cohortID)
}
