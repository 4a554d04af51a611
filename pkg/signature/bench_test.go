package signature

import "testing"

var benchPayload = make([]byte, 120) // about the size of an encoded EpochRoot

func BenchmarkSign1(b *testing.B) {
	for _, alg := range algs {
		b.Run(alg.String(), func(b *testing.B) {
			k := fixedKey(b, alg, 0x55)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Sign1(k, benchPayload); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkVerify1 verifies with a pinned, already parsed key.
func BenchmarkVerify1(b *testing.B) {
	for _, alg := range algs {
		b.Run(alg.String(), func(b *testing.B) {
			k := fixedKey(b, alg, 0x55)
			keys := keySet(b, k.Public())
			msg, err := Sign1(k, benchPayload)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := Verify1(msg, keys); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkParseSign1 is the structural check alone.
func BenchmarkParseSign1(b *testing.B) {
	k := fixedKey(b, MLDSA87, 0x55)
	msg, err := Sign1(k, benchPayload)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseSign1(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCirclFloor is circl alone (hedged sign, verify with a parsed
// key) over a Sig_structure-sized message: the floor that Sign1 and
// Verify1 add their COSE overhead to, measured under the same load.
func BenchmarkCirclFloor(b *testing.B) {
	for _, alg := range algs {
		k := fixedKey(b, alg, 0x55)
		msg := sigStructure(stdProtected(int64(alg), k.Public().KID()), benchPayload)
		sig, err := k.sign(msg)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("sign/"+alg.String(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := k.sign(msg); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("verify/"+alg.String(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if !k.Public().verify(msg, sig) {
					b.Fatal("verify failed")
				}
			}
		})
	}
}
