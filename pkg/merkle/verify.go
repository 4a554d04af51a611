package merkle

import (
	"fmt"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
)

// VerifyInclusion checks that leafHash is the leaf at index in the tree of the
// given size whose RFC 9162 §2.1.1 root is root, using the RFC 9162 §2.1.3.2
// audit-path verification of github.com/transparency-dev/merkle
// (proof.VerifyInclusion with rfc6962.DefaultHasher).
//
// Sizes are checked before any hashing: leafHash, root and every proof element
// must be HashSize bytes, len(proof) <= MaxDepth and index < size. Every
// failure wraps ErrBadProof; an index out of range also wraps
// ErrIndexOutOfRange. It never panics on malformed input.
func VerifyInclusion(index, size uint64, leafHash []byte, proofPath [][]byte, root []byte) error {
	if err := checkShape(index, size, leafHash, proofPath, root); err != nil {
		return err
	}
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, index, size, leafHash, proofPath, root); err != nil {
		return fmt.Errorf("%w: %w", ErrBadProof, err)
	}
	return nil
}

// checkShape enforces the size limits of VerifyInclusion without hashing.
func checkShape(index, size uint64, leafHash []byte, proofPath [][]byte, root []byte) error {
	switch {
	case index >= size:
		return fmt.Errorf("%w: %w: %d >= %d", ErrBadProof, ErrIndexOutOfRange, index, size)
	case len(proofPath) > MaxDepth:
		return fmt.Errorf("%w: proof has %d hashes, max %d", ErrBadProof, len(proofPath), MaxDepth)
	case len(leafHash) != HashSize:
		return fmt.Errorf("%w: leaf hash is %d bytes, want %d", ErrBadProof, len(leafHash), HashSize)
	case len(root) != HashSize:
		return fmt.Errorf("%w: root is %d bytes, want %d", ErrBadProof, len(root), HashSize)
	}
	for i, h := range proofPath {
		if len(h) != HashSize {
			return fmt.Errorf("%w: proof hash %d is %d bytes, want %d", ErrBadProof, i, len(h), HashSize)
		}
	}
	return nil
}
