package signature

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"testing/cryptotest"
)

func TestAlgString(t *testing.T) {
	for alg, want := range map[Alg]string{MLDSA87: "ML-DSA-87", MLDSA65: "ML-DSA-65", -7: "Alg(-7)", -48: "Alg(-48)"} {
		if got := alg.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int64(alg), got, want)
		}
	}
	if Default != MLDSA87 || MLDSA87 != -50 || MLDSA65 != -49 {
		t.Fatalf("COSE ids: Default=%d MLDSA87=%d MLDSA65=%d", Default, MLDSA87, MLDSA65)
	}
}

func TestSign1RoundTrip(t *testing.T) {
	for _, alg := range algs {
		t.Run(alg.String(), func(t *testing.T) {
			k, err := GenerateKey(alg)
			if err != nil {
				t.Fatal(err)
			}
			other := fixedKey(t, MLDSA65, 9)
			keys := keySet(t, other.Public(), k.Public())
			payload := []byte("epoch root payload")
			msg, err := Sign1(k, payload)
			if err != nil {
				t.Fatal(err)
			}
			got, key, err := Verify1(msg, keys)
			if err != nil {
				t.Fatalf("Verify1: %v", err)
			}
			if !bytes.Equal(got, payload) {
				t.Errorf("payload = %q, want %q", got, payload)
			}
			if !key.Equal(k.Public()) || key.Alg() != alg {
				t.Errorf("Verify1 returned the wrong key")
			}
			p, err := ParseSign1(msg)
			if err != nil {
				t.Fatal(err)
			}
			if p.Alg != alg || !bytes.Equal(p.KID, k.Public().KID()) {
				t.Errorf("parsed alg %v kid %x, want %v %x", p.Alg, p.KID, alg, k.Public().KID())
			}
			// An empty payload is still an embedded payload.
			msg, err = Sign1(k, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got, _, err := Verify1(msg, keys); err != nil || len(got) != 0 {
				t.Fatalf("empty payload: %q, %v", got, err)
			}
		})
	}
}

// TestKeysMatchCircl derives keys from fixed seeds and compares the public
// key and kid with circl's own derivation and an independent SHA-256.
func TestKeysMatchCircl(t *testing.T) {
	for _, alg := range algs {
		k := fixedKey(t, alg, 1)
		want := circlPublic(t, alg, testSeed(1))
		if !bytes.Equal(k.Public().Bytes(), want) {
			t.Fatalf("%v: public key differs from circl's", alg)
		}
		if len(want) != alg.PublicKeySize() {
			t.Fatalf("%v: public key %d bytes", alg, len(want))
		}
		sum := sha256.Sum256(want)
		if !bytes.Equal(k.Public().KID(), sum[:8]) || KIDSize != 8 {
			t.Fatalf("%v: kid %x, want %x", alg, k.Public().KID(), sum[:8])
		}
		if !bytes.Equal(k.Seed(), testSeed(1)) {
			t.Fatalf("%v: Seed() does not return the seed", alg)
		}
		pk, err := ParsePublicKey(alg, want)
		if err != nil || !pk.Equal(k.Public()) || !bytes.Equal(pk.KID(), sum[:8]) {
			t.Fatalf("%v: ParsePublicKey: %v", alg, err)
		}
		// The kid in a signed message is the same independent value.
		msg, err := Sign1(k, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(msg, stdProtected(int64(alg), sum[:8])) {
			t.Fatalf("%v: message does not carry protected header {1: alg, 4: SHA-256(pk)[:8]}", alg)
		}
	}
	if fixedKey(t, MLDSA87, 1).Public().Equal(fixedKey(t, MLDSA87, 2).Public()) {
		t.Fatal("different seeds gave equal keys")
	}
}

func TestKeyErrors(t *testing.T) {
	if _, err := GenerateKey(-7); !errors.Is(err, ErrUnsupported) {
		t.Errorf("GenerateKey(-7): %v", err)
	}
	if _, err := NewKeyFromSeed(-48, testSeed(1)); !errors.Is(err, ErrUnsupported) {
		t.Errorf("NewKeyFromSeed(-48): %v", err)
	}
	for _, n := range []int{0, 31, 33, 64} {
		if _, err := NewKeyFromSeed(MLDSA87, make([]byte, n)); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("NewKeyFromSeed(%d bytes): %v", n, err)
		}
	}
	pk87 := fixedKey(t, MLDSA87, 1).Public().Bytes()
	pk65 := fixedKey(t, MLDSA65, 1).Public().Bytes()
	for _, c := range []struct {
		alg Alg
		b   []byte
	}{{MLDSA87, pk65}, {MLDSA65, pk87}, {MLDSA87, pk87[:len(pk87)-1]}, {MLDSA87, append(pk87, 0)}, {MLDSA65, nil}} {
		if _, err := ParsePublicKey(c.alg, c.b); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ParsePublicKey(%v, %d bytes): %v", c.alg, len(c.b), err)
		}
	}
	if _, err := ParsePublicKey(-7, pk87); !errors.Is(err, ErrUnsupported) {
		t.Errorf("ParsePublicKey(-7): %v", err)
	}
	if _, err := Sign1(nil, []byte("x")); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("Sign1(nil): %v", err)
	}
}

