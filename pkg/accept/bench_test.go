package accept

import (
	"testing"

	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
)

// BenchmarkAccept is a device accepting one ML-KEM-1024 ticket whose
// ML-DSA-87 root it has already verified this epoch (cached): strict
// decode, proof, decapsulate, cohort mix, key_epoch, confirm and next-key
// tag, ratchet mix, and a new next key. BenchmarkAcceptUncachedRoot adds
// the root signature verification, paid once per epoch.
func BenchmarkAccept(b *testing.B)             { benchAccept(b, true) }
func BenchmarkAcceptUncachedRoot(b *testing.B) { benchAccept(b, false) }

func benchAccept(b *testing.B, cached bool) {
	f := newFixture(b)
	f.issuer, _ = signature.GenerateKey(signature.MLDSA87)
	f.pins, _ = signature.NewKeySet(f.issuer.Public())
	s, _ := kem.Lookup(kem.MLKEM1024)
	k, _ := s.GenerateKey()
	f.st, _ = NewState(self, k)
	tk, root, _ := f.issue(1)
	in := f.input(tk, root)
	if cached {
		in.Roots = NewRootCache(4)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Accept(f.st, in); err != nil {
			b.Fatal(err)
		}
	}
}
