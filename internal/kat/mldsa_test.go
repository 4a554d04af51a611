package kat

import (
	"testing"

	"github.com/cloudflare/circl/sign/mldsa/mldsa87"

	"github.com/entropykem/entropykem/pkg/signature"
)

type mldsaVerifyTest struct {
	testCase
	Msg hexBytes `json:"msg"`
	Ctx hexBytes `json:"ctx"`
	Sig hexBytes `json:"sig"`
}

type mldsaVerifyGroup struct {
	Type         string            `json:"type"`
	Source       source            `json:"source"`
	PublicKey    hexBytes          `json:"publicKey"`
	PublicKeyDer hexBytes          `json:"publicKeyDer"`
	Tests        []mldsaVerifyTest `json:"tests"`
}

// TestWycheproofMLDSA87Verify runs mldsa_87_verify_test.json. Each group's
// public key goes through pkg/signature's ParsePublicKey (FIPS 204 pkDecode
// with an exact length); a key it rejects must only carry invalid cases, and
// must be rejected with signature.ErrInvalidKey. Signatures are then checked
// with circl's mldsa87.Verify (FIPS 204 Algorithm 3), the function
// pkg/signature calls, with the vector's context string (the project itself
// always uses the empty one). As pkg/signature does, a signature of the
// wrong length is refused before Verify.
func TestWycheproofMLDSA87Verify(t *testing.T) {
	f := loadWycheproof[mldsaVerifyGroup](t, "mldsa_87_verify_test.json", "ML-DSA-87", "mldsa_verify_schema.json")
	c := &tally{name: "mldsa_87_verify_test.json"}
	keysRejected := 0
	for _, g := range f.TestGroups {
		pub, err := signature.ParsePublicKey(signature.MLDSA87, g.PublicKey)
		if err != nil {
			keysRejected++
			o := rejectedWith(err, signature.ErrInvalidKey, "ParsePublicKey")
			for _, tc := range g.Tests {
				checkOutcome(t, c, tc.testCase, o)
			}
			continue
		}
		var pk mldsa87.PublicKey
		if err := pk.UnmarshalBinary(pub.Bytes()); err != nil {
			t.Fatalf("circl rejects a key pkg/signature accepted: %v", err)
		}
		for _, tc := range g.Tests {
			checkOutcome(t, c, tc.testCase, mldsaVerify(&pk, tc))
		}
	}
	c.done(t, f.NumberOfTests)
	t.Logf("pkg/signature ParsePublicKey rejected %d of %d group keys", keysRejected, len(f.TestGroups))
}

func mldsaVerify(pk *mldsa87.PublicKey, tc mldsaVerifyTest) outcome {
	if len(tc.Sig) != signature.MLDSA87.SignatureSize() {
		return rejected("signature length")
	}
	if !mldsa87.Verify(pk, tc.Msg, tc.Ctx, tc.Sig) {
		return rejected("Verify returned false")
	}
	return accepted()
}
