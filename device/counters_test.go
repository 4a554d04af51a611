package device

import (
	"testing"

	"github.com/entropykem/entropykem/pkg/accept"
)

func TestCounterNames(t *testing.T) {
	seen := map[string]bool{}
	for c := range numCounters {
		if n := c.String(); n == "" || seen[n] {
			t.Fatalf("counter %d: name %q empty or repeated", c, n)
		} else {
			seen[n] = true
		}
	}
	c := counters{rejected: map[accept.Reason]uint64{accept.ReasonBadProof: 2}}
	c.plain[cAccepted] = 1
	got := c.names()
	if len(got) != 2 || got["accepted"] != 1 || got["rejected:"+accept.ReasonBadProof.String()] != 2 {
		t.Fatalf("names %v", got)
	}
}
