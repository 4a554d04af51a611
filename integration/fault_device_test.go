package integration

// Device crashes: a device process (integration/crashdevice, the device
// library in a process of its own) is SIGKILLed at random moments while it
// hands out ratchet keys and, in some runs, while it follows the broker and
// accepts the tickets an issuer keeps issuing. DESIGN.md, Ratchet: the state
// is persisted crash-safely, and a crash never hands out the same (epoch,
// ctr) twice and never loses an accepted ticket (PROTOCOL.md §8.3, §8.5).
// Every key name the process printed (it prints only after NextKey
// returned) is recorded across all runs.

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/entropykem/entropykem/device"
	ekissuer "github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/cohort"
)

// keyName is (epoch, ctr).
type keyName struct{ epoch, ctr uint64 }

// crashRun is what one crashdevice run printed.
type crashRun struct {
	loaded   bool
	epoch    uint64 // the loaded epoch
	keys     []keyName
	fps      []string
	accepted []uint64
	errLine  string
	other    []string
}

func parseCrashRun(t testing.TB, lines []string) crashRun {
	t.Helper()
	var r crashRun
	for _, l := range lines {
		f := strings.Fields(l)
		switch {
		case len(f) == 2 && f[0] == "loaded" && strings.HasPrefix(f[1], "epoch="):
			r.loaded = true
			r.epoch = mustUint(t, strings.TrimPrefix(f[1], "epoch="), l)
		case len(f) == 4 && f[0] == "key":
			r.keys = append(r.keys, keyName{mustUint(t, f[1], l), mustUint(t, f[2], l)})
			r.fps = append(r.fps, f[3])
		case len(f) == 4 && f[0] == "accepted":
			r.accepted = append(r.accepted, mustUint(t, f[1], l))
		case len(f) > 0 && f[0] == "error":
			r.errLine = l
		default:
			r.other = append(r.other, l)
		}
	}
	return r
}

func mustUint(t testing.TB, s, line string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("crashdevice printed %q: %v", line, err)
	}
	return v
}

