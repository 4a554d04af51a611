package signature

import (
	"bytes"
	"encoding/pem"
	"fmt"

	"github.com/entropykem/entropykem/pkg/cbor"
)

// Issuer key files: PEM block types and format.
//
// An issuer key file is one PEM block (RFC 7468 textual encoding) with no
// PEM headers, optionally surrounded by whitespace and nothing else:
//
//	-----BEGIN ENTROPYKEM ISSUER SECRET KEY-----   (private key)
//	-----BEGIN ENTROPYKEM ISSUER PUBLIC KEY-----   (public key)
//
// The base64 body is the core deterministic CBOR encoding (RFC 8949 §4.2.1)
// of a map with exactly these keys:
//
//	issuer-key-file = {
//	  0: 1,              ; version, uint; only 1 is defined
//	  1: int,            ; alg: COSE algorithm id, -50 (ML-DSA-87) or -49 (ML-DSA-65)
//	  2: bstr,           ; secret key: the FIPS 204 seed ξ, 32 bytes
//	                     ; public key: FIPS 204 pkEncode, 2592 (ML-DSA-87) or 1952 (ML-DSA-65) bytes
//	}
//
// The secret key file holds only the seed; the expanded signing key and the
// public key are derived from it (FIPS 204 ML-DSA.KeyGen_internal). Parsing
// is strict: the whole file is at most MaxKeyFileSize bytes, the block type
// must match, duplicate or unknown keys, indefinite lengths, tags and
// non-deterministic encodings are rejected (ErrMalformed), a version other
// than 1 or an alg outside the allow-list is ErrUnsupported, and a key of the
// wrong size is ErrInvalidKey. Errors never contain key material.
const (
	PEMTypePrivateKey = "ENTROPYKEM ISSUER SECRET KEY"
	PEMTypePublicKey  = "ENTROPYKEM ISSUER PUBLIC KEY"
)

// MaxKeyFileSize bounds a key file before it is parsed. An ML-DSA-87 public
// key file is about 3.6 KB.
const MaxKeyFileSize = 8192

// keyFileVersion is the only defined key file version.
const keyFileVersion = 1

// maxKeyBodySize bounds the CBOR body of a key file.
const maxKeyBodySize = 4096

// keyFile is the CBOR body of a key file. No field is omitempty: a missing
// field changes the re-encoding and is rejected by the strict decoder.
type keyFile struct {
	Version uint64 `cbor:"0,keyasint"`
	Alg     int64  `cbor:"1,keyasint"`
	Key     []byte `cbor:"2,keyasint"`
}

// MarshalPrivateKeyPEM returns k's secret key file. The result is secret.
// It returns nil for a nil key.
func MarshalPrivateKeyPEM(k *PrivateKey) []byte {
	if k == nil {
		return nil
	}
	return marshalKeyFile(PEMTypePrivateKey, k.alg, k.seed[:])
}

// MarshalPublicKeyPEM returns k's public key file, or nil for a nil key.
func MarshalPublicKeyPEM(k *PublicKey) []byte {
	if k == nil {
		return nil
	}
	return marshalKeyFile(PEMTypePublicKey, k.alg, k.raw)
}

// marshalKeyFile encodes a key file body and armours it.
func marshalKeyFile(typ string, alg Alg, key []byte) []byte {
	body, err := cbor.Marshal(keyFile{Version: keyFileVersion, Alg: int64(alg), Key: key})
	if err != nil {
		// A struct of two integers and a byte string always encodes.
		panic("signature: unreachable: key file encoding failed")
	}
	out := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: body})
	clear(body)
	return out
}

// ParsePrivateKeyPEM strictly parses a secret key file (see the format
// above) and derives the key from its seed.
func ParsePrivateKeyPEM(data []byte) (*PrivateKey, error) {
	f, err := parseKeyFile(data, PEMTypePrivateKey)
	if err != nil {
		return nil, err
	}
	defer clear(f.Key)
	if len(f.Key) != SeedSize {
		return nil, fmt.Errorf("%w: key file seed is %d bytes, want %d", ErrInvalidKey, len(f.Key), SeedSize)
	}
	return NewKeyFromSeed(Alg(f.Alg), f.Key)
}

// ParsePublicKeyPEM strictly parses a public key file (see the format above).
func ParsePublicKeyPEM(data []byte) (*PublicKey, error) {
	f, err := parseKeyFile(data, PEMTypePublicKey)
	if err != nil {
		return nil, err
	}
	return ParsePublicKey(Alg(f.Alg), f.Key)
}

// parseKeyFile removes the PEM armour and decodes the body. Its errors
// carry no detail from the decoder, so no key bytes can leak into them.
func parseKeyFile(data []byte, typ string) (*keyFile, error) {
	if len(data) > MaxKeyFileSize {
		return nil, fmt.Errorf("%w: key file is %d bytes, limit %d", ErrMalformed, len(data), MaxKeyFileSize)
	}
	const space = " \t\r\n"
	if !bytes.HasPrefix(bytes.TrimLeft(data, space), []byte("-----BEGIN ")) {
		return nil, fmt.Errorf("%w: key file does not start with a PEM block", ErrMalformed)
	}
	if bytes.Count(data, []byte("-----BEGIN")) != 1 {
		return nil, fmt.Errorf("%w: key file must hold exactly one PEM block", ErrMalformed)
	}
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%w: key file has no valid PEM block", ErrMalformed)
	}
	defer clear(block.Bytes)
	if len(bytes.Trim(rest, space)) != 0 {
		return nil, fmt.Errorf("%w: key file has data after the PEM block", ErrMalformed)
	}
	if block.Type != typ {
		return nil, fmt.Errorf("%w: key file PEM type is not %q", ErrMalformed, typ)
	}
	if len(block.Headers) != 0 {
		return nil, fmt.Errorf("%w: key file has PEM headers", ErrMalformed)
	}
	var f keyFile
	if err := cbor.Unmarshal(block.Bytes, maxKeyBodySize, &f); err != nil {
		clear(f.Key)
		return nil, fmt.Errorf("%w: key file body is not a valid key map", ErrMalformed)
	}
	if f.Version != keyFileVersion {
		clear(f.Key)
		return nil, fmt.Errorf("%w: key file version %d", ErrUnsupported, f.Version)
	}
	if !Alg(f.Alg).Supported() {
		clear(f.Key)
		return nil, fmt.Errorf("%w: key file alg %v", ErrUnsupported, Alg(f.Alg))
	}
	return &f, nil
}