func TestKeySet(t *testing.T) {
	a := fixedKey(t, MLDSA87, 1).Public()
	b := fixedKey(t, MLDSA65, 1).Public()
	if _, err := NewKeySet(a, b, a); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("duplicate kid: %v", err)
	}
	if _, err := NewKeySet(a, nil); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("nil key: %v", err)
	}
	s := keySet(t, a, b)
	if s.Len() != 2 {
		t.Fatalf("Len = %d", s.Len())
	}
	if k, ok := s.Lookup(b.KID()); !ok || !k.Equal(b) {
		t.Error("Lookup(b) failed")
	}
	if _, ok := s.Lookup(a.KID()[:7]); ok {
		t.Error("Lookup of a 7-byte kid succeeded")
	}
	if _, ok := s.Lookup(append(a.KID(), 0)); ok {
		t.Error("Lookup of a 9-byte kid succeeded")
	}
	var nilSet *KeySet
	if _, ok := nilSet.Lookup(a.KID()); ok {
		t.Error("nil set Lookup succeeded")
	}
}

// TestStandardEncoding checks Sign1's output byte by byte against a
// COSE_Sign1 built by hand, and verifies its signature with circl directly
// over an independently built RFC 9052 Sig_structure. The reverse direction
// (a message built and signed by hand verifies) is checked too.
func TestStandardEncoding(t *testing.T) {
	payload := []byte("root: version 1, epoch 7")
	for _, alg := range algs {
		t.Run(alg.String(), func(t *testing.T) {
			k := fixedKey(t, alg, 3)
			pk := circlPublic(t, alg, testSeed(3))
			sum := sha256.Sum256(pk)
			prot := stdProtected(int64(alg), sum[:8])
			// {1: alg, 4: h'kid'} = a2 01 38 3x 04 48 <8 bytes>
			wantProt := append([]byte{0xa2, 0x01, 0x38, byte(-1 - int64(alg)), 0x04, 0x48}, sum[:8]...)
			if !bytes.Equal(prot, wantProt) {
				t.Fatalf("test encoder: %x != %x", prot, wantProt)
			}
			msg, err := Sign1(k, payload)
			if err != nil {
				t.Fatal(err)
			}
			prefix := cat([]byte{0xd2, 0x84}, bstr(prot), []byte{0xa0}, bstr(payload), head(2, uint64(alg.SignatureSize())))
			if !bytes.HasPrefix(msg, prefix) {
				t.Fatalf("encoding:\n got %x\nwant prefix %x", msg[:min(len(msg), len(prefix))], prefix)
			}
			sig := msg[len(prefix):]
			if len(sig) != alg.SignatureSize() {
				t.Fatalf("signature is %d bytes, want %d", len(sig), alg.SignatureSize())
			}
			if !circlVerify(t, alg, pk, sigStructure(prot, payload), sig) {
				t.Fatal("circl does not verify the signature over the RFC 9052 Sig_structure")
			}
			if circlVerify(t, alg, pk, sigStructure(prot, append(payload, 0)), sig) {
				t.Fatal("circl verifies over a different Sig_structure")
			}
			hand := handSigned(t, alg, 3, prot, payload)
			got, key, err := Verify1(hand, keySet(t, k.Public()))
			if err != nil || !bytes.Equal(got, payload) || !key.Equal(k.Public()) {
				t.Fatalf("hand-built message: %v", err)
			}
		})
	}
}

