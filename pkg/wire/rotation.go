package wire

import "github.com/entropykem/entropykem/pkg/signature"

// KeyRotation announces the issuer's next signing key (schema/entropykem.cddl:
// key-rotation; schema/PROTOCOL.md §8.6). It is the payload of a
// COSE_Sign1 made with the key being retired, published retained on
// {prefix}/issuer/key/{kid of NewKey, hex}: a device that trusts the
// signer learns NewKey, trusts it for epochs from FromEpoch on, and from
// then on no longer trusts the signer. Because the announcement stays
// retained and is signed by the old key, a device that was offline for the
// whole overlap still learns the new key when it returns.
type KeyRotation struct {
	Version   uint64        `cbor:"0,keyasint"`
	FromEpoch uint64        `cbor:"1,keyasint"` // first epoch signed by NewKey
	NewAlg    signature.Alg `cbor:"2,keyasint"` // COSE alg id of NewKey
	NewKey    []byte        `cbor:"3,keyasint"` // FIPS 204 encoded public key
	IssuedAt  uint64        `cbor:"4,keyasint"`
}

// MaxKeyRotation bounds an encoded KeyRotation payload: the largest allowed
// public key (ML-DSA-87, 2592 bytes) and the small fields.
const MaxKeyRotation = 2700

// ParseKeyRotation strictly decodes and validates a KeyRotation payload.
// It is only meaningful once the COSE_Sign1 around it has been verified.
func ParseKeyRotation(b []byte) (*KeyRotation, error) {
	var r KeyRotation
	if err := decode("key rotation", b, MaxKeyRotation, &r); err != nil {
		return nil, err
	}
	if err := r.validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// Marshal validates r and returns its deterministic encoding.
func (r *KeyRotation) Marshal() ([]byte, error) { return encode("key rotation", r) }

func (r *KeyRotation) validate() error {
	const what = "key rotation"
	if err := checkVersion(what, r.Version); err != nil {
		return err
	}
	if err := checkEpoch(what, r.FromEpoch); err != nil {
		return err
	}
	if !r.NewAlg.Supported() {
		return bad(what, "new key algorithm %d is not allowed", int64(r.NewAlg))
	}
	if len(r.NewKey) != r.NewAlg.PublicKeySize() {
		return bad(what, "new key is %d bytes, %v needs %d", len(r.NewKey), r.NewAlg, r.NewAlg.PublicKeySize())
	}
	return checkTime(what, "issued_at", r.IssuedAt)
}
