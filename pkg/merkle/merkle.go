// Package merkle builds the Merkle tree over one epoch's ticket bodies and
// produces and verifies inclusion proofs in it.
//
// Hashing follows RFC 9162 §2.1.1 (identical to RFC 6962 §2.1) with SHA-256:
//
//	leaf hash = SHA-256(0x00 ‖ data)
//	node hash = SHA-256(0x01 ‖ left ‖ right)
//	MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n])), k the largest power of two < n
//
// Any tree size n ≥ 1 is supported, including non-powers of two. A tree of one
// leaf takes the same code path: its root is the leaf hash and every proof in
// it is empty. The empty tree is not supported (an epoch with no tickets has
// nothing to prove).
//
// Inclusion proofs are the RFC 9162 §2.1.3 audit paths, ordered leaf to root,
// and verify with github.com/transparency-dev/merkle's proof.VerifyInclusion.
package merkle

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"math/bits"
	"runtime"
	"sync"
)

const (
	// HashSize is the size in bytes of every leaf, node and root hash (SHA-256).
	HashSize = sha256.Size

	// MaxDepth is the longest inclusion proof accepted: a tree of at most
	// 2^64 - 1 leaves has paths of at most 64 hashes. Longer proofs are
	// rejected before any hashing.
	MaxDepth = 64

	leafPrefix = 0x00 // RFC 9162 §2.1.1 leaf domain separator
	nodePrefix = 0x01 // RFC 9162 §2.1.1 interior node domain separator
)

var (
	// ErrBadProof is wrapped by every inclusion-proof verification failure.
	ErrBadProof = errors.New("merkle: bad inclusion proof")
	// ErrEmptyTree is returned when a tree is built from no leaves.
	ErrEmptyTree = errors.New("merkle: empty tree")
	// ErrIndexOutOfRange is returned for a leaf index >= the tree size.
	ErrIndexOutOfRange = errors.New("merkle: leaf index out of range")
	// ErrLeafHashSize is returned when a leaf hash is not HashSize bytes.
	ErrLeafHashSize = errors.New("merkle: leaf hash has wrong size")
)

// Domain-separation prefixes as slices, shared so that writing them into a
// hash.Hash does not allocate. Never modified.
var (
	leafPrefixBytes = []byte{leafPrefix}
	nodePrefixBytes = []byte{nodePrefix}
)

// hasherPool recycles SHA-256 states for LeafHash, so a call allocates only
// its 32-byte result.
var hasherPool = sync.Pool{New: func() any { return sha256.New() }}

// LeafHash returns the RFC 9162 §2.1.1 leaf hash SHA-256(0x00 ‖ data).
// It is safe for concurrent use.
func LeafHash(data []byte) []byte {
	h := hasherPool.Get().(hash.Hash)
	out := hashLeafInto(h, make([]byte, 0, HashSize), data)
	hasherPool.Put(h)
	return out
}

// hashLeafInto appends SHA-256(0x00 ‖ data) to dst using the state h, which
// it resets first.
func hashLeafInto(h hash.Hash, dst, data []byte) []byte {
	h.Reset()
	h.Write(leafPrefixBytes)
	h.Write(data)
	return h.Sum(dst)
}

// Tree is an RFC 9162 Merkle tree held in memory with every level, so that
// inclusion proofs need no hashing. It is immutable once built and safe for
// concurrent use.
//
// Level 0 holds the leaf hashes; level l+1 holds node(level[2i], level[2i+1])
// for each full pair, and an unpaired last node is carried up unchanged. This
// left-balanced layout yields exactly MTH of RFC 9162 §2.1.1 for any size.
type Tree struct {
	size   uint64
	levels [][]byte // levels[l] is count(l)*HashSize bytes, one allocation each
}

// New builds the tree over leafHashes, each exactly HashSize bytes (see
// LeafHash). The hashes are copied; the caller may reuse the slice.
// It returns ErrEmptyTree for no leaves and ErrLeafHashSize for a leaf hash of
// the wrong length.
func New(leafHashes [][]byte) (*Tree, error) {
	n := len(leafHashes)
	if n == 0 {
		return nil, ErrEmptyTree
	}
	level0 := make([]byte, n*HashSize)
	for i, lh := range leafHashes {
		if len(lh) != HashSize {
			return nil, fmt.Errorf("%w: leaf %d is %d bytes, want %d", ErrLeafHashSize, i, len(lh), HashSize)
		}
		copy(level0[i*HashSize:], lh)
	}
	return build(level0, n), nil
}

// FromData builds the tree over the raw leaf data (ticket bodies), computing
// each RFC 9162 §2.1.1 leaf hash directly into the tree without a per-leaf
// allocation. Large inputs are hashed in parallel. It returns ErrEmptyTree for
// no leaves.
func FromData(leaves [][]byte) (*Tree, error) {
	n := len(leaves)
	if n == 0 {
		return nil, ErrEmptyTree
	}
	level0 := make([]byte, n*HashSize)
	parallelFor(n, minParallelLeaves, func(lo, hi int) {
		h := sha256.New()
		for i := lo; i < hi; i++ {
			hashLeafInto(h, level0[i*HashSize:i*HashSize], leaves[i])
		}
	})
	return build(level0, n), nil
}

