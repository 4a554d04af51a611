package accept

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// streamEpoch issues epoch e to devs (ids ascending) in chunks of
// 2^height leaves, chunk by chunk as a streaming issuer does, and returns
// every ticket by device id and the signed root made last.
func streamEpoch(t *testing.T, key *signature.PrivateKey, e, issuedAt, height uint64, devs []batch.Device) (map[string][]byte, []byte) {
	t.Helper()
	p := batch.Params{Epoch: e, IssuedAt: issuedAt, TTL: 600}
	size := uint64(len(devs))
	tickets := map[string][]byte{}
	var roots [][]byte
	for c := uint64(0); c < wire.ChunkCount(size, height); c++ {
		lo, hi := c<<height, min(size, (c+1)<<height)
		ch, err := batch.IssueChunk(p, size, height, c, devs[lo:hi])
		if err != nil {
			t.Fatal(err)
		}
		for _, tk := range ch.Tickets {
			tickets[tk.DeviceID] = tk.Ticket
		}
		roots = append(roots, ch.Root)
	}
	signed, _, err := batch.SignRoot(key, p, size, height, roots)
	if err != nil {
		t.Fatal(err)
	}
	return tickets, signed
}

// TestStreamedEpoch: every device of an epoch issued in chunks accepts its
// ticket, whose path is in its chunk, and the root's Merkle root is the
// one of the same epoch issued whole.
func TestStreamedEpoch(t *testing.T) {
	f := newFixture(t)
	devs := []batch.Device{f.self(f.st.Current, nil)}
	states := map[string]*State{self: f.st}
	for i := range 6 {
		k := f.newKey()
		id := fmt.Sprintf("dev-s%d", i)
		devs = append(devs, batch.Device{ID: id, Alg: kem.MLKEM768, RawKey: k.PublicKey().Bytes(), Purpose: "p", Group: "g"})
		st, err := NewState(id, k)
		if err != nil {
			t.Fatal(err)
		}
		states[id] = st
	}
	slices.SortFunc(devs, func(a, b batch.Device) int { return strings.Compare(a.ID, b.ID) })
	for _, h := range []uint64{1, 2} {
		tickets, root := streamEpoch(t, f.issuer, 3+h, uint64(f.now.Unix()), h, devs)
		p, err := signature.ParseSign1(root)
		if err != nil {
			t.Fatal(err)
		}
		er, err := wire.ParseEpochRoot(p.Payload)
		if err != nil || !er.Chunked() || er.ChunkHeight != h || uint64(len(er.ChunkRoots)) != wire.ChunkCount(7, h) {
			t.Fatalf("height %d: root %+v, %v", h, er, err)
		}
		// Every device of the second epoch accepts it with a gap (its
		// prev is zeros); the cache skips the chunk-root check after the
		// first device, as a fleet process does.
		cache := NewRootCache(4)
		for _, d := range devs {
			in := f.input(tickets[d.ID], root)
			in.Roots = cache
			res, err := Accept(states[d.ID], in)
			if err != nil {
				t.Fatalf("height %d, %s: %v", h, d.ID, err)
			}
			states[d.ID] = res.State
		}
	}
}

// TestStreamedEpochRejects: a chunked root whose chunk roots do not hash
// to its root, a ticket checked against the wrong chunk, and a ticket of a
// chunked epoch whose path is presented as a whole-tree path are refused
// as bad proofs, and change nothing.
func TestStreamedEpochRejects(t *testing.T) {
	f := newFixture(t)
	devs := []batch.Device{f.self(f.st.Current, nil)}
	for _, id := range []string{"dev-b", "dev-c", "dev-d", "dev-e"} {
		devs = append(devs, batch.Device{ID: id, Key: f.newKey().PublicKey(), Purpose: "p", Group: "g"})
	}
	tickets, root := streamEpoch(t, f.issuer, 1, uint64(f.now.Unix()), 1, devs)
	p, _ := signature.ParseSign1(root)
	er, _ := wire.ParseEpochRoot(p.Payload)

	resign := func(edit func(*wire.EpochRoot)) []byte {
		r := *er
		r.ChunkRoots = slices.Clone(er.ChunkRoots)
		edit(&r)
		b, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		s, err := signature.Sign1(f.issuer, b)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	before := stateBytes(t, f.st)
	for name, bad := range map[string][]byte{
		// The issuer's own signature over chunk roots that do not add up.
		"chunk root changed": resign(func(r *wire.EpochRoot) { r.ChunkRoots[0] = bytes.Repeat([]byte{1}, 32) }),
		"chunks swapped": resign(func(r *wire.EpochRoot) {
			r.ChunkRoots[0], r.ChunkRoots[1] = r.ChunkRoots[1], r.ChunkRoots[0]
		}),
		// The same leaves presented as one chunk: the chunk path does not
		// reach the whole tree's root.
		"chunks dropped": resign(func(r *wire.EpochRoot) { r.ChunkHeight, r.ChunkRoots = 0, nil }),
	} {
		_, err := Accept(f.st, f.input(tickets[self], bad))
		if !errors.Is(err, ErrBadProof) {
			t.Fatalf("%s: %v, want ErrBadProof", name, err)
		}
		if !bytes.Equal(stateBytes(t, f.st), before) {
			t.Fatalf("%s: state changed", name)
		}
		if name == "chunk root changed" {
			if _, _, err := VerifyRoot(bad, f.pins); !errors.Is(err, ErrBadProof) {
				t.Fatalf("VerifyRoot of %s: %v", name, err)
			}
		}
	}
	// Another device's ticket index moved into the wrong chunk.
	moved := editTicket(t, tickets[self], func(tk *wire.Ticket) { tk.LeafIndex = 4 })
	if _, err := Accept(f.st, f.input(moved, root)); !errors.Is(err, ErrBadProof) {
		t.Fatalf("ticket moved to another chunk: %v", err)
	}
	if _, err := Accept(f.st, f.input(tickets[self], root)); err != nil {
		t.Fatalf("the real ticket: %v", err)
	}
}
