package signature

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
)

func TestKeyFileRoundTrip(t *testing.T) {
	for _, alg := range algs {
		t.Run(alg.String(), func(t *testing.T) {
			k, err := GenerateKey(alg)
			if err != nil {
				t.Fatal(err)
			}
			priv := MarshalPrivateKeyPEM(k)
			if !bytes.HasPrefix(priv, []byte("-----BEGIN ENTROPYKEM ISSUER SECRET KEY-----\n")) {
				t.Fatalf("secret key armour: %q", priv[:50])
			}
			k2, err := ParsePrivateKeyPEM(priv)
			if err != nil {
				t.Fatal(err)
			}
			if k2.Alg() != alg || !bytes.Equal(k2.Seed(), k.Seed()) || !k2.Public().Equal(k.Public()) {
				t.Fatal("private key round trip changed the key")
			}
			pub := MarshalPublicKeyPEM(k.Public())
			if !bytes.HasPrefix(pub, []byte("-----BEGIN ENTROPYKEM ISSUER PUBLIC KEY-----\n")) {
				t.Fatalf("public key armour: %q", pub[:50])
			}
			p2, err := ParsePublicKeyPEM(pub)
			if err != nil {
				t.Fatal(err)
			}
			if !p2.Equal(k.Public()) || !bytes.Equal(p2.KID(), k.Public().KID()) {
				t.Fatal("public key round trip changed the key")
			}
			// The body is the documented map, checked with the hand encoder.
			bp, _ := pem.Decode(priv)
			want := cat([]byte{0xa3, 0x00, 0x01, 0x01}, cborInt(int64(alg)), []byte{0x02}, bstr(k.Seed()))
			if !bytes.Equal(bp.Bytes, want) {
				t.Fatalf("secret key body %x, want %x", bp.Bytes, want)
			}
			bp, _ = pem.Decode(pub)
			want = cat([]byte{0xa3, 0x00, 0x01, 0x01}, cborInt(int64(alg)), []byte{0x02}, bstr(k.Public().Bytes()))
			if !bytes.Equal(bp.Bytes, want) {
				t.Fatal("public key body is not the documented map")
			}
			// Whitespace around the block and CRLF line ends are accepted.
			crlf := bytes.ReplaceAll(pub, []byte("\n"), []byte("\r\n"))
			if p3, err := ParsePublicKeyPEM(cat([]byte("\n\r\n"), crlf, []byte("\n\n"))); err != nil || !p3.Equal(k.Public()) {
				t.Fatalf("whitespace/CRLF: %v", err)
			}
			// A file signs and verifies like the original key.
			msg, err := Sign1(k2, []byte("x"))
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := Verify1(msg, keySet(t, p2)); err != nil {
				t.Fatal(err)
			}
		})
	}
	if MarshalPrivateKeyPEM(nil) != nil || MarshalPublicKeyPEM(nil) != nil {
		t.Fatal("nil key marshalled")
	}
}

// armour wraps body in a PEM block of type typ.
func armour(typ string, body []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: body})
}

// keyBody encodes a key file body by hand.
func keyBody(version uint64, alg int64, key []byte) []byte {
	return cat([]byte{0xa3, 0x00}, head(0, version), []byte{0x01}, cborInt(alg), []byte{0x02}, bstr(key))
}