func TestFaultDeviceKilled(t *testing.T) {
	kills := faultCount(300, 1500)
	const id = "crash-1"
	f := newSysFleet(t, id)
	bin := binary(t, "crashdevice")
	_, pubFile := writeIssuerKeyFiles(t, f.dir, f.key)
	cohortFile, secret := writeCohortFile(t, f.dir)
	coh, err := cohort.NewSoftware(secret)
	if err != nil {
		t.Fatal(err)
	}
	f.cohort = coh // the in-process agent and crashdevice share the secret
	iss := f.startIssuer(t, nil)

	// The device registers and accepts epoch 1 in-process, then powers off.
	d := f.startDevice(t, id)
	if _, err := iss.WaitRegistered(ctxFor(t), id); err != nil {
		t.Fatal(err)
	}
	f.issue(t, 1)
	f.waitEpoch(t, 1, id)
	d.stop(t)

	// The issuer keeps issuing epochs while the device crashes.
	stopIssuing := make(chan struct{})
	var issuing sync.WaitGroup
	var issueErr error
	issuing.Add(1)
	go func() {
		defer issuing.Done()
		for {
			select {
			case <-stopIssuing:
				return
			case <-time.After(50*time.Millisecond + randDuration(150*time.Millisecond)):
			}
			ctx, cancel := context.WithTimeout(context.Background(), faultTimeout)
			_, err := iss.IssueEpoch(ctx)
			cancel()
			if err != nil {
				issueErr = err
				return
			}
		}
	}()

	env := []string{"EKEM_PASSWORD=" + f.b.Account(id).Password}
	base := []string{"-id", id, "-state", filepath.Join(f.dir, id), "-cohort-file", cohortFile}
	online := append(append([]string(nil), base...), "-broker", f.b.URL(), "-issuer-pub", pubFile)
	seen := map[keyName]int{} // key name → run that printed it
	fps := map[string]keyName{}
	var maxAccepted, maxKeyEpoch uint64
	var nKeys, nAccepted, nOnline, nEarly int
	for run := 1; run <= kills; run++ {
		args := base
		if randIntn(10) < 4 {
			args = online
			nOnline++
		}
		p := startProc(t, fmt.Sprintf("crashdevice run %d", run), env, bin, args...)
		if randIntn(8) == 0 {
			nEarly++
			time.Sleep(randDuration(30 * time.Millisecond)) // anywhere, also while loading
		} else {
			if _, ok := p.waitLine(faultTimeout, func(l string) bool { return strings.HasPrefix(l, "loaded ") }); !ok && !p.exited() {
				t.Fatalf("run %d: crashdevice printed no \"loaded\" line within %v; stdout:\n%s", run, faultTimeout, p.stdout.tail(10))
			}
			window := 15 * time.Millisecond
			if len(args) == len(online) {
				window = 150 * time.Millisecond // connect, subscribe, accept
			}
			time.Sleep(randDuration(window))
		}
		p.kill(t)
		r := parseCrashRun(t, p.stdout.all())
		if !p.killedBySignal() || r.errLine != "" {
			t.Fatalf("run %d: crashdevice ended by itself (%v): %s\nstdout:\n%s", run, p.err, r.errLine, p.stdout.tail(20))
		}
		if r.loaded && r.epoch < maxAccepted {
			t.Fatalf("run %d: state loaded at epoch %d, but a previous run printed epoch %d as accepted: an accepted ticket was lost", run, r.epoch, maxAccepted)
		}
		if r.loaded && r.epoch < maxKeyEpoch {
			t.Fatalf("run %d: state loaded at epoch %d, but a previous run handed out a key of epoch %d", run, r.epoch, maxKeyEpoch)
		}
		var last keyName
		for k, kn := range r.keys {
			if prev, dup := seen[kn]; dup {
				t.Fatalf("key (epoch %d, ctr %d) handed out twice: by run %d and run %d", kn.epoch, kn.ctr, prev, run)
			}
			seen[kn] = run
			if other, dup := fps[r.fps[k]]; dup {
				t.Fatalf("run %d: key (%d, %d) has the fingerprint of key (%d, %d)", run, kn.epoch, kn.ctr, other.epoch, other.ctr)
			}
			fps[r.fps[k]] = kn
			if k > 0 && (kn.epoch < last.epoch || kn.epoch == last.epoch && kn.ctr <= last.ctr) {
				t.Fatalf("run %d: key (%d, %d) after (%d, %d)", run, kn.epoch, kn.ctr, last.epoch, last.ctr)
			}
			last = kn
			maxKeyEpoch = max(maxKeyEpoch, kn.epoch)
		}
		for _, e := range r.accepted {
			maxAccepted = max(maxAccepted, e)
		}
		nKeys += len(r.keys)
		nAccepted += len(r.accepted)
	}
	close(stopIssuing)
	issuing.Wait()
	if issueErr != nil {
		t.Fatalf("IssueEpoch during the crash loop: %v", issueErr)
	}
	if nAccepted == 0 || nKeys == 0 {
		t.Fatalf("the crash loop never caught the device accepting (%d) or handing out keys (%d)", nAccepted, nKeys)
	}

	// After the last crash the state loads, keeps every accepted epoch and
	// hands out only new keys.
	p := startProc(t, "crashdevice final", env, bin, append(base, "-keys", "3")...)
	select {
	case <-p.done:
	case <-time.After(faultTimeout):
		t.Fatalf("final crashdevice run did not finish within %v", faultTimeout)
	}
	r := parseCrashRun(t, p.stdout.all())
	if p.err != nil || !r.loaded || len(r.keys) != 3 {
		t.Fatalf("final run: %v; stdout:\n%s", p.err, p.stdout.tail(10))
	}
	if r.epoch < maxAccepted || r.epoch < maxKeyEpoch {
		t.Fatalf("final run loaded epoch %d; runs accepted up to %d and handed out keys of epoch %d", r.epoch, maxAccepted, maxKeyEpoch)
	}
	for _, kn := range r.keys {
		if prev, dup := seen[kn]; dup {
			t.Fatalf("final run handed out key (%d, %d), already handed out by run %d", kn.epoch, kn.ctr, prev)
		}
	}

	// The device still works with the issuer: it follows the next epoch
	// and the issuer verifies its confirmation (no false clone alarm).
	d = f.startDevice(t, id)
	sampler := startEpochSampler(map[string]*device.Agent{id: d.agent})
	e, err := f.issueBounded(t)
	if err != nil {
		t.Fatal(err)
	}
	f.converge(t, e, id)
	sampler.check(t)
	if info, _ := iss.Device(id); info.State != ekissuer.StateActive {
		t.Errorf("issuer: %s is %s after the device crashes", id, info.State)
	}
	if c := iss.Counters(); c["clone_detected"] > 0 {
		t.Errorf("issuer flagged the crashing device as a clone %d times; counters %v", c["clone_detected"], c)
	}
	t.Logf("%d SIGKILLs of the device (%d while following the broker, %d at any point of start-up); %d keys handed out, %d tickets accepted, last epoch %d (issuer at %d)",
		kills, nOnline, nEarly, nKeys, nAccepted, maxAccepted, e)
}

// ctxFor is a context bounded by faultTimeout, cancelled at the end of the test.
func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), faultTimeout)
	t.Cleanup(cancel)
	return ctx
}
