package merkle

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"runtime"
	"testing"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/merkle/testonly"
)

// --- independent reference: RFC 9162 §2.1.1 MTH and §2.1.3.1 PATH, recursive ---

// refLeaf is RFC 9162 §2.1.1 leaf hash written out without this package.
func refLeaf(d []byte) []byte {
	s := sha256.Sum256(append([]byte{0x00}, d...))
	return s[:]
}

func refNode(l, r []byte) []byte {
	s := sha256.Sum256(append(append([]byte{0x01}, l...), r...))
	return s[:]
}

// splitPoint is k, the largest power of two smaller than n (n > 1).
func splitPoint(n uint64) uint64 {
	return 1 << (bits.Len64(n-1) - 1)
}

// refMTH is MTH(D[n]) over leaf hashes.
func refMTH(lh [][]byte) []byte {
	if len(lh) == 1 {
		return lh[0]
	}
	k := splitPoint(uint64(len(lh)))
	return refNode(refMTH(lh[:k]), refMTH(lh[k:]))
}

// refPath is PATH(m, D[n]) over leaf hashes, leaf to root.
func refPath(m uint64, lh [][]byte) [][]byte {
	n := uint64(len(lh))
	if n == 1 {
		return [][]byte{}
	}
	k := splitPoint(n)
	if m < k {
		return append(refPath(m, lh[:k]), refMTH(lh[k:]))
	}
	return append(refPath(m-k, lh[k:]), refMTH(lh[:k]))
}

// refDirections says, for each element of PATH(m, D[n]) from the leaf up,
// whether the sibling is on the left. Two (index, size) pairs with equal
// directions hash the same path identically (RFC 9162 §2.1.3.2).
func refDirections(m, n uint64) []bool {
	if n == 1 {
		return nil
	}
	k := splitPoint(n)
	if m < k {
		return append(refDirections(m, k), false)
	}
	return append(refDirections(m-k, n-k), true)
}

// refRootFromPath recomputes a root from a path following refDirections.
func refRootFromPath(m, n uint64, leaf []byte, path [][]byte) ([]byte, bool) {
	dirs := refDirections(m, n)
	if len(dirs) != len(path) {
		return nil, false
	}
	h := leaf
	for i, left := range dirs {
		if left {
			h = refNode(path[i], h)
		} else {
			h = refNode(h, path[i])
		}
	}
	return h, true
}

func equalBools(a, b []bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// testData returns n distinct leaf inputs of varying lengths (0..~40 bytes).
func testData(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		b := make([]byte, i%41)
		for j := range b {
			b[j] = byte(i*31 + j)
		}
		out[i] = append(b, byte(i), byte(i>>8), byte(i>>16))
	}
	return out
}

func leafHashes(data [][]byte) [][]byte {
	out := make([][]byte, len(data))
	for i, d := range data {
		out[i] = LeafHash(d)
	}
	return out
}

func mustNew(t testing.TB, lh [][]byte) *Tree {
	t.Helper()
	tr, err := New(lh)
	if err != nil {
		t.Fatalf("New(%d leaves): %v", len(lh), err)
	}
	return tr
}

// compactRoot is transparency-dev's compact.Range root over leaf hashes.
func compactRoot(t testing.TB, lh [][]byte) []byte {
	t.Helper()
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	r := rf.NewEmptyRange(0)
	for _, h := range lh {
		if err := r.Append(h, nil); err != nil {
			t.Fatal(err)
		}
	}
	root, err := r.GetRootHash(nil)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func flipBit(p [][]byte, elem, bit int) [][]byte {
	q := make([][]byte, len(p))
	for i := range p {
		q[i] = bytes.Clone(p[i])
	}
	q[elem][bit/8] ^= 1 << (bit % 8)
	return q
}

func wantBad(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: verified, want ErrBadProof", what)
	}
	if !errors.Is(err, ErrBadProof) {
		t.Fatalf("%s: error %v does not wrap ErrBadProof", what, err)
	}
}

// --- tests ---

func TestLeafHashMatchesReferences(t *testing.T) {
	for _, d := range testData(50) {
		got := LeafHash(d)
		if !bytes.Equal(got, refLeaf(d)) || !bytes.Equal(got, rfc6962.DefaultHasher.HashLeaf(d)) {
			t.Fatalf("LeafHash(%x) = %x, want %x", d, got, refLeaf(d))
		}
	}
}

