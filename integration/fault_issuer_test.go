package integration

// Issuer crashes: the real ekem-issuer binary, with a 1 s epoch period, is
// SIGKILLed at random points (0 .. 1 period after its start) and restarted
// on the same store, over and over, while three devices follow. DESIGN.md,
// Issuer rules: epochs never repeat across restarts, the last epoch and
// every chain head are persisted before a ticket is published, and the
// broker is only a cache. The monitor account (read-only, ekem/v1/#)
// records every message the issuer got to the broker; afterwards the test
// checks that no epoch number was used twice, that the chains link up, that
// every device followed without rollback or equivocation, and that no
// registration was lost.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	ekissuer "github.com/entropykem/entropykem/issuer"
)

// issuerCrashPeriod is the binary's epoch period: kills land anywhere in it.
const issuerCrashPeriod = time.Second

func TestFaultIssuerKilled(t *testing.T) {
	kills := faultCount(40, 200)
	ids := faultIDs("iss-", 3)
	f := newSysFleet(t, ids...)
	bin := binary(t, "ekem-issuer")
	keyFile, _ := writeIssuerKeyFiles(t, f.dir, f.key)
	store := filepath.Join(f.dir, "issuer.db") // the store f.startIssuer opens too
	mon := subscribe(t, f.b, f.b.Monitor().Username, prefix+"#")
	for _, id := range ids {
		f.startDevice(t, id)
	}
	sampler := startEpochSampler(f.agents())

	acct := f.b.Issuer()
	env := []string{"EKEM_PASSWORD=" + acct.Password}
	args := []string{"run", "-broker", f.b.URL(), "-username", acct.Username, "-key", keyFile, "-store", store,
		"-period", issuerCrashPeriod.String(), "-log-format", "json", "-log-level", "debug"}
	issued := map[uint64]int{} // epoch → the run that logged it as persisted
	for run := 1; run <= kills; run++ {
		p := startProc(t, fmt.Sprintf("ekem-issuer run %d", run), env, bin, args...)
		time.Sleep(randDuration(issuerCrashPeriod))
		if p.exited() {
			t.Fatalf("run %d: ekem-issuer exited by itself (%v); stderr:\n%s", run, p.err, p.stderr.tail(40))
		}
		p.kill(t)
		if !p.killedBySignal() {
			t.Fatalf("run %d: ekem-issuer ended with %v, not by SIGKILL; stderr:\n%s", run, p.err, p.stderr.tail(40))
		}
		for _, e := range persistedEpochs(t, p.stderr.all()) {
			if prev, dup := issued[e]; dup {
				t.Errorf("epoch %d persisted twice: by run %d and by run %d", e, prev, run)
			}
			issued[e] = run
		}
	}
	if len(issued) == 0 {
		t.Fatalf("no epoch was issued in %d runs", kills)
	}

	// An issuer that is not killed takes over the same store: it
	// republishes its record, every device converges and one more epoch
	// follows with the next number.
	iss := f.startIssuer(t, nil)
	last := iss.LastEpoch()
	for e := range issued {
		if e > last {
			t.Fatalf("the store's last epoch %d is below epoch %d that a killed run logged as persisted", last, e)
		}
	}
	f.converge(t, last, ids...)
	f.issue(t, last+1)
	f.converge(t, last+1, ids...)
	f.checkCleanCounters(t)
	if err := iss.Close(); err != nil {
		t.Fatal(err)
	}
	sampler.check(t)

	// The operator's view of the store: every device pinned, active and
	// on the last epoch, which it confirmed.
	list := issuerDevicesJSON(t, bin, store)
	if list.LastEpoch != last+1 {
		t.Errorf("ekem-issuer devices: last_epoch %d, want %d", list.LastEpoch, last+1)
	}
	if len(list.Devices) != len(ids) {
		t.Errorf("ekem-issuer devices lists %d devices, want %d", len(list.Devices), len(ids))
	}
	for _, d := range list.Devices {
		if d.PinnedKeyHash == nil || d.State != ekissuer.StateActive || d.LastEpoch != last+1 || d.ConfirmedEpoch != last+1 {
			t.Errorf("ekem-issuer devices: %s pinned %x state %s last %d confirmed %d; want pinned, active, %d, %d",
				d.ID, d.PinnedKeyHash, d.State, d.LastEpoch, d.ConfirmedEpoch, last+1, last+1)
		}
	}

	// What reached the broker: no epoch number used twice, chains linked.
	rec := analysePublished(t, mon.messages())
	rec.checkNoReuse(t)
	gaps := rec.checkChains(t)
	for k := 1; k < len(rec.infos); k++ {
		if rec.infos[k] < rec.infos[k-1] {
			t.Errorf("EpochInfo went back from epoch %d to %d", rec.infos[k-1], rec.infos[k])
		}
	}
	for _, id := range ids {
		checkAcceptedEvents(t, id, f.devices[id].events.all())
		if got := len(rec.tickets[id]); got == 0 {
			t.Errorf("%s: the monitor saw no ticket", id)
		}
	}
	epochs := make([]uint64, 0, len(issued))
	for e := range issued {
		epochs = append(epochs, e)
	}
	sort.Slice(epochs, func(a, b int) bool { return epochs[a] < epochs[b] })
	t.Logf("%d SIGKILLs of ekem-issuer; %d epochs persisted by killed runs (last %d); %d messages seen by the monitor, %d published chain gaps (a persisted ticket never published before the next)",
		kills, len(epochs), last, len(mon.messages()), gaps)
}

// persistedEpochs returns the epochs an ekem-issuer JSON log reports as
// issued and persisted.
func persistedEpochs(t testing.TB, lines []string) []uint64 {
	t.Helper()
	var out []uint64
	for _, l := range lines {
		if !strings.Contains(l, `"epoch issued and persisted"`) {
			continue
		}
		var r struct {
			Epoch uint64 `json:"epoch"`
		}
		if err := json.Unmarshal([]byte(l), &r); err != nil || r.Epoch == 0 {
			t.Fatalf("issuer log line without an epoch: %v: %q", err, l)
		}
		out = append(out, r.Epoch)
	}
	return out
}

// deviceList is the output of ekem-issuer devices -json.
type deviceList struct {
	LastEpoch uint64                `json:"last_epoch"`
	Devices   []ekissuer.DeviceInfo `json:"devices"`
}

// issuerDevicesJSON runs ekem-issuer devices -json on a stopped store.
func issuerDevicesJSON(t testing.TB, bin, store string) deviceList {
	t.Helper()
	p := startProc(t, "ekem-issuer devices", nil, bin, "devices", "-store", store, "-json")
	select {
	case <-p.done:
	case <-time.After(faultTimeout):
		t.Fatalf("ekem-issuer devices did not finish within %v", faultTimeout)
	}
	if p.err != nil {
		t.Fatalf("ekem-issuer devices: %v\n%s", p.err, p.stderr.tail(20))
	}
	var l deviceList
	out := strings.Join(p.stdout.all(), "\n")
	if err := json.NewDecoder(bytes.NewReader([]byte(out))).Decode(&l); err != nil {
		t.Fatalf("ekem-issuer devices -json: %v\n%s", err, out)
	}
	return l
}
