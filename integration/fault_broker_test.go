package integration

// Broker faults: the real Mosquitto is stopped with SIGTERM (it saves its
// persistence database) or SIGKILL (it loses what arrived since its last
// autosave, every 10 s with the shipped configuration) at different points
// of an epoch, and restarted on the same port and data directory. The
// issuer's store is the record and the broker a cache (DESIGN.md, Issuer
// rules; PROTOCOL.md §6): the issuer must republish what the broker lost,
// every device must converge on the current epoch, and no device may ever
// accept a rollback, also when the broker comes back with an older save.

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	ekissuer "github.com/entropykem/entropykem/issuer"
)

// brokerFault is one way of stopping the broker around an epoch.
type brokerFault struct {
	name string
	sig  syscall.Signal
	// when: "after" stops the broker right after IssueEpoch returned (the
	// devices may not have the tickets yet); "mid" while IssueEpoch is
	// publishing; "older-save" makes the broker's last save hold the
	// previous epoch, then kills it after the next one, so the restarted
	// broker offers every device a retained ticket older than its own.
	when string
}

func TestFaultBrokerStopAndKill(t *testing.T) {
	ids := faultIDs("brk-", 3)
	f := newSysFleet(t, ids...)
	iss := f.startIssuer(t, nil)
	f.startDevices(t, ids...)
	sampler := startEpochSampler(f.agents())
	start := time.Now()
	f.issue(t, 1)
	issueTook := time.Since(start) // only sizes the window of a "mid" fault
	f.converge(t, 1, ids...)
	e := uint64(1)

	once := []brokerFault{
		{"SIGTERM after publish", syscall.SIGTERM, "after"},
		{"SIGKILL after publish", syscall.SIGKILL, "after"},
		{"SIGTERM mid-publish", syscall.SIGTERM, "mid"},
		{"SIGKILL mid-publish", syscall.SIGKILL, "mid"},
		{"SIGKILL back to an older save", syscall.SIGKILL, "older-save"},
		{"SIGKILL mid-publish again", syscall.SIGKILL, "mid"},
		{"SIGTERM mid-publish again", syscall.SIGTERM, "mid"},
		{"SIGKILL mid-publish a third time", syscall.SIGKILL, "mid"},
	}
	var faults []brokerFault // the list once in CI, five times in a soak
	for range faultCount(1, 5) {
		faults = append(faults, once...)
	}
	for _, fl := range faults {
		switch fl.when {
		case "after":
			e++
			f.issue(t, e)
			f.stopBroker(t, fl.sig)
		case "mid":
			type res struct {
				e   uint64
				err error
			}
			ch := make(chan res, 1)
			go func() { got, err := f.issueBounded(t); ch <- res{got, err} }()
			// A random point of the epoch: the window is how long the
			// last fault-free IssueEpoch took (signing, persisting,
			// publishing), so the stop lands before, during or just
			// after the publishing.
			time.Sleep(randDuration(issueTook + issueTook/2))
			f.stopBroker(t, fl.sig)
			f.restartBroker(t, fl.name)
			r := <-ch
			if r.err != nil && !errors.Is(r.err, ekissuer.ErrPublish) {
				t.Fatalf("%s: IssueEpoch: %v", fl.name, r.err)
			}
			e++
			if r.e != e {
				t.Fatalf("%s: IssueEpoch issued epoch %d, want %d (%v)", fl.name, r.e, e, r.err)
			}
			t.Logf("%s: IssueEpoch(%d) returned %v (window %v; issuer publish retries so far %d)", fl.name, e, r.err, issueTook+issueTook/2, f.iss.Counters()["publish_retries"])
		case "older-save":
			f.stopBroker(t, syscall.SIGTERM) // the save holds epoch e
			f.restartBroker(t, fl.name+" (save)")
			f.converge(t, e, ids...)
			e++
			f.issue(t, e)
			f.converge(t, e, ids...) // every device accepted e ...
			f.stopBroker(t, fl.sig)  // ... and the broker loses it
		}
		if !f.b.Running() {
			f.restartBroker(t, fl.name)
		}
		// The issuer republishes its record; every device converges on
		// the current epoch, then follows one more epoch.
		f.converge(t, e, ids...)
		e++
		start := time.Now()
		f.issue(t, e)
		issueTook = time.Since(start)
		f.converge(t, e, ids...)
	}

	sampler.check(t)
	rejected := map[string]uint64{} // reason → count over all devices
	for _, id := range ids {
		d := f.devices[id]
		checkAcceptedEvents(t, id, d.events.all())
		for name, v := range d.agent.Counters() {
			if strings.HasPrefix(name, "rejected:") {
				rejected[name] += v
			}
		}
	}
	f.checkCleanCounters(t)
	c := iss.Counters()
	t.Logf("%d broker faults (%d SIGKILL) over %d epochs; issuer republished %d messages, %d publish retries, %d publish failures; device rejections of re-delivered old tickets %v",
		len(faults), countKills(faults), e, c["republished"], c["publish_retries"], c["publish_failures"], rejected)
}

func countKills(fs []brokerFault) int {
	n := 0
	for _, f := range fs {
		if f.sig == syscall.SIGKILL {
			n++
		}
	}
	return n
}

// stopBroker stops the broker with sig.
func (f *sysFleet) stopBroker(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := f.b.Stop(sig); err != nil {
		t.Fatalf("stop broker with %v: %v", sig, err)
	}
}

// restartBroker restarts the broker and waits until the issuer reconnected
// and republished its record (its "republished" counter grew).
func (f *sysFleet) restartBroker(t *testing.T, what string) {
	t.Helper()
	before := f.iss.Counters()["republished"]
	f.b.Restart()
	deadline := time.Now().Add(faultTimeout)
	for f.iss.Counters()["republished"] <= before {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the issuer did not republish within %v of the broker restart; counters %v", what, faultTimeout, f.iss.Counters())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
