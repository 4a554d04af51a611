package merkle

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"
)

// TestChunkRootsEqualTreeRoot checks the property streaming rests on: for
// every size and chunk height, the MTH over the aligned chunks' roots is
// the MTH over all leaves, and every leaf's path inside its chunk verifies
// against its chunk root.
func TestChunkRootsEqualTreeRoot(t *testing.T) {
	for size := 1; size <= 70; size++ {
		leaves := make([][]byte, size)
		for i := range leaves {
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], uint64(i))
			leaves[i] = LeafHash(b[:])
		}
		whole, err := New(leaves)
		if err != nil {
			t.Fatal(err)
		}
		for h := uint64(0); h <= 7; h++ {
			var roots [][]byte
			var trees []*Tree
			for start := 0; start < size; start += 1 << h {
				ct, err := New(leaves[start:min(size, start+1<<h)])
				if err != nil {
					t.Fatal(err)
				}
				trees = append(trees, ct)
				roots = append(roots, ct.Root())
			}
			if err := CheckChunkRoots(roots, whole.Root()); err != nil {
				t.Fatalf("size %d height %d: %v", size, h, err)
			}
			for i := range size {
				c, local, n, err := Chunk(uint64(i), uint64(size), h)
				if err != nil || n != trees[c].Size() {
					t.Fatalf("size %d height %d leaf %d: chunk %d size %d (%v)", size, h, i, c, n, err)
				}
				p, err := trees[c].Proof(local)
				if err != nil {
					t.Fatal(err)
				}
				if err := VerifyChunkInclusion(uint64(i), uint64(size), h, leaves[i], p, roots); err != nil {
					t.Fatalf("size %d height %d leaf %d: %v", size, h, i, err)
				}
				other := (i + 1) % size
				if other != i && VerifyChunkInclusion(uint64(other), uint64(size), h, leaves[i], p, roots) == nil && !bytes.Equal(leaves[i], leaves[other]) {
					t.Fatalf("size %d height %d: leaf %d verified at index %d", size, h, i, other)
				}
			}
			if len(roots) > 1 {
				bad := append([][]byte(nil), roots...)
				x := sha256.Sum256(bad[0])
				bad[0] = x[:]
				if err := CheckChunkRoots(bad, whole.Root()); !errors.Is(err, ErrBadProof) {
					t.Fatalf("size %d height %d: a changed chunk root: %v", size, h, err)
				}
			}
		}
	}
}

func TestChunkRejects(t *testing.T) {
	if _, _, _, err := Chunk(5, 5, 1); !errors.Is(err, ErrIndexOutOfRange) {
		t.Fatalf("index = size: %v", err)
	}
	if _, _, _, err := Chunk(0, 5, 64); !errors.Is(err, ErrBadProof) {
		t.Fatalf("height 64: %v", err)
	}
	leaf := LeafHash([]byte("x"))
	if err := VerifyChunkInclusion(4, 5, 1, leaf, nil, [][]byte{leaf, leaf}); !errors.Is(err, ErrBadProof) {
		t.Fatalf("chunk beyond the roots: %v", err)
	}
	if err := CheckChunkRoots(nil, leaf); !errors.Is(err, ErrBadProof) {
		t.Fatalf("no chunk roots: %v", err)
	}
}
