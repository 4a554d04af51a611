package monitor

import (
	"testing"

	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/wire"
)

// registration is a Registration of a fresh ML-KEM-768 key made at
// created_at (device clock, Unix seconds).
func registration(t testing.TB, w *world, id string, createdAt uint64, reenroll bool) []byte {
	t.Helper()
	b, err := (&wire.Registration{Version: 1, DeviceID: id, KEMAlg: 0x0041, PublicKey: w.keys[id].Bytes(),
		CreatedAt: createdAt, Reenroll: reenroll}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestAwaitingApproval: a re-enrollment shows the device awaiting approval,
// in either order against its older Status, until the device reports an
// accepted ticket made after it; a re-enrolled device's Statuses start
// above its re-enrollment's created_at and raise no clone alarm.
func TestAwaitingApproval(t *testing.T) {
	w := newWorld(t, "a", "b")
	for _, regFirst := range []bool{false, true} {
		f := NewFleet(Config{Pins: w.pins})
		feedEpoch(f, w.epoch(3, "a"), 3, t)
		old := status(t, "a", 3, 5, wire.StateOK, accept.ReasonNone, 0) // time t0+5
		reenrolledAt := uint64(t0.Unix()) + 100
		reg := registration(t, w, "a", reenrolledAt, true)
		if regFirst {
			f.Handle(topics.Registration("a"), reg, t0)
			f.Handle(topics.Status("a"), old, t0)
		} else {
			f.Handle(topics.Status("a"), old, t0)
			f.Handle(topics.Registration("a"), reg, t0)
		}
		wantRow(t, rowsByID(f.Snapshot(t0)), "a", StateAwaitingApproval, 3, 0, "approves")
		// The re-enrolled device rejects the old retained ticket: still
		// awaiting approval (the reason the operator must act on).
		rej := status(t, "a", 0, reenrolledAt+1, wire.StateRejected, accept.ReasonWrongDeviceKey, 0)
		if a := f.Handle(topics.Status("a"), rej, t0); a != nil {
			t.Fatalf("re-enrolled device's Status raised %v", a)
		}
		wantRow(t, rowsByID(f.Snapshot(t0)), "a", StateAwaitingApproval, 0, 3, "")
		feedEpoch(f, w.epoch(4, "a"), 4, t)
		ok := status(t, "a", 4, reenrolledAt+2, wire.StateGap, accept.ReasonNone, 0)
		if a := f.Handle(topics.Status("a"), ok, t0); a != nil {
			t.Fatalf("accepted Status raised %v", a)
		}
		wantRow(t, rowsByID(f.Snapshot(t0)), "a", StateCurrent, 4, 0, "")
		if f.Counters()[CountClones] != 0 {
			t.Fatal("clone alarm")
		}
	}
	// A plain registration adds no device and ends nothing it did not start.
	f := NewFleet(Config{Pins: w.pins})
	f.Handle(topics.Registration("b"), registration(t, w, "b", 1, false), t0)
	if n := len(f.Snapshot(t0).Devices); n != 0 {
		t.Fatalf("%d devices after a plain registration", n)
	}
	f.Handle(topics.Registration("b"), registration(t, w, "b", 1, true), t0)
	f.Handle(topics.Registration("b"), registration(t, w, "b", 2, false), t0)
	wantRow(t, rowsByID(f.Snapshot(t0)), "b", StatePending, 0, 0, "")
	// Malformed and mismatched registrations are counted.
	f.Handle(topics.Registration("b"), []byte{1}, t0)
	f.Handle(topics.Registration("c"), registration(t, w, "b", 1, true), t0)
	if f.Counters()[CountMalformed] != 2 {
		t.Fatalf("malformed %d", f.Counters()[CountMalformed])
	}
}

// TestRejectedOutranksStale: a device whose last Status is a rejection is
// shown rejected with its reason, even when its latest ticket expired.
func TestRejectedOutranksStale(t *testing.T) {
	w := newWorld(t, "a")
	f := NewFleet(Config{Pins: w.pins, TrackTickets: true})
	feedEpoch(f, w.epoch(1, "a"), 1, t)
	f.Handle(topics.Status("a"), status(t, "a", 1, 1, wire.StateOK, accept.ReasonNone, 0), t0)
	feedEpoch(f, w.epoch(2, "a"), 2, t)
	f.Handle(topics.Status("a"), status(t, "a", 1, 2, wire.StateRejected, accept.ReasonWrongDeviceKey, 0), t0)
	late := t0.Add(10 * 3600e9)
	wantRow(t, rowsByID(f.Snapshot(late)), "a", StateRejected, 1, 1, "wrong_device_key")
}