// TestAllSizesAllIndices checks every size 1..130 and every index against
// three independent roots (recursive MTH, transparency-dev's testonly.Tree and
// compact.Range), proofs against testonly.Tree and the recursive PATH, and
// that corrupted proofs fail.
func TestAllSizesAllIndices(t *testing.T) {
	const maxSize = 130
	data := testData(maxSize + 1)
	allLH := leafHashes(data)
	ref := testonly.New(rfc6962.DefaultHasher)
	indistinguishableSizes := 0
	for size := 1; size <= maxSize; size++ {
		ref.AppendData(data[size-1])
		lh := allLH[:size]
		tr := mustNew(t, lh)
		trData, err := FromData(data[:size])
		if err != nil {
			t.Fatal(err)
		}
		root := tr.Root()
		if tr.Size() != uint64(size) || trData.Size() != uint64(size) {
			t.Fatalf("size %d: Size() = %d / %d", size, tr.Size(), trData.Size())
		}
		for name, want := range map[string][]byte{
			"recursive MTH":    refMTH(lh),
			"testonly.Tree":    ref.Hash(),
			"compact.Range":    compactRoot(t, lh),
			"FromData":         trData.Root(),
			"rfc6962 one leaf": map[bool][]byte{true: rfc6962.DefaultHasher.HashLeaf(data[0]), false: root}[size == 1],
		} {
			if !bytes.Equal(root, want) {
				t.Fatalf("size %d: root %x != %s %x", size, root, name, want)
			}
		}
		for i := uint64(0); i < uint64(size); i++ {
			p, err := tr.Proof(i)
			if err != nil {
				t.Fatalf("size %d: Proof(%d): %v", size, i, err)
			}
			refP, err := ref.InclusionProof(i, uint64(size))
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprintf("%x", p) != fmt.Sprintf("%x", refP) || fmt.Sprintf("%x", p) != fmt.Sprintf("%x", refPath(i, lh)) {
				t.Fatalf("size %d index %d: proof %x, want %x", size, i, p, refP)
			}
			if len(p) > depth(uint64(size)) {
				t.Fatalf("size %d index %d: proof length %d > depth %d", size, i, len(p), depth(uint64(size)))
			}
			pd, _ := trData.Proof(i)
			if fmt.Sprintf("%x", p) != fmt.Sprintf("%x", pd) {
				t.Fatalf("size %d index %d: New and FromData proofs differ", size, i)
			}
			if err := proof.VerifyInclusion(rfc6962.DefaultHasher, i, uint64(size), lh[i], p, root); err != nil {
				t.Fatalf("size %d index %d: transparency-dev rejects proof: %v", size, i, err)
			}
			if err := VerifyInclusion(i, uint64(size), lh[i], p, root); err != nil {
				t.Fatalf("size %d index %d: VerifyInclusion: %v", size, i, err)
			}
			indistinguishableSizes += checkCorruptions(t, tr, lh, i, p, root, allLH[maxSize])
		}
	}
	t.Logf("wrong-size probes with an identical audit-path shape (verify by design): %d", indistinguishableSizes)
}

