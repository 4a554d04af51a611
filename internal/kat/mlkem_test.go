package kat

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/cloudflare/circl/kem/mlkem/mlkem1024"

	"github.com/entropykem/entropykem/pkg/kem"
)

// ML-KEM-1024 (FIPS 203) vectors from Wycheproof.
//
// The project holds ML-KEM private keys as the 64-byte seed d‖z only
// (pkg/kem), validates every encapsulation key it parses and draws
// encapsulation randomness from crypto/rand. Encapsulation vectors with an
// explicit m, and vectors with an expanded decapsulation key, therefore run
// against github.com/cloudflare/circl's mlkem1024, the code pkg/kem wraps.

func mlkem1024Scheme(t *testing.T) kem.Scheme {
	t.Helper()
	s, err := kem.Lookup(kem.MLKEM1024)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type mlkemDecapsTest struct {
	testCase
	Seed hexBytes `json:"seed"`
	EK   hexBytes `json:"ek"`
	C    hexBytes `json:"c"`
	K    hexBytes `json:"K"`
}

type mlkemDecapsGroup struct {
	Type         string            `json:"type"`
	Source       source            `json:"source"`
	ParameterSet string            `json:"parameterSet"`
	Tests        []mlkemDecapsTest `json:"tests"`
}

// TestWycheproofMLKEM1024 runs mlkem_1024_test.json (key generation from
// d‖z, then decapsulation) through pkg/kem: NewPrivateKey(seed), the derived
// encapsulation key against ek, Decapsulate(c) against K. Invalid cases have
// a seed or a ciphertext of the wrong length and must be rejected with
// kem.ErrInvalidSeed or kem.ErrInvalidCiphertext; "Random ciphertext",
// "Bit flipped ciphertext" and the CCTV strcmp case are valid and check the
// implicit-rejection key (FIPS 203 Algorithm 18).
func TestWycheproofMLKEM1024(t *testing.T) {
	f := loadWycheproof[mlkemDecapsGroup](t, "mlkem_1024_test.json", "ML-KEM", "mlkem_test_schema.json")
	s := mlkem1024Scheme(t)
	c := &tally{name: "mlkem_1024_test.json"}
	for _, g := range f.TestGroups {
		if g.ParameterSet != "ML-KEM-1024" {
			t.Fatalf("parameter set %q", g.ParameterSet)
		}
		for _, tc := range g.Tests {
			checkOutcome(t, c, tc.testCase, mlkemDecaps(s, tc))
		}
	}
	c.done(t, f.NumberOfTests)
}

// mlkemDecaps runs one decapsulation case.
func mlkemDecaps(s kem.Scheme, tc mlkemDecapsTest) outcome {
	sk, err := s.NewPrivateKey(tc.Seed)
	if err != nil {
		return rejectedWith(err, kem.ErrInvalidSeed, "NewPrivateKey")
	}
	if tc.EK != nil && !bytes.Equal(sk.PublicKey().Bytes(), tc.EK) {
		return mismatch("derived encapsulation key differs from ek")
	}
	ss, err := sk.Decapsulate(tc.C)
	if err != nil {
		return rejectedWith(err, kem.ErrInvalidCiphertext, "Decapsulate")
	}
	if !bytes.Equal(ss, tc.K) {
		return mismatch(fmt.Sprintf("shared secret %x, want %x", ss, tc.K))
	}
	return accepted()
}

type mlkemEncapsTest struct {
	testCase
	EK hexBytes `json:"ek"`
	M  hexBytes `json:"m"`
	C  hexBytes `json:"c"`
	K  hexBytes `json:"K"`
}

type mlkemEncapsGroup struct {
	Type         string            `json:"type"`
	Source       source            `json:"source"`
	ParameterSet string            `json:"parameterSet"`
	Tests        []mlkemEncapsTest `json:"tests"`
}

// TestWycheproofMLKEM1024Encaps runs mlkem_1024_encaps_test.json. Every
// encapsulation key goes through pkg/kem's ParsePublicKey, which must accept
// exactly the valid ones and reject every invalid one (coefficients >= q,
// the FIPS 203 §7.2 modulus check, or a wrong length) with
// kem.ErrInvalidPublicKey. Accepted keys are then encapsulated to with the
// vector's m by circl (ML-KEM.Encaps_internal) and c and K compared.
func TestWycheproofMLKEM1024Encaps(t *testing.T) {
	f := loadWycheproof[mlkemEncapsGroup](t, "mlkem_1024_encaps_test.json", "ML-KEM", "mlkem_encaps_test_schema.json")
	s := mlkem1024Scheme(t)
	c := &tally{name: "mlkem_1024_encaps_test.json"}
	var modulus, length int // keys ParsePublicKey rejected, by kind
	for _, g := range f.TestGroups {
		if g.ParameterSet != "ML-KEM-1024" {
			t.Fatalf("parameter set %q", g.ParameterSet)
		}
		for _, tc := range g.Tests {
			o := mlkemEncaps(s, tc)
			if o.verdict == verdictRejected && o.bug == nil {
				if len(tc.EK) == s.PublicKeySize() {
					modulus++
				} else {
					length++
				}
			}
			checkOutcome(t, c, tc.testCase, o)
		}
	}
	c.done(t, f.NumberOfTests)
	t.Logf("pkg/kem ParsePublicKey rejected %d keys of the right length (modulus check) and %d of a wrong length", modulus, length)
}

func mlkemEncaps(s kem.Scheme, tc mlkemEncapsTest) outcome {
	pk, err := s.ParsePublicKey(tc.EK)
	if err != nil {
		return rejectedWith(err, kem.ErrInvalidPublicKey, "ParsePublicKey")
	}
	var cpk mlkem1024.PublicKey
	if err := cpk.Unpack(pk.Bytes()); err != nil {
		return failed("circl rejects a key pkg/kem accepted: %v", err)
	}
	if len(tc.M) != mlkem1024.EncapsulationSeedSize {
		return failed("m is %d bytes", len(tc.M)) // EncapsulateTo would panic
	}
	ct := make([]byte, mlkem1024.CiphertextSize)
	ss := make([]byte, mlkem1024.SharedKeySize)
	cpk.EncapsulateTo(ct, ss, tc.M)
	if !bytes.Equal(ct, tc.C) {
		return mismatch("ciphertext differs")
	}
	if !bytes.Equal(ss, tc.K) {
		return mismatch("shared secret differs")
	}
	return accepted()
}

type mlkemKeyGenTest struct {
	testCase
	Seed hexBytes `json:"seed"`
	EK   hexBytes `json:"ek"`
	DK   hexBytes `json:"dk"`
}

type mlkemKeyGenGroup struct {
	Type         string            `json:"type"`
	Source       source            `json:"source"`
	ParameterSet string            `json:"parameterSet"`
	Tests        []mlkemKeyGenTest `json:"tests"`
}

// TestWycheproofMLKEM1024KeyGenSeed runs mlkem_1024_keygen_seed_test.json:
// pkg/kem's NewPrivateKey(d‖z) must derive ek (ML-KEM.KeyGen_internal,
// FIPS 203 Algorithm 16). pkg/kem never exposes the expanded decapsulation
// key, so dk is checked on circl's NewKeyFromSeed, the call pkg/kem makes.
func TestWycheproofMLKEM1024KeyGenSeed(t *testing.T) {
	f := loadWycheproof[mlkemKeyGenGroup](t, "mlkem_1024_keygen_seed_test.json", "ML-KEM", "mlkem_keygen_seed_test_schema.json")
	s := mlkem1024Scheme(t)
	c := &tally{name: "mlkem_1024_keygen_seed_test.json"}
	for _, g := range f.TestGroups {
		if g.ParameterSet != "ML-KEM-1024" {
			t.Fatalf("parameter set %q", g.ParameterSet)
		}
		for _, tc := range g.Tests {
			checkOutcome(t, c, tc.testCase, mlkemKeyGen(s, tc))
		}
	}
	c.done(t, f.NumberOfTests)
}

func mlkemKeyGen(s kem.Scheme, tc mlkemKeyGenTest) outcome {
	sk, err := s.NewPrivateKey(tc.Seed)
	if err != nil {
		return rejectedWith(err, kem.ErrInvalidSeed, "NewPrivateKey")
	}
	if !bytes.Equal(sk.PublicKey().Bytes(), tc.EK) {
		return mismatch("pkg/kem encapsulation key differs")
	}
	// Length checked by NewPrivateKey above, so this cannot panic.
	_, csk := mlkem1024.NewKeyFromSeed(tc.Seed)
	dk, err := csk.MarshalBinary()
	if err != nil {
		return failed("%v", err)
	}
	if !bytes.Equal(dk, tc.DK) {
		return mismatch("circl decapsulation key differs")
	}
	return accepted()
}

type mlkemSemiExpandedTest struct {
	testCase
	DK hexBytes `json:"dk"`
	EK hexBytes `json:"ek"`
	C  hexBytes `json:"c"`
	K  hexBytes `json:"K"`
}

type mlkemSemiExpandedGroup struct {
	Type         string                  `json:"type"`
	Source       source                  `json:"source"`
	ParameterSet string                  `json:"parameterSet"`
	Tests        []mlkemSemiExpandedTest `json:"tests"`
}

// TestWycheproofMLKEM1024SemiExpandedDecaps runs
// mlkem_1024_semi_expanded_decaps_test.json against circl only: the project
// never imports an expanded decapsulation key (pkg/kem takes seeds), so this
// checks the library's FIPS 203 §7.3 decapsulation input checks (lengths,
// H(ek) stored in dk) and its Decapsulate on malleable ciphertexts.
func TestWycheproofMLKEM1024SemiExpandedDecaps(t *testing.T) {
	f := loadWycheproof[mlkemSemiExpandedGroup](t, "mlkem_1024_semi_expanded_decaps_test.json", "ML-KEM", "mlkem_semi_expanded_decaps_test_schema.json")
	c := &tally{name: "mlkem_1024_semi_expanded_decaps_test.json"}
	for _, g := range f.TestGroups {
		if g.ParameterSet != "ML-KEM-1024" {
			t.Fatalf("parameter set %q", g.ParameterSet)
		}
		for _, tc := range g.Tests {
			checkOutcome(t, c, tc.testCase, mlkemSemiExpanded(tc))
		}
	}
	c.done(t, f.NumberOfTests)
}

func mlkemSemiExpanded(tc mlkemSemiExpandedTest) outcome {
	sch := mlkem1024.Scheme()
	sk, err := sch.UnmarshalBinaryPrivateKey(tc.DK)
	if err != nil {
		return rejected("UnmarshalBinaryPrivateKey: " + err.Error())
	}
	ek, err := sk.Public().MarshalBinary()
	if err != nil {
		return failed("%v", err)
	}
	if !bytes.Equal(ek, tc.EK) {
		return mismatch("embedded encapsulation key differs from ek")
	}
	ss, err := sch.Decapsulate(sk, tc.C)
	if err != nil {
		return rejected("Decapsulate: " + err.Error())
	}
	if !bytes.Equal(ss, tc.K) {
		return mismatch("shared secret differs")
	}
	return accepted()
}
