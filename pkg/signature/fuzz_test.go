package signature

import (
	"bytes"
	"errors"
	"testing"

	"github.com/veraison/go-cose"
)

// fuzzKeys are the fixed keys whose messages seed FuzzParseSign1.
func fuzzKeys(t testing.TB) (*PrivateKey, *PrivateKey, *KeySet) {
	k87 := fixedKey(t, MLDSA87, 0x11)
	k65 := fixedKey(t, MLDSA65, 0x22)
	return k87, k65, keySet(t, k87.Public(), k65.Public())
}

// FuzzParseSign1: ParseSign1 never panics; it fails only with ErrMalformed
// or ErrUnsupported; an accepted input re-marshals (through go-cose) to
// exactly itself and is accepted by go-cose's own decoder with the same
// content; Verify never panics, and only the seed messages verify.
func FuzzParseSign1(f *testing.F) {
	k87, k65, keys := fuzzKeys(f)
	valid := map[string]bool{}
	// Seeds are deterministic so that every fuzz worker process agrees on
	// which messages are genuine; TestStandardEncoding shows they have
	// the same structure as Sign1's output.
	for _, s := range []struct {
		alg Alg
		b   byte
	}{{MLDSA87, 0x11}, {MLDSA65, 0x22}} {
		for _, p := range [][]byte{{}, []byte("epoch root"), bytes.Repeat([]byte{0xa5}, 300)} {
			m := detSigned(f, s.alg, s.b, p)
			if _, _, err := Verify1(m, keys); err != nil {
				f.Fatal(err)
			}
			valid[string(m)] = true
			f.Add(m)
		}
	}
	if m, err := Sign1(k65, []byte("hedged")); err == nil {
		f.Add(m) // a hedged signature: genuine, but not in valid
	}
	f.Add([]byte{0xd2, 0x84, 0x40, 0xa0, 0x40, 0x40})
	f.Add(handSigned(f, MLDSA87, 0x11, stdProtected(-7, k87.Public().KID()), []byte("x")))
	f.Fuzz(func(t *testing.T, msg []byte) {
		p, err := ParseSign1(msg)
		if err != nil {
			if p != nil {
				t.Fatal("error with a non-nil result")
			}
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("error of an unexpected class: %v", err)
			}
			return
		}
		again, err := p.marshal()
		if err != nil {
			t.Fatalf("re-marshal: %v", err)
		}
		if !bytes.Equal(again, msg) {
			t.Fatalf("re-marshal differs:\n in %x\nout %x", msg, again)
		}
		var cm cose.Sign1Message
		if err := cm.UnmarshalCBOR(msg); err != nil {
			t.Fatalf("go-cose rejects an accepted message: %v", err)
		}
		if !bytes.Equal(cm.Payload, p.Payload) || !bytes.Equal(cm.Signature, p.signature) {
			t.Fatal("go-cose decodes different content")
		}
		if alg, err := cm.Headers.Protected.Algorithm(); err != nil || Alg(alg) != p.Alg {
			t.Fatalf("go-cose alg %v, %v; ours %v", alg, err, p.Alg)
		}
		if len(p.KID) != KIDSize || len(p.signature) != p.Alg.SignatureSize() {
			t.Fatal("accepted message breaks the size rules")
		}
		if _, err := p.Verify(keys); err == nil && !valid[string(msg)] && !bytes.Equal(p.Payload, []byte("hedged")) {
			t.Fatalf("a message that is not a seed verifies: %x", msg)
		}
	})
}

// FuzzParsePublicKeyPEM: never panics; an accepted file describes a key
// that marshals and parses back to the same key.
func FuzzParsePublicKeyPEM(f *testing.F) {
	for _, alg := range algs {
		f.Add(MarshalPublicKeyPEM(fixedKey(f, alg, 0x33).Public()))
	}
	f.Add([]byte("-----BEGIN ENTROPYKEM ISSUER PUBLIC KEY-----\n\n-----END ENTROPYKEM ISSUER PUBLIC KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParsePublicKeyPEM(data)
		if err != nil {
			if k != nil {
				t.Fatal("error with a non-nil key")
			}
			return
		}
		k2, err := ParsePublicKeyPEM(MarshalPublicKeyPEM(k))
		if err != nil || !k2.Equal(k) || len(k.Bytes()) != k.Alg().PublicKeySize() {
			t.Fatalf("round trip of an accepted key: %v", err)
		}
	})
}

// FuzzParsePrivateKeyPEM: never panics; an accepted file describes a key
// that marshals and parses back to the same seed and public key.
func FuzzParsePrivateKeyPEM(f *testing.F) {
	for _, alg := range algs {
		f.Add(MarshalPrivateKeyPEM(fixedKey(f, alg, 0x44)))
	}
	f.Add([]byte("-----BEGIN ENTROPYKEM ISSUER SECRET KEY-----\noQA=\n-----END ENTROPYKEM ISSUER SECRET KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParsePrivateKeyPEM(data)
		if err != nil {
			if k != nil {
				t.Fatal("error with a non-nil key")
			}
			return
		}
		k2, err := ParsePrivateKeyPEM(MarshalPrivateKeyPEM(k))
		if err != nil || !bytes.Equal(k2.Seed(), k.Seed()) || !k2.Public().Equal(k.Public()) {
			t.Fatalf("round trip of an accepted key: %v", err)
		}
	})
}
