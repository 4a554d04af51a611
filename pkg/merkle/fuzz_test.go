package merkle

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzVerifyInclusion feeds arbitrary index, size, leaf hash, root and proof
// bytes (split into 32-byte chunks; a short tail chunk is kept) to
// VerifyInclusion. It must never panic, every failure must wrap ErrBadProof,
// and a success must agree with the independent recursive RFC 9162 §2.1.3
// recomputation in this test. Seeds are valid proofs from several trees.
func FuzzVerifyInclusion(f *testing.F) {
	for _, n := range []int{1, 2, 3, 7, 8, 13, 130} {
		lh := leafHashes(testData(n))
		tr, err := New(lh)
		if err != nil {
			f.Fatal(err)
		}
		for _, i := range []uint64{0, uint64(n) / 2, uint64(n) - 1} {
			p, _ := tr.Proof(i)
			f.Add(i, uint64(n), lh[i], bytes.Join(p, nil), tr.Root())
		}
	}
	f.Fuzz(func(t *testing.T, index, size uint64, leaf, proofBytes, root []byte) {
		var path [][]byte
		for len(proofBytes) > 0 {
			k := min(HashSize, len(proofBytes))
			path = append(path, proofBytes[:k])
			proofBytes = proofBytes[k:]
		}
		err := VerifyInclusion(index, size, leaf, path, root)
		if err != nil {
			if !errors.Is(err, ErrBadProof) {
				t.Fatalf("error %v does not wrap ErrBadProof", err)
			}
			return
		}
		got, ok := refRootFromPath(index, size, leaf, path)
		if !ok || !bytes.Equal(got, root) || len(leaf) != HashSize || len(root) != HashSize {
			t.Fatalf("accepted (index %d, size %d) but the reference recomputes %x, want %x", index, size, got, root)
		}
	})
}
