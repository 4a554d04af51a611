// Package kem is entropykem's closed allow-list of key encapsulation
// mechanisms: ML-KEM-1024 (the default), ML-KEM-768 and X-Wing, behind one
// small interface.
//
// ML-KEM is specified in FIPS 203. X-Wing (ML-KEM-768 + X25519) is specified
// in draft-connolly-cfrg-xwing-kem. On the wire every algorithm is named by
// its HPKE KEM identifier (RFC 9180 §7.1 registry, values assigned by
// draft-ietf-hpke-pq and draft-connolly-cfrg-xwing-kem): 0x0041 ML-KEM-768,
// 0x0042 ML-KEM-1024, 0x647a X-Wing.
//
// A private key is stored as its seed only: the 64-byte d‖z of FIPS 203
// ML-KEM.KeyGen_internal (Algorithm 16) for ML-KEM, the 32-byte decapsulation
// key seed of X-Wing. Every encapsulation key is validated when parsed, as
// FIPS 203 §7.2 requires, before it can be used.
//
// After every circl call, internal/avx.Clean clears the upper vector
// registers that circl's AVX2 code leaves dirty, which otherwise slows the
// SHA-256 that follows by more than an order of magnitude on AMD CPUs.
//
// The arithmetic is github.com/cloudflare/circl; its randomness comes from
// crypto/rand, so testing/cryptotest.SetGlobalRandom makes it deterministic.
package kem

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"github.com/entropykem/entropykem/internal/avx"

	circl "github.com/cloudflare/circl/kem"
	"github.com/cloudflare/circl/kem/mlkem/mlkem1024"
	"github.com/cloudflare/circl/kem/mlkem/mlkem768"
	"github.com/cloudflare/circl/kem/xwing"
)

// ID identifies a KEM on the wire by its HPKE KEM identifier.
type ID uint16

// The allow-list. Any other ID is rejected by Lookup.
const (
	// MLKEM768 is ML-KEM-768 (FIPS 203), HPKE KEM id 0x0041.
	MLKEM768 ID = 0x0041
	// MLKEM1024 is ML-KEM-1024 (FIPS 203), HPKE KEM id 0x0042.
	MLKEM1024 ID = 0x0042
	// XWing is X-Wing, ML-KEM-768 + X25519
	// (draft-connolly-cfrg-xwing-kem), HPKE KEM id 0x647a.
	XWing ID = 0x647a
	// Default is the KEM used unless configured otherwise.
	Default = MLKEM1024
)

// SharedKeySize is the size in bytes of the shared secret of every KEM in
// the allow-list.
const SharedKeySize = 32

// Sentinel errors. Returned errors wrap exactly one of them; use errors.Is.
var (
	// ErrUnsupported: the ID is not in the allow-list.
	ErrUnsupported = errors.New("kem: unsupported algorithm")
	// ErrInvalidPublicKey: wrong length, or the encapsulation key fails the
	// FIPS 203 §7.2 modulus check.
	ErrInvalidPublicKey = errors.New("kem: invalid encapsulation key")
	// ErrInvalidCiphertext: the ciphertext has the wrong length.
	ErrInvalidCiphertext = errors.New("kem: invalid ciphertext")
	// ErrInvalidSeed: the private key seed has the wrong length.
	ErrInvalidSeed = errors.New("kem: invalid seed")
)

// String returns the algorithm's name, or "kem(0x....)" for an ID outside
// the allow-list.
func (id ID) String() string {
	switch id {
	case MLKEM768:
		return "ML-KEM-768"
	case MLKEM1024:
		return "ML-KEM-1024"
	case XWing:
		return "X-Wing"
	default:
		return fmt.Sprintf("kem(0x%04x)", uint16(id))
	}
}

// IDs returns the allow-list, default first.
func IDs() []ID { return []ID{MLKEM1024, MLKEM768, XWing} }

// Scheme is one KEM of the allow-list.
type Scheme interface {
	// ID returns the HPKE KEM identifier.
	ID() ID
	// PublicKeySize is the length of an encoded encapsulation key.
	PublicKeySize() int
	// CiphertextSize is the length of a ciphertext.
	CiphertextSize() int
	// SeedSize is the length of a private key seed: 64 (d‖z, FIPS 203) for
	// ML-KEM, 32 for X-Wing.
	SeedSize() int
	// SharedKeySize is the length of the shared secret, 32.
	SharedKeySize() int
	// ParsePublicKey decodes and validates an encapsulation key. b must
	// have exactly PublicKeySize bytes, and the ML-KEM key (for X-Wing,
	// its ML-KEM-768 part) must pass the FIPS 203 §7.2 modulus check
	// ByteEncode12(ByteDecode12(ek)) == ek, that is every coefficient is
	// below q = 3329. Errors wrap ErrInvalidPublicKey. b is not retained.
	//
	// The X25519 part of an X-Wing key is not checked: any 32 bytes are a
	// valid X25519 public key (RFC 7748), as draft-connolly-cfrg-xwing-kem
	// specifies.
	ParsePublicKey(b []byte) (PublicKey, error)
	// NewPrivateKey derives the key pair deterministically from seed:
	// FIPS 203 ML-KEM.KeyGen_internal(d, z) with seed = d‖z for ML-KEM,
	// the X-Wing key derivation for X-Wing. seed must have exactly
	// SeedSize bytes, else the error wraps ErrInvalidSeed. seed is copied.
	NewPrivateKey(seed []byte) (PrivateKey, error)
	// GenerateKey returns a key pair from a fresh seed read from
	// crypto/rand.
	GenerateKey() (PrivateKey, error)
}

