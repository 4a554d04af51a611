package kem

import (
	"bytes"
	"crypto/ecdh"
	"crypto/mlkem"
	"crypto/mlkem/mlkemtest"
	"crypto/rand"
	"crypto/sha3"
	"testing"
)

// stdMLKEM adapts crypto/mlkem, an implementation of FIPS 203 independent
// of circl, for the interop tests.
type stdMLKEM struct {
	id ID
	// newDK derives a decapsulation key from d‖z; it returns the encoded
	// encapsulation key and a decapsulation function.
	newDK func(seed []byte) (ek []byte, decaps func(ct []byte) ([]byte, error), err error)
	// encaps encapsulates to an encoded key; rnd nil means crypto/rand,
	// otherwise rnd is the FIPS 203 message m (mlkemtest).
	encaps func(ek, rnd []byte) (ss, ct []byte, err error)
}

var stdSchemes = []stdMLKEM{
	{
		id: MLKEM1024,
		newDK: func(seed []byte) ([]byte, func([]byte) ([]byte, error), error) {
			dk, err := mlkem.NewDecapsulationKey1024(seed)
			if err != nil {
				return nil, nil, err
			}
			return dk.EncapsulationKey().Bytes(), dk.Decapsulate, nil
		},
		encaps: func(b, rnd []byte) ([]byte, []byte, error) {
			ek, err := mlkem.NewEncapsulationKey1024(b)
			if err != nil {
				return nil, nil, err
			}
			if rnd == nil {
				ss, ct := ek.Encapsulate()
				return ss, ct, nil
			}
			return mlkemtest.Encapsulate1024(ek, rnd)
		},
	},
	{
		id: MLKEM768,
		newDK: func(seed []byte) ([]byte, func([]byte) ([]byte, error), error) {
			dk, err := mlkem.NewDecapsulationKey768(seed)
			if err != nil {
				return nil, nil, err
			}
			return dk.EncapsulationKey().Bytes(), dk.Decapsulate, nil
		},
		encaps: func(b, rnd []byte) ([]byte, []byte, error) {
			ek, err := mlkem.NewEncapsulationKey768(b)
			if err != nil {
				return nil, nil, err
			}
			if rnd == nil {
				ss, ct := ek.Encapsulate()
				return ss, ct, nil
			}
			return mlkemtest.Encapsulate768(ek, rnd)
		},
	},
}

func randBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestInteropStdMLKEM: circl (through this package) and crypto/mlkem agree
// on key generation from the same seed, and each decapsulates what the
// other encapsulated, including implicit rejection of a tampered ciphertext.
func TestInteropStdMLKEM(t *testing.T) {
	for _, std := range stdSchemes {
		t.Run(std.id.String(), func(t *testing.T) {
			s, err := Lookup(std.id)
			if err != nil {
				t.Fatal(err)
			}
			for trial := 0; trial < 8; trial++ {
				seed := randBytes(t, s.SeedSize())
				sk := mustKey(t, s, seed)
				stdEK, stdDecaps, err := std.newDK(seed)
				if err != nil {
					t.Fatal(err)
				}
				ek := sk.PublicKey().Bytes()
				if !bytes.Equal(ek, stdEK) {
					t.Fatal("encapsulation keys from the same seed differ")
				}
				pk, err := s.ParsePublicKey(stdEK)
				if err != nil {
					t.Fatalf("std key rejected: %v", err)
				}

				// std → circl, fixed randomness: identical ct and ss.
				m := randBytes(t, 32)
				ssStd, ctStd, err := std.encaps(ek, m)
				if err != nil {
					t.Fatal(err)
				}
				ct, ss, err := pk.(*publicKey).encapsulateDeterministically(m)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(ct, ctStd) || !bytes.Equal(ss, ssStd) {
					t.Fatal("deterministic encapsulation differs from mlkemtest")
				}
				if got, err := sk.Decapsulate(ctStd); err != nil || !bytes.Equal(got, ssStd) {
					t.Fatalf("circl decapsulation of mlkemtest ct: %x, %v", got, err)
				}

				// std → circl, std's own randomness.
				ssStd, ctStd, err = std.encaps(ek, nil)
				if err != nil {
					t.Fatal(err)
				}
				if got, err := sk.Decapsulate(ctStd); err != nil || !bytes.Equal(got, ssStd) {
					t.Fatalf("circl decapsulation of std ct: %x, %v", got, err)
				}

				// circl → std.
				ct, ss, err = pk.Encapsulate()
				if err != nil {
					t.Fatal(err)
				}
				if got, err := stdDecaps(ct); err != nil || !bytes.Equal(got, ss) {
					t.Fatalf("std decapsulation of circl ct: %x, %v", got, err)
				}

				// Implicit rejection (FIPS 203 Algorithm 18) agrees too.
				ct[len(ct)-1] ^= 0x01
				rejStd, err := stdDecaps(ct)
				if err != nil {
					t.Fatal(err)
				}
				rej, err := sk.Decapsulate(ct)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(rej, rejStd) || bytes.Equal(rej, ss) {
					t.Fatal("implicit rejection differs from crypto/mlkem")
				}
			}
		})
	}
}

