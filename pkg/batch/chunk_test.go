package batch

import (
	"errors"
	"testing"

	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/wire"
)

// TestChunkHeightInRange: whatever minimum it is given, ChunkHeight returns
// a height the wire allows (PROTOCOL.md §5.4: 1..63, 2..64 chunks) or
// OneChunk. A height of 0 (chunks of one leaf) would be refused by every
// verifier, and by SignRoot only after the tickets were published.
func TestChunkHeightInRange(t *testing.T) {
	sizes := []uint64{1, 2, 3, 63, 64, 65, 128, 129, 1 << 20, 1<<63 + 1, 1<<64 - 1}
	for _, size := range sizes {
		for _, minH := range []uint64{0, 1, 2, 9, 62, 63, 64, 100} {
			h := ChunkHeight(size, minH)
			if h == OneChunk {
				// Only when the smallest allowed height asked for makes one chunk.
				if wire.ChunkCount(size, min(max(minH, 1), wire.MaxChunkHeight)) > 1 {
					t.Fatalf("size %d min %d: one chunk, but chunks of 2^%d leaves are several", size, minH, min(max(minH, 1), wire.MaxChunkHeight))
				}
				continue
			}
			n := wire.ChunkCount(size, h)
			if h < 1 || h > wire.MaxChunkHeight || n < 2 || n > wire.MaxChunks {
				t.Fatalf("size %d min %d: height %d makes %d chunks", size, minH, h, n)
			}
		}
	}
}

// TestIssueChunkRefusesHeightZero: a chunk height the wire does not allow
// is refused before any ticket is made.
func TestIssueChunkRefusesHeightZero(t *testing.T) {
	devs, _ := devices(t, 1, kem.MLKEM768)
	if _, err := IssueChunk(Params{Epoch: 1, IssuedAt: 1, TTL: 1}, 3, 0, 0, devs); !errors.Is(err, ErrInput) {
		t.Fatalf("height 0: %v", err)
	}
}