// PublicKey is a validated encapsulation key.
type PublicKey interface {
	// Scheme returns the key's KEM.
	Scheme() Scheme
	// Bytes returns a copy of the encoded encapsulation key.
	Bytes() []byte
	// Hash returns a copy of the key's pk_hash, SHA-256 of Bytes(),
	// computed once when the key was parsed or derived.
	Hash() []byte
	// Encapsulate returns a fresh ciphertext and its 32-byte shared
	// secret, with randomness from crypto/rand (FIPS 203 ML-KEM.Encaps,
	// or X-Wing Encapsulate).
	Encapsulate() (ct, ss []byte, err error)
	// EncapsulateTo is Encapsulate writing into ct (exactly CiphertextSize
	// bytes) and ss (exactly SharedKeySize bytes) instead of allocating:
	// an issuer encapsulates straight into the ticket it is encoding.
	EncapsulateTo(ct, ss []byte) error
}

// PrivateKey is a decapsulation key.
type PrivateKey interface {
	// Scheme returns the key's KEM.
	Scheme() Scheme
	// Seed returns a copy of the seed, the private key's storage format.
	Seed() []byte
	// PublicKey returns the matching encapsulation key.
	PublicKey() PublicKey
	// Decapsulate returns the shared secret in ct. ct must have exactly
	// CiphertextSize bytes, else the error wraps ErrInvalidCiphertext. Any
	// ciphertext of the right length yields a shared secret: ML-KEM uses
	// implicit rejection (FIPS 203 Algorithm 18), so a forged or corrupted
	// ciphertext gives an unrelated pseudorandom secret, not an error.
	Decapsulate(ct []byte) (ss []byte, err error)
}

// PublicKeyHash returns SHA-256 of an encoded encapsulation key: the
// protocol's pk_hash.
func PublicKeyHash(pk []byte) []byte {
	h := sha256.Sum256(pk)
	return h[:]
}

var (
	mlkem768Scheme  = &scheme{id: MLKEM768, c: mlkem768.Scheme()}
	mlkem1024Scheme = &scheme{id: MLKEM1024, c: mlkem1024.Scheme()}
	xwingScheme     = &scheme{id: XWing, c: xwing.Scheme()}
)

// Lookup returns the scheme for id. An ID outside the allow-list gives an
// error wrapping ErrUnsupported.
func Lookup(id ID) (Scheme, error) {
	switch id {
	case MLKEM768:
		return mlkem768Scheme, nil
	case MLKEM1024:
		return mlkem1024Scheme, nil
	case XWing:
		return xwingScheme, nil
	default:
		return nil, fmt.Errorf("kem: %v: %w", id, ErrUnsupported)
	}
}

// scheme adapts one circl KEM. circl's ML-KEM public key unpacking performs
// the FIPS 203 §7.2 modulus check (and X-Wing's applies it to its ML-KEM-768
// part); TestModulusCheck keeps that property under test.
type scheme struct {
	id ID
	c  circl.Scheme
}

func (s *scheme) ID() ID              { return s.id }
func (s *scheme) PublicKeySize() int  { return s.c.PublicKeySize() }
func (s *scheme) CiphertextSize() int { return s.c.CiphertextSize() }
func (s *scheme) SeedSize() int       { return s.c.SeedSize() }
func (s *scheme) SharedKeySize() int  { return SharedKeySize }

func (s *scheme) ParsePublicKey(b []byte) (PublicKey, error) {
	if len(b) != s.PublicKeySize() {
		return nil, fmt.Errorf("kem: %v encapsulation key is %d bytes, want %d: %w",
			s.id, len(b), s.PublicKeySize(), ErrInvalidPublicKey)
	}
	pk, err := s.c.UnmarshalBinaryPublicKey(b)
	avx.Clean()
	if err != nil {
		return nil, fmt.Errorf("kem: %v encapsulation key fails the FIPS 203 modulus check: %w",
			s.id, ErrInvalidPublicKey)
	}
	return newPublicKey(s, pk, append([]byte(nil), b...)), nil
}