// build computes every level above level0 (n leaf hashes).
func build(level0 []byte, n int) *Tree {
	t := &Tree{size: uint64(n), levels: make([][]byte, 1, depth(uint64(n))+1)}
	t.levels[0] = level0
	for cur := level0; n > 1; n = (n + 1) / 2 {
		next := make([]byte, ((n+1)/2)*HashSize)
		hashLevel(next, cur, n)
		t.levels = append(t.levels, next)
		cur = next
	}
	return t
}

// Parallel thresholds: below these, goroutine start-up and the level barrier
// cost more than they save (measured with BenchmarkBuild/BenchmarkNew).
const (
	minParallelNodes  = 1 << 12 // node pairs in one level
	minParallelLeaves = 1 << 9  // leaf bodies to hash
)

// hashLevel fills next with the parents of the n nodes in cur: full pairs are
// hashed, an unpaired last node is carried up unchanged.
func hashLevel(next, cur []byte, n int) {
	pairs := n / 2
	parallelFor(pairs, minParallelNodes, func(lo, hi int) {
		hashPairs(next, cur, lo, hi)
	})
	if n%2 == 1 {
		copy(next[pairs*HashSize:], cur[(n-1)*HashSize:n*HashSize])
	}
}

// hashPairs computes parents lo..hi-1 with one reused SHA-256 state.
func hashPairs(next, cur []byte, lo, hi int) {
	h := sha256.New()
	for i := lo; i < hi; i++ {
		h.Reset()
		h.Write(nodePrefixBytes)
		h.Write(cur[2*i*HashSize : (2*i+2)*HashSize]) // left ‖ right, adjacent
		h.Sum(next[i*HashSize : i*HashSize])
	}
}

// parallelFor runs fn over [0, n) split into contiguous chunks, one per
// available CPU, or inline when n < threshold or only one CPU is available.
func parallelFor(n, threshold int, fn func(lo, hi int)) {
	workers := runtime.GOMAXPROCS(0)
	if n < threshold || workers < 2 {
		fn(0, n)
		return
	}
	workers = min(workers, n/(threshold/2))
	var wg sync.WaitGroup
	chunk := (n + workers - 1) / workers
	for lo := 0; lo < n; lo += chunk {
		hi := min(lo+chunk, n)
		wg.Go(func() { fn(lo, hi) })
	}
	wg.Wait()
}

// depth returns the number of levels above the leaves in a tree of n ≥ 1
// leaves, which is also the longest inclusion proof in it.
func depth(n uint64) int {
	return bits.Len64(n - 1)
}

// Size returns the number of leaves.
func (t *Tree) Size() uint64 { return t.size }

// Root returns a copy of the RFC 9162 §2.1.1 Merkle Tree Hash of the leaves.
func (t *Tree) Root() []byte {
	top := t.levels[len(t.levels)-1]
	return append([]byte(nil), top[:HashSize]...)
}

// LeafHashAt returns a copy of the leaf hash at index, or ErrIndexOutOfRange.
func (t *Tree) LeafHashAt(index uint64) ([]byte, error) {
	if index >= t.size {
		return nil, fmt.Errorf("%w: %d >= %d", ErrIndexOutOfRange, index, t.size)
	}
	return append([]byte(nil), t.levels[0][index*HashSize:(index+1)*HashSize]...), nil
}

// Proof returns the RFC 9162 §2.1.3 inclusion proof (audit path) for the leaf
// at index, ordered from the leaf's sibling up to the root's child. It does no
// hashing: O(log n) copies into one allocation. The proof for a tree of one
// leaf is empty (non-nil, length 0). It returns ErrIndexOutOfRange for
// index >= Size().
func (t *Tree) Proof(index uint64) ([][]byte, error) {
	if index >= t.size {
		return nil, fmt.Errorf("%w: %d >= %d", ErrIndexOutOfRange, index, t.size)
	}
	var ids [MaxDepth]uint64 // sibling index per level; levels without one are skipped
	var lvls [MaxDepth]int
	k := 0
	for l, i := 0, index; l < len(t.levels)-1; l, i = l+1, i/2 {
		sib := i ^ 1
		if sib*HashSize < uint64(len(t.levels[l])) {
			ids[k], lvls[k] = sib, l
			k++
		}
	}
	buf := make([]byte, k*HashSize)
	path := make([][]byte, k)
	for j := range k {
		dst := buf[j*HashSize : (j+1)*HashSize : (j+1)*HashSize]
		copy(dst, t.levels[lvls[j]][ids[j]*HashSize:])
		path[j] = dst
	}
	return path, nil
}