// xwingLabel is the X-Wing combiner label, the ASCII art \.//^\
// (draft-connolly-cfrg-xwing-kem §5.3).
const xwingLabel = `\./` + `/^\`

// xwingCombiner is SHA3-256(ss_M ‖ ss_X ‖ ct_X ‖ pk_X ‖ label).
func xwingCombiner(ssM, ssX, ctX, pkX []byte) []byte {
	h := sha3.New256()
	h.Write(ssM)
	h.Write(ssX)
	h.Write(ctX)
	h.Write(pkX)
	h.Write([]byte(xwingLabel))
	return h.Sum(nil)
}

// stdXWing is X-Wing composed from the draft out of crypto/mlkem,
// crypto/ecdh and crypto/sha3: key expansion SHAKE256(seed, 96) = d‖z‖sk_X.
type stdXWing struct {
	dk  *mlkem.DecapsulationKey768
	skX *ecdh.PrivateKey
}

func newStdXWing(t *testing.T, seed []byte) *stdXWing {
	t.Helper()
	x := sha3.NewSHAKE256()
	x.Write(seed)
	expanded := make([]byte, 96)
	x.Read(expanded)
	dk, err := mlkem.NewDecapsulationKey768(expanded[:64])
	if err != nil {
		t.Fatal(err)
	}
	skX, err := ecdh.X25519().NewPrivateKey(expanded[64:])
	if err != nil {
		t.Fatal(err)
	}
	return &stdXWing{dk: dk, skX: skX}
}

func (k *stdXWing) publicKey() []byte {
	return append(k.dk.EncapsulationKey().Bytes(), k.skX.PublicKey().Bytes()...)
}

func (k *stdXWing) decapsulate(t *testing.T, ct []byte) []byte {
	t.Helper()
	ssM, err := k.dk.Decapsulate(ct[:mlkem.CiphertextSize768])
	if err != nil {
		t.Fatal(err)
	}
	ctX := ct[mlkem.CiphertextSize768:]
	peer, err := ecdh.X25519().NewPublicKey(ctX)
	if err != nil {
		t.Fatal(err)
	}
	ssX, err := k.skX.ECDH(peer)
	if err != nil {
		t.Fatal(err)
	}
	return xwingCombiner(ssM, ssX, ctX, k.skX.PublicKey().Bytes())
}

func stdXWingEncapsulate(t *testing.T, pk []byte) (ct, ss []byte) {
	t.Helper()
	ek, err := mlkem.NewEncapsulationKey768(pk[:mlkem.EncapsulationKeySize768])
	if err != nil {
		t.Fatal(err)
	}
	pkXBytes := pk[mlkem.EncapsulationKeySize768:]
	pkX, err := ecdh.X25519().NewPublicKey(pkXBytes)
	if err != nil {
		t.Fatal(err)
	}
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ssX, err := eph.ECDH(pkX)
	if err != nil {
		t.Fatal(err)
	}
	ssM, ctM := ek.Encapsulate()
	ctX := eph.PublicKey().Bytes()
	return append(ctM, ctX...), xwingCombiner(ssM, ssX, ctX, pkXBytes)
}

// TestInteropStdXWing: this package's X-Wing (circl) and an X-Wing built
// from the draft on the standard library agree on keys and decapsulate each
// other's ciphertexts. Key derivation is also checked against crypto/hpke's
// MLKEM768-X25519 in TestKnownAnswerPKHash.
func TestInteropStdXWing(t *testing.T) {
	s, err := Lookup(XWing)
	if err != nil {
		t.Fatal(err)
	}
	for trial := 0; trial < 8; trial++ {
		seed := randBytes(t, s.SeedSize())
		sk := mustKey(t, s, seed)
		std := newStdXWing(t, seed)
		pkb := sk.PublicKey().Bytes()
		if !bytes.Equal(pkb, std.publicKey()) {
			t.Fatal("X-Wing public keys from the same seed differ")
		}
		if !bytes.Equal(pkb, stdPublicKey(t, XWing, seed)) {
			t.Fatal("X-Wing public key differs from crypto/hpke")
		}
		ct, ss := stdXWingEncapsulate(t, pkb)
		if got, err := sk.Decapsulate(ct); err != nil || !bytes.Equal(got, ss) {
			t.Fatalf("decapsulation of std X-Wing ct: %x, %v", got, err)
		}
		pk, err := s.ParsePublicKey(pkb)
		if err != nil {
			t.Fatal(err)
		}
		ct, ss, err = pk.Encapsulate()
		if err != nil {
			t.Fatal(err)
		}
		if got := std.decapsulate(t, ct); !bytes.Equal(got, ss) {
			t.Fatal("std X-Wing decapsulation of our ct differs")
		}
	}
}
