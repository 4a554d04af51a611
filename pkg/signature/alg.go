// Package signature holds the issuer's epoch-root signature keys and the
// COSE_Sign1 envelope they sign with.
//
// Algorithms (closed allow-list): ML-DSA-87 (the default) and ML-DSA-65 from
// FIPS 204, identified on the wire by the COSE algorithm ids registered by
// draft-ietf-cose-dilithium (-50 and -49). ML-DSA is used in its "pure" form
// with an empty context string, as that draft requires.
//
// Envelope: a tagged COSE_Sign1 (RFC 9052 §4.2, CBOR tag 18) whose protected
// header is exactly {1: alg, 4: kid}, whose unprotected header is the empty
// map, with the payload embedded and empty external_aad. kid is the first
// KIDSize bytes of SHA-256 over the encoded public key (FIPS 204 pkEncode).
// Devices pin issuer public keys at provisioning and look them up by kid.
//
// Decoding is strict (ParseSign1): every accepted message is exactly the
// core deterministic encoding (RFC 8949 §4.2.1) of what it decodes to, so a
// message has one encoding and its hash identifies it.
package signature

import (
	"errors"
	"strconv"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
	"github.com/cloudflare/circl/sign/mldsa/mldsa87"
)

// Alg is a COSE algorithm identifier (RFC 9052 §8, IANA "COSE Algorithms").
type Alg int64

// The allow-listed algorithms, with the COSE ids of draft-ietf-cose-dilithium.
const (
	MLDSA65 Alg = -49 // ML-DSA-65, FIPS 204
	MLDSA87 Alg = -50 // ML-DSA-87, FIPS 204
	Default     = MLDSA87
)

// Sizes fixed by FIPS 204 and by this package.
const (
	// KIDSize is the length of a key id: SHA-256(public key)[:KIDSize].
	KIDSize = 8
	// SeedSize is the length of the FIPS 204 key-generation seed ξ, the
	// storage format of a private key.
	SeedSize = 32
)

// Sentinel errors. Every error from parsing, key handling and verification
// wraps exactly one of them, so callers can tell the cases apart with
// errors.Is.
var (
	// ErrUnsupported: an algorithm id or file version outside the allow-list.
	ErrUnsupported = errors.New("signature: unsupported algorithm or version")
	// ErrInvalidKey: key bytes of the wrong size, or a nil key.
	ErrInvalidKey = errors.New("signature: invalid key")
	// ErrMalformed: input that is not exactly the structure this package
	// accepts (size, CBOR, COSE structure, PEM armour).
	ErrMalformed = errors.New("signature: malformed input")
	// ErrUnknownKey: the message names no pinned key for its algorithm.
	ErrUnknownKey = errors.New("signature: unknown key")
	// ErrBadSignature: the signature does not verify under the pinned key.
	ErrBadSignature = errors.New("signature: bad signature")
)

// String returns the FIPS 204 parameter set name, or "Alg(n)" for an id
// outside the allow-list.
func (a Alg) String() string {
	switch a {
	case MLDSA65:
		return "ML-DSA-65"
	case MLDSA87:
		return "ML-DSA-87"
	default:
		return "Alg(" + strconv.FormatInt(int64(a), 10) + ")"
	}
}

// Supported reports whether a is in the allow-list.
func (a Alg) Supported() bool { return a == MLDSA65 || a == MLDSA87 }

// PublicKeySize is the FIPS 204 encoded public key size of a (0 if
// unsupported).
func (a Alg) PublicKeySize() int {
	switch a {
	case MLDSA65:
		return mldsa65.PublicKeySize
	case MLDSA87:
		return mldsa87.PublicKeySize
	default:
		return 0
	}
}

// SignatureSize is the FIPS 204 signature size of a (0 if unsupported).
func (a Alg) SignatureSize() int {
	switch a {
	case MLDSA65:
		return mldsa65.SignatureSize
	case MLDSA87:
		return mldsa87.SignatureSize
	default:
		return 0
	}
}
