package tpmcohort

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"github.com/entropykem/entropykem/pkg/cbor"
)

// BlobVersion is the only blob format version this package reads and writes.
const BlobVersion = 1

// Size bounds of the blob encoding, checked before any decoding work.
const (
	MaxBlobSize    = 1024 // whole CBOR encoding
	maxPublicSize  = 256  // TPM2B_PUBLIC of a keyed-hash key: 50 B, 82 B with a policy
	maxPrivateSize = 512  // TPM2B_PRIVATE: 160 B for a 32-byte secret
	nameSize       = 2 + sha256.Size
	maxPCR         = 23 // PC Client platforms have PCRs 0..23
)

// Blob is the TPM's wrapping of an imported cohort secret. It is useless
// without the TPM that made it (the private part is encrypted and
// integrity-protected under that TPM's storage root key), so it can be stored
// in the clear.
//
// Encoding (MarshalBinary), a CBOR map in core deterministic encoding
// (RFC 8949 §4.2.1) with integer keys:
//
//	{ 0: 1,                      ; version
//	  1: bstr,                   ; TPM2B_PUBLIC of the keyed-hash key, size prefix included
//	  2: bstr,                   ; TPM2B_PRIVATE, size prefix included
//	  ? 3: [+ uint],             ; PCRs (SHA-256 bank) of the key's policy, strictly ascending, 0..23
//	  ? 4: bstr .size 32,        ; SHA-256 of those PCRs' values at provisioning; present iff 3 is
//	  5: bstr .size 34 }         ; TPM2B_NAME contents of the ECC SRK it was created under
//
// Decoding is strict: every field is range-checked and the public area must
// be exactly the template this package creates (keyed-hash HMAC-SHA256,
// fixedTPM|fixedParent, authorization matching the PCR fields).
type Blob struct {
	Public    []byte // TPM2B_PUBLIC of the imported keyed-hash key
	Private   []byte // TPM2B_PRIVATE of the imported keyed-hash key
	PCRs      []uint // policy PCRs (SHA-256 bank), ascending; empty: no policy
	PCRDigest []byte // SHA-256 over the PCR values at provisioning; nil without policy
	Parent    []byte // name of the storage root key (nameAlg ‖ SHA-256 digest)
}

type wireBlob struct {
	Version   uint64   `cbor:"0,keyasint"`
	Public    []byte   `cbor:"1,keyasint"`
	Private   []byte   `cbor:"2,keyasint"`
	PCRs      []uint64 `cbor:"3,keyasint,omitempty"`
	PCRDigest []byte   `cbor:"4,keyasint,omitempty"`
	Parent    []byte   `cbor:"5,keyasint"`
}

// MarshalBinary returns the blob's encoding. It refuses a blob that
// UnmarshalBlob would refuse.
func (b Blob) MarshalBinary() ([]byte, error) {
	if _, err := b.parse(); err != nil {
		return nil, err
	}
	w := wireBlob{Version: BlobVersion, Public: b.Public, Private: b.Private,
		PCRDigest: b.PCRDigest, Parent: b.Parent}
	for _, p := range b.PCRs {
		w.PCRs = append(w.PCRs, uint64(p))
	}
	out, err := cbor.Marshal(w)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadBlob, err)
	}
	return out, nil
}

// UnmarshalBlob strictly decodes a blob encoding (see Blob). Every failure
// wraps ErrBadBlob.
func UnmarshalBlob(data []byte) (Blob, error) {
	var w wireBlob
	if err := cbor.Unmarshal(data, MaxBlobSize, &w); err != nil {
		return Blob{}, fmt.Errorf("%w: %w", ErrBadBlob, err)
	}
	if w.Version != BlobVersion {
		return Blob{}, fmt.Errorf("%w: version %d, want %d", ErrBadBlob, w.Version, BlobVersion)
	}
	b := Blob{Public: w.Public, Private: w.Private, PCRDigest: w.PCRDigest, Parent: w.Parent}
	for _, p := range w.PCRs {
		if p > maxPCR {
			return Blob{}, fmt.Errorf("%w: pcr %d out of range 0..%d", ErrBadBlob, p, maxPCR)
		}
		b.PCRs = append(b.PCRs, uint(p))
	}
	if _, err := b.parse(); err != nil {
		return Blob{}, err
	}
	return b, nil
}

// parsedBlob is a validated blob in go-tpm's types.
type parsedBlob struct {
	public  tpm2.TPM2BPublic
	private tpm2.TPM2BPrivate
	pcrSel  tpm2.TPMLPCRSelection // empty without a policy
}

// parse validates every field of b and returns the TPM structures.
func (b Blob) parse() (*parsedBlob, error) {
	if err := checkPCRs(b.PCRs); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadBlob, err)
	}
	if len(b.PCRs) > 0 && len(b.PCRDigest) != sha256.Size {
		return nil, fmt.Errorf("%w: pcr digest of %d bytes, want %d", ErrBadBlob, len(b.PCRDigest), sha256.Size)
	}
	if len(b.PCRs) == 0 && b.PCRDigest != nil {
		return nil, fmt.Errorf("%w: pcr digest without pcrs", ErrBadBlob)
	}
	if len(b.Parent) != nameSize || !bytes.Equal(b.Parent[:2], []byte{0x00, byte(tpm2.TPMAlgSHA256)}) {
		return nil, fmt.Errorf("%w: parent name is not a SHA-256 name", ErrBadBlob)
	}
	pub, err := parsePublic(b.Public, b.PCRs, b.PCRDigest)
	if err != nil {
		return nil, err
	}
	priv, err := parsePrivate(b.Private)
	if err != nil {
		return nil, err
	}
	p := &parsedBlob{public: *pub, private: *priv}
	if len(b.PCRs) > 0 {
		p.pcrSel = pcrSelection(b.PCRs)
	}
	return p, nil
}

