package signature

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"github.com/entropykem/entropykem/internal/avx"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
	"github.com/cloudflare/circl/sign/mldsa/mldsa87"
)

// PublicKey is a parsed ML-DSA public key. It keeps circl's unpacked form
// so verification does not re-parse the key (about 4x faster per verify).
// Exactly one of pk65, pk87 is set, matching alg.
type PublicKey struct {
	alg  Alg
	raw  []byte
	kid  [KIDSize]byte
	pk65 *mldsa65.PublicKey
	pk87 *mldsa87.PublicKey
}

// PrivateKey is an ML-DSA signing key, stored as its FIPS 204 seed ξ.
type PrivateKey struct {
	alg  Alg
	seed [SeedSize]byte
	sk65 *mldsa65.PrivateKey
	sk87 *mldsa87.PrivateKey
	pub  *PublicKey
}

// ParsePublicKey parses b, a FIPS 204 encoded public key (pkEncode) of alg.
// The size must be exact. Every byte string of the right size is a valid
// ML-DSA public key encoding (FIPS 204 §7.2), so no further check applies.
func ParsePublicKey(alg Alg, b []byte) (*PublicKey, error) {
	if !alg.Supported() {
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, alg)
	}
	if len(b) != alg.PublicKeySize() {
		return nil, fmt.Errorf("%w: %v public key is %d bytes, want %d", ErrInvalidKey, alg, len(b), alg.PublicKeySize())
	}
	k := &PublicKey{alg: alg, raw: bytes.Clone(b)}
	switch alg {
	case MLDSA65:
		k.pk65 = new(mldsa65.PublicKey)
		err := k.pk65.UnmarshalBinary(k.raw)
		avx.Clean() // before computeKID hashes: see internal/avx
		if err != nil {
			return nil, fmt.Errorf("%w: %v public key", ErrInvalidKey, alg)
		}
	case MLDSA87:
		k.pk87 = new(mldsa87.PublicKey)
		err := k.pk87.UnmarshalBinary(k.raw)
		avx.Clean() // before computeKID hashes: see internal/avx
		if err != nil {
			return nil, fmt.Errorf("%w: %v public key", ErrInvalidKey, alg)
		}
	}
	k.kid = computeKID(k.raw)
	return k, nil
}

// computeKID returns SHA-256(pk)[:KIDSize].
func computeKID(pk []byte) [KIDSize]byte {
	sum := sha256.Sum256(pk)
	var kid [KIDSize]byte
	copy(kid[:], sum[:KIDSize])
	return kid
}

// Alg returns the key's algorithm.
func (k *PublicKey) Alg() Alg { return k.alg }

// Bytes returns a copy of the FIPS 204 encoded public key.
func (k *PublicKey) Bytes() []byte { return bytes.Clone(k.raw) }

// KID returns a copy of the key id, SHA-256(Bytes())[:KIDSize].
func (k *PublicKey) KID() []byte { return bytes.Clone(k.kid[:]) }

// Equal reports whether k and o are the same key of the same algorithm.
// Two nil keys are equal; a nil and a non-nil key are not.
func (k *PublicKey) Equal(o *PublicKey) bool {
	if k == nil || o == nil {
		return k == o
	}
	return k.alg == o.alg && bytes.Equal(k.raw, o.raw)
}

// verify checks sig over msg with ML-DSA.Verify (FIPS 204 Algorithm 3)
// and an empty context string.
func (k *PublicKey) verify(msg, sig []byte) bool {
	if len(sig) != k.alg.SignatureSize() {
		return false
	}
	defer avx.Clean() // see internal/avx
	switch k.alg {
	case MLDSA65:
		return mldsa65.Verify(k.pk65, msg, nil, sig)
	case MLDSA87:
		return mldsa87.Verify(k.pk87, msg, nil, sig)
	default:
		return false
	}
}

// GenerateKey returns a new key of alg from a fresh seed ξ read from
// crypto/rand (FIPS 204 Algorithm 1, ML-DSA.KeyGen).
func GenerateKey(alg Alg) (*PrivateKey, error) {
	if !alg.Supported() {
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, alg)
	}
	var seed [SeedSize]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return nil, fmt.Errorf("signature: read random seed: %w", err)
	}
	k, err := NewKeyFromSeed(alg, seed[:])
	clear(seed[:])
	return k, err
}

// NewKeyFromSeed derives the key pair of alg from the 32-byte seed ξ
// (FIPS 204 Algorithm 6, ML-DSA.KeyGen_internal). The seed is the storage
// format of a private key; the caller may clear its copy afterwards.
func NewKeyFromSeed(alg Alg, seed []byte) (*PrivateKey, error) {
	if !alg.Supported() {
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, alg)
	}
	if len(seed) != SeedSize {
		return nil, fmt.Errorf("%w: seed is %d bytes, want %d", ErrInvalidKey, len(seed), SeedSize)
	}
	k := &PrivateKey{alg: alg}
	copy(k.seed[:], seed)
	var pkBytes []byte
	switch alg {
	case MLDSA65:
		var pk *mldsa65.PublicKey
		pk, k.sk65 = mldsa65.NewKeyFromSeed(&k.seed)
		pkBytes = pk.Bytes()
	case MLDSA87:
		var pk *mldsa87.PublicKey
		pk, k.sk87 = mldsa87.NewKeyFromSeed(&k.seed)
		pkBytes = pk.Bytes()
	}
	avx.Clean() // see internal/avx
	pub, err := ParsePublicKey(alg, pkBytes)
	if err != nil {
		return nil, err
	}
	k.pub = pub
	return k, nil
}

// Public returns the public half of k.
func (k *PrivateKey) Public() *PublicKey { return k.pub }

// Alg returns the key's algorithm.
func (k *PrivateKey) Alg() Alg { return k.alg }

// Seed returns a copy of the 32-byte seed ξ. It is secret.
func (k *PrivateKey) Seed() []byte { return bytes.Clone(k.seed[:]) }

// sign returns a hedged ML-DSA signature (FIPS 204 Algorithm 2 with fresh
// randomness rnd from crypto/rand, §3.4) over msg with an empty context.
func (k *PrivateKey) sign(msg []byte) ([]byte, error) {
	defer avx.Clean() // see internal/avx
	sig := make([]byte, k.alg.SignatureSize())
	var err error
	switch k.alg {
	case MLDSA65:
		err = mldsa65.SignTo(k.sk65, msg, nil, true, sig)
	case MLDSA87:
		err = mldsa87.SignTo(k.sk87, msg, nil, true, sig)
	default:
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, k.alg)
	}
	if err != nil {
		return nil, fmt.Errorf("signature: sign: %w", err)
	}
	return sig, nil
}
