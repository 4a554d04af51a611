package batch

import (
	"fmt"
	"testing"

	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/merkle"
	"github.com/entropykem/entropykem/pkg/signature"
)

// BenchmarkIssue measures the issuer's crypto per ticket with Merkle
// batching (encapsulate, build the body, hash the leaf, tree, proofs, one
// ML-DSA-87 signature per epoch), with keys already parsed. Run with
// -cpu 1 to compare with BenchmarkFloor, which is single-threaded.
func BenchmarkIssue(b *testing.B) {
	key, _ := signature.GenerateKey(signature.MLDSA87)
	for _, n := range []int{1000} {
		devs, _ := devices(b, n, kem.MLKEM1024)
		b.Run(fmt.Sprintf("devices=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Issue(key, Params{Epoch: 1, IssuedAt: 1, TTL: 60}, devs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/ticket")
		})
	}
}

// BenchmarkFloor is the primitive floor per ticket: one ML-KEM-1024
// encapsulation with a parsed key plus one SHA-256 leaf hash of a
// ticket-sized body. keys=1 reuses one key and one body, which stay in the
// CPU caches; keys=1000 cycles through as many keys and bodies as
// BenchmarkIssue, so it pays the same cache misses (a parsed ML-KEM-1024
// key is ~25 KB) and is the floor BenchmarkIssue is compared with.
//
// Without pkg/kem's avx.Clean after the encapsulation, the leaf hash costs ~100 µs instead of
// ~1.2 µs on AMD EPYC VMs: circl's AVX2 code leaves the upper vector state
// dirty and Go's SHA-NI code is SSE-encoded (internal/avx).
func BenchmarkFloor(b *testing.B) {
	for _, n := range []int{1, 1000} {
		devs, _ := devices(b, n, kem.MLKEM1024)
		bodies := make([][]byte, n)
		for i := range bodies {
			bodies[i] = make([]byte, 1700)
			bodies[i][0] = byte(i)
		}
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			i := 0
			for b.Loop() {
				if _, _, err := devs[i].Key.Encapsulate(); err != nil {
					b.Fatal(err)
				}
				merkle.LeafHash(bodies[i])
				if i++; i == n {
					i = 0
				}
			}
		})
	}
}

// BenchmarkParseAndIssue includes parsing each device's key, which an
// issuer does once per epoch because device keys rotate every epoch;
// BenchmarkParseFloor is its floor (parse + encapsulate + leaf hash).
func BenchmarkParseAndIssue(b *testing.B) {
	key, _ := signature.GenerateKey(signature.MLDSA87)
	const n = 1000
	devs, _ := devices(b, n, kem.MLKEM1024)
	raw := make([][]byte, n)
	for i := range devs {
		raw[i] = devs[i].Key.Bytes()
	}
	s, _ := kem.Lookup(kem.MLKEM1024)
	b.ReportAllocs()
	for b.Loop() {
		for i := range devs {
			pk, err := s.ParsePublicKey(raw[i])
			if err != nil {
				b.Fatal(err)
			}
			devs[i].Key = pk
		}
		if _, err := Issue(key, Params{Epoch: 1, IssuedAt: 1, TTL: 60}, devs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/ticket")
}

// BenchmarkParseFloor is ParseAndIssue's floor per ticket: parse a key,
// encapsulate, hash a leaf; keys=1000 cycles through as many encoded keys
// and bodies as ParseAndIssue (see BenchmarkFloor).
func BenchmarkParseFloor(b *testing.B) {
	s, _ := kem.Lookup(kem.MLKEM1024)
	for _, n := range []int{1, 1000} {
		devs, _ := devices(b, n, kem.MLKEM1024)
		raw, bodies := make([][]byte, n), make([][]byte, n)
		for i := range devs {
			raw[i], bodies[i] = devs[i].Key.Bytes(), make([]byte, 1700)
			bodies[i][0] = byte(i)
		}
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			i := 0
			for b.Loop() {
				pk, err := s.ParsePublicKey(raw[i])
				if err != nil {
					b.Fatal(err)
				}
				if _, _, err := pk.Encapsulate(); err != nil {
					b.Fatal(err)
				}
				merkle.LeafHash(bodies[i])
				if i++; i == n {
					i = 0
				}
			}
		})
	}
}

// BenchmarkIssueCohort compares, in one run, an epoch of 200 devices
// without and with every device in one cohort (a group seed sealed into
// each body, PROTOCOL.md §7.7): the seal is one HKDF and one 32-byte
// ChaCha20-Poly1305 per ticket next to an ML-KEM encapsulation.
func BenchmarkIssueCohort(b *testing.B) {
	key, _ := signature.GenerateKey(signature.MLDSA87)
	devs, _ := devices(b, 200, kem.MLKEM1024)
	seed := make([]byte, 32)
	for _, cohort := range []string{"", "fleet-a"} {
		ds := make([]Device, len(devs))
		for i, d := range devs {
			d.Cohort, d.GroupSeed = cohort, seed
			if cohort == "" {
				d.GroupSeed = nil
			}
			ds[i] = d
		}
		b.Run("cohort="+map[bool]string{true: "yes", false: "no"}[cohort != ""], func(b *testing.B) {
			for b.Loop() {
				if _, err := Issue(key, Params{Epoch: 1, IssuedAt: 1, TTL: 60}, ds); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(ds)), "ns/ticket")
		})
	}
}
