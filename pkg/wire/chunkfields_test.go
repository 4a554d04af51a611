package wire

import (
	"bytes"
	"errors"
	"testing"
)

// TestChunkFieldsZeroValues: chunk_height 0 or an empty chunk_roots,
// alone, are present-but-empty optional fields (PROTOCOL.md §4, §5.4:
// height 1..63, 2..64 roots, both or neither). The struct's zero values
// would read them as absent; only the strict re-encoding check refuses
// them, so they are pinned here.
func TestChunkFieldsZeroValues(t *testing.T) {
	head := append([]byte{0xa6, 0x00, 0x01, 0x01, 0x01, 0x02, 0x00, 0x03, 0x03, 0x04, 0x58, 0x20}, bytes.Repeat([]byte{7}, 32)...)
	for name, tail := range map[string][]byte{
		"chunk_height 0 alone":     {0x05, 0x00},
		"empty chunk_roots alone":  {0x06, 0x80},
		"chunk_height 1, no roots": {0x05, 0x01},
	} {
		if _, err := ParseEpochRoot(append(bytes.Clone(head), tail...)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// The same head without chunk fields (five pairs) is a valid root.
	valid := append([]byte{0xa5}, head[1:]...)
	if _, err := ParseEpochRoot(valid); err != nil {
		t.Fatalf("valid root: %v", err)
	}
}
