package issuer

import (
	"fmt"
	"testing"
)

// BenchmarkIssueEpoch100 issues epochs to 100 devices: encapsulation,
// one signature, and one store transaction (fsync included).
func BenchmarkIssueEpoch100(b *testing.B) {
	e := newEnv(b)
	for k := range 100 {
		d := newDevice(b, fmt.Sprintf("dev-%03d", k))
		e.iss.handle(e.iss.topics.Registration(d.id), d.registration())
	}
	b.ResetTimer()
	for b.Loop() {
		e.issue()
	}
}

// BenchmarkHandleStatus verifies one device's Status and stores it.
func BenchmarkHandleStatus(b *testing.B) {
	e := newEnv(b)
	d := newDevice(b, "dev-1")
	e.iss.handle(e.iss.topics.Registration(d.id), d.registration())
	e.issue()
	res := e.deliver(d)
	topic := e.iss.topics.Status("dev-1")
	msgs := make([][]byte, 0, 1024)
	b.ResetTimer()
	for b.Loop() {
		if len(msgs) == 0 {
			b.StopTimer()
			for range 1024 {
				msgs = append(msgs, d.status(res))
			}
			b.StartTimer()
		}
		e.iss.handle(topic, msgs[0])
		msgs = msgs[1:]
	}
	if e.counter("statuses_verified") == 0 {
		b.Fatal("nothing verified")
	}
}