func (s *scheme) NewPrivateKey(seed []byte) (PrivateKey, error) {
	if len(seed) != s.SeedSize() {
		return nil, fmt.Errorf("kem: %v seed is %d bytes, want %d: %w",
			s.id, len(seed), s.SeedSize(), ErrInvalidSeed)
	}
	seed = append([]byte(nil), seed...)
	pk, sk := s.c.DeriveKeyPair(seed) // cannot panic: length checked above
	b, err := pk.MarshalBinary()
	avx.Clean() // before newPublicKey hashes b
	if err != nil {
		return nil, fmt.Errorf("kem: %v: encoding encapsulation key: %w", s.id, err)
	}
	return &privateKey{
		s:    s,
		sk:   sk,
		seed: seed,
		pub:  newPublicKey(s, pk, b),
	}, nil
}

func (s *scheme) GenerateKey() (PrivateKey, error) {
	seed := make([]byte, s.SeedSize())
	if _, err := rand.Read(seed); err != nil {
		return nil, fmt.Errorf("kem: %v: reading seed: %w", s.id, err)
	}
	return s.NewPrivateKey(seed)
}

type publicKey struct {
	s  *scheme
	pk circl.PublicKey
	b  []byte // the validated encoding, never exposed
	h  [sha256.Size]byte
}

// newPublicKey takes ownership of b.
func newPublicKey(s *scheme, pk circl.PublicKey, b []byte) *publicKey {
	return &publicKey{s: s, pk: pk, b: b, h: sha256.Sum256(b)}
}

func (k *publicKey) Scheme() Scheme { return k.s }
func (k *publicKey) Bytes() []byte  { return append([]byte(nil), k.b...) }
func (k *publicKey) Hash() []byte   { return append([]byte(nil), k.h[:]...) }

func (k *publicKey) Encapsulate() (ct, ss []byte, err error) {
	ct, ss, err = k.s.c.Encapsulate(k.pk)
	avx.Clean()
	if err != nil {
		return nil, nil, fmt.Errorf("kem: %v encapsulate: %w", k.s.id, err)
	}
	return ct, ss, nil
}

// encapsulatorTo is what circl's ML-KEM-768, ML-KEM-1024 and X-Wing public
// keys implement; a nil seed draws it from crypto/rand.
type encapsulatorTo interface {
	EncapsulateTo(ct, ss, seed []byte)
}

var (
	_ encapsulatorTo = (*mlkem768.PublicKey)(nil)
	_ encapsulatorTo = (*mlkem1024.PublicKey)(nil)
	_ encapsulatorTo = (*xwing.PublicKey)(nil)
)

func (k *publicKey) EncapsulateTo(ct, ss []byte) error {
	if len(ct) != k.s.CiphertextSize() || len(ss) != SharedKeySize {
		return fmt.Errorf("kem: %v encapsulate: buffers of %d and %d bytes, want %d and %d: %w",
			k.s.id, len(ct), len(ss), k.s.CiphertextSize(), SharedKeySize, ErrInvalidCiphertext)
	}
	e, ok := k.pk.(encapsulatorTo) // always: see the assertions below
	if !ok {
		return fmt.Errorf("kem: %v key cannot encapsulate in place", k.s.id)
	}
	e.EncapsulateTo(ct, ss, nil) // lengths checked above, so it cannot panic
	avx.Clean()
	return nil
}

// encapsulateDeterministically encapsulates with the given randomness
// (32 bytes, FIPS 203 m, for ML-KEM; 64 bytes for X-Wing). For known-answer
// tests only.
func (k *publicKey) encapsulateDeterministically(rnd []byte) (ct, ss []byte, err error) {
	defer avx.Clean()
	return k.s.c.EncapsulateDeterministically(k.pk, rnd)
}

type privateKey struct {
	s    *scheme
	sk   circl.PrivateKey
	seed []byte
	pub  *publicKey
}

func (k *privateKey) Scheme() Scheme       { return k.s }
func (k *privateKey) Seed() []byte         { return append([]byte(nil), k.seed...) }
func (k *privateKey) PublicKey() PublicKey { return k.pub }

func (k *privateKey) Decapsulate(ct []byte) ([]byte, error) {
	if len(ct) != k.s.CiphertextSize() {
		return nil, fmt.Errorf("kem: %v ciphertext is %d bytes, want %d: %w",
			k.s.id, len(ct), k.s.CiphertextSize(), ErrInvalidCiphertext)
	}
	ss, err := k.s.c.Decapsulate(k.sk, ct)
	avx.Clean()
	if err != nil {
		return nil, fmt.Errorf("kem: %v decapsulate: %w", k.s.id, err)
	}
	return ss, nil
}
