package merkle

import (
	"bytes"
	"fmt"
)

// Chunks of a streamed epoch (schema/PROTOCOL.md §5.5). A tree of size n is
// cut into aligned chunks of 2^h leaves, the last one possibly shorter. In
// RFC 9162's left-balanced tree every such chunk is the subtree of one node
// (each split point of MTH, the largest power of two below a range's size,
// is a multiple of 2^h once the range is larger than 2^h), so the Merkle Tree
// Hash of all n leaves equals the MTH computed over the chunks' roots taken
// as nodes: node = H(0x01 ‖ left ‖ right), with RFC 9162's split over the
// chunk count. An issuer can thus finish, prove and publish one chunk's
// leaves before the next chunk exists, and sign the root last.

// Chunk locates the leaf at index of a tree of size leaves cut into chunks
// of 2^height leaves: the chunk's number, the leaf's index inside it, and
// the chunk's size. It returns ErrIndexOutOfRange for index >= size and
// ErrBadProof for height >= MaxDepth.
func Chunk(index, size, height uint64) (chunk, local, chunkSize uint64, err error) {
	if index >= size {
		return 0, 0, 0, fmt.Errorf("%w: %w: %d >= %d", ErrBadProof, ErrIndexOutOfRange, index, size)
	}
	if height >= MaxDepth {
		return 0, 0, 0, fmt.Errorf("%w: chunk height %d", ErrBadProof, height)
	}
	chunk = index >> height
	start := chunk << height
	return chunk, index - start, min(uint64(1)<<height, size-start), nil
}

// RootOfChunks returns the RFC 9162 Merkle Tree Hash computed over
// chunkRoots taken as nodes (each HashSize bytes): the root of the whole
// tree whose aligned chunks have these roots. One chunk root is returned
// unchanged.
func RootOfChunks(chunkRoots [][]byte) ([]byte, error) {
	t, err := New(chunkRoots)
	if err != nil {
		return nil, err
	}
	return t.Root(), nil
}

// CheckChunkRoots checks that chunkRoots, the roots of the aligned chunks
// of a tree, hash to root (RootOfChunks). Every failure wraps ErrBadProof.
func CheckChunkRoots(chunkRoots [][]byte, root []byte) error {
	got, err := RootOfChunks(chunkRoots)
	if err != nil {
		return fmt.Errorf("%w: chunk roots: %w", ErrBadProof, err)
	}
	if !bytes.Equal(got, root) {
		return fmt.Errorf("%w: the chunk roots do not hash to the root", ErrBadProof)
	}
	return nil
}

// VerifyChunkInclusion checks that leafHash is the leaf at index of a tree
// of size leaves cut into chunks of 2^height leaves, by the RFC 9162 audit
// path proofPath inside its chunk against that chunk's root,
// chunkRoots[index >> height]. It does not check that chunkRoots hash to
// the tree's root (CheckChunkRoots, once per epoch). Every failure wraps
// ErrBadProof.
func VerifyChunkInclusion(index, size, height uint64, leafHash []byte, proofPath, chunkRoots [][]byte) error {
	c, local, n, err := Chunk(index, size, height)
	if err != nil {
		return err
	}
	if c >= uint64(len(chunkRoots)) {
		return fmt.Errorf("%w: chunk %d of %d", ErrBadProof, c, len(chunkRoots))
	}
	return VerifyInclusion(local, n, leafHash, proofPath, chunkRoots[c])
}
