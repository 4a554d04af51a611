package issuer

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/pkg/cbor"
)

// The Store conformance suite: the contract every engine keeps. An engine
// runs it with a function that opens a new, empty store, and one that
// closes a store and opens the same one again (durability).

type storeEngine struct {
	open   func(t *testing.T) Store
	reopen func(t *testing.T, st Store) Store
}

func runStoreConformance(t *testing.T, e storeEngine) {
	for name, fn := range map[string]func(*testing.T, storeEngine){
		"Empty":          conformEmpty,
		"Devices":        conformDevices,
		"Rollback":       conformRollback,
		"CommitEpoch":    conformCommitEpoch,
		"EpochFence":     conformEpochFence,
		"StreamedEpoch":  conformStreamedEpoch,
		"DeviceRange":    conformDeviceRange,
		"Audit":          conformAudit,
		"Rotations":      conformRotations,
		"Recover":        conformRecover,
		"Durable":        conformDurable,
		"ManyDevices":    conformManyDevices,
		"ReadYourWrites": conformReadYourWrites,
	} {
		t.Run(name, func(t *testing.T) { fn(t, e) })
	}
}

func mustView(t *testing.T, st Store, fn func(ReadTx) error) {
	t.Helper()
	if err := st.View(fn); err != nil {
		t.Fatal(err)
	}
}

