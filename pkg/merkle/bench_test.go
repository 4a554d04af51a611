package merkle

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"testing"
)

// bodySize approximates a ticket body (ML-KEM-768 ciphertext plus fields).
const bodySize = 1700

func benchBodies(n int) [][]byte {
	buf := make([]byte, n*bodySize)
	rand.Read(buf)
	out := make([][]byte, n)
	for i := range out {
		out[i] = buf[i*bodySize : (i+1)*bodySize : (i+1)*bodySize]
	}
	return out
}

func benchLeafHashes(n int) [][]byte {
	buf := make([]byte, n*HashSize)
	out := make([][]byte, n)
	for i := range out {
		binary.BigEndian.PutUint64(buf[i*HashSize:], uint64(i))
		out[i] = LeafHash(buf[i*HashSize : i*HashSize+8])
	}
	return out
}

func reportPerLeaf(b *testing.B, n int) {
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/leaf")
}

// BenchmarkBuild is what an issuer does per epoch: hash every 1.7 KB body
// with LeafHash, then New. Compare with BenchmarkFromData (leaf hashing in
// place, parallel) and BenchmarkNew (interior nodes only).
func BenchmarkBuild(b *testing.B) {
	for _, n := range []int{1000, 100000} {
		bodies := benchBodies(n)
		b.Run(fmt.Sprintf("leaves=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			lh := make([][]byte, n)
			for b.Loop() {
				for i, d := range bodies {
					lh[i] = LeafHash(d)
				}
				if _, err := New(lh); err != nil {
					b.Fatal(err)
				}
			}
			reportPerLeaf(b, n)
		})
	}
}

func BenchmarkFromData(b *testing.B) {
	for _, n := range []int{1000, 100000} {
		bodies := benchBodies(n)
		b.Run(fmt.Sprintf("leaves=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := FromData(bodies); err != nil {
					b.Fatal(err)
				}
			}
			reportPerLeaf(b, n)
		})
	}
}

// BenchmarkNew measures interior-node hashing alone (n-1 nodes of 65 bytes).
func BenchmarkNew(b *testing.B) {
	for _, n := range []int{1000, 100000, 1000000} {
		lh := benchLeafHashes(n)
		b.Run(fmt.Sprintf("leaves=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := New(lh); err != nil {
					b.Fatal(err)
				}
			}
			reportPerLeaf(b, n)
		})
	}
}

func BenchmarkLeafHash(b *testing.B) {
	body := benchBodies(1)[0]
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		LeafHash(body)
	}
}

var benchSizes = []int{1000, 100000, 1000000}

func BenchmarkProof(b *testing.B) {
	for _, n := range benchSizes {
		tr, err := New(benchLeafHashes(n))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("size=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			i := uint64(0)
			for b.Loop() {
				if _, err := tr.Proof(i); err != nil {
					b.Fatal(err)
				}
				i = (i + 7919) % uint64(n)
			}
		})
	}
}

func BenchmarkVerifyInclusion(b *testing.B) {
	for _, n := range benchSizes {
		lh := benchLeafHashes(n)
		tr, err := New(lh)
		if err != nil {
			b.Fatal(err)
		}
		idx := uint64(n) - 3 // a deep, non-power-of-two path
		p, _ := tr.Proof(idx)
		root := tr.Root()
		b.Run(fmt.Sprintf("size=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := VerifyInclusion(idx, uint64(n), lh[idx], p, root); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
