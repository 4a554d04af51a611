package device

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/groupenv"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Attacks on "a ticket before its root" (PROTOCOL.md §8.2): the device
// holds one ticket, the latest delivered, whatever arrives.

// TestHeldTicketReplacedByNewerDelivery: a held ticket is replaced by the
// next delivery, whatever its epoch; the root of the replaced one then
// decides nothing, the root of the new one does.
func TestHeldTicketReplacedByNewerDelivery(t *testing.T) {
	e := newEnv(t, nil)
	s1, iss1 := e.first()
	next := nextDevice(t, s1, iss1)
	e.clock.Add(time.Minute)
	iss2, ep2 := e.is.issue(2, e.clock.Now(), next)
	iss3, ep3 := e.is.issue(3, e.clock.Now(), next)
	n := e.pub.n()
	e.ticket(iss2.Ticket)
	e.ticket(iss3.Ticket)
	e.root(2, ep2.Root)
	if e.pub.n() != n || e.a.Epoch() != 1 {
		t.Fatal("the replaced ticket was decided when its root came")
	}
	e.root(3, ep3.Root)
	s3, _ := e.pub.lastStatus(t)
	if s3.Epoch != 3 || s3.State != wire.StateGap || s3.PrevEpoch == nil || *s3.PrevEpoch != 1 {
		t.Fatalf("the held ticket of epoch 3: %+v", s3)
	}
	// An older ticket replacing a held newer one is judged by the rules
	// when its root is here: a rollback.
	e.clock.Add(time.Minute)
	next3 := nextDevice(t, s3, iss3)
	iss4, ep4 := e.is.issue(4, e.clock.Now(), next3)
	e.ticket(iss4.Ticket)
	n = e.pub.n()
	e.ticket(iss2.Ticket) // root 2 is here: decided at once
	if !publishedRejection(t, e.pub, n, accept.ReasonRollback) {
		t.Fatal("an older ticket delivered over a held one was not rejected as a rollback")
	}
	n = e.pub.n()
	e.root(4, ep4.Root)
	if e.pub.n() != n || e.a.Epoch() != 3 {
		t.Fatal("epoch 4 was decided though its ticket had been replaced")
	}
}

// TestHeldTicketReplacedByMalformed: a delivery that does not decode is
// rejected at once and replaces the held ticket; an empty one clears it.
func TestHeldTicketReplacedByMalformed(t *testing.T) {
	e := newEnv(t, nil)
	s1, iss1 := e.first()
	next := nextDevice(t, s1, iss1)
	e.clock.Add(time.Minute)
	iss2, ep2 := e.is.issue(2, e.clock.Now(), next)
	e.ticket(iss2.Ticket)
	e.ticket([]byte{0xa1, 0x00, 0x02})
	if s, _ := e.pub.lastStatus(t); s.State != wire.StateRejected || s.Reason != uint64(accept.ReasonMalformed) || s.Epoch != 1 {
		t.Fatalf("malformed delivery: %+v", s)
	}
	n := e.pub.n()
	e.root(2, ep2.Root)
	if e.pub.n() != n || e.a.Epoch() != 1 {
		t.Fatal("a ticket replaced by a malformed one was decided")
	}
	e.ticket(iss2.Ticket) // the retained topic delivers it again: decided now
	if s, _ := e.pub.lastStatus(t); s.Epoch != 2 || s.State != wire.StateOK {
		t.Fatalf("epoch 2 after the malformed one: %+v", s)
	}
}

// TestHeldMemoryBounded: a flood of tickets without roots, of roots of
// many epochs and of oversized payloads leaves the device holding one
// ticket of at most wire.MaxTicket+1 bytes and DefaultRootEpochs roots of
// at most signature.MaxSign1Size+1 bytes, and publishes nothing for the
// tickets that wait.
func TestHeldMemoryBounded(t *testing.T) {
	e := newEnv(t, nil)
	s1, iss1 := e.first()
	next := nextDevice(t, s1, iss1)
	iss2, _ := e.is.issue(2, e.clock.Now(), next)
	tk, body, err := wire.ParseTicket(iss2.Ticket)
	if err != nil {
		t.Fatal(err)
	}
	n := e.pub.n()
	for ep := uint64(2); ep < 2000; ep++ {
		body.Epoch = ep
		b, err := body.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		tk.Body = b
		tb, err := tk.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		e.ticket(tb)
	}
	if e.pub.n() != n {
		t.Fatal("a ticket waiting for its root was reported")
	}
	for ep := uint64(5000); ep < 5100; ep++ {
		e.root(ep, bytes.Repeat([]byte{0xd2}, 9000))
	}
	e.ticket(bytes.Repeat([]byte{0xa5}, 1<<20))
	if len(e.a.ticket) > wire.MaxTicket+1 {
		t.Fatalf("held ticket of %d bytes", len(e.a.ticket))
	}
	if len(e.a.roots) > DefaultRootEpochs {
		t.Fatalf("%d roots held", len(e.a.roots))
	}
	for ep, r := range e.a.roots {
		if len(r) > signature.MaxSign1Size+1 {
			t.Fatalf("root of epoch %d: %d bytes held", ep, len(r))
		}
	}
	if s, _ := e.pub.lastStatus(t); s.Reason != uint64(accept.ReasonMalformed) {
		t.Fatalf("oversized ticket: %+v", s)
	}
}

// TestGroupCounterExhausted: a device whose group counter reached 2^63
// (PROTOCOL.md §7.8: ctr < 2^63) seals nothing more under that key, and
// the refusal changes nothing stored; its last envelope used 2^63 - 1.
func TestGroupCounterExhausted(t *testing.T) {
	e := newEnv(t, nil)
	reg := regDevice(t, e.a.Registration())
	reg.Cohort, reg.GroupSeed = "fleet-a", bytes.Repeat([]byte{0x5a}, 32)
	iss, ep := e.is.issue(1, e.clock.Now(), reg)
	e.deliver(iss, ep)
	if e.a.Epoch() != 1 || e.a.st.Group == nil {
		t.Fatal("no group key after a cohort ticket")
	}
	e.a.mu.Lock()
	e.a.st.Group.NextCtr = groupenv.MaxCtr - 1
	e.a.mu.Unlock()
	env, err := e.a.GroupSeal([]byte("last"))
	if err != nil {
		t.Fatal(err)
	}
	h, err := groupenv.ParseHeader(env)
	if err != nil || h.Ctr != groupenv.MaxCtr-1 {
		t.Fatalf("last envelope: ctr %d (%v)", h.Ctr, err)
	}
	e.reopen() // the exhausted counter (2^63) is a valid stored state
	before := e.stateFile()
	if _, err := e.a.GroupSeal([]byte("one more")); err == nil || !strings.Contains(err.Error(), "exhausted") {
		t.Fatalf("seal past 2^63 - 1: %v", err)
	}
	if !bytes.Equal(e.stateFile(), before) {
		t.Fatal("a refused seal changed state.bin")
	}
	if _, err := os.Stat(filepath.Join(e.dir, stateFileName)); err != nil {
		t.Fatal(err)
	}
}

// publishedRejection reports whether a rejected Status with reason was
// published since the n-th publish.
func publishedRejection(t *testing.T, p *fakePub, n int, reason accept.Reason) bool {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range p.msgs[n:] {
		if s, err := wire.ParseStatus(m.payload); err == nil && s.State == wire.StateRejected && s.Reason == uint64(reason) {
			return true
		}
	}
	return false
}
