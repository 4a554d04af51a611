package bench

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"testing"

	"github.com/cloudflare/circl/kem/mlkem/mlkem1024"
	"github.com/cloudflare/circl/sign/mldsa/mldsa87"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/merkle"
)

// Primitive floors for BENCHMARKS.md, measured in the same run as the
// protocol-core benchmarks they sit beside (shared/notes/perf-floor.md has
// the reference values): the library calls alone, without the project's
// encoding, validation or allocation around them. Run with -cpu 1.

// BenchmarkFloorCirclEncaps is circl ML-KEM-1024 encapsulation to a parsed
// key (floor of pkg/kem BenchmarkEncapsulate).
func BenchmarkFloorCirclEncaps(b *testing.B) {
	pk, _, err := mlkem1024.GenerateKeyPair(nil)
	if err != nil {
		b.Fatal(err)
	}
	s := mlkem1024.Scheme()
	for b.Loop() {
		if _, _, err := s.Encapsulate(pk); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFloorCirclParseEncaps adds unpacking the 1568-byte key.
func BenchmarkFloorCirclParseEncaps(b *testing.B) {
	pk, _, err := mlkem1024.GenerateKeyPair(nil)
	if err != nil {
		b.Fatal(err)
	}
	raw, _ := pk.MarshalBinary()
	s := mlkem1024.Scheme()
	for b.Loop() {
		p, err := s.UnmarshalBinaryPublicKey(raw)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := s.Encapsulate(p); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFloorSHA256 is one SHA-256 of a ticket-body-sized input (floor
// of a Merkle leaf and of building a ticket body's hash).
func BenchmarkFloorSHA256(b *testing.B) {
	body := make([]byte, 1700)
	for b.Loop() {
		sha256.Sum256(body)
	}
}

// BenchmarkFloorEncapsThenSHA256 shows the cost of circl leaving the
// upper vector state dirty: an encapsulation followed by one SHA-256 of a
// ticket body, without (dirty) and with (clean) a VZEROUPPER in between
// (the runtime's AVX memmove ends with one). Compare with
// FloorCirclEncaps + FloorSHA256.
func BenchmarkFloorEncapsThenSHA256(b *testing.B) {
	pk, _, _ := mlkem1024.GenerateKeyPair(nil)
	s := mlkem1024.Scheme()
	body := make([]byte, 1700)
	for _, clean := range []bool{false, true} {
		b.Run(fmt.Sprintf("clean=%v", clean), func(b *testing.B) {
			for b.Loop() {
				if _, _, err := s.Encapsulate(pk); err != nil {
					b.Fatal(err)
				}
				if clean {
					cleanAVX()
				}
				sha256.Sum256(body)
			}
		})
	}
}

// BenchmarkFloorTreePerLeaf is SHA-256 leaf hashing plus interior nodes
// with plain sha256.Sum256 (floor of pkg/merkle BenchmarkBuild).
func BenchmarkFloorTreePerLeaf(b *testing.B) {
	for _, n := range []int{1000, 100000} {
		bodies := make([][]byte, n)
		for i := range bodies {
			bodies[i] = make([]byte, 1700)
			bodies[i][0] = byte(i)
		}
		b.Run(fmt.Sprintf("leaves=%d", n), func(b *testing.B) {
			level := make([][32]byte, n)
			buf := make([]byte, 1+1700)
			node := make([]byte, 65)
			for b.Loop() {
				for i, d := range bodies {
					copy(buf[1:], d)
					level[i] = sha256.Sum256(buf)
				}
				for m := n; m > 1; m = (m + 1) / 2 {
					for i := 0; i+1 < m; i += 2 {
						node[0] = 1
						copy(node[1:], level[i][:])
						copy(node[33:], level[i+1][:])
						level[i/2] = sha256.Sum256(node)
					}
					if m%2 == 1 {
						level[m/2] = level[m-1]
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/leaf")
		})
	}
}

// BenchmarkFloorMLDSA87Sign is circl ML-DSA-87 signing of a 64-byte
// message (floor of pkg/signature BenchmarkSign1/ML-DSA-87).
func BenchmarkFloorMLDSA87Sign(b *testing.B) {
	_, sk, err := mldsa87.GenerateKey(nil)
	if err != nil {
		b.Fatal(err)
	}
	msg := make([]byte, 64)
	sig := make([]byte, mldsa87.SignatureSize)
	for b.Loop() {
		if err := mldsa87.SignTo(sk, msg, nil, true, sig); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFloorHKDF is one HKDF-SHA256 (extract and expand, L = 32).
func BenchmarkFloorHKDF(b *testing.B) {
	ikm, salt := make([]byte, 64), make([]byte, 8)
	for b.Loop() {
		if _, err := hkdf.Key(sha256.New, ikm, salt, "chain:1", 32); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFloorHMAC is one HMAC-SHA256 of a short message under a new key.
func BenchmarkFloorHMAC(b *testing.B) {
	key, msg := make([]byte, 32), []byte("msg:default;ctr=12345")
	for b.Loop() {
		m := hmac.New(sha256.New, key)
		m.Write(msg)
		m.Sum(nil)
	}
}

// BenchmarkFloorChaCha20Poly1305 is seal and open of 256 and 4096 bytes
// (floor of pkg/envelope BenchmarkSeal and BenchmarkOpen).
func BenchmarkFloorChaCha20Poly1305(b *testing.B) {
	key := make([]byte, chacha20poly1305.KeySize)
	nonce := make([]byte, chacha20poly1305.NonceSize)
	for _, n := range []int{256, 4096} {
		pt := make([]byte, n)
		b.Run(fmt.Sprintf("seal/%d", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				a, _ := chacha20poly1305.New(key)
				a.Seal(nil, nonce, pt, nil)
			}
		})
		a, _ := chacha20poly1305.New(key)
		ct := a.Seal(nil, nonce, pt, nil)
		b.Run(fmt.Sprintf("open/%d", n), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				a, _ := chacha20poly1305.New(key)
				if _, err := a.Open(nil, nonce, ct, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkFloorDecapsHKDF is the device's floor per ticket without
// signature checks: circl decapsulation, then the three HKDFs and the
// HMAC of the key schedule (cleaned state, as a fixed pkg/kem would have).
func BenchmarkFloorDecapsHKDF(b *testing.B) {
	s, _ := kem.Lookup(kem.MLKEM1024)
	k, _ := s.GenerateKey()
	ct, _, _ := k.PublicKey().Encapsulate()
	th := make([]byte, 32)
	body := make([]byte, 1700)
	for b.Loop() {
		ss, err := k.Decapsulate(ct)
		if err != nil {
			b.Fatal(err)
		}
		cleanAVX()
		merkle.LeafHash(body)
		for _, info := range []string{"c", "n", "r"} {
			if _, err := hkdf.Key(sha256.New, ss, th, info, 32); err != nil {
				b.Fatal(err)
			}
		}
		m := hmac.New(sha256.New, th)
		m.Write(th)
		m.Sum(nil)
	}
}
