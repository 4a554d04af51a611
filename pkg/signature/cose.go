package signature

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"

	"github.com/veraison/go-cose"

	"github.com/entropykem/entropykem/pkg/cbor"
)

// MaxSign1Size bounds an encoded COSE_Sign1 before any decoding work. An
// ML-DSA-87 message is 4,627 signature bytes plus about 20 bytes of
// structure plus the payload.
const MaxSign1Size = 8192

// maxProtectedSize bounds the protected header's serialized map; the only
// valid one, {1: alg, 4: kid}, is 15 bytes.
const maxProtectedSize = 64

// cborTagSign1 is the first byte of a COSE_Sign1_Tagged message: tag 18
// (RFC 9052 §4.2) in its only deterministic encoding, major type 6 with
// the value in the initial byte.
const cborTagSign1 = 0xd2

// coseSigner implements cose.Signer over an ML-DSA private key.
type coseSigner struct{ k *PrivateKey }

// Algorithm returns the COSE algorithm id of the key.
func (s coseSigner) Algorithm() cose.Algorithm { return cose.Algorithm(s.k.alg) }

// Sign returns a hedged ML-DSA signature over content (the encoded
// Sig_structure). The randomness comes from crypto/rand inside circl; the
// rand argument that go-cose passes is not used.
func (s coseSigner) Sign(_ io.Reader, content []byte) ([]byte, error) {
	return s.k.sign(content)
}

// coseVerifier implements cose.Verifier over a parsed ML-DSA public key.
type coseVerifier struct{ k *PublicKey }

// Algorithm returns the COSE algorithm id of the key.
func (v coseVerifier) Algorithm() cose.Algorithm { return cose.Algorithm(v.k.alg) }

// Verify checks sig over content (the encoded Sig_structure).
func (v coseVerifier) Verify(content, sig []byte) error {
	if !v.k.verify(content, sig) {
		return fmt.Errorf("%w: %v signature does not verify", ErrBadSignature, v.k.alg)
	}
	return nil
}

// headers returns the go-cose headers {1: alg, 4: kid} / {}.
func headers(alg Alg, kid []byte, rawProtected []byte) cose.Headers {
	return cose.Headers{
		RawProtected: rawProtected,
		Protected: cose.ProtectedHeader{
			cose.HeaderLabelAlgorithm: cose.Algorithm(alg),
			cose.HeaderLabelKeyID:     kid,
		},
		Unprotected: cose.UnprotectedHeader{},
	}
}

// Sign1 signs payload with k and returns the tagged COSE_Sign1 (RFC 9052
// §4.2): protected header exactly {1: alg, 4: kid}, unprotected header the
// empty map, payload embedded, external_aad empty. The signature is hedged
// (randomized) ML-DSA over the RFC 9052 §4.4 Sig_structure
// ["Signature1", protected, empty bstr, payload], with an empty ML-DSA context.
func Sign1(k *PrivateKey, payload []byte) ([]byte, error) {
	if k == nil || k.pub == nil {
		return nil, fmt.Errorf("%w: nil private key", ErrInvalidKey)
	}
	if payload == nil {
		payload = []byte{}
	}
	msg := cose.Sign1Message{
		Headers: headers(k.alg, k.pub.kid[:], nil),
		Payload: payload,
	}
	if err := msg.Sign(rand.Reader, nil, coseSigner{k}); err != nil {
		return nil, fmt.Errorf("signature: sign COSE_Sign1: %w", err)
	}
	out, err := msg.MarshalCBOR()
	if err != nil {
		return nil, fmt.Errorf("signature: encode COSE_Sign1: %w", err)
	}
	if len(out) > MaxSign1Size {
		return nil, fmt.Errorf("%w: COSE_Sign1 is %d bytes, limit %d", ErrMalformed, len(out), MaxSign1Size)
	}
	return out, nil
}

// Parsed is a structurally valid COSE_Sign1 whose signature has NOT been
// verified. Nothing in it may be trusted before Verify succeeds.
type Parsed struct {
	Alg     Alg
	KID     []byte
	Payload []byte

	protected []byte // protected header: the bstr wrapping the map, as encoded and signed
	signature []byte
}

// wireSign1 is the COSE_Sign1 array after tag 18 (RFC 9052 §4.2).
type wireSign1 struct {
	_           struct{} `cbor:",toarray"`
	Protected   []byte
	Unprotected emptyMap
	Payload     []byte
	Signature   []byte
}

// emptyMap decodes only from the empty map: the strict decoder rejects any
// key as an unknown field, and it re-encodes as 0xa0.
type emptyMap struct{}

// wireProtected is the protected header map {1: alg, 4: kid}. The fields
// are optional in decoding only so that a missing one gets its own error.
type wireProtected struct {
	Alg *int64 `cbor:"1,keyasint,omitempty"`
	KID []byte `cbor:"4,keyasint,omitempty"`
}

