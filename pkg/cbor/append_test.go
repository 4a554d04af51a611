package cbor

import (
	"bytes"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// boundaries are the arguments where the shortest head changes size.
var boundaries = []uint64{0, 1, 23, 24, 25, 0xff, 0x100, 0xffff, 0x10000,
	0xffffffff, 0x100000000, math.MaxUint64}

// TestAppendMatchesMarshal checks each Append function against Marshal
// (fxamacker/cbor in core deterministic mode) at every head-size boundary
// and for random values.
func TestAppendMatchesMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	ints := append([]uint64(nil), boundaries...)
	lens := []int{0, 1, 23, 24, 255, 256, 1568, 65535, 65536}
	for range 200 {
		ints = append(ints, r.Uint64()>>r.IntN(64))
		lens = append(lens, r.IntN(3000))
	}
	for _, v := range ints {
		want := mustMarshal(t, v)
		if got := AppendUint(nil, v); !bytes.Equal(got, want) {
			t.Fatalf("uint %d: %x, want %x", v, got, want)
		}
		if HeadSize(v) != len(want) {
			t.Fatalf("HeadSize(%d) = %d, want %d", v, HeadSize(v), len(want))
		}
	}
	for _, n := range lens {
		bs := bytes.Repeat([]byte{0xa5}, n)
		if got, want := append(AppendBytesHead(nil, n), bs...), mustMarshal(t, bs); !bytes.Equal(got, want) {
			t.Fatalf("bytes head of %d: %x, want %x", n, got[:min(9, len(got))], want[:min(9, len(want))])
		}
		if got, want := AppendBytes([]byte{}, bs), mustMarshal(t, bs); !bytes.Equal(got, want) {
			t.Fatalf("bytes of %d: head %x, want %x", n, got[:min(9, len(got))], want[:min(9, len(want))])
		}
		s := strings.Repeat("é", n/2) + strings.Repeat("a", n%2)
		if got, want := AppendText(nil, s), mustMarshal(t, s); !bytes.Equal(got, want) {
			t.Fatalf("text of %d bytes: head %x, want %x", len(s), got[:min(9, len(got))], want[:min(9, len(want))])
		}
		if n > 300 {
			continue // keep the arrays and maps small
		}
		arr := make([]uint64, n)
		if got, want := AppendArrayHead(nil, n), mustMarshal(t, arr); !bytes.Equal(got, want[:len(got)]) || len(want)-len(got) != n {
			t.Fatalf("array of %d: head %x, want %x", n, got, want[:min(9, len(want))])
		}
		m := make(map[uint64]bool, n)
		for k := range n {
			m[uint64(k)] = false
		}
		if got, want := AppendMapHead(nil, n), mustMarshal(t, m); !bytes.Equal(got, want[:len(got)]) {
			t.Fatalf("map of %d: head %x, want %x", n, got, want[:min(9, len(want))])
		}
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
