package accept

import (
	"bytes"
	"errors"
	"testing"

	"github.com/entropykem/entropykem/pkg/merkle"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// signRoot signs r with the fixture's issuer key, as a (possibly hostile)
// issuer would: the device must judge what the signature covers.
func (f *fixture) signRoot(r *wire.EpochRoot) []byte {
	f.t.Helper()
	b, err := r.Marshal()
	if err != nil {
		f.t.Fatal(err)
	}
	s, err := signature.Sign1(f.issuer, b)
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

// wrap makes a Ticket of body at index of a tree of size with path.
func wrap(t *testing.T, body []byte, index, size uint64, path [][]byte) []byte {
	t.Helper()
	if path == nil {
		path = [][]byte{} // the path is required, empty for a chunk of one
	}
	b, err := (&wire.Ticket{Version: wire.Version, Body: body, LeafIndex: index, TreeSize: size, Path: path}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStreamedEpochEdges attacks PROTOCOL.md §5.5 at its edges: the same
// four leaves presented whole and streamed, tree sizes that differ between
// ticket and root, and chunk heights up to 63 with tree sizes near 2^64
// (no overflow, no panic, only the proof RFC 9162 asks for verifies).
func TestStreamedEpochEdges(t *testing.T) {
	f := newFixture(t)
	whole, wroot, _ := f.issue(1) // dev-a and three others, one chunk
	p, _ := signature.ParseSign1(wroot)
	er, _ := wire.ParseEpochRoot(p.Payload)
	tk, _, err := wire.ParseTicket(whole)
	if err != nil {
		t.Fatal(err)
	}
	if tk.TreeSize != 4 {
		t.Fatalf("tree of %d", tk.TreeSize)
	}
	// The epoch's four leaves, from the whole tree: rebuild chunk roots of
	// 2^1 leaves. Only this device's leaf is known; its chunk sibling is
	// its path's first hash, and the other chunk's root its second.
	leaf := merkle.LeafHash(tk.Body)
	var chunk0, chunk1 []byte
	local := tk.LeafIndex & 1
	if local == 0 {
		chunk0 = merkleNode(leaf, tk.Path[0])
	} else {
		chunk0 = merkleNode(tk.Path[0], leaf)
	}
	chunk1 = tk.Path[1]
	if tk.LeafIndex>>1 == 1 {
		chunk0, chunk1 = chunk1, chunk0
	}
	streamed := f.signRoot(&wire.EpochRoot{Version: 1, Epoch: 1, IssuedAt: er.IssuedAt, TreeSize: 4, Root: er.Root,
		ChunkHeight: 1, ChunkRoots: [][]byte{chunk0, chunk1}})
	before := stateBytes(t, f.st)
	expectProof := func(name string, ticket, root []byte) {
		t.Helper()
		if _, err := Accept(f.st, f.input(ticket, root)); !errors.Is(err, ErrBadProof) {
			t.Fatalf("%s: %v, want ErrBadProof", name, err)
		}
		if !bytes.Equal(stateBytes(t, f.st), before) {
			t.Fatalf("%s: state changed", name)
		}
	}
	// The whole tree's path against the streamed root: refused, the root
	// decides how the path is checked.
	expectProof("whole-tree path, streamed root", whole, streamed)
	// Tree sizes that differ between ticket and root (the ticket's is not
	// signed; only equality with the root's binds it).
	chunkPath := [][]byte{tk.Path[0]}
	expectProof("ticket tree size 5, root 4", wrap(t, tk.Body, tk.LeafIndex, 5, chunkPath), streamed)
	expectProof("ticket tree size 3, root 4", wrap(t, tk.Body, min(tk.LeafIndex, 2), 3, chunkPath), streamed)
	// The leaf moved to the other chunk at the same local index.
	expectProof("leaf index in the other chunk", wrap(t, tk.Body, tk.LeafIndex^2, 4, chunkPath), streamed)
	// A chunk path one hash too long (the other chunk's root appended).
	expectProof("path with the chunk's sibling", wrap(t, tk.Body, tk.LeafIndex, 4, tk.Path), streamed)

	// Heights at the top of the range, with tree sizes the CDDL allows
	// (uint): 2^63 + 1 leaves in chunks of 2^63 is two chunks, the second
	// of one leaf, whose root is that leaf.
	other := bytes.Repeat([]byte{0x42}, 32)
	huge := uint64(1)<<63 + 1
	hroot := f.signRoot(&wire.EpochRoot{Version: 1, Epoch: 1, IssuedAt: er.IssuedAt, TreeSize: huge,
		Root: merkleNode(other, leaf), ChunkHeight: 63, ChunkRoots: [][]byte{other, leaf}})
	// In chunk 0 (2^63 leaves) an empty path proves nothing.
	expectProof("chunk of 2^63 leaves, empty path", wrap(t, tk.Body, 0, huge, nil), hroot)
	expectProof("chunk of 2^63 leaves, last index", wrap(t, tk.Body, 1<<63-1, huge, nil), hroot)
	// The largest tree: chunk 1 holds 2^63 - 1 leaves.
	maxRoot := f.signRoot(&wire.EpochRoot{Version: 1, Epoch: 1, IssuedAt: er.IssuedAt, TreeSize: 1<<64 - 1,
		Root: merkleNode(other, leaf), ChunkHeight: 63, ChunkRoots: [][]byte{other, leaf}})
	expectProof("tree of 2^64 - 1, last leaf, empty path", wrap(t, tk.Body, 1<<64-2, 1<<64-1, nil), maxRoot)
	// What the issuer signed is what a device accepts: its leaf alone in
	// chunk 1 of that tree verifies with an empty path (PROTOCOL.md puts
	// no bound on tree_size; the signature vouches for it).
	if _, err := Accept(f.st, f.input(wrap(t, tk.Body, 1<<63, huge, nil), hroot)); err != nil {
		t.Fatalf("the leaf alone in chunk 1: %v", err)
	}
}

func merkleNode(l, r []byte) []byte {
	n, err := merkle.RootOfChunks([][]byte{l, r})
	if err != nil {
		panic(err)
	}
	return n
}