// ParseSign1 strictly decodes msg, a COSE_Sign1_Tagged message, without
// verifying it. It checks the size bound (MaxSign1Size) first, then: tag 18
// encoded as the single byte 0xd2; a 4-element array with definite lengths,
// no duplicate map keys, no further tags, no trailing bytes; the protected
// header a byte string holding exactly the map {1: alg, 4: kid}; alg in the
// allow-list (else ErrUnsupported); kid KIDSize bytes; the unprotected
// header the empty map; the payload a byte string (not nil, i.e. not
// detached); the signature exactly alg's FIPS 204 size; and that msg is
// byte-for-byte the core deterministic encoding (RFC 8949 §4.2.1) of the
// decoded value, at both levels. All other failures wrap ErrMalformed.
func ParseSign1(msg []byte) (*Parsed, error) {
	if len(msg) > MaxSign1Size {
		return nil, fmt.Errorf("%w: COSE_Sign1 is %d bytes, limit %d", ErrMalformed, len(msg), MaxSign1Size)
	}
	if err := checkTag(msg); err != nil {
		return nil, err
	}
	var w wireSign1
	if err := cbor.Unmarshal(msg[1:], MaxSign1Size, &w); err != nil {
		return nil, fmt.Errorf("%w: COSE_Sign1: %w", ErrMalformed, err)
	}
	alg, kid, err := parseProtected(w.Protected)
	if err != nil {
		return nil, err
	}
	if w.Payload == nil {
		return nil, fmt.Errorf("%w: COSE_Sign1: detached payload", ErrMalformed)
	}
	if len(w.Signature) != alg.SignatureSize() {
		return nil, fmt.Errorf("%w: COSE_Sign1: %v signature is %d bytes, want %d", ErrMalformed, alg, len(w.Signature), alg.SignatureSize())
	}
	// go-cose takes the protected header as its encoded bstr; the input
	// was checked to be deterministic, so this is the input's exact bytes.
	protected, err := cbor.Marshal(w.Protected)
	if err != nil {
		return nil, fmt.Errorf("%w: COSE_Sign1 protected header: %w", ErrMalformed, err)
	}
	return &Parsed{Alg: alg, KID: kid, Payload: w.Payload, protected: protected, signature: w.Signature}, nil
}

// checkTag requires msg to start with tag 18 in its deterministic encoding.
func checkTag(msg []byte) error {
	switch {
	case len(msg) == 0:
		return fmt.Errorf("%w: COSE_Sign1: empty input", ErrMalformed)
	case msg[0] == cborTagSign1:
		return nil
	case msg[0]>>5 != 6:
		return fmt.Errorf("%w: COSE_Sign1: untagged, tag 18 required", ErrMalformed)
	case len(msg) > 1 && msg[0] == 0xd8 && msg[1] == 18:
		return fmt.Errorf("%w: COSE_Sign1: tag 18 not in deterministic encoding", ErrMalformed)
	default:
		return fmt.Errorf("%w: COSE_Sign1: tag other than 18", ErrMalformed)
	}
}

// parseProtected decodes the serialized protected header map, which must be
// exactly {1: alg, 4: kid} in deterministic encoding.
func parseProtected(b []byte) (Alg, []byte, error) {
	var h wireProtected
	if err := cbor.Unmarshal(b, maxProtectedSize, &h); err != nil {
		return 0, nil, fmt.Errorf("%w: COSE_Sign1 protected header: %w", ErrMalformed, err)
	}
	if h.Alg == nil {
		return 0, nil, fmt.Errorf("%w: COSE_Sign1 protected header: missing alg (1)", ErrMalformed)
	}
	alg := Alg(*h.Alg)
	if !alg.Supported() {
		return 0, nil, fmt.Errorf("%w: COSE_Sign1 alg %v not in the allow-list", ErrUnsupported, alg)
	}
	if len(h.KID) != KIDSize {
		return 0, nil, fmt.Errorf("%w: COSE_Sign1 protected header: kid (4) is %d bytes, want %d", ErrMalformed, len(h.KID), KIDSize)
	}
	return alg, h.KID, nil
}

// message returns p as a go-cose message that signs exactly p.protected.
func (p *Parsed) message() *cose.Sign1Message {
	return &cose.Sign1Message{
		Headers:   headers(p.Alg, p.KID, p.protected),
		Payload:   p.Payload,
		Signature: p.signature,
	}
}

// marshal re-encodes p with go-cose. For a message accepted by ParseSign1
// the result equals the input.
func (p *Parsed) marshal() ([]byte, error) {
	return p.message().MarshalCBOR()
}

// Verify checks p's signature under the pinned key named by p.KID and
// returns that key.
//
// Errors: no pinned key with p.KID → ErrUnknownKey. A pinned key with that
// kid but another algorithm than the header's alg → ErrUnknownKey too: the
// lookup is by (kid, alg), because the key that kid names cannot have made
// an alg signature, and the signature is never run under an algorithm the
// key was not pinned for (no algorithm confusion). Since kid hashes the
// key encoding, whose size differs per algorithm, this case only arises
// from a forged header or a 64-bit kid collision. A signature that does
// not verify → ErrBadSignature.
func (p *Parsed) Verify(keys *KeySet) (*PublicKey, error) {
	if p == nil {
		return nil, fmt.Errorf("%w: nil message", ErrMalformed)
	}
	k, ok := keys.Lookup(p.KID)
	if !ok {
		return nil, fmt.Errorf("%w: no pinned key with this kid", ErrUnknownKey)
	}
	if k.alg != p.Alg {
		return nil, fmt.Errorf("%w: pinned key with this kid is %v, message alg is %v", ErrUnknownKey, k.alg, p.Alg)
	}
	if err := p.message().Verify(nil, coseVerifier{k}); err != nil {
		if errors.Is(err, ErrBadSignature) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: COSE_Sign1: %w", ErrMalformed, err)
	}
	return k, nil
}

// Verify1 parses msg strictly (ParseSign1) and verifies it against the
// pinned keys (Parsed.Verify). It returns the payload and the key that
// signed it only when both succeed.
func Verify1(msg []byte, keys *KeySet) (payload []byte, key *PublicKey, err error) {
	p, err := ParseSign1(msg)
	if err != nil {
		return nil, nil, err
	}
	k, err := p.Verify(keys)
	if err != nil {
		return nil, nil, err
	}
	return p.Payload, k, nil
}