// TestSigningIsHedged checks that two signatures of the same payload differ
// (fresh randomness, FIPS 204 hedged variant) and that under a fixed global
// random source the same seed gives the same key and the same bytes.
func TestSigningIsHedged(t *testing.T) {
	for _, alg := range algs {
		t.Run(alg.String(), func(t *testing.T) {
			k := fixedKey(t, alg, 4)
			a, err := Sign1(k, []byte("p"))
			if err != nil {
				t.Fatal(err)
			}
			b, err := Sign1(k, []byte("p"))
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(a, b) {
				t.Fatal("two signatures are identical: signing is not randomized")
			}
		})
	}
}

func TestDeterministicUnderGlobalRandom(t *testing.T) {
	run := func() (pub, msg []byte) {
		cryptotest.SetGlobalRandom(t, 42)
		k, err := GenerateKey(Default)
		if err != nil {
			t.Fatal(err)
		}
		msg, err = Sign1(k, []byte("deterministic"))
		if err != nil {
			t.Fatal(err)
		}
		return k.Public().Bytes(), msg
	}
	pub1, msg1 := run()
	pub2, msg2 := run()
	if !bytes.Equal(pub1, pub2) {
		t.Fatal("GenerateKey under the same global seed gave different keys")
	}
	if !bytes.Equal(msg1, msg2) {
		t.Fatal("Sign1 under the same global seed gave different bytes")
	}
	cryptotest.SetGlobalRandom(t, 43)
	k, err := GenerateKey(Default)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(k.Public().Bytes(), pub1) {
		t.Fatal("a different global seed gave the same key")
	}
	pk, err := ParsePublicKey(Default, pub1)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Verify1(msg1, keySet(t, pk)); err != nil {
		t.Fatalf("deterministic message does not verify: %v", err)
	}
}

func TestVerifyUnknownKey(t *testing.T) {
	k := fixedKey(t, MLDSA87, 1)
	msg, err := Sign1(k, []byte("p"))
	if err != nil {
		t.Fatal(err)
	}
	for name, keys := range map[string]*KeySet{
		"other keys": keySet(t, fixedKey(t, MLDSA87, 2).Public(), fixedKey(t, MLDSA65, 1).Public()),
		"empty":      keySet(t),
		"nil":        nil,
	} {
		if _, _, err := Verify1(msg, keys); !errors.Is(err, ErrUnknownKey) {
			t.Errorf("%s: %v, want ErrUnknownKey", name, err)
		}
	}
}

// withKID returns a copy of k listed under another kid, to simulate a kid
// collision, which cannot be produced with real keys.
func withKID(k *PublicKey, kid []byte) *PublicKey {
	c := *k
	copy(c.kid[:], kid)
	return &c
}

// TestVerifyAlgMismatch: a pinned key whose kid matches but whose alg is not
// the header's alg is not tried (ErrUnknownKey), even with a signature that
// is otherwise valid.
func TestVerifyAlgMismatch(t *testing.T) {
	k87 := fixedKey(t, MLDSA87, 1)
	k65 := fixedKey(t, MLDSA65, 1)
	msg, err := Sign1(k87, []byte("p"))
	if err != nil {
		t.Fatal(err)
	}
	keys := keySet(t, withKID(k65.Public(), k87.Public().KID()))
	_, _, err = Verify1(msg, keys)
	if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), "ML-DSA-65") {
		t.Fatalf("alg mismatch: %v, want ErrUnknownKey naming the pinned alg", err)
	}
}

