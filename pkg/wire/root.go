package wire

// EpochRoot is the payload of the epoch's COSE_Sign1 on ekem/v1/root/{epoch}
// (schema/entropykem.cddl: epoch-root). One ML-DSA signature over it covers
// every ticket of the epoch through the Merkle root.
//
// A streamed epoch (schema/PROTOCOL.md §5.5) is cut into aligned chunks of
// 2^ChunkHeight leaves (the last may be shorter): ChunkRoots holds the RFC
// 9162 root of each chunk, in order, and each Ticket's path proves inclusion
// in its chunk. Both are absent for an epoch of one chunk, whose tickets
// prove inclusion in the whole tree (the format of unchunked epochs).
type EpochRoot struct {
	Version     uint64   `cbor:"0,keyasint"`
	Epoch       uint64   `cbor:"1,keyasint"`
	IssuedAt    uint64   `cbor:"2,keyasint"`
	TreeSize    uint64   `cbor:"3,keyasint"`
	Root        []byte   `cbor:"4,keyasint"`
	ChunkHeight uint64   `cbor:"5,keyasint,omitempty"`
	ChunkRoots  [][]byte `cbor:"6,keyasint,omitempty"`
}

// ParseEpochRoot strictly decodes and validates an EpochRoot payload. It
// is only meaningful once the COSE_Sign1 around it has been verified. It
// checks the shape of the chunk fields (count, sizes), not that the chunk
// roots hash to Root: that is merkle.CheckChunkRoots, part of the proof
// check (PROTOCOL.md §8.2 rule 2).
func ParseEpochRoot(b []byte) (*EpochRoot, error) {
	var r EpochRoot
	if err := decode("epoch root", b, MaxEpochRoot, &r); err != nil {
		return nil, err
	}
	if err := r.validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// Marshal validates r and returns its deterministic encoding.
func (r *EpochRoot) Marshal() ([]byte, error) { return encode("epoch root", r) }

// Chunked reports whether the epoch is cut into several chunks.
func (r *EpochRoot) Chunked() bool { return len(r.ChunkRoots) > 0 }

// ChunkCount is the number of chunks of 2^height leaves a tree of size
// leaves is cut into: ceil(size / 2^height).
func ChunkCount(size, height uint64) uint64 {
	if height >= 64 {
		return 1
	}
	n := size >> height
	if size&(1<<height-1) != 0 {
		n++
	}
	return n
}

func (r *EpochRoot) validate() error {
	const what = "epoch root"
	if err := checkVersion(what, r.Version); err != nil {
		return err
	}
	if err := checkEpoch(what, r.Epoch); err != nil {
		return err
	}
	if err := checkTime(what, "issued_at", r.IssuedAt); err != nil {
		return err
	}
	if r.TreeSize < 1 {
		return bad(what, "tree size 0")
	}
	if err := checkHash(what, "root", r.Root); err != nil {
		return err
	}
	if r.ChunkHeight == 0 && r.ChunkRoots == nil {
		return nil
	}
	if r.ChunkHeight < 1 || r.ChunkHeight > MaxChunkHeight {
		return bad(what, "chunk height %d out of range 1..%d", r.ChunkHeight, MaxChunkHeight)
	}
	n := ChunkCount(r.TreeSize, r.ChunkHeight)
	if n < 2 || n > MaxChunks {
		return bad(what, "a tree of %d leaves in chunks of 2^%d leaves has %d chunks, not 2..%d", r.TreeSize, r.ChunkHeight, n, MaxChunks)
	}
	if uint64(len(r.ChunkRoots)) != n {
		return bad(what, "%d chunk roots for %d chunks", len(r.ChunkRoots), n)
	}
	for _, h := range r.ChunkRoots {
		if err := checkHash(what, "chunk root", h); err != nil {
			return err
		}
	}
	return nil
}
