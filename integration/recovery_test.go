package integration

// Issuer store loss and recovery (issue #11), against a real Mosquitto
// with the real ekem-issuer binary and in-process devices:
//
//   - the store is put back from an older copy, or deleted: ekem-issuer run
//     refuses to start with ErrBrokerAhead's message, publishing nothing;
//   - ekem-issuer recover (in one case SIGKILLed first, at a random point,
//     then run again) raises the epoch floor and re-pins every device;
//   - the next run issues above every epoch ever issued, and every device
//     accepts one of the first two epochs it issues (within two periods);
//   - a monitor that recorded every message throughout sees no epoch
//     number with two different roots and no (device, epoch) with two
//     different tickets.

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// recoveryPeriod is the binary issuer's epoch period in these tests.
const recoveryPeriod = time.Second

// binIssuer runs the ekem-issuer binary against a sysFleet's broker.
type binIssuer struct {
	f     *sysFleet
	bin   string
	key   string
	store string
	env   []string
}

func newBinIssuer(t *testing.T, f *sysFleet) *binIssuer {
	keyFile, _ := writeIssuerKeyFiles(t, f.dir, f.key)
	acct := f.b.Issuer()
	return &binIssuer{f: f, bin: binary(t, "ekem-issuer"), key: keyFile, store: filepath.Join(f.dir, "issuer.db"),
		env: []string{"EKEM_PASSWORD=" + acct.Password}}
}

// args are the flags run and recover share.
func (b *binIssuer) args(cmd string, extra ...string) []string {
	acct := b.f.b.Issuer()
	return append([]string{cmd, "-broker", b.f.b.URL(), "-username", acct.Username, "-key", b.key, "-store", b.store,
		"-period", recoveryPeriod.String(), "-log-format", "json"}, extra...)
}

func (b *binIssuer) start(t *testing.T, cmd string, extra ...string) *proc {
	t.Helper()
	return startProc(t, "ekem-issuer "+cmd, b.env, b.bin, b.args(cmd, extra...)...)
}

// wait waits (bounded) for p to exit and returns its exit error.
func waitExit(t *testing.T, p *proc, within time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(within):
		t.Fatalf("%s did not exit within %v; stderr:\n%s", p.name, within, p.stderr.tail(30))
		return nil
	}
}