// TestBitFlips flips every bit of the message outside the signature and one
// bit of every 7th signature byte (and of its last byte); each flip must be rejected, with the error the
// position calls for.
func TestBitFlips(t *testing.T) {
	for _, alg := range algs {
		t.Run(alg.String(), func(t *testing.T) {
			k := fixedKey(t, alg, 5)
			payload := []byte("payload under test")
			msg, err := Sign1(k, payload)
			if err != nil {
				t.Fatal(err)
			}
			keys := keySet(t, k.Public())
			sigStart := len(msg) - alg.SignatureSize()
			payloadStart := sigStart - 3 - len(payload) // sig bstr head is 3 bytes
			if !bytes.Equal(msg[payloadStart:payloadStart+len(payload)], payload) {
				t.Fatal("payload position")
			}
			kidStart := 2 + 1 + 6 // tag, array, bstr head, a2 01 38 xx 04 48
			for i := 0; i < len(msg); i++ {
				if i >= sigStart && (i-sigStart)%7 != 0 && i != len(msg)-1 {
					continue
				}
				for bit := 0; bit < 8; bit++ {
					if i >= sigStart && bit != i%8 {
						continue // one bit per sampled signature byte
					}
					m := bytes.Clone(msg)
					m[i] ^= 1 << bit
					_, _, err := Verify1(m, keys)
					if err == nil {
						t.Fatalf("flip byte %d bit %d accepted", i, bit)
					}
					switch {
					case i >= sigStart || (i >= payloadStart && i < payloadStart+len(payload)):
						if !errors.Is(err, ErrBadSignature) {
							t.Fatalf("flip byte %d bit %d (payload/signature): %v, want ErrBadSignature", i, bit, err)
						}
					case i >= kidStart && i < kidStart+KIDSize:
						if !errors.Is(err, ErrUnknownKey) {
							t.Fatalf("flip byte %d bit %d (kid): %v, want ErrUnknownKey", i, bit, err)
						}
					default:
						if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupported) {
							t.Fatalf("flip byte %d bit %d (structure): %v, want ErrMalformed or ErrUnsupported", i, bit, err)
						}
					}
				}
			}
		})
	}
}