// checkCorruptions verifies that every corruption of a valid proof fails. It
// returns how many wrong sizes had the same path shape as the true size: those
// verify by construction of RFC 9162 §2.1.3.2, which is why the tree size must
// come from the signed root, and the test asserts exactly that rule.
func checkCorruptions(t *testing.T, tr *Tree, lh [][]byte, i uint64, p [][]byte, root, otherLeaf []byte) int {
	t.Helper()
	size := tr.Size()
	what := func(s string) string { return fmt.Sprintf("size %d index %d: %s", size, i, s) }
	for e := range p {
		for _, bit := range []int{0, 7, 100, 255} {
			wantBad(t, what(fmt.Sprintf("bit %d of element %d flipped", bit, e)),
				VerifyInclusion(i, size, lh[i], flipBit(p, e, bit), root))
		}
	}
	wantBad(t, what("leaf hash bit flipped"), VerifyInclusion(i, size, flipBit([][]byte{lh[i]}, 0, 3)[0], p, root))
	wantBad(t, what("root bit flipped"), VerifyInclusion(i, size, lh[i], p, flipBit([][]byte{root}, 0, 200)[0]))
	wantBad(t, what("wrong leaf"), VerifyInclusion(i, size, otherLeaf, p, root))
	for _, j := range []uint64{i + 1, i - 1, i ^ 1, i + 2, size, math.MaxUint64} {
		if j == i {
			continue
		}
		err := VerifyInclusion(j, size, lh[i], p, root)
		wantBad(t, what(fmt.Sprintf("wrong index %d", j)), err)
		if j >= size && !errors.Is(err, ErrIndexOutOfRange) {
			t.Fatalf("%s: index %d >= size: %v does not wrap ErrIndexOutOfRange", what(""), j, err)
		}
	}
	same := 0
	for _, s := range []uint64{size - 1, size + 1, size + 2, 2 * size, size * 3 / 2, 1 << 40, math.MaxUint64} {
		if s == size || s <= i {
			continue
		}
		err := VerifyInclusion(i, s, lh[i], p, root)
		if equalBools(refDirections(i, s), refDirections(i, size)) {
			same++
			if err != nil {
				t.Fatalf("%s: size %d has the same path shape but fails: %v", what(""), s, err)
			}
			continue
		}
		wantBad(t, what(fmt.Sprintf("wrong size %d", s)), err)
	}
	if len(p) > 0 {
		wantBad(t, what("truncated (last dropped)"), VerifyInclusion(i, size, lh[i], p[:len(p)-1], root))
		wantBad(t, what("truncated (first dropped)"), VerifyInclusion(i, size, lh[i], p[1:], root))
		wantBad(t, what("swapped ends"), swapEnds(i, size, lh[i], p, root))
	}
	wantBad(t, what("extended at end"), VerifyInclusion(i, size, lh[i], append(bytes2D(p), root), root))
	wantBad(t, what("extended at start"), VerifyInclusion(i, size, lh[i], append([][]byte{lh[i]}, p...), root))
	return same
}

// swapEnds verifies p with its first and last elements exchanged; for a proof
// of one element (or two equal ends) it corrupts the element instead.
func swapEnds(i, size uint64, leaf []byte, p [][]byte, root []byte) error {
	q := bytes2D(p)
	q[0], q[len(q)-1] = q[len(q)-1], q[0]
	if bytes.Equal(q[0], p[0]) {
		q = flipBit(q, 0, 1)
	}
	return VerifyInclusion(i, size, leaf, q, root)
}

func bytes2D(p [][]byte) [][]byte {
	q := make([][]byte, len(p))
	copy(q, p)
	return q
}

