package integration

// Tickets that pass the signature check but must still be refused. The
// attacker is a malicious issuer that holds the issuer's broker account and
// its ML-DSA signing key (a stolen key, or an issuer bug), or replays what
// the real issuer published. The device's later rules must stop each one:
// the Merkle proof, the epoch order, freshness and the fast-forward bound
// (schema/PROTOCOL.md §"Device acceptance", rules 2, 4 and 5).

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/entropykem/entropykem/device"
	ekissuer "github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/wire"
)

// TestHostileSignedTickets runs dev-1 and dev-2 to epoch 2, then publishes
// on ticket/dev-1 and root/N, from the issuer's broker account:
//
//   - dev-1's ticket in a signed two-leaf epoch with the other leaf's proof;
//   - dev-1's real epoch-1 ticket again (root/1 still holds its real root),
//     encapsulated to a key dev-1 no longer holds;
//   - an epoch-1 ticket, signed with the issuer's key, for dev-1's live key;
//   - a second, different epoch-2 ticket signed with the issuer's key;
//   - signed tickets for an epoch past the fast-forward bound, past their
//     ttl, and not yet valid.
//
// For each: the named rejection, its device counter, the reason in the
// device's log, state.bin byte-identical, and the issuer hearing the report
// (the equivocation as an alarm). Then the real epoch 3 is accepted with no
// gap and confirmed.
func TestHostileSignedTickets(t *testing.T) {
	const victim, other = "dev-1", "dev-2"
	ids := []string{victim, other}
	f := newSysFleet(t, ids...)
	iss := f.startIssuer(t, nil)
	f.startDevices(t, ids...)
	tickets := subscribe(t, f.b, f.b.Monitor().Username, ticketTopic(victim))
	f.issue(t, 1)
	f.waitEpoch(t, 1, ids...)
	victim1 := ticketOf(t, tickets, victim, 1)
	f.issue(t, 2)
	f.waitEpoch(t, 2, ids...)

	d := f.devices[victim]
	stateBefore := d.stateFile(t)
	st2 := d.agent.Status()

	// Signed forgeries: complete epochs (root and a tree of one) for dev-1's
	// announced next key, a key it holds, so they pass rules 1 to 3.
	sch, err := kem.Lookup(st2.NextAlg)
	if err != nil {
		t.Fatal(err)
	}
	next, err := sch.ParsePublicKey(st2.NextPK)
	if err != nil {
		t.Fatal(err)
	}
	now := uint64(time.Now().Unix())
	forge := func(epoch, issuedAt, ttl uint64, others ...batch.Device) *batch.Epoch {
		devs := append([]batch.Device{{ID: victim, Key: next, Prev: st2.TicketHash,
			Purpose: ekissuer.DefaultLabel, Group: ekissuer.DefaultLabel}}, others...)
		ep, err := batch.Issue(f.key, batch.Params{Epoch: epoch, IssuedAt: issuedAt, TTL: ttl}, devs)
		if err != nil {
			t.Fatal(err)
		}
		return ep
	}
	// A good signed epoch of two leaves, in which dev-1's ticket carries
	// the other leaf's index and path. (A proof swapped onto a body the
	// device already accepted is a harmless duplicate: the device compares
	// the body with its last ticket first, and nothing could change.)
	bystander, err := sch.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pair := forge(40, now, 120, batch.Device{ID: "dev-x", Key: bystander.PublicKey(),
		Purpose: ekissuer.DefaultLabel, Group: ekissuer.DefaultLabel})
	mine, _, err := wire.ParseTicket(pair.Tickets[0].Ticket)
	if err != nil {
		t.Fatal(err)
	}
	theirs, _, err := wire.ParseTicket(pair.Tickets[1].Ticket)
	if err != nil {
		t.Fatal(err)
	}
	if pair.Tickets[0].DeviceID != victim || mine.LeafIndex == theirs.LeafIndex {
		t.Fatalf("forged pair: leaf 0 is %s", pair.Tickets[0].DeviceID)
	}
	wrongLeaf := *mine
	wrongLeaf.LeafIndex, wrongLeaf.Path = theirs.LeafIndex, theirs.Path
	lower := forge(1, now, 120)
	twin := forge(2, now, 120)
	farFuture := forge(2+accept.DefaultMaxJump+1, now, 120)
	expired := forge(50, now-3*24*3600, 60)
	notYet := forge(60, now+24*3600, 120)

	type step struct {
		topic   string
		payload []byte
	}
	// signed publishes a forged epoch: the retained ticket is cleared first
	// so that the new root cannot re-trigger the previous case's ticket.
	signed := func(ep *batch.Epoch) []step {
		return []step{{ticketTopic(victim), nil}, {rootTopic(int(ep.Payload.Epoch)), ep.Root}, {ticketTopic(victim), ep.Tickets[0].Ticket}}
	}
	cases := []struct {
		name   string
		steps  []step
		reason accept.Reason
		state  wire.State
	}{
		{"proof for another leaf", []step{{ticketTopic(victim), nil}, {rootTopic(40), pair.Root},
			{ticketTopic(victim), mustMarshal(t, &wrongLeaf)}}, accept.ReasonBadProof, wire.StateRejected},
		// Encapsulated to a key dev-1 has since rotated away: rule 3 stops
		// it before the epoch order is looked at.
		{"replayed old ticket", []step{{ticketTopic(victim), victim1}}, accept.ReasonWrongDeviceKey, wire.StateRejected},
		{"lower epoch, signed", signed(lower), accept.ReasonRollback, wire.StateRejected},
		{"two different tickets for one epoch", signed(twin), accept.ReasonEquivocation, wire.StateEquivocation},
		{"epoch far in the future", signed(farFuture), accept.ReasonFastForward, wire.StateRejected},
		{"ticket past its ttl", signed(expired), accept.ReasonExpired, wire.StateRejected},
		{"ticket not yet valid", signed(notYet), accept.ReasonNotYetValid, wire.StateRejected},
	}
	m := connectAs(t, f.b, issuer2) // a second issuer account: the running issuer keeps its own
	for _, tc := range cases {
		name := "rejected:" + tc.reason.String()
		base := d.agent.Counters()[name]
		nev := countRejected(d.events, tc.reason)
		for _, s := range tc.steps {
			publish(t, m, s.topic, s.payload, true)
		}
		waitCounter(t, victim+" after "+tc.name, d.agent.Counters, name, base+1)
		// The event is emitted after the counter and the Status.
		sysWaitFor(t, fmt.Sprintf("%s: a rejected event with reason %s", tc.name, tc.reason), func() bool {
			return countRejected(d.events, tc.reason) > nev
		})
		for _, ev := range d.events.ofKind(device.EventRejected)[nev:] {
			if ev.Reason == tc.reason && (ev.Epoch != 2 || ev.State != tc.state) {
				t.Fatalf("%s: rejected event %+v, want state %v at epoch 2", tc.name, ev, tc.state)
			}
		}
		if !f.devLog.hasRecord(t, map[string]string{"msg": "ticket rejected", "reason": tc.reason.String(), "level": "WARN"}) {
			t.Fatalf("%s: no WARN ticket rejected record with reason %s in the device log", tc.name, tc.reason)
		}
		if got := d.agent.Epoch(); got != 2 {
			t.Fatalf("%s: device moved to epoch %d", tc.name, got)
		}
		if !bytes.Equal(d.stateFile(t), stateBefore) {
			t.Fatalf("%s: state.bin was rewritten by a rejected ticket", tc.name)
		}
		if n := d.agent.Counters()["accepted"]; n != 2 {
			t.Fatalf("%s: device accepted %d tickets, want 2", tc.name, n)
		}
	}
	c := d.agent.Counters()
	for name, want := range map[string]uint64{
		"rejected:bad_proof": 1, "rejected:wrong_device_key": 1, "rejected:rollback": 1, "rejected:equivocation": 1,
		"rejected:fast_forward": 1, "rejected:expired": 1, "rejected:not_yet_valid": 1,
	} {
		if c[name] != want {
			t.Errorf("device counter %s = %d, want %d", name, c[name], want)
		}
	}
	// The issuer reads dev-1's Status: every report arrived, and the
	// equivocation raised the alarm.
	for _, r := range []accept.Reason{accept.ReasonBadProof, accept.ReasonWrongDeviceKey, accept.ReasonRollback, accept.ReasonFastForward,
		accept.ReasonExpired, accept.ReasonNotYetValid} {
		waitCounter(t, "issuer", iss.Counters, "device_reported:rejected:"+r.String(), 1)
	}
	waitCounter(t, "issuer", iss.Counters, "device_reported:equivocation:equivocation", 1)
	waitCounter(t, "issuer", iss.Counters, "equivocation_reported", 1)
	if !f.issLog.hasRecord(t, map[string]string{"reason": "equivocation_reported", "device": victim, "level": "ERROR"}) {
		t.Fatal("no ERROR equivocation_reported record in the issuer log")
	}
	if n := len(f.devices[other].events.ofKind(device.EventRejected)); n != 0 {
		t.Fatalf("%s saw %d rejections, want none", other, n)
	}

	// Nothing was lost: the real epoch 3 is accepted directly after 2.
	f.issue(t, 3)
	f.waitEpoch(t, 3, ids...)
	acc := d.events.accepted()
	if len(acc) != 3 || acc[2].Epoch != 3 || acc[2].Gap {
		t.Fatalf("%s: accepted %s, want epochs 1, 2, 3 without gap", victim, describeEvents(d.events.all()))
	}
	if bytes.Equal(d.stateFile(t), stateBefore) {
		t.Fatal("state.bin unchanged after accepting epoch 3: the comparisons above would prove nothing")
	}
}

// ticketOf returns id's ticket for epoch e among the recorded messages,
// waiting for it.
func ticketOf(t *testing.T, r *recorder, id string, e uint64) []byte {
	t.Helper()
	var found []byte
	r.waitUntil(t, sysTimeout, fmt.Sprintf("%s's epoch-%d ticket", id, e), func(ms []message) bool {
		for _, m := range ms {
			if m.Topic != ticketTopic(id) {
				continue
			}
			if _, body, err := wire.ParseTicket([]byte(m.Payload)); err == nil && body.Epoch == e {
				found = []byte(m.Payload)
				return true
			}
		}
		return false
	})
	return found
}

// countRejected counts the device's rejected events with reason r.
func countRejected(l *eventLog, r accept.Reason) int {
	n := 0
	for _, ev := range l.ofKind(device.EventRejected) {
		if ev.Reason == r {
			n++
		}
	}
	return n
}