// parsePublic accepts exactly the TPM2B_PUBLIC that keyTemplate produces for
// these PCR fields, with a 32-byte unique value.
func parsePublic(data []byte, pcrs []uint, pcrDigest []byte) (*tpm2.TPM2BPublic, error) {
	if len(data) < 2 || len(data) > maxPublicSize {
		return nil, fmt.Errorf("%w: public area of %d bytes", ErrBadBlob, len(data))
	}
	outer, err := tpm2.Unmarshal[tpm2.TPM2BPublic](data)
	if err != nil {
		return nil, fmt.Errorf("%w: public area: %w", ErrBadBlob, err)
	}
	inner := outer.Bytes()
	if len(inner)+2 != len(data) {
		return nil, fmt.Errorf("%w: public area has trailing bytes", ErrBadBlob)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](inner)
	if err != nil {
		return nil, fmt.Errorf("%w: public area: %w", ErrBadBlob, err)
	}
	if pub.Type != tpm2.TPMAlgKeyedHash {
		return nil, fmt.Errorf("%w: public area is not a keyed-hash key", ErrBadBlob)
	}
	unique, err := pub.Unique.KeyedHash()
	if err != nil || len(unique.Buffer) != sha256.Size {
		return nil, fmt.Errorf("%w: public area has no SHA-256 unique value", ErrBadBlob)
	}
	want, err := keyTemplate(pcrs, pcrDigest)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadBlob, err)
	}
	want.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: unique.Buffer})
	if !bytes.Equal(tpm2.Marshal(want), inner) {
		return nil, fmt.Errorf("%w: public area is not an HMAC-SHA256 cohort key with the blob's policy", ErrBadBlob)
	}
	return outer, nil
}

func parsePrivate(data []byte) (*tpm2.TPM2BPrivate, error) {
	if len(data) < 3 || len(data) > maxPrivateSize {
		return nil, fmt.Errorf("%w: private area of %d bytes", ErrBadBlob, len(data))
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](data)
	if err != nil {
		return nil, fmt.Errorf("%w: private area: %w", ErrBadBlob, err)
	}
	if len(priv.Buffer)+2 != len(data) {
		return nil, fmt.Errorf("%w: private area has trailing bytes", ErrBadBlob)
	}
	return priv, nil
}

// checkPCRs requires a strictly ascending list of PCR indices 0..23.
func checkPCRs(pcrs []uint) error {
	for i, p := range pcrs {
		if p > maxPCR {
			return fmt.Errorf("pcr %d out of range 0..%d", p, maxPCR)
		}
		if i > 0 && pcrs[i-1] >= p {
			return fmt.Errorf("pcrs not strictly ascending")
		}
	}
	return nil
}

// normalizePCRs sorts and de-duplicates the caller's PCR list.
func normalizePCRs(in []uint) ([]uint, error) {
	pcrs := slices.Compact(slices.Sorted(slices.Values(in)))
	if err := checkPCRs(pcrs); err != nil {
		return nil, err
	}
	return pcrs, nil
}

// pcrSelection is the SHA-256-bank selection of pcrs.
func pcrSelection(pcrs []uint) tpm2.TPMLPCRSelection {
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash:      tpm2.TPMAlgSHA256,
		PCRSelect: tpm2.PCClientCompatible.PCRs(pcrs...),
	}}}
}

// keyTemplate is the public area of the cohort key: a keyed-hash
// HMAC-SHA256 key that cannot leave this TPM or its parent (fixedTPM,
// fixedParent) and whose secret comes from the caller (sensitiveDataOrigin
// clear). Without PCRs it is usable with its (empty) auth value; with PCRs
// only through a policy session that satisfied TPM2_PolicyPCR for pcrDigest
// (TPM 2.0 Part 3 §23.7).
func keyTemplate(pcrs []uint, pcrDigest []byte) (tpm2.TPMTPublic, error) {
	t := tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:     true,
			FixedParent:  true,
			SignEncrypt:  true,
			NoDA:         true,
			UserWithAuth: len(pcrs) == 0,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{
				Scheme: tpm2.TPMAlgHMAC,
				Details: tpm2.NewTPMUSchemeKeyedHash(tpm2.TPMAlgHMAC,
					&tpm2.TPMSSchemeHMAC{HashAlg: tpm2.TPMAlgSHA256}),
			},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{}),
	}
	if len(pcrs) > 0 {
		policy, err := pcrPolicy(pcrs, pcrDigest)
		if err != nil {
			return tpm2.TPMTPublic{}, err
		}
		t.AuthPolicy = tpm2.TPM2BDigest{Buffer: policy}
	}
	return t, nil
}

// pcrPolicy is the policy digest of a single TPM2_PolicyPCR(pcrDigest, pcrs)
// starting from the all-zero digest (TPM 2.0 Part 3 §23.7).
func pcrPolicy(pcrs []uint, pcrDigest []byte) ([]byte, error) {
	pc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	cmd := tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: pcrDigest}, Pcrs: pcrSelection(pcrs)}
	if err := cmd.Update(pc); err != nil {
		return nil, err
	}
	return pc.Hash().Digest, nil
}
