package integration

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/entropykem/entropykem/device"
	fleetmon "github.com/entropykem/entropykem/internal/monitor"
	ekissuer "github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// TestIssuerKeyRotation rotates the issuer's signing key from A (which the
// devices were provisioned with) to B with an overlap of one epoch, against
// a real Mosquitto, and shows that no device is stranded:
//
//   - online devices learn B from the retained announcement during the
//     overlap and accept A's last epoch and B's first without a gap;
//   - a device that was offline through the whole rotation learns B from
//     the same retained announcement when it returns and catches up;
//   - after the switch, a root signed by A is refused although A is pinned,
//     and changes nothing stored;
//   - the issuer restarts with B alone and goes on;
//   - "ekemctl fleet status", pinning only A, verifies A's and B's roots.
func TestIssuerKeyRotation(t *testing.T) {
	ids := []string{"dev-1", "dev-2", "dev-3"}
	online, sleeper := ids[:2], ids[2]
	f := newSysFleet(t, ids...)
	a := f.key
	iss := f.startIssuer(t, nil)
	f.startDevices(t, ids...)
	f.issue(t, 1)
	f.waitEpoch(t, 1, ids...)
	f.devices[sleeper].stop(t) // offline from here until after the switch

	// The operator announces B (issuer stopped: the store is locked while
	// it runs), then restarts the issuer with both keys.
	b, err := signature.GenerateKey(signature.MLDSA87)
	if err != nil {
		t.Fatal(err)
	}
	if err := iss.Close(); err != nil {
		t.Fatal(err)
	}
	info, err := ekissuer.AnnounceKeyRotation(f.issuerConfig().StorePath, a, b.Public(), 1, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if info.From != 3 || !bytes.Equal(info.NewKID, b.Public().KID()) {
		t.Fatalf("rotation %+v, want B from epoch 3", info)
	}
	iss = f.startIssuer(t, func(c *ekissuer.Config) { c.NextKey = b })
	for _, id := range online {
		waitCounter(t, id, f.devices[id].agent.Counters, "issuer_key_learned", 1)
	}

	// Epoch 2 is the overlap, signed by A; epoch 3 is B's first.
	roots := subscribe(t, f.b, f.b.Monitor().Username, rootTopic(2), rootTopic(3))
	f.issue(t, 2)
	f.waitEpoch(t, 2, online...)
	f.issue(t, 3)
	f.waitEpoch(t, 3, online...)
	for e, k := range map[int]*signature.PrivateKey{2: a, 3: b} {
		roots.waitForTopic(t, rootTopic(e))
		var msg []byte
		for _, m := range roots.messages() {
			if m.Topic == rootTopic(e) {
				msg = []byte(m.Payload)
			}
		}
		ks, _ := signature.NewKeySet(k.Public())
		if _, _, err := signature.Verify1(msg, ks); err != nil {
			t.Fatalf("root of epoch %d is not signed by the key the announcement names: %v", e, err)
		}
	}
	for _, id := range online {
		for _, ev := range f.devices[id].events.accepted() {
			if ev.Gap {
				t.Fatalf("%s accepted with a gap: %s", id, describeEvents(f.devices[id].events.all()))
			}
		}
	}

	// After the switch the issuer runs with B alone.
	if err := iss.Close(); err != nil {
		t.Fatal(err)
	}
	iss = f.startIssuer(t, func(c *ekissuer.Config) { c.Key = b })
	f.issue(t, 4)
	f.waitEpoch(t, 4, online...)

	// The device that slept through it all returns: the retained
	// announcement, signed by the A it pins, vouches for B's root.
	d3 := f.startDevice(t, sleeper)
	ctx, cancel := context.WithTimeout(context.Background(), sysTimeout)
	defer cancel()
	if err := d3.agent.WaitEpoch(ctx, 4); err != nil {
		t.Fatalf("%s did not catch up after the rotation: %v (events %s)", sleeper, err, describeEvents(d3.events.all()))
	}
	sysWaitFor(t, sleeper+"'s accepted event", func() bool { return len(d3.events.accepted()) > 0 })
	if c := d3.agent.Counters(); c["issuer_key_learned"] != 1 {
		t.Fatalf("%s counters %v: want the key learned once", sleeper, c)
	}
	acc := d3.events.accepted()
	if last := acc[len(acc)-1]; last.Epoch != 4 || !last.Gap || last.PrevEpoch != 1 {
		t.Fatalf("%s: accepted %s, want epoch 4 with a gap since 1", sleeper, describeEvents(d3.events.all()))
	}
	if _, err := iss.WaitConfirmed(ctx, sleeper, 4); err != nil {
		t.Fatal(err)
	}

	// The monitor, which pins only A, verifies every retained root (A's
	// and B's) after learning B from the same announcement.
	pwArgs, _ := monitorFiles(t, f)
	snap, code, _ := fleetStatus(t, pwArgs, &offsetClock{})
	if snap.Epoch != 4 || len(snap.RootFailures) != 0 || snap.Counters[fleetmon.CountKeysLearned] != 1 || code != 0 {
		t.Fatalf("fleet status after the rotation: epoch %d, root failures %v, counters %v, exit %d",
			snap.Epoch, snap.RootFailures, snap.Counters, code)
	}
	for _, r := range snap.Devices {
		if r.State != "current" || r.Epoch != 4 {
			t.Fatalf("fleet status row %+v, want every device current at epoch 4", r)
		}
	}

	// A is retired: a root A signs for a later epoch is refused, though A
	// is pinned, and nothing stored changes.
	victim := f.devices[online[0]]
	before := victim.stateFile(t)
	st := victim.agent.Status()
	sch, _ := kem.Lookup(st.NextAlg)
	next, err := sch.ParsePublicKey(st.NextPK)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := batch.Issue(a, batch.Params{Epoch: 5, IssuedAt: uint64(time.Now().Unix()), TTL: 120},
		[]batch.Device{{ID: victim.id, Key: next, Prev: st.TicketHash, Purpose: ekissuer.DefaultLabel, Group: ekissuer.DefaultLabel}})
	if err != nil {
		t.Fatal(err)
	}
	m := connectAs(t, f.b, issuer2) // a second issuer account: the running issuer keeps its own
	publish(t, m, rootTopic(5), ep.Root, true)
	publish(t, m, ticketTopic(victim.id), ep.Tickets[0].Ticket, true)
	waitCounter(t, victim.id, victim.agent.Counters, "rejected:"+accept.ReasonUnknownIssuerKey.String(), 1)
	if !bytes.Equal(victim.stateFile(t), before) || victim.agent.Epoch() != 4 {
		t.Fatal("a root signed by the retired key changed the device")
	}
	if s := victim.agent.Status(); s.State != wire.StateRejected || accept.Reason(s.Reason) != accept.ReasonUnknownIssuerKey {
		t.Fatalf("Status %v reason %d, want rejected unknown_issuer_key", s.State, s.Reason)
	}
	for _, id := range ids {
		if n := len(f.devices[id].events.ofKind(device.EventRejected)); id != victim.id && n != 0 {
			t.Fatalf("%s saw %d rejections, want none", id, n)
		}
	}
}