// TestKnownAnswers uses the RFC 6962 vectors shipped by transparency-dev:
// testonly.LeafInputs/RootHashes/NodeHashes, and the inclusion proofs below.
func TestKnownAnswers(t *testing.T) {
	inputs := testonly.LeafInputs()
	roots := testonly.RootHashes()
	nodes := testonly.NodeHashes()
	for i, d := range inputs {
		if got := LeafHash(d); !bytes.Equal(got, nodes[0][i]) {
			t.Fatalf("LeafHash(input %d) = %x, want %x", i, got, nodes[0][i])
		}
	}
	for size := 1; size <= len(inputs); size++ {
		tr, err := FromData(inputs[:size])
		if err != nil {
			t.Fatal(err)
		}
		if got := tr.Root(); !bytes.Equal(got, roots[size]) {
			t.Fatalf("size %d: root %x, want %x", size, got, roots[size])
		}
	}
	full, _ := FromData(inputs)
	for l := range nodes { // the 8-leaf tree is complete: every level must match
		for j, want := range nodes[l] {
			if got := full.levels[l][j*HashSize : (j+1)*HashSize]; !bytes.Equal(got, want) {
				t.Fatalf("level %d node %d: %x, want %x", l, j, got, want)
			}
		}
	}
	// Inclusion proof vectors copied from transparency-dev/merkle v0.0.2
	// proof/verify_test.go (inclusionProofs; leaf is 1-based there, and the
	// {0, 0} and {1, 1} entries are covered by the size-1 and empty tests).
	vectors := []struct {
		leaf, size uint64
		proof      []string
	}{
		{1, 8, []string{
			"96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
			"5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
			"6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"}},
		{6, 8, []string{
			"bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
			"ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
			"d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"}},
		{3, 3, []string{
			"fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"}},
		{2, 5, []string{
			"6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
			"5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
			"bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"}},
	}
	for _, v := range vectors {
		tr, _ := FromData(inputs[:v.size])
		got, err := tr.Proof(v.leaf - 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(v.proof) {
			t.Fatalf("leaf %d size %d: proof length %d, want %d", v.leaf, v.size, len(got), len(v.proof))
		}
		for k, h := range v.proof {
			if hex.EncodeToString(got[k]) != h {
				t.Fatalf("leaf %d size %d: proof[%d] = %x, want %s", v.leaf, v.size, k, got[k], h)
			}
		}
		if err := VerifyInclusion(v.leaf-1, v.size, LeafHash(inputs[v.leaf-1]), got, roots[v.size]); err != nil {
			t.Fatalf("leaf %d size %d: %v", v.leaf, v.size, err)
		}
	}
}

func TestSingleLeaf(t *testing.T) {
	lh := LeafHash([]byte("the only ticket"))
	tr := mustNew(t, [][]byte{lh})
	if !bytes.Equal(tr.Root(), lh) {
		t.Fatalf("root %x, want the leaf hash %x", tr.Root(), lh)
	}
	p, err := tr.Proof(0)
	if err != nil || p == nil || len(p) != 0 {
		t.Fatalf("Proof(0) = %v, %v; want empty non-nil", p, err)
	}
	if err := VerifyInclusion(0, 1, lh, p, tr.Root()); err != nil {
		t.Fatal(err)
	}
	wantBad(t, "one-leaf proof with an extra hash", VerifyInclusion(0, 1, lh, [][]byte{lh}, lh))
	wantBad(t, "one-leaf wrong root", VerifyInclusion(0, 1, lh, nil, LeafHash(nil)))
}

func TestEdgeCases(t *testing.T) {
	if _, err := New(nil); !errors.Is(err, ErrEmptyTree) {
		t.Fatalf("New(nil): %v, want ErrEmptyTree", err)
	}
	if _, err := New([][]byte{}); !errors.Is(err, ErrEmptyTree) {
		t.Fatalf("New(empty): %v, want ErrEmptyTree", err)
	}
	if _, err := FromData(nil); !errors.Is(err, ErrEmptyTree) {
		t.Fatalf("FromData(nil): %v, want ErrEmptyTree", err)
	}
	good := LeafHash(nil)
	for _, n := range []int{0, 1, 31, 33, 64} {
		_, err := New([][]byte{good, make([]byte, n), good})
		if !errors.Is(err, ErrLeafHashSize) {
			t.Fatalf("leaf hash of %d bytes: %v, want ErrLeafHashSize", n, err)
		}
	}
	tr := mustNew(t, leafHashes(testData(5)))
	for _, i := range []uint64{5, 6, 1 << 62, math.MaxUint64} {
		if _, err := tr.Proof(i); !errors.Is(err, ErrIndexOutOfRange) {
			t.Fatalf("Proof(%d): %v, want ErrIndexOutOfRange", i, err)
		}
		if _, err := tr.LeafHashAt(i); !errors.Is(err, ErrIndexOutOfRange) {
			t.Fatalf("LeafHashAt(%d): %v, want ErrIndexOutOfRange", i, err)
		}
	}
}

func TestVerifyRejectsMalformed(t *testing.T) {
	lh := leafHashes(testData(7))
	tr := mustNew(t, lh)
	root := tr.Root()
	p, _ := tr.Proof(3)
	short := [][]byte{p[0], p[1][:31], p[2]}
	long := [][]byte{p[0], append(bytes.Clone(p[1]), 0), p[2]}
	cases := map[string]error{
		"size 0":            VerifyInclusion(0, 0, lh[0], nil, root),
		"short leaf hash":   VerifyInclusion(3, 7, lh[3][:31], p, root),
		"nil leaf hash":     VerifyInclusion(3, 7, nil, p, root),
		"short root":        VerifyInclusion(3, 7, lh[3], p, root[:31]),
		"long root":         VerifyInclusion(3, 7, lh[3], p, append(bytes.Clone(root), 0)),
		"short proof elem":  VerifyInclusion(3, 7, lh[3], short, root),
		"long proof elem":   VerifyInclusion(3, 7, lh[3], long, root),
		"nil proof elem":    VerifyInclusion(3, 7, lh[3], [][]byte{p[0], nil, p[2]}, root),
		"proof > MaxDepth":  VerifyInclusion(0, math.MaxUint64, lh[0], make([][]byte, MaxDepth+1), root),
		"max size, garbage": VerifyInclusion(math.MaxUint64-1, math.MaxUint64, lh[0], zeros(MaxDepth), root),
	}
	for name, err := range cases {
		wantBad(t, name, err)
	}
	if err := VerifyInclusion(3, 7, lh[3], p, root); err != nil {
		t.Fatalf("the unmodified proof must still verify: %v", err)
	}
}

func zeros(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, HashSize)
	}
	return out
}

