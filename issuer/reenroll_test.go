package issuer

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/wire"
)

// reenrollment is d's registration marked as a re-enrollment.
func (d *device) reenrollment() []byte {
	d.t.Helper()
	r, err := wire.ParseRegistration(d.registration())
	if err != nil {
		d.t.Fatal(err)
	}
	r.Reenroll = true
	b, err := r.Marshal()
	if err != nil {
		d.t.Fatal(err)
	}
	return b
}

// TestReenrollHeldThenApproved: under the default policy a re-enrollment
// with a new key changes nothing stored, is shown awaiting approval, and
// Approve pins it (chain head kept, Status history forgotten).
func TestReenrollHeldThenApproved(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, "dev-1")
	e.register(d)
	e.issue()
	e.iss.handle(e.iss.topics.Status("dev-1"), d.status(e.deliver(d)))
	before := e.dump()
	fresh := newDevice(t, "dev-1")
	e.iss.handle(e.iss.topics.Registration("dev-1"), fresh.reenrollment())
	if !bytes.Equal(before["dev-1"], e.dump()["dev-1"]) {
		t.Fatal("a held re-enrollment changed the record")
	}
	if !e.iss.AwaitingApproval("dev-1") || e.counter("registrations_rejected:awaiting_approval") != 1 {
		t.Fatalf("not held: counters %v", e.iss.Counters())
	}
	if s, _ := e.iss.Standings(e.clock.Now()); s[StandingAwaitingApproval] != 1 {
		t.Fatalf("standings %v", s)
	}
	if d, _ := e.iss.Device("dev-1"); d.Standing != StandingAwaitingApproval {
		t.Fatalf("device standing %q", d.Standing)
	}
	if err := e.iss.Admin().Approve("dev-1", testOp); err != nil {
		t.Fatal(err)
	}
	r := e.record("dev-1")
	if !bytes.Equal(r.RegKey, fresh.st.Current.PublicKey().Bytes()) || r.Epoch != 1 || r.HasStatus || r.Key != nil {
		t.Fatalf("after approval: epoch %d status %v key %v", r.Epoch, r.HasStatus, r.Key != nil)
	}
	if d, _ := e.iss.Device("dev-1"); e.iss.AwaitingApproval("dev-1") || d.Standing != StandingPending {
		t.Fatalf("after approval: awaiting %v, standing %q", e.iss.AwaitingApproval("dev-1"), d.Standing)
	}
	if err := e.iss.Admin().Approve("dev-1", testOp); !errors.Is(err, ErrNothingToApprove) {
		t.Fatalf("second approval: %v", err)
	}
	// The next epoch goes to the new key, linked to the chain.
	e.issue()
	_, _, body := e.latest("dev-1")
	if !bytes.Equal(body.PKHash, kem.PublicKeyHash(r.RegKey)) || body.Epoch != 2 {
		t.Fatalf("epoch 2 to %x", body.PKHash)
	}
}

// TestReenrollAuto: under ReenrollAuto an active device's re-enrollment is
// pinned at once; a quarantined device's is held all the same, and a
// re-enrollment with the pinned key is a no-op.
func TestReenrollAuto(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Reenroll = ReenrollAuto })
	d := newDevice(t, "dev-1")
	e.register(d)
	e.issue()
	fresh := newDevice(t, "dev-1")
	e.iss.handle(e.iss.topics.Registration("dev-1"), fresh.reenrollment())
	if r := e.record("dev-1"); !bytes.Equal(r.RegKey, fresh.st.Current.PublicKey().Bytes()) || e.counter("registrations_reenrolled") != 1 {
		t.Fatalf("not pinned under auto: counters %v", e.iss.Counters())
	}
	audit, err := e.iss.Admin().Audit()
	if err != nil || len(audit) != 1 || audit[0].Action != "reenroll" || audit[0].Device != "dev-1" || !strings.Contains(audit[0].Actor, "policy") {
		t.Fatalf("audit log %+v %v", audit, err)
	}
	before := e.dump()
	e.iss.handle(e.iss.topics.Registration("dev-1"), fresh.reenrollment())
	if !bytes.Equal(before["dev-1"], e.dump()["dev-1"]) {
		t.Fatal("the same key again changed the record")
	}
	r := e.record("dev-1")
	r.State = stateQuarantined
	if err := e.iss.store.Update(func(tx Tx) error { return tx.PutDevice(r) }); err != nil {
		t.Fatal(err)
	}
	other := newDevice(t, "dev-1")
	e.iss.handle(e.iss.topics.Registration("dev-1"), other.reenrollment())
	if r := e.record("dev-1"); r.State != stateQuarantined || !bytes.Equal(r.RegKey, fresh.st.Current.PublicKey().Bytes()) {
		t.Fatal("a quarantined device re-enrolled by policy")
	}
	if !e.iss.AwaitingApproval("dev-1") {
		t.Fatal("a quarantined device's re-enrollment is not held")
	}
	c := e.iss.cfg
	c.Reenroll = "sometimes"
	if err := c.Validate(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "reenroll") {
		t.Fatalf("bad policy: %v", err)
	}
}