// waitFleetEpoch waits until every device accepted at least epoch e.
func (f *sysFleet) waitFleetEpoch(t *testing.T, e uint64, ids ...string) {
	t.Helper()
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), faultTimeout)
		err := f.devices[id].agent.WaitEpoch(ctx, e)
		cancel()
		if err != nil {
			t.Fatalf("%s did not reach epoch %d (on %d; events %s)", id, e, f.devices[id].agent.Epoch(), describeEvents(f.devices[id].events.all()))
		}
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestIssuerStoreRecovery(t *testing.T) {
	for _, c := range []struct {
		name string
		// lose damages the store; copyAt is the older copy.
		lose       func(t *testing.T, store, copyAt string)
		killFirst  bool // SIGKILL a first recover at a random point
		wantReason string
	}{
		{"older copy", func(t *testing.T, store, old string) { copyFile(t, old, store) }, true, "restored from an older copy"},
		{"deleted", func(t *testing.T, store, _ string) {
			if err := os.Remove(store); err != nil {
				t.Fatal(err)
			}
		}, false, "empty: it was lost or deleted"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ids := faultIDs("rec-", 3)
			f := newSysFleet(t, ids...)
			mon := subscribe(t, f.b, f.b.Monitor().Username, prefix+"#")
			for _, id := range ids {
				f.startDevice(t, id)
			}
			iss := newBinIssuer(t, f)

			// A fleet running for a while; the operator's backup is taken
			// at epoch >= 2 with the issuer stopped, then the fleet moves on.
			p := iss.start(t, "run")
			f.waitFleetEpoch(t, 2, ids...)
			p.signal(t, syscall.SIGTERM)
			old := filepath.Join(f.dir, "backup.db")
			copyFile(t, iss.store, old)
			p = iss.start(t, "run")
			var highest uint64
			for _, id := range ids {
				highest = max(highest, f.devices[id].agent.Epoch())
			}
			f.waitFleetEpoch(t, highest+2, ids...)
			p.signal(t, syscall.SIGTERM)
			var devEpoch uint64
			for _, id := range ids {
				devEpoch = max(devEpoch, f.devices[id].agent.Epoch())
			}

			c.lose(t, iss.store, old)

			// Start refuses, names what happened and what to run.
			p = iss.start(t, "run")
			err := waitExit(t, p, faultTimeout)
			stderr := strings.Join(p.stderr.all(), "\n")
			if err == nil || !strings.Contains(stderr, "the broker holds epochs this store does not know") ||
				!strings.Contains(stderr, c.wantReason) || !strings.Contains(stderr, "ekem-issuer recover") {
				t.Fatalf("run on a %s store: exit %v, stderr:\n%s", c.name, err, stderr)
			}

			if c.killFirst {
				p = iss.start(t, "recover", "-reason", "first try")
				time.Sleep(randDuration(1500 * time.Millisecond))
				p.kill(t)
				t.Logf("first recover: killed=%v (after it ended: %v)", p.killedBySignal(), p.err)
			}
			p = iss.start(t, "recover", "-reason", "store "+c.name)
			if err := waitExit(t, p, faultTimeout); err != nil {
				t.Fatalf("recover: %v\nstdout:\n%s\nstderr:\n%s", err, p.stdout.tail(20), p.stderr.tail(20))
			}
			out := strings.Join(p.stdout.all(), "\n")
			var brokerEpoch, had uint64
			reason := "store " + c.name
			_, perr := fmt.Sscanf(out, "recovered: epoch floor %d (the store had %d)", &brokerEpoch, &had)
			if perr != nil && c.killFirst {
				// The killed run had committed: the second finds the store
				// level with the broker.
				_, perr = fmt.Sscanf(out, "nothing to recover: the store's last epoch %d", &brokerEpoch)
				reason = "first try"
			}
			if perr != nil || brokerEpoch < devEpoch {
				t.Fatalf("recover: floor %d (devices reached %d), output:\n%s", brokerEpoch, devEpoch, out)
			}

			// Recovered: the next run issues above the floor and every
			// device accepts within two epochs (two periods).
			p = iss.start(t, "run")
			f.waitFleetEpoch(t, brokerEpoch+1, ids...)
			for _, id := range ids {
				var first uint64
				firstAfter := func() bool {
					for _, ev := range f.devices[id].events.accepted() {
						if ev.Epoch > brokerEpoch {
							first = ev.Epoch
							return true
						}
					}
					return false
				}
				sysWaitFor(t, id+"'s event for its first ticket after recovery", firstAfter) // events trail WaitEpoch
				if first == 0 || first > brokerEpoch+2 {
					t.Errorf("%s: first accepted epoch after recovery is %d, want %d or %d; events %s", id, first,
						brokerEpoch+1, brokerEpoch+2, describeEvents(f.devices[id].events.all()))
				}
				if c := f.devices[id].agent.Counters(); c["rejected:wrong_device_key"] > 0 || c["rejected:equivocation"] > 0 {
					t.Errorf("%s: rejections after recovery: %v", id, c)
				}
			}
			// One more epoch, confirmed normally.
			f.waitFleetEpoch(t, brokerEpoch+3, ids...)
			p.signal(t, syscall.SIGTERM)

			rec := analysePublished(t, mon.messages())
			rec.checkNoReuse(t)
			if rec.maxEp < brokerEpoch+3 {
				t.Errorf("monitor saw tickets up to epoch %d, want at least %d", rec.maxEp, brokerEpoch+3)
			}

			// The recovery is in the audit log.
			a := startProc(t, "ekem-issuer audit", nil, iss.bin, "audit", "-store", iss.store)
			if err := waitExit(t, a, faultTimeout); err != nil {
				t.Fatalf("audit: %v %s", err, a.stderr.tail(10))
			}
			if log := strings.Join(a.stdout.all(), "\n"); !strings.Contains(log, "recover") || !strings.Contains(log, reason) {
				t.Errorf("audit log lacks the recovery:\n%s", log)
			}
		})
	}
}
