package issuer

import (
	"bytes"
	"maps"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/kem"
)

// FuzzHandle feeds arbitrary registrations and Statuses to an issuer whose
// store holds dev-1 with a ticket. Invariants: no panic; dev-1's pinned key
// never changes (a re-key proof cannot be forged); the store changes only
// with a counted accepting event. The store is restored after every input.
func FuzzHandle(f *testing.F) {
	e := newEnv(f, withStore(filepath.Join(f.TempDir(), "fuzz.db")))
	e.iss.store.(*boltStore).db.NoSync = true // durability is not under test here; speed is
	d := newDevice(f, "dev-1")
	e.iss.handle(e.iss.topics.Registration("dev-1"), d.registration())
	e.issue()
	res := e.deliver(d)
	f.Add(true, d.registration())
	f.Add(false, d.status(res))
	f.Add(false, []byte{})
	f.Add(true, newDevice(f, "dev-1").registration())
	f.Add(true, newDevice(f, "dev-1").reenrollment())
	initial := e.dump()
	pinned, _ := e.iss.Device("dev-1")
	f.Fuzz(func(t *testing.T, reg bool, payload []byte) {
		e.t = t
		defer e.restore(initial)
		topic := e.iss.topics.Status("dev-1")
		if reg {
			topic = e.iss.topics.Registration("dev-1")
		}
		e.iss.handle(topic, payload)
		after, _ := e.iss.Device("dev-1")
		if !bytes.Equal(pinned.PinnedKeyHash, after.PinnedKeyHash) {
			t.Fatal("pinned key changed")
		}
		if !maps.EqualFunc(initial, e.dump(), bytes.Equal) {
			accepted := false
			for k := range e.iss.Counters() {
				if k == "statuses_verified" || k == "clone_detected" || strings.HasPrefix(k, "device_reported:") {
					accepted = true
				}
			}
			if !accepted {
				t.Fatalf("store changed without an accepting event: %v", e.iss.Counters())
			}
		}
	})
}

// restore puts the device records back to recs and clears the counters.
func (e *env) restore(recs map[string][]byte) {
	e.t.Helper()
	if err := e.iss.store.Update(func(tx Tx) error {
		for _, b := range recs {
			r, err := decodeRecord(b)
			if err != nil {
				return err
			}
			if err := tx.PutDevice(r); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		e.t.Fatal(err)
	}
	e.iss.cnt.reset()
}

// FuzzRecord: decoding a stored record never panics, and what decodes
// re-encodes to the same bytes.
func FuzzRecord(f *testing.F) {
	r := &record{ID: "dev-1", RegAlg: kem.MLKEM768, RegKey: bytes.Repeat([]byte{1}, 1184), Epoch: 3,
		TicketHash: bytes.Repeat([]byte{2}, 32), HasStatus: true, StatusSeq: 9}
	b, err := cbor.Marshal(r)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		if err != nil {
			return
		}
		again, err := cbor.Marshal(r)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs: %v", err)
		}
	})
}
