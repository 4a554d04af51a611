package issuer

import (
	"fmt"
	"testing"
	"time"
)

// The limiter lets each device and reason log a burst, then one line per
// interval; a global budget bounds many devices at once; what it refuses
// is counted for one summary.
func TestLogLimiter(t *testing.T) {
	var l logLimiter
	t0 := time.Unix(1_800_000_000, 0)
	for k := range logBurstPerDevice {
		if ok, _ := l.allow("dev-1", "malformed", t0); !ok {
			t.Fatalf("line %d of the burst refused", k+1)
		}
	}
	if ok, first := l.allow("dev-1", "malformed", t0); ok || !first {
		t.Fatalf("over the burst: ok %v first %v, want refused and first", ok, first)
	}
	if ok, first := l.allow("dev-1", "malformed", t0); ok || first {
		t.Fatalf("second refusal: ok %v first %v", ok, first)
	}
	// Another reason of the same device has its own budget.
	if ok, _ := l.allow("dev-1", "oversize", t0); !ok {
		t.Fatal("another reason refused")
	}
	if ok, _ := l.allow("dev-1", "malformed", t0.Add(logEveryPerDevice)); !ok {
		t.Fatal("no line after the refill interval")
	}
	s := l.summary()
	if s.total != 2 || s.devices != 1 || s.byReason["malformed"] != 2 {
		t.Fatalf("summary %+v", s)
	}
	if s := l.summary(); s.total != 0 {
		t.Fatalf("summary not reset: %+v", s)
	}

	// Many devices: the global bucket stops them after its burst.
	var g logLimiter
	allowed := 0
	for k := range 3 * logBurstTotal {
		if ok, _ := g.allow(fmt.Sprintf("dev-%d", k), "malformed", t0); ok {
			allowed++
		}
	}
	if allowed != logBurstTotal {
		t.Fatalf("%d lines allowed for %d devices at once, want the global burst %d", allowed, 3*logBurstTotal, logBurstTotal)
	}
	if s := g.summary(); s.total != 2*logBurstTotal || s.devices != 2*logBurstTotal {
		t.Fatalf("summary %+v", s)
	}
	// The global budget refills with time.
	if ok, _ := g.allow("dev-0", "malformed", t0.Add(time.Minute)); !ok {
		t.Fatal("refill did not restore the global budget")
	}
}