// TestImmutable checks that callers cannot change the tree through the
// slices they pass in or get back.
func TestImmutable(t *testing.T) {
	lh := leafHashes(testData(9))
	in := bytes2D(lh)
	in[4] = bytes.Clone(lh[4])
	tr := mustNew(t, in)
	root := tr.Root()
	in[4][0] ^= 0xff
	tr.Root()[0] ^= 0xff
	p, _ := tr.Proof(4)
	for _, h := range p {
		h[0] ^= 0xff
	}
	l, _ := tr.LeafHashAt(2)
	l[0] ^= 0xff
	if !bytes.Equal(tr.Root(), root) || !bytes.Equal(root, refMTH(lh)) {
		t.Fatal("root changed through a caller's slice")
	}
	p2, _ := tr.Proof(4)
	if err := VerifyInclusion(4, 9, lh[4], p2, root); err != nil {
		t.Fatalf("proof changed through a caller's slice: %v", err)
	}
	if l2, _ := tr.LeafHashAt(2); !bytes.Equal(l2, lh[2]) {
		t.Fatal("leaf hash changed through a caller's slice")
	}
}

// TestParallelBuild forces the parallel paths (levels of >= minParallelNodes
// pairs, >= minParallelLeaves bodies) and compares with serial references.
func TestParallelBuild(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	for _, n := range []int{2*minParallelNodes + 3, 3*minParallelNodes - 1, 5*minParallelNodes + 1} {
		data := make([][]byte, n)
		for i := range data {
			data[i] = binary.BigEndian.AppendUint64(nil, uint64(i)*0x9e3779b97f4a7c15)
		}
		lh := make([][]byte, n)
		for i, d := range data {
			lh[i] = rfc6962.DefaultHasher.HashLeaf(d)
		}
		tr := mustNew(t, lh)
		trd, err := FromData(data)
		if err != nil {
			t.Fatal(err)
		}
		want := compactRoot(t, lh)
		if !bytes.Equal(tr.Root(), want) || !bytes.Equal(trd.Root(), want) {
			t.Fatalf("n=%d: roots %x / %x, want %x", n, tr.Root(), trd.Root(), want)
		}
		for _, i := range []uint64{0, 1, uint64(n) / 3, uint64(n) - 2, uint64(n) - 1} {
			p, _ := trd.Proof(i)
			if err := proof.VerifyInclusion(rfc6962.DefaultHasher, i, uint64(n), lh[i], p, want); err != nil {
				t.Fatalf("n=%d index %d: %v", n, i, err)
			}
		}
	}
}

func TestParallelForCoversOnce(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(3))
	for _, n := range []int{0, 1, 7, 8, 9, 63, 64, 65, 1000, 4099} {
		for _, thr := range []int{2, 8, 64, 1 << 12} {
			hits := make([]int32, n)
			parallelFor(n, thr, func(lo, hi int) {
				for i := lo; i < hi; i++ {
					hits[i]++ // chunks are disjoint, so no race
				}
			})
			for i, h := range hits {
				if h != 1 {
					t.Fatalf("n=%d thr=%d: index %d visited %d times", n, thr, i, h)
				}
			}
		}
	}
}

func TestDepth(t *testing.T) {
	for n, want := range map[uint64]int{1: 0, 2: 1, 3: 2, 4: 2, 5: 3, 8: 3, 9: 4, 1 << 20: 20, 1<<20 + 1: 21, math.MaxUint64: 64} {
		if got := depth(n); got != want {
			t.Fatalf("depth(%d) = %d, want %d", n, got, want)
		}
	}
}
