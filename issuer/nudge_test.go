package issuer

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// TestNudge: with NudgeInterval, the issuer republishes the latest root and
// the tickets it has no confirmation of (the same stored bytes), one
// interval after the epoch, and the root alone once every device
// confirmed.
func TestNudge(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := startBroker(t, "")
	e := newEnv(t, func(c *Config) { c.Broker = "tcp://" + b.addr; c.NudgeInterval = time.Second })
	d1, d2 := newDevice(t, "dev-1"), newDevice(t, "dev-2")
	e.register(d1)
	e.register(d2)
	if err := e.iss.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if ep := e.issue(); ep != 1 {
		t.Fatalf("epoch %d", ep)
	}
	e.iss.handle(e.iss.topics.Status("dev-1"), d1.status(e.deliver(d1)))
	t1, root, _ := e.latest("dev-1")
	t2, _, _ := e.latest("dev-2")
	tp := e.iss.topics
	seen := map[string]int{}
	for e.counter("nudged") < 2 {
		m, ok := b.next(ctx)
		if !ok {
			t.Fatalf("no nudge: counters %v, published %v", e.iss.Counters(), seen)
		}
		switch {
		case m.Topic == tp.Ticket("dev-1") && bytes.Equal(m.Payload, t1),
			m.Topic == tp.Ticket("dev-2") && bytes.Equal(m.Payload, t2),
			m.Topic == tp.Root(1) && bytes.Equal(m.Payload, root):
			seen[m.Topic]++
		}
	}
	// Drain what the nudge published (it counted after its PUBACKs).
	drain := func() {
		for {
			select {
			case m := <-b.observed:
				if m.Topic == tp.Ticket("dev-1") || m.Topic == tp.Ticket("dev-2") || m.Topic == tp.Root(1) {
					seen[m.Topic]++
				}
			case <-time.After(300 * time.Millisecond):
				return
			}
		}
	}
	drain()
	// The epoch published each once; the nudge root and dev-2's ticket
	// once more; dev-1 had confirmed.
	if n := e.counter("nudged"); n != 2 || seen[tp.Ticket("dev-1")] != 1 || seen[tp.Ticket("dev-2")] != 2 || seen[tp.Root(1)] != 2 {
		t.Fatalf("nudged %d; published %v", n, seen)
	}
	// dev-2 confirms: the next nudge (3 intervals after the epoch)
	// republishes the root alone.
	e.iss.handle(tp.Status("dev-2"), d2.status(e.deliver(d2)))
	time.Sleep(3500 * time.Millisecond)
	drain()
	if n := e.counter("nudged"); n != 3 || seen[tp.Ticket("dev-2")] != 2 || seen[tp.Root(1)] != 3 {
		t.Fatalf("after every confirmation: nudged %d; published %v", n, seen)
	}
}
