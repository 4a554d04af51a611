package signature

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"testing"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
	"github.com/cloudflare/circl/sign/mldsa/mldsa87"
)

// This file builds COSE and CBOR bytes by hand, independently of the
// package's encoder (go-cose) and decoder (pkg/cbor), so the tests compare
// against RFC 8949 / RFC 9052 directly.

var algs = []Alg{MLDSA87, MLDSA65}

// testSeed returns a fixed 32-byte seed.
func testSeed(b byte) []byte { return bytes.Repeat([]byte{b}, SeedSize) }

// fixedKey returns the key of alg derived from testSeed(b).
func fixedKey(t testing.TB, alg Alg, b byte) *PrivateKey {
	t.Helper()
	k, err := NewKeyFromSeed(alg, testSeed(b))
	if err != nil {
		t.Fatalf("NewKeyFromSeed(%v): %v", alg, err)
	}
	return k
}

// keySet returns a KeySet of keys or fails the test.
func keySet(t testing.TB, keys ...*PublicKey) *KeySet {
	t.Helper()
	s, err := NewKeySet(keys...)
	if err != nil {
		t.Fatalf("NewKeySet: %v", err)
	}
	return s
}

// head encodes a CBOR initial byte and argument in the shortest form.
func head(major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return []byte{m | byte(n)}
	case n <= 0xff:
		return []byte{m | 24, byte(n)}
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16([]byte{m | 25}, uint16(n))
	case n <= 0xffffffff:
		return binary.BigEndian.AppendUint32([]byte{m | 26}, uint32(n))
	default:
		return binary.BigEndian.AppendUint64([]byte{m | 27}, n)
	}
}

// cborInt encodes a signed integer.
func cborInt(v int64) []byte {
	if v >= 0 {
		return head(0, uint64(v))
	}
	return head(1, uint64(-1-v))
}

// bstr encodes a byte string.
func bstr(b []byte) []byte { return append(head(2, uint64(len(b))), b...) }

// cat concatenates byte slices.
func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// stdProtected is the serialized protected header {1: alg, 4: kid}.
func stdProtected(alg int64, kid []byte) []byte {
	return cat([]byte{0xa2, 0x01}, cborInt(alg), []byte{0x04}, bstr(kid))
}

// sigStructure is RFC 9052 §4.4 ToBeSigned for COSE_Sign1 with empty
// external_aad: ["Signature1", protected, empty bstr, payload].
func sigStructure(protected, payload []byte) []byte {
	return cat([]byte{0x84}, head(3, 10), []byte("Signature1"), bstr(protected), bstr(nil), bstr(payload))
}

// sign1Bytes assembles a COSE_Sign1: tag, array(4), bstr(protected),
// unprotected (raw CBOR), payload (raw CBOR), signature (raw CBOR).
func sign1Bytes(tag, protected, unprotected, payload, sig []byte) []byte {
	return cat(tag, []byte{0x84}, bstr(protected), unprotected, payload, sig)
}

// circlSign signs msg with circl directly (hedged, empty context) under the
// key derived from seed.
func circlSign(t testing.TB, alg Alg, seed, msg []byte) []byte {
	t.Helper()
	return circlSignMode(t, alg, seed, msg, true)
}

// circlSignMode signs msg with circl directly, hedged or deterministic
// (FIPS 204 §3.4), with an empty context.
func circlSignMode(t testing.TB, alg Alg, seed, msg []byte, hedged bool) []byte {
	t.Helper()
	var s [32]byte
	copy(s[:], seed)
	var sig []byte
	var err error
	switch alg {
	case MLDSA87:
		_, sk := mldsa87.NewKeyFromSeed(&s)
		sig = make([]byte, mldsa87.SignatureSize)
		err = mldsa87.SignTo(sk, msg, nil, hedged, sig)
	case MLDSA65:
		_, sk := mldsa65.NewKeyFromSeed(&s)
		sig = make([]byte, mldsa65.SignatureSize)
		err = mldsa65.SignTo(sk, msg, nil, hedged, sig)
	default:
		t.Fatalf("circlSign: alg %v", alg)
	}
	if err != nil {
		t.Fatalf("circl sign: %v", err)
	}
	return sig
}

// circlPublic returns circl's own encoding of the public key for seed.
func circlPublic(t testing.TB, alg Alg, seed []byte) []byte {
	t.Helper()
	var s [32]byte
	copy(s[:], seed)
	switch alg {
	case MLDSA87:
		pk, _ := mldsa87.NewKeyFromSeed(&s)
		return pk.Bytes()
	case MLDSA65:
		pk, _ := mldsa65.NewKeyFromSeed(&s)
		return pk.Bytes()
	}
	t.Fatalf("circlPublic: alg %v", alg)
	return nil
}

// circlVerify verifies with circl directly from encoded public key bytes.
func circlVerify(t testing.TB, alg Alg, pk, msg, sig []byte) bool {
	t.Helper()
	switch alg {
	case MLDSA87:
		var k mldsa87.PublicKey
		if err := k.UnmarshalBinary(pk); err != nil {
			t.Fatalf("circl pk: %v", err)
		}
		return mldsa87.Verify(&k, msg, nil, sig)
	case MLDSA65:
		var k mldsa65.PublicKey
		if err := k.UnmarshalBinary(pk); err != nil {
			t.Fatalf("circl pk: %v", err)
		}
		return mldsa65.Verify(&k, msg, nil, sig)
	}
	t.Fatalf("circlVerify: alg %v", alg)
	return false
}

// handSigned builds a COSE_Sign1 entirely by hand with the given protected
// header bytes, signed correctly by circl over the standard Sig_structure,
// so that only the structure rule under test can make it fail.
func handSigned(t testing.TB, alg Alg, seedByte byte, protected, payload []byte) []byte {
	t.Helper()
	sig := circlSign(t, alg, testSeed(seedByte), sigStructure(protected, payload))
	return sign1Bytes([]byte{0xd2}, protected, []byte{0xa0}, bstr(payload), bstr(sig))
}

// detSigned is a standard COSE_Sign1 by the key of testSeed(seedByte),
// built by hand with deterministic ML-DSA, so every process builds the same
// bytes (fuzz workers are separate processes).
func detSigned(t testing.TB, alg Alg, seedByte byte, payload []byte) []byte {
	t.Helper()
	pk := circlPublic(t, alg, testSeed(seedByte))
	sum := sha256.Sum256(pk)
	protected := stdProtected(int64(alg), sum[:KIDSize])
	sig := circlSignMode(t, alg, testSeed(seedByte), sigStructure(protected, payload), false)
	return sign1Bytes([]byte{0xd2}, protected, []byte{0xa0}, bstr(payload), bstr(sig))
}