func TestKeyFileRejects(t *testing.T) {
	k := fixedKey(t, MLDSA87, 0xa5)
	seed := k.Seed()
	pk := k.Public().Bytes()
	good := MarshalPrivateKeyPEM(k)
	goodPub := MarshalPublicKeyPEM(k.Public())
	withHeader := armour(PEMTypePrivateKey, keyBody(1, -50, seed))
	withHeader = bytes.Replace(withHeader, []byte("-----\n"), []byte("-----\nProc-Type: 4,ENCRYPTED\n\n"), 1)
	badBase64 := bytes.Replace(good, []byte("\n"), []byte("\n!!!!"), 2)
	garbageBlock := []byte("-----BEGIN X-----\n!!!!\n-----END X-----\n")

	priv := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"not PEM", []byte("hello"), ErrMalformed},
		{"raw seed", seed, ErrMalformed},
		{"leading garbage", cat([]byte("x\n"), good), ErrMalformed},
		{"trailing garbage", cat(good, []byte("x")), ErrMalformed},
		{"two blocks", cat(good, good), ErrMalformed},
		{"broken block before", cat(garbageBlock, good), ErrMalformed},
		{"PEM headers", withHeader, ErrMalformed},
		{"bad base64", badBase64, ErrMalformed},
		{"public key file", goodPub, ErrMalformed},
		{"wrong type", armour("PRIVATE KEY", keyBody(1, -50, seed)), ErrMalformed},
		{"too large", cat(good, bytes.Repeat([]byte(" "), MaxKeyFileSize)), ErrMalformed},
		{"body not CBOR", armour(PEMTypePrivateKey, []byte{0xff, 0x00}), ErrMalformed},
		{"body empty", armour(PEMTypePrivateKey, nil), ErrMalformed},
		{"body array", armour(PEMTypePrivateKey, cat([]byte{0x83, 0x01}, cborInt(-50), bstr(seed))), ErrMalformed},
		{"missing version", armour(PEMTypePrivateKey, cat([]byte{0xa2, 0x01}, cborInt(-50), []byte{0x02}, bstr(seed))), ErrMalformed},
		{"missing key", armour(PEMTypePrivateKey, cat([]byte{0xa2, 0x00, 0x01, 0x01}, cborInt(-50))), ErrMalformed},
		{"unknown field", armour(PEMTypePrivateKey, cat(append([]byte{0xa4}, keyBody(1, -50, seed)[1:]...), []byte{0x03, 0x00})), ErrMalformed},
		{"duplicate field", armour(PEMTypePrivateKey, cat(append([]byte{0xa4}, keyBody(1, -50, seed)[1:]...), []byte{0x02}, bstr(seed))), ErrMalformed},
		{"keys out of order", armour(PEMTypePrivateKey, cat([]byte{0xa3, 0x02}, bstr(seed), []byte{0x00, 0x01, 0x01}, cborInt(-50))), ErrMalformed},
		{"version not minimal", armour(PEMTypePrivateKey, cat([]byte{0xa3, 0x00, 0x18, 0x01, 0x01}, cborInt(-50), []byte{0x02}, bstr(seed))), ErrMalformed},
		{"trailing CBOR", armour(PEMTypePrivateKey, cat(keyBody(1, -50, seed), []byte{0x00})), ErrMalformed},
		{"version 0", armour(PEMTypePrivateKey, keyBody(0, -50, seed)), ErrUnsupported},
		{"version 2", armour(PEMTypePrivateKey, keyBody(2, -50, seed)), ErrUnsupported},
		{"alg ES256", armour(PEMTypePrivateKey, keyBody(1, -7, seed)), ErrUnsupported},
		{"alg ML-DSA-44", armour(PEMTypePrivateKey, keyBody(1, -48, seed)), ErrUnsupported},
		{"seed 31 bytes", armour(PEMTypePrivateKey, keyBody(1, -50, seed[:31])), ErrInvalidKey},
		{"seed 33 bytes", armour(PEMTypePrivateKey, keyBody(1, -50, cat(seed, []byte{0}))), ErrInvalidKey},
		{"expanded key instead of seed", armour(PEMTypePrivateKey, keyBody(1, -50, bytes.Repeat(seed, 8))), ErrInvalidKey},
	}
	secrets := []string{hex.EncodeToString(seed), base64.StdEncoding.EncodeToString(seed)[:20], string(seed)}
	for _, c := range priv {
		t.Run("private/"+c.name, func(t *testing.T) {
			_, err := ParsePrivateKeyPEM(c.in)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			for _, s := range secrets {
				if strings.Contains(err.Error(), s) {
					t.Fatalf("error contains key material: %v", err)
				}
			}
		})
	}
	pub := []struct {
		name string
		in   []byte
		want error
	}{
		{"secret key file", good, ErrMalformed},
		{"two blocks", cat(goodPub, goodPub), ErrMalformed},
		{"trailing garbage", cat(goodPub, []byte("-----END")), ErrMalformed},
		{"ML-DSA-65 size under -50", armour(PEMTypePublicKey, keyBody(1, -50, fixedKey(t, MLDSA65, 1).Public().Bytes())), ErrInvalidKey},
		{"ML-DSA-87 key under -49", armour(PEMTypePublicKey, keyBody(1, -49, pk)), ErrInvalidKey},
		{"short key", armour(PEMTypePublicKey, keyBody(1, -50, pk[:100])), ErrInvalidKey},
		{"alg -8", armour(PEMTypePublicKey, keyBody(1, -8, pk)), ErrUnsupported},
		{"version 2", armour(PEMTypePublicKey, keyBody(2, -50, pk)), ErrUnsupported},
		{"alg as text", armour(PEMTypePublicKey, cat([]byte{0xa3, 0x00, 0x01, 0x01, 0x69}, []byte("ML-DSA-87"), []byte{0x02}, bstr(pk))), ErrMalformed},
	}
	for _, c := range pub {
		t.Run("public/"+c.name, func(t *testing.T) {
			if _, err := ParsePublicKeyPEM(c.in); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}
