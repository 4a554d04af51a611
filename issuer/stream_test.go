package issuer

import (
	"errors"
	"fmt"
	"testing"

	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// streamFleet registers n devices with an issuer streaming in chunks of
// 2 leaves.
func streamFleet(t *testing.T, n int) (*env, []*device) {
	t.Helper()
	e := newEnv(t, func(c *Config) { c.ChunkLeaves = 2 })
	var devs []*device
	for k := range n {
		d := newDevice(t, fmt.Sprintf("dev-%02d", k))
		e.register(d)
		devs = append(devs, d)
	}
	return e, devs
}

func rootPayload(t *testing.T, root []byte) *wire.EpochRoot {
	t.Helper()
	p, err := signature.ParseSign1(root)
	if err != nil {
		t.Fatal(err)
	}
	r, err := wire.ParseEpochRoot(p.Payload)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestStreamedEpoch: an epoch of more devices than a chunk is issued in
// chunks (its root lists them), every device accepts its ticket, and the
// next epoch follows each chain directly.
func TestStreamedEpoch(t *testing.T) {
	e, devs := streamFleet(t, 7)
	for want := uint64(1); want <= 2; want++ {
		if ep := e.issue(); ep != want {
			t.Fatalf("epoch %d, want %d", ep, want)
		}
		for _, d := range devs {
			tk, root, _ := e.latest(d.id)
			r := rootPayload(t, root)
			if r.TreeSize != 7 || r.ChunkHeight != 1 || len(r.ChunkRoots) != 4 {
				t.Fatalf("epoch %d root: size %d height %d chunks %d", want, r.TreeSize, r.ChunkHeight, len(r.ChunkRoots))
			}
			res := d.accept(tk, root, e.pins, e.clock.Now().Add(1))
			if res.Gap {
				t.Fatalf("%s: epoch %d accepted with a gap", d.id, want)
			}
		}
	}
	if n := e.counter("epochs_abandoned"); n != 0 {
		t.Fatalf("%d epochs abandoned", n)
	}
}

// failingStore fails the n-th chunk commit of a streamed epoch.
type failingStore struct {
	Store
	chunks, failAt int
}

var errInjected = errors.New("injected store failure")

func (s *failingStore) CommitEpoch(c *EpochCommit) ([]uint64, error) {
	if c.Stage == StageChunk {
		s.chunks++
		if s.chunks == s.failAt {
			return nil, errInjected
		}
	}
	return s.Store.CommitEpoch(c)
}

// TestAbandonedEpoch: a store failure mid-stream abandons the epoch: its
// number stays used (the store's last epoch), no root of it is stored or
// signed, the chunks persisted before keep their tickets, and the next
// epoch is a higher number that every device accepts, with a gap since
// its last accepted epoch (the abandoned number is missing from every
// chain; PROTOCOL.md §8.2 rule 6).
func TestAbandonedEpoch(t *testing.T) {
	e, devs := streamFleet(t, 7)
	e.issue()
	for _, d := range devs {
		e.deliver(d)
	}
	fs := &failingStore{Store: e.iss.store, failAt: 3}
	e.iss.store = fs
	ep, err := e.iss.IssueEpoch(t.Context())
	if ep != 0 || !errors.Is(err, ErrEpochAbandoned) || !errors.Is(err, errInjected) {
		t.Fatalf("IssueEpoch: %d, %v; want 0 and ErrEpochAbandoned", ep, err)
	}
	if n := e.counter("epochs_abandoned"); n != 1 {
		t.Fatalf("epochs_abandoned %d", n)
	}
	moved := map[string]bool{}
	mustView(t, e.iss.store, func(tx ReadTx) error {
		last, _ := tx.LastEpoch()
		root, _ := tx.Root(2)
		if last != 2 || root != nil {
			t.Fatalf("after the abandoned epoch 2: last %d, root stored %v", last, root != nil)
		}
		return tx.Devices(func(r *record) error {
			if r.Epoch == 2 {
				moved[r.ID] = true
			}
			return nil
		})
	})
	// Chunks 1 and 2 (4 devices) were persisted, the third failed.
	if len(moved) != 4 {
		t.Fatalf("%d records hold the abandoned epoch's ticket, want 4", len(moved))
	}
	e.iss.store = fs.Store
	if ep := e.issue(); ep != 3 {
		t.Fatalf("the epoch after the abandoned 2 is %d, want 3", ep)
	}
	for _, d := range devs {
		res := e.deliver(d)
		if !res.Gap || res.PrevEpoch != 1 {
			t.Fatalf("%s (chain head moved: %v): gap %v since %d, want a gap since 1", d.id, moved[d.id], res.Gap, res.PrevEpoch)
		}
	}
}
