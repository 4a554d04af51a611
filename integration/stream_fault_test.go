package integration

// Streamed epochs under crashes (PROTOCOL.md §5.5, §6): the real
// ekem-issuer binary streams every epoch in chunks of 2 tickets and is
// SIGKILLed 20 times, each time just after it logged the beginning of an
// epoch, so that kills land between chunks: some tickets of the epoch are
// persisted and published, its root is not. Afterwards: no epoch number has
// two root payloads, every device converges on the next epochs, every
// epoch a device accepted has a root on the broker (no device accepts a
// ticket without its root), and the abandoned epochs left tickets without a
// root that no device accepted.

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/entropykem/entropykem/device"
	ekissuer "github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/wire"
)

func TestFaultIssuerKilledMidStream(t *testing.T) {
	const kills = 20
	ids := faultIDs("str-", 12) // 6 chunks of 2
	f := newSysFleet(t, ids...)
	bin := binary(t, "ekem-issuer")
	keyFile, _ := writeIssuerKeyFiles(t, f.dir, f.key)
	store := filepath.Join(f.dir, "issuer.db")
	mon := subscribe(t, f.b, f.b.Monitor().Username, prefix+"#")
	for _, id := range ids {
		f.startDevice(t, id)
	}
	acct := f.b.Issuer()
	env := []string{"EKEM_PASSWORD=" + acct.Password}
	args := []string{"run", "-broker", f.b.URL(), "-username", acct.Username, "-key", keyFile, "-store", store,
		"-period", issuerCrashPeriod.String(), "-chunk-leaves", "2", "-log-format", "json", "-log-level", "debug"}
	for run := 1; run <= kills; run++ {
		p := startProc(t, fmt.Sprintf("ekem-issuer run %d", run), env, bin, args...)
		deadline := time.Now().Add(5 * issuerCrashPeriod)
		for !strings.Contains(strings.Join(p.stderr.all(), "\n"), `"msg":"epoch begun"`) {
			if p.exited() {
				t.Fatalf("run %d: ekem-issuer exited by itself (%v); stderr:\n%s", run, p.err, p.stderr.tail(40))
			}
			if time.Now().After(deadline) {
				t.Fatalf("run %d: no epoch begun within %v; stderr:\n%s", run, 5*issuerCrashPeriod, p.stderr.tail(40))
			}
			time.Sleep(200 * time.Microsecond)
		}
		time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
		p.kill(t)
		if !p.killedBySignal() {
			t.Fatalf("run %d: ekem-issuer ended with %v, not by SIGKILL; stderr:\n%s", run, p.err, p.stderr.tail(40))
		}
	}

	// An issuer that is not killed takes over the store: the next epoch
	// is above every begun one, and every device converges on it.
	iss := f.startIssuer(t, func(c *ekissuer.Config) { c.ChunkLeaves = 2 })
	last := iss.LastEpoch()
	f.issue(t, last+1)
	f.converge(t, last+1, ids...)
	f.issue(t, last+2)
	f.converge(t, last+2, ids...)
	f.checkCleanCounters(t)
	if err := iss.Close(); err != nil {
		t.Fatal(err)
	}

	rec := analysePublished(t, mon.messages())
	rec.checkNoReuse(t)
	rec.checkChains(t)
	rootless := map[uint64]bool{}
	for _, byEpoch := range rec.tickets {
		for e := range byEpoch {
			if len(rec.roots[e]) == 0 {
				rootless[e] = true
			}
		}
	}
	for _, id := range ids {
		evs := f.devices[id].events.all()
		checkAcceptedEvents(t, id, evs)
		for _, ev := range evs {
			if ev.Kind == device.EventAccepted && len(rec.roots[ev.Epoch]) == 0 {
				t.Errorf("%s accepted epoch %d, whose root never reached the broker", id, ev.Epoch)
			}
		}
	}
	if len(rootless) == 0 {
		t.Errorf("no kill landed mid-stream: every epoch with published tickets has a root (%d kills)", kills)
	}
	t.Logf("%d SIGKILLs right after an epoch began: %d epochs left tickets without a root (abandoned), last epoch %d",
		kills, len(rootless), last)
}

// TestStreamedTicketsBeforeRoots: an issuer streaming in chunks of 2
// publishes every ticket of an epoch before its root (the monitor sees
// them in that order, as the devices' subscriptions do: one publisher, one
// broker), and every online device holds its ticket and accepts it once the
// root arrives, epoch after epoch, each directly following the previous.
func TestStreamedTicketsBeforeRoots(t *testing.T) {
	ids := faultIDs("held-", 6) // 3 chunks of 2
	f := newSysFleet(t, ids...)
	mon := subscribe(t, f.b, f.b.Monitor().Username, prefix+"ticket/+", prefix+"root/+")
	f.startIssuer(t, func(c *ekissuer.Config) { c.ChunkLeaves = 2 })
	f.startDevices(t, ids...)
	for e := uint64(1); e <= 3; e++ {
		f.issue(t, e)
		f.converge(t, e, ids...)
	}
	// In the monitor's order of arrival: for each epoch, every ticket
	// came before the root.
	ticketsSeen := map[uint64]int{}
	rootAt := map[uint64]int{}
	for _, m := range mon.messages() {
		switch {
		case strings.HasPrefix(m.Topic, prefix+"ticket/") && m.Payload != "":
			_, body, err := wire.ParseTicket([]byte(m.Payload))
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := rootAt[body.Epoch]; ok {
				t.Errorf("a ticket of epoch %d arrived after its root", body.Epoch)
			}
			ticketsSeen[body.Epoch]++
		case strings.HasPrefix(m.Topic, prefix+"root/") && m.Payload != "":
			var e uint64
			fmt.Sscan(strings.TrimPrefix(m.Topic, prefix+"root/"), &e)
			rootAt[e] = ticketsSeen[e]
		}
	}
	for e := uint64(1); e <= 3; e++ {
		if rootAt[e] != len(ids) {
			t.Errorf("epoch %d: the root arrived after %d of %d tickets", e, rootAt[e], len(ids))
		}
	}
	for _, id := range ids {
		var accepted []uint64
		for _, ev := range f.devices[id].events.all() {
			if ev.Kind == device.EventAccepted {
				if ev.Gap {
					t.Errorf("%s: epoch %d accepted with a gap", id, ev.Epoch)
				}
				accepted = append(accepted, ev.Epoch)
			}
		}
		if fmt.Sprint(accepted) != "[1 2 3]" {
			t.Errorf("%s accepted epochs %v, want [1 2 3]", id, accepted)
		}
	}
}
