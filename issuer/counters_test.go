package issuer

import (
	"testing"

	"github.com/entropykem/entropykem/pkg/wire"
)

// TestCounterNames: every counter has its own name in Counters, and the
// labelled ones render as <kind prefix>:<reason> and
// device_reported:<state>:<reason>.
func TestCounterNames(t *testing.T) {
	seen := map[string]counter{}
	for c := range numCounters {
		n := c.String()
		if n == "" {
			t.Fatalf("counter %d has no name", c)
		}
		if d, dup := seen[n]; dup {
			t.Fatalf("counters %d and %d are both %q", d, c, n)
		}
		seen[n] = c
	}
	var cs counters
	cs.add(cEpochs, 2)
	cs.reject(rejectStatus, "bad_confirm")
	cs.reject(rejectRegistration, "reserved_id")
	cs.reject(rejectMessage, "unexpected_topic")
	cs.report(wire.StateRejected, "bad_proof")
	got := cs.snapshot().names()
	want := map[string]uint64{"epochs": 2, "status_rejected:bad_confirm": 1, "registrations_rejected:reserved_id": 1,
		"messages_rejected:unexpected_topic": 1, "device_reported:rejected:bad_proof": 1}
	if len(got) != len(want) {
		t.Fatalf("Counters %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("Counters[%q] = %d, want %d", k, got[k], v)
		}
	}
	cs.reset()
	if n := cs.snapshot().names(); len(n) != 0 {
		t.Fatalf("after reset: %v", n)
	}
}