// TestProtectedHeaderIsSigned pins the key under a flipped kid, so the
// lookup succeeds and only the signature over the protected header can
// reject the message.
func TestProtectedHeaderIsSigned(t *testing.T) {
	for _, alg := range algs {
		k := fixedKey(t, alg, 6)
		msg, err := Sign1(k, []byte("p"))
		if err != nil {
			t.Fatal(err)
		}
		kidStart := 9
		m := bytes.Clone(msg)
		m[kidStart] ^= 0x01
		p, err := ParseSign1(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Verify(keySet(t, withKID(k.Public(), p.KID))); !errors.Is(err, ErrBadSignature) {
			t.Fatalf("%v: flipped kid with matching pinned key: %v, want ErrBadSignature", alg, err)
		}
	}
}

// TestParseRejects checks each structural rule with a message that is
// otherwise valid and, where the rule concerns signed bytes, correctly
// signed over the RFC 9052 Sig_structure.
func TestParseRejects(t *testing.T) {
	const alg = MLDSA87
	k := fixedKey(t, alg, 7)
	kid := k.Public().KID()
	keys := keySet(t, k.Public())
	payload := []byte("p")
	prot := stdProtected(int64(alg), kid)
	good := handSigned(t, alg, 7, prot, payload)
	if _, _, err := Verify1(good, keys); err != nil {
		t.Fatalf("baseline: %v", err)
	}
	sig := good[len(good)-alg.SignatureSize():]
	sig65 := circlSign(t, MLDSA65, testSeed(7), sigStructure(prot, payload))
	body := good[1:] // untagged COSE_Sign1

	cases := []struct {
		name string
		msg  []byte
		want error
		text string
	}{
		{"empty", nil, ErrMalformed, "empty"},
		{"untagged", body, ErrMalformed, "untagged"},
		{"tag 17", cat([]byte{0xd1}, body), ErrMalformed, "other than 18"},
		{"tag 98 (COSE_Sign)", cat([]byte{0xd8, 0x62}, body), ErrMalformed, "other than 18"},
		{"tag 18 in two bytes", cat([]byte{0xd8, 0x12}, body), ErrMalformed, "not in deterministic"},
		{"double tag", cat([]byte{0xd2, 0xd2}, body), ErrMalformed, "COSE_Sign1"},
		{"too large", cat(good, make([]byte, MaxSign1Size)), ErrMalformed, "limit"},
		{"trailing byte", cat(good, []byte{0x00}), ErrMalformed, "COSE_Sign1"},
		{"3-element array", cat([]byte{0xd2, 0x83}, bstr(prot), []byte{0xa0}, bstr(payload)), ErrMalformed, "COSE_Sign1"},
		{"5-element array", cat([]byte{0xd2, 0x85}, body[1:], []byte{0x40}), ErrMalformed, "COSE_Sign1"},
		{"indefinite array", cat([]byte{0xd2, 0x9f}, body[1:], []byte{0xff}), ErrMalformed, "COSE_Sign1"},
		{"map instead of array", cat([]byte{0xd2, 0xa0}), ErrMalformed, "COSE_Sign1"},
		{"extra unprotected header", sign1Bytes([]byte{0xd2}, prot, cat([]byte{0xa1, 0x04}, bstr(kid)), bstr(payload), bstr(sig)), ErrMalformed, "COSE_Sign1"},
		{"unprotected not a map", sign1Bytes([]byte{0xd2}, prot, []byte{0x80}, bstr(payload), bstr(sig)), ErrMalformed, "COSE_Sign1"},
		{"extra protected field", handSigned(t, alg, 7, cat([]byte{0xa3, 0x01}, cborInt(int64(alg)), []byte{0x03, 0x00, 0x04}, bstr(kid)), payload), ErrMalformed, "protected header"},
		{"protected keys out of order", handSigned(t, alg, 7, cat([]byte{0xa2, 0x04}, bstr(kid), []byte{0x01}, cborInt(int64(alg))), payload), ErrMalformed, "protected header"},
		{"protected alg not minimal", handSigned(t, alg, 7, cat([]byte{0xa2, 0x01, 0x39, 0x00, 0x31, 0x04}, bstr(kid)), payload), ErrMalformed, "protected header"},
		{"protected duplicate key", handSigned(t, alg, 7, cat([]byte{0xa3, 0x01}, cborInt(int64(alg)), []byte{0x01}, cborInt(int64(alg)), []byte{0x04}, bstr(kid)), payload), ErrMalformed, "protected header"},
		{"protected indefinite map", handSigned(t, alg, 7, cat([]byte{0xbf, 0x01}, cborInt(int64(alg)), []byte{0x04}, bstr(kid), []byte{0xff}), payload), ErrMalformed, "protected header"},
		{"protected empty", handSigned(t, alg, 7, nil, payload), ErrMalformed, "protected header"},
		{"protected empty map", handSigned(t, alg, 7, []byte{0xa0}, payload), ErrMalformed, "missing alg"},
		{"protected missing kid", handSigned(t, alg, 7, cat([]byte{0xa1, 0x01}, cborInt(int64(alg))), payload), ErrMalformed, "kid"},
		{"protected kid 7 bytes", handSigned(t, alg, 7, stdProtected(int64(alg), kid[:7]), payload), ErrMalformed, "kid"},
		{"protected kid text", handSigned(t, alg, 7, cat([]byte{0xa2, 0x01}, cborInt(int64(alg)), []byte{0x04, 0x68}, kid), payload), ErrMalformed, "protected header"},
		{"protected alg text", handSigned(t, alg, 7, cat([]byte{0xa2, 0x01, 0x69}, []byte("ML-DSA-87"), []byte{0x04}, bstr(kid)), payload), ErrMalformed, "protected header"},
		{"protected trailing byte", handSigned(t, alg, 7, cat(prot, []byte{0x00}), payload), ErrMalformed, "protected header"},
		{"protected tagged", handSigned(t, alg, 7, cat([]byte{0xc1}, prot), payload), ErrMalformed, "protected header"},
		{"protected as map, not bstr", cat([]byte{0xd2, 0x84}, prot, []byte{0xa0}, bstr(payload), bstr(sig)), ErrMalformed, "COSE_Sign1"},
		{"alg ES256 (-7)", handSigned(t, alg, 7, stdProtected(-7, kid), payload), ErrUnsupported, "allow-list"},
		{"alg ML-DSA-44 (-48)", handSigned(t, alg, 7, stdProtected(-48, kid), payload), ErrUnsupported, "allow-list"},
		{"alg EdDSA (-8)", handSigned(t, alg, 7, stdProtected(-8, kid), payload), ErrUnsupported, "allow-list"},
		{"detached payload", sign1Bytes([]byte{0xd2}, prot, []byte{0xa0}, []byte{0xf6}, bstr(sig)), ErrMalformed, "detached"},
		{"payload text", sign1Bytes([]byte{0xd2}, prot, []byte{0xa0}, []byte{0x61, 'p'}, bstr(sig)), ErrMalformed, "COSE_Sign1"},
		{"payload bstr not minimal", sign1Bytes([]byte{0xd2}, prot, []byte{0xa0}, []byte{0x58, 0x01, 'p'}, bstr(sig)), ErrMalformed, "deterministic"},
		{"payload indefinite bstr", sign1Bytes([]byte{0xd2}, prot, []byte{0xa0}, []byte{0x5f, 0x41, 'p', 0xff}, bstr(sig)), ErrMalformed, "COSE_Sign1"},
		{"signature short", sign1Bytes([]byte{0xd2}, prot, []byte{0xa0}, bstr(payload), bstr(sig[1:])), ErrMalformed, "signature is"},
		{"signature long", sign1Bytes([]byte{0xd2}, prot, []byte{0xa0}, bstr(payload), bstr(cat(sig, []byte{0}))), ErrMalformed, "signature is"},
		{"signature of ML-DSA-65 size", sign1Bytes([]byte{0xd2}, prot, []byte{0xa0}, bstr(payload), bstr(sig65)), ErrMalformed, "signature is"},
		{"signature nil", sign1Bytes([]byte{0xd2}, prot, []byte{0xa0}, bstr(payload), []byte{0xf6}), ErrMalformed, "signature is"},
		{"signature empty", sign1Bytes([]byte{0xd2}, prot, []byte{0xa0}, bstr(payload), []byte{0x40}), ErrMalformed, "signature is"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseSign1(c.msg)
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.text) {
				t.Fatalf("ParseSign1: %v, want %v containing %q", err, c.want, c.text)
			}
			if _, _, err := Verify1(c.msg, keys); !errors.Is(err, c.want) {
				t.Fatalf("Verify1: %v, want %v", err, c.want)
			}
		})
	}
}

// TestAlgSwapInHeader: a genuine ML-DSA-65 signature presented under an
// ML-DSA-87 header, and vice versa, never verifies.
func TestAlgSwapInHeader(t *testing.T) {
	k65 := fixedKey(t, MLDSA65, 8)
	payload := []byte("p")
	prot := stdProtected(int64(MLDSA87), k65.Public().KID())
	sig := circlSign(t, MLDSA65, testSeed(8), sigStructure(prot, payload))
	msg := sign1Bytes([]byte{0xd2}, prot, []byte{0xa0}, bstr(payload), bstr(sig))
	if _, _, err := Verify1(msg, keySet(t, k65.Public())); !errors.Is(err, ErrMalformed) {
		t.Fatalf("65 signature under 87 header: %v, want ErrMalformed (signature size)", err)
	}
}

func TestNilParsed(t *testing.T) {
	var p *Parsed
	if _, err := p.Verify(nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("nil Parsed: %v", err)
	}
}
