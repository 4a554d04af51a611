package issuer

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// TestCohortMembership: membership set online is audited, takes effect at
// the next epoch, gives every member one group key per epoch (a fresh one
// each epoch), and a member taken out derives none from then on; the same
// action works on a stopped store. Epochs are streamed in chunks of two
// tickets, so the members span chunks (backend-1, dev-a | dev-b, dev-c).
func TestCohortMembership(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.ChunkLeaves = 2 })
	devs := map[string]*device{}
	for _, id := range []string{"backend-1", "dev-a", "dev-b", "dev-c"} {
		devs[id] = newDevice(t, id)
		e.register(devs[id])
	}
	adm := e.iss.Admin()
	for _, id := range []string{"backend-1", "dev-a", "dev-b"} {
		if err := adm.SetCohort(id, "fleet-a", Operator{Actor: "op", Reason: "joins"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := adm.SetCohort("dev-z", "fleet-a", testOp); !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("unknown device: %v", err)
	}
	if err := adm.SetCohort("dev-a", "a;b", testOp); err == nil {
		t.Fatal("a cohort that is not a label was accepted")
	}
	var prev []byte
	for epoch := 1; epoch <= 2; epoch++ {
		e.issue()
		var key []byte
		for id, d := range devs {
			r := e.deliver(d)
			e.iss.handle(e.iss.topics.Status(id), d.status(r))
			if id == "dev-c" {
				if d.st.Group != nil {
					t.Fatal("a non-member has a group key")
				}
				continue
			}
			k := d.st.Group.Latest().Key
			if key == nil {
				key = k
			} else if !bytes.Equal(k, key) {
				t.Fatalf("epoch %d: %s derived another key", epoch, id)
			}
		}
		if bytes.Equal(key, prev) {
			t.Fatal("the group key did not change")
		}
		prev = key
		e.clock.Set(e.clock.Now().Add(time.Hour))
	}
	if err := adm.SetCohort("dev-b", "", Operator{Actor: "op", Reason: "leaves"}); err != nil {
		t.Fatal(err)
	}
	e.issue()
	r := e.deliver(devs["dev-b"])
	if r.State.Group != nil {
		t.Fatal("a member taken out still derives a group key")
	}
	_, _, body := e.latest("dev-a")
	if body.Cohort != "fleet-a" || len(body.SealedGroupSeed) != 48 {
		t.Fatal("a member's ticket carries no group seed")
	}
	log, err := e.iss.Admin().Audit()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range log {
		if a.Action == "cohort" {
			got = append(got, a.Device+": "+a.Detail+" by "+a.Actor+" ("+a.Reason+")")
		}
	}
	want := []string{"backend-1: cohort (none) -> fleet-a by op (joins)", "dev-a: cohort (none) -> fleet-a by op (joins)",
		"dev-b: cohort (none) -> fleet-a by op (joins)", "dev-b: cohort fleet-a -> (none) by op (leaves)"}
	if len(got) != len(want) {
		t.Fatalf("audit %q", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("audit %d: %q, want %q", i, got[i], want[i])
		}
	}
	if d, _ := e.iss.Admin().Device("dev-a"); d.Cohort != "fleet-a" {
		t.Fatalf("device info cohort %q", d.Cohort)
	}
	// Stopped: the same action on the store.
	if err := e.iss.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := OpenStore(e.cfg.StorePath, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := (StoreAdmin{Store: st}).SetCohort("dev-c", "fleet-a", testOp); err != nil {
		t.Fatal(err)
	}
	d, err := (StoreAdmin{Store: st}).Device("dev-c")
	st.Close()
	if err != nil || d.Cohort != "fleet-a" {
		t.Fatalf("stopped store: %v %q", err, d.Cohort)
	}
	e.open()
}

// Recovery rebuilds a record from the broker and keeps its cohort: the
// broker never held membership.
func TestRecoveredKeepsCohort(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, "dev-a")
	r, from, why := e.iss.recovered("dev-a", &record{ID: "dev-a", Cohort: "fleet-a"}, d.registration(), nil)
	if r == nil || from != "registration" || r.Cohort != "fleet-a" {
		t.Fatalf("recovered %+v from %q (%s)", r, from, why)
	}
}
