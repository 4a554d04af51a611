package kem

import (
	"bytes"
	"crypto/hpke"
	"crypto/mlkem"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"testing"
	"testing/cryptotest"
)

// allSchemes returns every scheme of the allow-list, failing the test if
// Lookup refuses one.
func allSchemes(t testing.TB) []Scheme {
	t.Helper()
	var out []Scheme
	for _, id := range IDs() {
		s, err := Lookup(id)
		if err != nil {
			t.Fatalf("Lookup(%v): %v", id, err)
		}
		out = append(out, s)
	}
	return out
}

// countingSeed returns n bytes 0, 1, 2, ...
func countingSeed(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func mustKey(t testing.TB, s Scheme, seed []byte) PrivateKey {
	t.Helper()
	sk, err := s.NewPrivateKey(seed)
	if err != nil {
		t.Fatalf("%v NewPrivateKey: %v", s.ID(), err)
	}
	return sk
}

func TestIDsAndSizes(t *testing.T) {
	// Sizes and identifiers cross-checked against the standard library's
	// independent FIPS 203 and HPKE implementations.
	want := []struct {
		id           ID
		name         string
		pk, ct, seed int
		hpkeKEM      hpke.KEM
	}{
		{MLKEM1024, "ML-KEM-1024", mlkem.EncapsulationKeySize1024, mlkem.CiphertextSize1024, mlkem.SeedSize, hpke.MLKEM1024()},
		{MLKEM768, "ML-KEM-768", mlkem.EncapsulationKeySize768, mlkem.CiphertextSize768, mlkem.SeedSize, hpke.MLKEM768()},
		{XWing, "X-Wing", mlkem.EncapsulationKeySize768 + 32, mlkem.CiphertextSize768 + 32, 32, hpke.MLKEM768X25519()},
	}
	if Default != MLKEM1024 {
		t.Errorf("Default = %v, want ML-KEM-1024", Default)
	}
	if got := IDs(); len(got) != len(want) || got[0] != Default {
		t.Errorf("IDs() = %v, want %d ids with the default first", got, len(want))
	}
	for _, w := range want {
		s, err := Lookup(w.id)
		if err != nil {
			t.Fatalf("Lookup(%#04x): %v", uint16(w.id), err)
		}
		if s.ID() != w.id || w.id.String() != w.name {
			t.Errorf("%#04x: ID %v name %q, want %q", uint16(w.id), s.ID(), w.id.String(), w.name)
		}
		if uint16(w.id) != w.hpkeKEM.ID() {
			t.Errorf("%v: id %#04x, crypto/hpke says %#04x", w.id, uint16(w.id), w.hpkeKEM.ID())
		}
		if k, err := hpke.NewKEM(uint16(w.id)); err != nil || k.ID() != uint16(w.id) {
			t.Errorf("%v: crypto/hpke NewKEM(%#04x) = %v, %v", w.id, uint16(w.id), k, err)
		}
		if s.PublicKeySize() != w.pk || s.CiphertextSize() != w.ct || s.SeedSize() != w.seed || s.SharedKeySize() != 32 {
			t.Errorf("%v sizes pk %d ct %d seed %d ss %d, want %d %d %d 32", w.id,
				s.PublicKeySize(), s.CiphertextSize(), s.SeedSize(), s.SharedKeySize(), w.pk, w.ct, w.seed)
		}
	}
}

func TestLookupRejectsUnknownIDs(t *testing.T) {
	accepted := 0
	for i := 0; i <= 0xffff; i++ {
		id := ID(i)
		s, err := Lookup(id)
		switch id {
		case MLKEM768, MLKEM1024, XWing:
			if err != nil || s == nil {
				t.Errorf("Lookup(%v) = %v, %v", id, s, err)
			}
			accepted++
		default:
			if !errors.Is(err, ErrUnsupported) || s != nil {
				t.Fatalf("Lookup(%#04x) = %v, %v; want ErrUnsupported", i, s, err)
			}
		}
	}
	if accepted != 3 {
		t.Errorf("%d ids accepted, want 3", accepted)
	}
	// Neighbours worth naming: ML-KEM-512 (0x0040) and the other hybrids
	// of draft-ietf-hpke-pq are deliberately not on the list.
	for _, id := range []ID{0x0040, 0x0050, 0x0051, 0x0010, 0x0020} {
		if _, err := Lookup(id); !errors.Is(err, ErrUnsupported) {
			t.Errorf("Lookup(%v) err = %v", id, err)
		}
	}
	if got := ID(0x0040).String(); got != "kem(0x0040)" {
		t.Errorf("String of unknown id = %q", got)
	}
	if got := ID(0xbeef).String(); got != "kem(0xbeef)" {
		t.Errorf("String of unknown id = %q", got)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, s := range allSchemes(t) {
		t.Run(s.ID().String(), func(t *testing.T) {
			sk, err := s.GenerateKey()
			if err != nil {
				t.Fatal(err)
			}
			if sk.Scheme() != s || sk.PublicKey().Scheme() != s {
				t.Fatal("keys report the wrong scheme")
			}
			// The receiver publishes its key; the sender parses it.
			pk, err := s.ParsePublicKey(sk.PublicKey().Bytes())
			if err != nil {
				t.Fatalf("ParsePublicKey of own key: %v", err)
			}
			ct, ss, err := pk.Encapsulate()
			if err != nil {
				t.Fatal(err)
			}
			if len(ct) != s.CiphertextSize() || len(ss) != s.SharedKeySize() {
				t.Fatalf("ct %d bytes, ss %d bytes", len(ct), len(ss))
			}
			got, err := sk.Decapsulate(ct)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, ss) {
				t.Fatal("decapsulated shared secret differs from encapsulated one")
			}
			// Fresh randomness per encapsulation.
			ct2, ss2, err := pk.Encapsulate()
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(ct, ct2) || bytes.Equal(ss, ss2) {
				t.Fatal("two encapsulations gave the same output")
			}
			// In place: the same, into the caller's buffers, fresh again.
			ct3, ss3 := make([]byte, s.CiphertextSize()), make([]byte, SharedKeySize)
			if err := pk.EncapsulateTo(ct3, ss3); err != nil {
				t.Fatal(err)
			}
			if got, err := sk.Decapsulate(ct3); err != nil || !bytes.Equal(got, ss3) || bytes.Equal(ss3, ss2) {
				t.Fatalf("EncapsulateTo: decapsulation %x, want %x (%v)", got, ss3, err)
			}
			for _, bad := range [][2]int{{s.CiphertextSize() - 1, SharedKeySize}, {s.CiphertextSize(), SharedKeySize + 1}} {
				if err := pk.EncapsulateTo(make([]byte, bad[0]), make([]byte, bad[1])); !errors.Is(err, ErrInvalidCiphertext) {
					t.Fatalf("EncapsulateTo into %v bytes: %v", bad, err)
				}
			}
			// Another key cannot recover the secret.
			other, err := s.GenerateKey()
			if err != nil {
				t.Fatal(err)
			}
			wrong, err := other.Decapsulate(ct)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(wrong, ss) {
				t.Fatal("a different key decapsulated the same secret")
			}
		})
	}
}

func TestImplicitRejection(t *testing.T) {
	for _, s := range allSchemes(t) {
		t.Run(s.ID().String(), func(t *testing.T) {
			sk := mustKey(t, s, countingSeed(s.SeedSize()))
			ct, ss, err := sk.PublicKey().Encapsulate()
			if err != nil {
				t.Fatal(err)
			}
			ct[0] ^= 1
			bad1, err := sk.Decapsulate(ct)
			if err != nil {
				t.Fatalf("tampered ciphertext of the right length must not error: %v", err)
			}
			bad2, _ := sk.Decapsulate(ct)
			if bytes.Equal(bad1, ss) || len(bad1) != 32 || !bytes.Equal(bad1, bad2) {
				t.Fatal("implicit rejection must give a different, deterministic 32-byte secret")
			}
		})
	}
}

func TestSeedDeterminism(t *testing.T) {
	for _, s := range allSchemes(t) {
		t.Run(s.ID().String(), func(t *testing.T) {
			seed := countingSeed(s.SeedSize())
			a := mustKey(t, s, seed)
			b := mustKey(t, s, seed)
			if !bytes.Equal(a.PublicKey().Bytes(), b.PublicKey().Bytes()) {
				t.Fatal("same seed gave different public keys")
			}
			if !bytes.Equal(a.Seed(), seed) {
				t.Fatal("Seed() does not return the seed")
			}
			// The seed alone restores the key: b decapsulates a's ciphertext.
			ct, ss, err := a.PublicKey().Encapsulate()
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := b.Decapsulate(ct); !bytes.Equal(got, ss) {
				t.Fatal("key restored from seed does not decapsulate")
			}
			// Every byte of the seed matters (d and z for ML-KEM: z only
			// shows in implicit rejection, so compare those outputs too).
			bad := append([]byte(nil), ct...)
			bad[1] ^= 0x80
			rej, _ := a.Decapsulate(bad)
			for _, i := range []int{0, s.SeedSize() - 1} {
				seed2 := countingSeed(s.SeedSize())
				seed2[i] ^= 1
				c := mustKey(t, s, seed2)
				rej2, _ := c.Decapsulate(bad)
				if bytes.Equal(c.PublicKey().Bytes(), a.PublicKey().Bytes()) && bytes.Equal(rej, rej2) {
					t.Errorf("seed byte %d does not affect the key", i)
				}
			}
			// Copies, not aliases.
			seed[0] ^= 0xff
			if bytes.Equal(a.Seed(), seed) {
				t.Fatal("NewPrivateKey kept a reference to the caller's seed")
			}
			got := a.Seed()
			got[0] ^= 0xff
			if bytes.Equal(a.Seed(), got) {
				t.Fatal("Seed() exposes internal storage")
			}
			pkb := a.PublicKey().Bytes()
			pkb[0] ^= 0xff
			if bytes.Equal(a.PublicKey().Bytes(), pkb) {
				t.Fatal("Bytes() exposes internal storage")
			}
			in := b.PublicKey().Bytes()
			pk, err := s.ParsePublicKey(in)
			if err != nil {
				t.Fatal(err)
			}
			in[0] ^= 0xff
			if bytes.Equal(pk.Bytes(), in) {
				t.Fatal("ParsePublicKey kept a reference to its input")
			}
		})
	}
}

// TestGenerateKeyUsesCryptoRand shows that GenerateKey and Encapsulate draw
// their randomness from crypto/rand (and nowhere else): with the global
// random source fixed, the outputs repeat.
func TestGenerateKeyUsesCryptoRand(t *testing.T) {
	for _, s := range allSchemes(t) {
		t.Run(s.ID().String(), func(t *testing.T) {
			run := func() (pk, ct, ss []byte) {
				cryptotest.SetGlobalRandom(t, 42)
				sk, err := s.GenerateKey()
				if err != nil {
					t.Fatal(err)
				}
				ct, ss, err = sk.PublicKey().Encapsulate()
				if err != nil {
					t.Fatal(err)
				}
				return sk.PublicKey().Bytes(), ct, ss
			}
			pk1, ct1, ss1 := run()
			pk2, ct2, ss2 := run()
			if !bytes.Equal(pk1, pk2) || !bytes.Equal(ct1, ct2) || !bytes.Equal(ss1, ss2) {
				t.Fatal("GenerateKey/Encapsulate do not draw only from crypto/rand")
			}
		})
	}
}

// TestBadLengths sweeps every wrong length 0..size+1 for public keys, seeds
// and ciphertexts: each must be refused with its sentinel and no panic.
func TestBadLengths(t *testing.T) {
	for _, s := range allSchemes(t) {
		t.Run(s.ID().String(), func(t *testing.T) {
			sk := mustKey(t, s, countingSeed(s.SeedSize()))
			validPK := sk.PublicKey().Bytes()
			ct, _, err := sk.PublicKey().Encapsulate()
			if err != nil {
				t.Fatal(err)
			}
			// Truncations and extensions of valid encodings.
			stretch := func(valid []byte, n int) []byte {
				b := make([]byte, n)
				copy(b, valid)
				return b
			}
			for n := 0; n <= s.PublicKeySize()+1; n++ {
				if n == s.PublicKeySize() {
					continue
				}
				pk, err := s.ParsePublicKey(stretch(validPK, n))
				if !errors.Is(err, ErrInvalidPublicKey) || pk != nil {
					t.Fatalf("ParsePublicKey(%d bytes) = %v, %v", n, pk, err)
				}
			}
			for n := 0; n <= s.SeedSize()+1; n++ {
				if n == s.SeedSize() {
					continue
				}
				k, err := s.NewPrivateKey(stretch(countingSeed(s.SeedSize()), n))
				if !errors.Is(err, ErrInvalidSeed) || k != nil {
					t.Fatalf("NewPrivateKey(%d bytes) = %v, %v", n, k, err)
				}
			}
			for n := 0; n <= s.CiphertextSize()+1; n++ {
				if n == s.CiphertextSize() {
					continue
				}
				ss, err := sk.Decapsulate(stretch(ct, n))
				if !errors.Is(err, ErrInvalidCiphertext) || ss != nil {
					t.Fatalf("Decapsulate(%d bytes) = %x, %v", n, ss, err)
				}
			}
			if _, err := s.ParsePublicKey(nil); !errors.Is(err, ErrInvalidPublicKey) {
				t.Fatalf("ParsePublicKey(nil): %v", err)
			}
			if _, err := s.NewPrivateKey(nil); !errors.Is(err, ErrInvalidSeed) {
				t.Fatalf("NewPrivateKey(nil): %v", err)
			}
			if _, err := sk.Decapsulate(nil); !errors.Is(err, ErrInvalidCiphertext) {
				t.Fatalf("Decapsulate(nil): %v", err)
			}
		})
	}
}

// mlkemPart returns the number of polynomials k and the ML-KEM encapsulation
// key inside an encoded key of s (all of it for ML-KEM, the first 1184 bytes
// for X-Wing).
func mlkemPart(s Scheme, b []byte) (k int, ek []byte) {
	switch s.ID() {
	case MLKEM1024:
		return 4, b
	default:
		return 3, b[:mlkem.EncapsulationKeySize768]
	}
}

// coeff and setCoeff read and write coefficient i of the 12-bit ByteEncode
// (FIPS 203 Algorithm 5) of t̂ at the start of an encapsulation key.
func coeff(b []byte, i int) uint16 {
	j := 3 * (i / 2)
	if i%2 == 0 {
		return uint16(b[j]) | uint16(b[j+1]&0x0f)<<8
	}
	return uint16(b[j+1]>>4) | uint16(b[j+2])<<4
}

func setCoeff(b []byte, i int, v uint16) {
	j := 3 * (i / 2)
	if i%2 == 0 {
		b[j] = byte(v)
		b[j+1] = b[j+1]&0xf0 | byte(v>>8)&0x0f
		return
	}
	b[j+1] = b[j+1]&0x0f | byte(v<<4)
	b[j+2] = byte(v >> 4)
}

// stdAccepts reports whether the standard library's implementation accepts
// the encoded key of the given scheme.
func stdAccepts(id ID, b []byte) bool {
	var err error
	switch id {
	case MLKEM1024:
		_, err = mlkem.NewEncapsulationKey1024(b)
	case MLKEM768:
		_, err = mlkem.NewEncapsulationKey768(b)
	case XWing:
		_, err = hpke.MLKEM768X25519().NewPublicKey(b)
	default:
		panic("unknown id")
	}
	return err == nil
}

// TestModulusCheck: FIPS 203 §7.2 encapsulation key check. A key with any
// 12-bit coefficient >= q = 3329 must be rejected, and the decision must
// agree with crypto/mlkem.
func TestModulusCheck(t *testing.T) {
	const q = 3329
	for _, s := range allSchemes(t) {
		t.Run(s.ID().String(), func(t *testing.T) {
			valid := mustKey(t, s, countingSeed(s.SeedSize())).PublicKey().Bytes()
			k, ek := mlkemPart(s, valid)
			n := 256 * k
			for i := 0; i < n; i++ {
				if c := coeff(ek, i); c >= q {
					t.Fatalf("helper decodes coefficient %d of a valid key as %d", i, c)
				}
			}
			check := func(i int, v uint16) {
				t.Helper()
				b := append([]byte(nil), valid...)
				_, part := mlkemPart(s, b)
				setCoeff(part, i, v)
				if coeff(part, i) != v {
					t.Fatalf("setCoeff(%d, %d) did not round-trip", i, v)
				}
				pk, err := s.ParsePublicKey(b)
				wantOK := v < q
				if stdOK := stdAccepts(s.ID(), b); stdOK != wantOK {
					t.Fatalf("crypto/mlkem accepts coefficient %d = %d: %v", i, v, stdOK)
				}
				if wantOK {
					if err != nil {
						t.Fatalf("coefficient %d = %d rejected: %v", i, v, err)
					}
					if !bytes.Equal(pk.Bytes(), b) {
						t.Fatal("Bytes() differs from the parsed input")
					}
					return
				}
				if !errors.Is(err, ErrInvalidPublicKey) || pk != nil {
					t.Fatalf("coefficient %d = %#x accepted: %v, %v", i, v, pk, err)
				}
			}
			// The brief's example: a coefficient set to 0xFFF, first and last.
			check(0, 0xfff)
			check(1, 0xfff)
			check(n-1, 0xfff)
			check(n/2+1, q)
			// The boundary, on an even and an odd coefficient.
			for _, i := range []int{0, 1, 256, n - 2, n - 1} {
				for v := uint16(q - 8); v <= 0xfff; v++ {
					check(i, v)
				}
				check(i, 0)
			}
		})
	}
}

// hpkeVector is one KEM-level entry of the draft-ietf-hpke-pq test vectors
// shipped with Go (src/crypto/hpke/testdata/hpke-pq.json), see
// testdata/README.md.
type hpkeVector struct {
	KEMID        uint16 `json:"kem_id"`
	IkmE         string `json:"ikmE"`
	SkRm         string `json:"skRm"`
	PkRm         string `json:"pkRm"`
	Enc          string `json:"enc"`
	SharedSecret string `json:"shared_secret"`
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHPKEVectors checks external known answers: for each KEM, the seed
// (skRm) gives the published public key, deterministic encapsulation with
// the published randomness (ikmE) gives the published ciphertext and shared
// secret, and decapsulation recovers it.
func TestHPKEVectors(t *testing.T) {
	data, err := os.ReadFile("testdata/hpke-pq-kem.json")
	if err != nil {
		t.Fatal(err)
	}
	var vs []hpkeVector
	if err := json.Unmarshal(data, &vs); err != nil {
		t.Fatal(err)
	}
	seen := map[ID]int{}
	for _, v := range vs {
		s, err := Lookup(ID(v.KEMID))
		if err != nil {
			t.Fatalf("vector for %#04x: %v", v.KEMID, err)
		}
		seen[s.ID()]++
		sk := mustKey(t, s, unhex(t, v.SkRm))
		pkRm := unhex(t, v.PkRm)
		if !bytes.Equal(sk.PublicKey().Bytes(), pkRm) {
			t.Errorf("%v: public key from seed differs from the vector", s.ID())
		}
		pk, err := s.ParsePublicKey(pkRm)
		if err != nil {
			t.Fatalf("%v: vector public key rejected: %v", s.ID(), err)
		}
		ct, ss, err := pk.(*publicKey).encapsulateDeterministically(unhex(t, v.IkmE))
		if err != nil {
			t.Fatal(err)
		}
		wantCT, wantSS := unhex(t, v.Enc), unhex(t, v.SharedSecret)
		if !bytes.Equal(ct, wantCT) || !bytes.Equal(ss, wantSS) {
			t.Errorf("%v: deterministic encapsulation differs from the vector", s.ID())
		}
		got, err := sk.Decapsulate(wantCT)
		if err != nil || !bytes.Equal(got, wantSS) {
			t.Errorf("%v: decapsulation of the vector = %x, %v", s.ID(), got, err)
		}
	}
	for _, id := range IDs() {
		if seen[id] == 0 {
			t.Errorf("no vector for %v", id)
		}
	}
}

// knownPKHash is SHA-256 of the public key derived from the seed 0, 1, 2, ...
// (SeedSize bytes), recorded from crypto/mlkem and crypto/hpke with Go 1.26.
// TestKnownAnswerPKHash also recomputes it from those implementations.
var knownPKHash = map[ID]string{
	MLKEM1024: "c7b8fa0aa471d5ae18922d6ccad5b31e1d84f92ae723abfd13747018740a8530",
	MLKEM768:  "0b7934c83125c788995e2ba6bd761e33046b3e40571be53e023309a29f398cc9",
	XWing:     "c9a3565ffde4f72b51661be391ee13e46378d7f06dd5c8bf5af9d2cfb5b8336b",
}

// stdPublicKey derives the encapsulation key from seed with the standard
// library, an implementation independent of circl.
func stdPublicKey(t *testing.T, id ID, seed []byte) []byte {
	t.Helper()
	switch id {
	case MLKEM1024:
		dk, err := mlkem.NewDecapsulationKey1024(seed)
		if err != nil {
			t.Fatal(err)
		}
		return dk.EncapsulationKey().Bytes()
	case MLKEM768:
		dk, err := mlkem.NewDecapsulationKey768(seed)
		if err != nil {
			t.Fatal(err)
		}
		return dk.EncapsulationKey().Bytes()
	case XWing:
		sk, err := hpke.MLKEM768X25519().NewPrivateKey(seed)
		if err != nil {
			t.Fatal(err)
		}
		return sk.PublicKey().Bytes()
	}
	t.Fatalf("no standard implementation of %v", id)
	return nil
}

func TestKnownAnswerPKHash(t *testing.T) {
	for _, s := range allSchemes(t) {
		t.Run(s.ID().String(), func(t *testing.T) {
			seed := countingSeed(s.SeedSize())
			got := PublicKeyHash(mustKey(t, s, seed).PublicKey().Bytes())
			std := PublicKeyHash(stdPublicKey(t, s.ID(), seed))
			if !bytes.Equal(got, std) {
				t.Errorf("pk hash %x, standard library %x", got, std)
			}
			if want := knownPKHash[s.ID()]; hex.EncodeToString(got) != want {
				t.Errorf("pk hash %x, recorded %s", got, want)
			}
			// Hash is cached at derivation and at parsing: both must be
			// SHA-256 of the encoding.
			if h := mustKey(t, s, seed).PublicKey().Hash(); !bytes.Equal(h, got) {
				t.Errorf("derived key's Hash %x, want %x", h, got)
			}
			parsed, err := s.ParsePublicKey(stdPublicKey(t, s.ID(), seed))
			if err != nil {
				t.Fatal(err)
			}
			if h := parsed.Hash(); !bytes.Equal(h, got) {
				t.Errorf("parsed key's Hash %x, want %x", h, got)
			}
		})
	}
}

func TestPublicKeyHash(t *testing.T) {
	// SHA-256("abc"), FIPS 180-4 example.
	const want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	if got := hex.EncodeToString(PublicKeyHash([]byte("abc"))); got != want {
		t.Fatalf("PublicKeyHash(abc) = %s", got)
	}
}
