package device

import (
	"testing"
)

// BenchmarkNextKey measures one persisted ratchet step (two fsyncs).
func BenchmarkNextKey(b *testing.B) {
	e := newEnv(b, nil)
	e.first()
	for b.Loop() {
		if _, err := e.a.NextKey(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAcceptTicket measures accepting one ticket end to end: verify
// (root signature cached after the first), decapsulate, derive, generate
// the next key, persist, build the Status.
func BenchmarkAcceptTicket(b *testing.B) {
	e := newEnv(b, nil)
	s, iss := e.first()
	next := nextDevice(b, s, iss)
	epoch := uint64(1)
	for b.Loop() {
		b.StopTimer()
		epoch++
		iss2, ep := e.is.issue(epoch, e.clock.Now(), next)
		e.root(epoch, ep.Root)
		b.StartTimer()
		e.ticket(iss2.Ticket)
		b.StopTimer()
		st, _ := e.pub.lastStatus(b)
		if st.Epoch != epoch {
			b.Fatalf("epoch %d not accepted: %+v", epoch, st)
		}
		next = nextDevice(b, st, iss2)
		b.StartTimer()
	}
}
