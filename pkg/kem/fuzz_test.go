package kem

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzParsePublicKey: ParsePublicKey never panics, refuses only with
// ErrInvalidPublicKey, accepts exactly what the standard library accepts
// (crypto/mlkem, crypto/hpke for X-Wing), and an accepted key re-encodes to
// its input and can be encapsulated to.
func FuzzParsePublicKey(f *testing.F) {
	ids := IDs()
	for i, id := range ids {
		s, err := Lookup(id)
		if err != nil {
			f.Fatal(err)
		}
		sk, err := s.NewPrivateKey(countingSeed(s.SeedSize()))
		if err != nil {
			f.Fatal(err)
		}
		pk := sk.PublicKey().Bytes()
		f.Add(uint8(i), pk)
		bad := append([]byte(nil), pk...)
		setCoeff(bad, 0, 0xfff)
		f.Add(uint8(i), bad)
		f.Add(uint8(i), pk[:len(pk)-1])
	}
	f.Fuzz(func(t *testing.T, sel uint8, b []byte) {
		id := ids[int(sel)%len(ids)]
		s, err := Lookup(id)
		if err != nil {
			t.Fatal(err)
		}
		pk, err := s.ParsePublicKey(b)
		if len(b) == s.PublicKeySize() {
			if std := stdAccepts(id, b); std != (err == nil) {
				t.Fatalf("%v: accepted %v, standard library %v", id, err == nil, std)
			}
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidPublicKey) || pk != nil {
				t.Fatalf("%v: %v, %v", id, pk, err)
			}
			return
		}
		if !bytes.Equal(pk.Bytes(), b) {
			t.Fatalf("%v: Bytes() differs from the parsed input", id)
		}
		ct, ss, err := pk.Encapsulate()
		if err != nil || len(ct) != s.CiphertextSize() || len(ss) != SharedKeySize {
			t.Fatalf("%v: Encapsulate to an accepted key: %d %d %v", id, len(ct), len(ss), err)
		}
	})
}