func mustUpdate(t *testing.T, st Store, fn func(Tx) error) {
	t.Helper()
	if err := st.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// testRecord is a device record with every kind of field set.
func testRecord(id string, epoch uint64) *record {
	return &record{ID: id, State: stateActive, RegAlg: 0x0042, RegKey: bytes.Repeat([]byte{1}, 16), PinnedAt: 7,
		Epoch: epoch, Ticket: []byte("ticket-" + id), TicketHash: bytes.Repeat([]byte{2}, 32),
		TicketPRK: bytes.Repeat([]byte{3}, 32), HasStatus: true, StatusSeq: epoch, StatusHash: bytes.Repeat([]byte{4}, 32)}
}

func encoded(t *testing.T, r *record) []byte {
	t.Helper()
	b, err := cbor.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// snapshot is everything a store holds, encoded, for comparisons.
func snapshot(t *testing.T, st Store) string {
	t.Helper()
	var buf bytes.Buffer
	mustView(t, st, func(tx ReadTx) error {
		last, err := tx.LastEpoch()
		if err != nil {
			return err
		}
		info, err := tx.EpochInfo()
		if err != nil {
			return err
		}
		fmt.Fprintf(&buf, "last=%d info=%x\n", last, info)
		if err := tx.Devices(func(r *record) error {
			fmt.Fprintf(&buf, "dev %x\n", encoded(t, r))
			return nil
		}); err != nil {
			return err
		}
		roots, err := tx.Roots()
		for _, r := range roots {
			fmt.Fprintf(&buf, "root %d %x\n", r.Epoch, r.Root)
		}
		if err != nil {
			return err
		}
		rots, err := tx.Rotations()
		fmt.Fprintf(&buf, "rotations %x\n", rots)
		if err != nil {
			return err
		}
		return tx.Audit(func(e AuditEntry) error {
			fmt.Fprintf(&buf, "audit %+v\n", e)
			return nil
		})
	})
	return buf.String()
}

func conformEmpty(t *testing.T, e storeEngine) {
	st := e.open(t)
	mustView(t, st, func(tx ReadTx) error {
		last, err := tx.LastEpoch()
		info, err2 := tx.EpochInfo()
		r, err3 := tx.Device("dev-1")
		roots, err4 := tx.Roots()
		root, err5 := tx.Root(1)
		rots, err6 := tx.Rotations()
		n := 0
		err7 := tx.Devices(func(*record) error { n++; return nil })
		err8 := tx.Audit(func(AuditEntry) error { n++; return nil })
		if err := errors.Join(err, err2, err3, err4, err5, err6, err7, err8); err != nil {
			t.Fatal(err)
		}
		if last != 0 || info != nil || r != nil || roots != nil || root != nil || rots != nil || n != 0 {
			t.Fatalf("empty store holds: last %d info %x record %v roots %v root %x rotations %v, %d items", last, info, r, roots, root, rots, n)
		}
		return nil
	})
	if st.Name() == "" {
		t.Fatal("a store has a name")
	}
}

func conformDevices(t *testing.T, e storeEngine) {
	st := e.open(t)
	ids := []string{"dev-b", "dev-a", "dev-c"}
	mustUpdate(t, st, func(tx Tx) error {
		for n, id := range ids {
			if err := tx.PutDevice(testRecord(id, uint64(n))); err != nil {
				return err
			}
		}
		return nil
	})
	// Replace one.
	changed := testRecord("dev-b", 9)
	changed.State, changed.Ticket = stateRevoked, nil
	mustUpdate(t, st, func(tx Tx) error { return tx.PutDevice(changed) })
	mustView(t, st, func(tx ReadTx) error {
		var got []string
		if err := tx.Devices(func(r *record) error {
			got = append(got, r.ID)
			return nil
		}); err != nil {
			return err
		}
		if fmt.Sprint(got) != "[dev-a dev-b dev-c]" {
			t.Fatalf("Devices order %v", got)
		}
		r, err := tx.Device("dev-b")
		if err != nil {
			return err
		}
		if !bytes.Equal(encoded(t, r), encoded(t, changed)) {
			t.Fatalf("read back %+v, wrote %+v", r, changed)
		}
		// fn's error stops the iteration and is returned.
		stop := errors.New("stop")
		n := 0
		if err := tx.Devices(func(*record) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
			t.Fatalf("Devices with an error: %v after %d", err, n)
		}
		return nil
	})
}

func conformRollback(t *testing.T, e storeEngine) {
	st := e.open(t)
	mustUpdate(t, st, func(tx Tx) error { return tx.PutDevice(testRecord("dev-1", 1)) })
	before := snapshot(t, st)
	boom := errors.New("boom")
	err := st.Update(func(tx Tx) error {
		if err := tx.PutDevice(testRecord("dev-2", 2)); err != nil {
			return err
		}
		if err := tx.AppendAudit(AuditEntry{Action: "reset", Actor: "t"}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update returned %v, want fn's error", err)
	}
	if after := snapshot(t, st); after != before {
		t.Fatalf("a failed transaction changed the store:\n%s\nwas\n%s", after, before)
	}
	// A transaction that writes nothing and one that only reads succeed.
	mustUpdate(t, st, func(tx Tx) error {
		_, err := tx.Device("dev-1")
		return err
	})
}

func conformCommitEpoch(t *testing.T, e storeEngine) {
	st := e.open(t)
	var cleared []uint64
	for ep := uint64(1); ep <= 5; ep++ {
		recs := []*record{testRecord("dev-a", ep), testRecord("dev-b", ep)}
		c, err := st.CommitEpoch(&EpochCommit{Prev: ep - 1, Epoch: ep, Records: recs,
			Root: []byte(fmt.Sprintf("root-%d", ep)), Info: []byte(fmt.Sprintf("info-%d", ep)), KeepRoots: 3})
		if err != nil {
			t.Fatal(err)
		}
		cleared = append(cleared, c...)
	}
	if fmt.Sprint(cleared) != "[1 2]" {
		t.Fatalf("cleared roots %v, want [1 2]", cleared)
	}
	mustView(t, st, func(tx ReadTx) error {
		last, _ := tx.LastEpoch()
		info, _ := tx.EpochInfo()
		roots, err := tx.Roots()
		if err != nil {
			return err
		}
		if last != 5 || string(info) != "info-5" || len(roots) != 3 || roots[0].Epoch != 3 || string(roots[2].Root) != "root-5" {
			t.Fatalf("after 5 epochs: last %d info %q roots %v", last, info, roots)
		}
		r4, _ := tx.Root(4)
		r1, _ := tx.Root(1)
		if string(r4) != "root-4" || r1 != nil {
			t.Fatalf("Root(4) %q Root(1) %q", r4, r1)
		}
		r, err := tx.Device("dev-a")
		if err != nil || r.Epoch != 5 {
			t.Fatalf("dev-a after 5 epochs: %+v %v", r, err)
		}
		return nil
	})
}

func conformEpochFence(t *testing.T, e storeEngine) {
	st := e.open(t)
	if _, err := st.CommitEpoch(&EpochCommit{Prev: 0, Epoch: 1, Records: []*record{testRecord("dev-a", 1)},
		Root: []byte("r1"), Info: []byte("i1"), KeepRoots: 2}); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, st)
	// A plan made before epoch 1 was committed (by another writer) must
	// not commit: that would issue epoch 1 twice.
	for _, c := range []*EpochCommit{
		{Prev: 0, Epoch: 1, Records: []*record{testRecord("dev-a", 1)}, Root: []byte("x"), Info: []byte("x"), KeepRoots: 2},
		{Prev: 0, Epoch: 2, Records: []*record{testRecord("dev-a", 2)}, Root: []byte("x"), Info: []byte("x"), KeepRoots: 2},
		{Prev: 3, Epoch: 4, Records: []*record{testRecord("dev-a", 4)}, Root: []byte("x"), Info: []byte("x"), KeepRoots: 2},
	} {
		if _, err := st.CommitEpoch(c); !errors.Is(err, ErrEpochFence) {
			t.Fatalf("commit of epoch %d after %d: %v, want ErrEpochFence", c.Epoch, c.Prev, err)
		}
	}
	if _, err := st.CommitEpoch(&EpochCommit{Prev: 1, Epoch: 1, KeepRoots: 2}); err == nil {
		t.Fatal("an epoch not above Prev was committed")
	}
	if after := snapshot(t, st); after != before {
		t.Fatalf("a fenced commit changed the store:\n%s", after)
	}
}

// conformStreamedEpoch: the stages of a streamed epoch (EpochStage). The
// beginning makes the number durable and nothing else; chunks write records
// only while the begun epoch is still the last one; the end stores the
// root and EpochInfo; an epoch begun and never finished is abandoned, and
// the next one must be above it.
func conformStreamedEpoch(t *testing.T, e storeEngine) {
	st := e.open(t)
	if _, err := st.CommitEpoch(&EpochCommit{Prev: 0, Epoch: 1, Records: []*record{testRecord("dev-a", 1)},
		Root: []byte("r1"), Info: []byte("i1"), KeepRoots: 2}); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, st)
	for _, c := range []*EpochCommit{
		{Stage: StageBegin, Prev: 1, Epoch: 2, Records: []*record{testRecord("dev-a", 2)}},
		{Stage: StageBegin, Prev: 1, Epoch: 2, Root: []byte("x")},
		{Stage: StageBegin, Prev: 1, Epoch: 1},
		{Stage: StageChunk, Prev: 1, Epoch: 2, Records: []*record{testRecord("dev-a", 2)}},
		{Stage: StageChunk, Prev: 2, Epoch: 2, Root: []byte("x")},
		{Stage: 9, Prev: 1, Epoch: 2},
	} {
		if _, err := st.CommitEpoch(c); err == nil {
			t.Fatalf("commit %+v accepted", c)
		}
	}
	// A chunk or an end of an epoch that was not begun: fenced.
	for _, c := range []*EpochCommit{
		{Stage: StageChunk, Prev: 2, Epoch: 2, Records: []*record{testRecord("dev-a", 2)}},
		{Stage: StageFinish, Prev: 2, Epoch: 2, Root: []byte("r2"), Info: []byte("i2"), KeepRoots: 2},
	} {
		if _, err := st.CommitEpoch(c); !errors.Is(err, ErrEpochFence) {
			t.Fatalf("stage %d of an epoch not begun: %v, want ErrEpochFence", c.Stage, err)
		}
	}
	if after := snapshot(t, st); after != before {
		t.Fatalf("a refused commit changed the store:\n%s", after)
	}

	// Epoch 2 begun, one chunk, then abandoned (a crash).
	if _, err := st.CommitEpoch(&EpochCommit{Stage: StageBegin, Prev: 1, Epoch: 2}); err != nil {
		t.Fatal(err)
	}
	mustView(t, st, func(tx ReadTx) error {
		last, err := tx.LastEpoch()
		info, _ := tx.EpochInfo()
		root, _ := tx.Root(2)
		if err != nil || last != 2 || string(info) != "i1" || root != nil {
			t.Fatalf("after the beginning of epoch 2: last %d, info %q, root %q, %v", last, info, root, err)
		}
		return nil
	})
	if _, err := st.CommitEpoch(&EpochCommit{Stage: StageChunk, Prev: 2, Epoch: 2, Records: []*record{testRecord("dev-b", 2)}}); err != nil {
		t.Fatal(err)
	}
	st = e.reopen(t, st)
	// The restarted issuer plans above the abandoned epoch: a plan from
	// epoch 1 is fenced, and epoch 2 can never be finished by a new
	// beginning.
	if _, err := st.CommitEpoch(&EpochCommit{Stage: StageBegin, Prev: 1, Epoch: 2}); !errors.Is(err, ErrEpochFence) {
		t.Fatalf("epoch 2 begun again: %v", err)
	}
	if _, err := st.CommitEpoch(&EpochCommit{Stage: StageBegin, Prev: 2, Epoch: 3}); err != nil {
		t.Fatal(err)
	}
	// A late chunk of the abandoned epoch 2 is fenced.
	if _, err := st.CommitEpoch(&EpochCommit{Stage: StageChunk, Prev: 2, Epoch: 2, Records: []*record{testRecord("dev-a", 2)}}); !errors.Is(err, ErrEpochFence) {
		t.Fatalf("a chunk of the abandoned epoch: %v", err)
	}
	for _, id := range []string{"dev-a", "dev-b"} {
		if _, err := st.CommitEpoch(&EpochCommit{Stage: StageChunk, Prev: 3, Epoch: 3, Records: []*record{testRecord(id, 3)}}); err != nil {
			t.Fatal(err)
		}
	}
	cleared, err := st.CommitEpoch(&EpochCommit{Stage: StageFinish, Prev: 3, Epoch: 3, Root: []byte("r3"), Info: []byte("i3"), KeepRoots: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(cleared) != 1 || cleared[0] != 1 {
		t.Fatalf("cleared %v, want [1]", cleared)
	}
	st = e.reopen(t, st)
	mustView(t, st, func(tx ReadTx) error {
		last, _ := tx.LastEpoch()
		info, _ := tx.EpochInfo()
		roots, err := tx.Roots()
		if err != nil || last != 3 || string(info) != "i3" || len(roots) != 1 || roots[0].Epoch != 3 || string(roots[0].Root) != "r3" {
			t.Fatalf("after epoch 3: last %d info %q roots %+v %v", last, info, roots, err)
		}
		for _, id := range []string{"dev-a", "dev-b"} {
			if r, err := tx.Device(id); err != nil || r == nil || r.Epoch != 3 {
				t.Fatalf("%s after epoch 3: %+v %v", id, r, err)
			}
		}
		return nil
	})
}

// conformDeviceRange: a range read returns exactly the records whose ids
// fall in [from, to], bytewise, in id order.
func conformDeviceRange(t *testing.T, e storeEngine) {
	st := e.open(t)
	ids := []string{"a", "a-1", "b", "b.2", "bb", "c"}
	mustUpdate(t, st, func(tx Tx) error {
		for _, id := range ids {
			if err := tx.PutDevice(testRecord(id, 1)); err != nil {
				return err
			}
		}
		return nil
	})
	for _, c := range []struct {
		from, to string
		want     string
	}{
		{"a", "c", "a a-1 b b.2 bb c"}, {"a-", "b.2", "a-1 b b.2"}, {"b", "b", "b"}, {"bz", "zz", "c"},
		{"c", "a", ""}, {"d", "e", ""}, {"", "a-1", "a a-1"},
	} {
		var got []string
		mustView(t, st, func(tx ReadTx) error {
			return tx.DeviceRange(c.from, c.to, func(r *record) error {
				got = append(got, r.ID)
				return nil
			})
		})
		if g := strings.Join(got, " "); g != c.want {
			t.Errorf("DeviceRange(%q, %q) = %q, want %q", c.from, c.to, g, c.want)
		}
	}
	// Heads: every device, in id order, with its state, whether a key is
	// pinned, and its revision as a full read gives it.
	mustUpdate(t, st, func(tx Tx) error {
		return updateDevice(tx, "b", func(r *record) error { r.RegKey, r.State = nil, stateRevoked; return nil })
	})
	full := map[string]*record{}
	var heads []*record
	mustView(t, st, func(tx ReadTx) error {
		if err := tx.Devices(func(r *record) error { full[r.ID] = r; return nil }); err != nil {
			return err
		}
		return tx.DeviceHeads(func(r *record) error { heads = append(heads, r); return nil })
	})
	if len(heads) != len(ids) {
		t.Fatalf("%d heads for %d devices", len(heads), len(ids))
	}
	for n, h := range heads {
		f := full[h.ID]
		if h.ID != ids[n] || f == nil || h.State != f.State || (h.RegKey == nil) != (f.RegKey == nil) || h.rev != f.rev || h.Ticket != nil {
			t.Errorf("head %d: %+v, record %+v", n, h, f)
		}
	}
}

func conformAudit(t *testing.T, e storeEngine) {
	st := e.open(t)
	for n, a := range []string{"revoke", "release", "reset"} {
		mustUpdate(t, st, func(tx Tx) error {
			return tx.AppendAudit(AuditEntry{Time: uint64(100 + n), Actor: "uid=0(root)", Action: a, Device: "dev-1", Reason: "why " + a})
		})
	}
	if err := st.Update(func(tx Tx) error { return tx.AppendAudit(AuditEntry{Actor: "x"}) }); err == nil {
		t.Fatal("an audit entry without an action was stored")
	}
	if err := st.Update(func(tx Tx) error {
		return tx.AppendAudit(AuditEntry{Actor: "x", Action: "reset", Reason: string(make([]byte, maxAuditEntry))})
	}); err == nil {
		t.Fatal("an oversized audit entry was stored")
	}
	if err := st.Update(func(tx Tx) error {
		return tx.AppendAudit(AuditEntry{Actor: "x", Action: "reset", Reason: "bad \xff utf-8"})
	}); err == nil {
		t.Fatal("an audit entry that is not UTF-8 was stored (it would make the log unreadable)")
	}
	var got []AuditEntry
	mustView(t, st, func(tx ReadTx) error {
		return tx.Audit(func(e AuditEntry) error {
			got = append(got, e)
			return nil
		})
	})
	if len(got) != 3 {
		t.Fatalf("audit log %+v", got)
	}
	for n, e := range got {
		if e.Seq != uint64(n+1) || e.Time != uint64(100+n) || e.Reason != "why "+e.Action || e.Device != "dev-1" {
			t.Fatalf("entry %d: %+v", n, e)
		}
	}
}

func conformRotations(t *testing.T, e storeEngine) {
	st := e.open(t)
	for _, r := range []string{"first", "second"} {
		mustUpdate(t, st, func(tx Tx) error { return tx.AddRotation([]byte(r)) })
	}
	mustView(t, st, func(tx ReadTx) error {
		rots, err := tx.Rotations()
		if err != nil || len(rots) != 2 || string(rots[0]) != "first" || string(rots[1]) != "second" {
			t.Fatalf("rotations %q %v", rots, err)
		}
		return nil
	})
}

func conformRecover(t *testing.T, e storeEngine) {
	st := e.open(t)
	for ep := uint64(1); ep <= 2; ep++ {
		if _, err := st.CommitEpoch(&EpochCommit{Prev: ep - 1, Epoch: ep, Records: []*record{testRecord("dev-a", ep)},
			Root: []byte(fmt.Sprint("old-", ep)), Info: []byte("info"), KeepRoots: 4}); err != nil {
			t.Fatal(err)
		}
	}
	before := snapshot(t, st)
	for _, floor := range []uint64{1, 2} {
		if err := st.Update(func(tx Tx) error { return tx.Recover(floor, nil, nil) }); err == nil {
			t.Fatalf("recovery to floor %d at last epoch 2 accepted", floor)
		}
	}
	if snapshot(t, st) != before {
		t.Fatal("a refused recovery changed the store")
	}
	mustUpdate(t, st, func(tx Tx) error {
		return tx.Recover(9, []StoredRoot{{8, []byte("r8")}, {9, []byte("r9")}}, nil)
	})
	mustView(t, st, func(tx ReadTx) error {
		last, _ := tx.LastEpoch()
		info, _ := tx.EpochInfo()
		roots, err := tx.Roots()
		if last != 9 || info != nil || err != nil || len(roots) != 2 || string(roots[0].Root) != "r8" {
			t.Fatalf("after recovery: last %d info %q roots %v %v", last, info, roots, err)
		}
		return nil
	})
	// The next epoch commits above the floor only.
	if _, err := st.CommitEpoch(&EpochCommit{Prev: 2, Epoch: 3, KeepRoots: 4}); !errors.Is(err, ErrEpochFence) {
		t.Fatalf("commit below the floor: %v", err)
	}
	if _, err := st.CommitEpoch(&EpochCommit{Prev: 9, Epoch: 10, Root: []byte("r10"), Info: []byte("i10"), KeepRoots: 4}); err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, st, func(tx Tx) error { return tx.Recover(20, nil, []byte("i20")) })
	mustView(t, st, func(tx ReadTx) error {
		info, _ := tx.EpochInfo()
		roots, _ := tx.Roots()
		if string(info) != "i20" || len(roots) != 0 {
			t.Fatalf("recovery with info: %q %v", info, roots)
		}
		return nil
	})
}

func conformDurable(t *testing.T, e storeEngine) {
	if e.reopen == nil {
		t.Skip("engine has no reopen")
	}
	st := e.open(t)
	if _, err := st.CommitEpoch(&EpochCommit{Prev: 0, Epoch: 1, Records: []*record{testRecord("dev-a", 1)},
		Root: []byte("r1"), Info: []byte("i1"), KeepRoots: 2}); err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, st, func(tx Tx) error {
		if err := tx.AddRotation([]byte("rot")); err != nil {
			return err
		}
		return tx.AppendAudit(AuditEntry{Actor: "a", Action: "revoke", Device: "dev-a"})
	})
	before := snapshot(t, st)
	st = e.reopen(t, st)
	if after := snapshot(t, st); after != before {
		t.Fatalf("reopened store differs:\n%s\nwas\n%s", after, before)
	}
}

func conformManyDevices(t *testing.T, e storeEngine) {
	st := e.open(t)
	const n = devicesChunk + 37 // more than one chunk of a chunked engine
	recs := make([]*record, n)
	for k := range recs {
		recs[k] = testRecord(fmt.Sprintf("dev-%05d", k), 1)
	}
	if _, err := st.CommitEpoch(&EpochCommit{Prev: 0, Epoch: 1, Records: recs, Root: []byte("r"), Info: []byte("i"), KeepRoots: 2}); err != nil {
		t.Fatal(err)
	}
	k := 0
	mustView(t, st, func(tx ReadTx) error {
		return tx.Devices(func(r *record) error {
			if r.ID != recs[k].ID {
				t.Fatalf("record %d is %s, want %s", k, r.ID, recs[k].ID)
			}
			k++
			return nil
		})
	})
	if k != n {
		t.Fatalf("Devices gave %d of %d", k, n)
	}
}

func conformReadYourWrites(t *testing.T, e storeEngine) {
	st := e.open(t)
	mustUpdate(t, st, func(tx Tx) error {
		if err := tx.PutDevice(testRecord("dev-a", 1)); err != nil {
			return err
		}
		r, err := tx.Device("dev-a")
		if err != nil || r == nil || r.Epoch != 1 {
			t.Fatalf("a transaction does not see its own write: %v %v", r, err)
		}
		return nil
	})
}

func TestBoltStoreConformance(t *testing.T) {
	runStoreConformance(t, storeEngine{
		open: func(t *testing.T) Store {
			st, err := OpenStore(filepath.Join(t.TempDir(), "s.db"), false)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		},
		reopen: func(t *testing.T, st Store) Store {
			name := st.Name()
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
			st, err := OpenStore(name, false)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		},
	})
}
