package integration

// Device lifecycle on a real Mosquitto (issue 14): no silent new identity,
// re-enrollment with online approval, reset of a live device, persistent
// rejections shown by the monitor, and the way back from a backup restore.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/internal/dirsnap"
	ekissuer "github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/issuer/adminsock"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// testOperator is who the tests' admin actions are audited as.
var testOperator = ekissuer.Operator{Actor: "integration test", Reason: "issue 14"}

// issueAndWait issues epochs until device id accepted one, at most two
// (the "within two periods" of issue 14), and returns the epoch accepted.
func (f *sysFleet) issueAndWait(t *testing.T, id string) uint64 {
	t.Helper()
	d := f.devices[id]
	for range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), sysTimeout)
		e, err := f.iss.IssueEpoch(ctx)
		cancel()
		if err != nil {
			t.Fatalf("IssueEpoch: %v", err)
		}
		ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
		err = d.agent.WaitEpoch(ctx, e)
		cancel()
		if err == nil {
			ctx, cancel = context.WithTimeout(context.Background(), sysTimeout)
			_, err = f.iss.WaitConfirmed(ctx, id, e)
			cancel()
			if err != nil {
				t.Fatalf("issuer did not verify %s's confirmation of epoch %d: %v", id, e, err)
			}
			return e
		}
	}
	t.Fatalf("%s accepted none of two epochs; events %s", id, describeEvents(f.devices[id].events.all()))
	return 0
}

// noCloneAlarm checks the issuer's and the monitor's clone counters.
func noCloneAlarm(t *testing.T, f *sysFleet, monitorArgs []string) {
	t.Helper()
	if n := f.iss.Counters()["clone_detected"]; n != 0 {
		t.Fatalf("issuer detected %d clones", n)
	}
	s, code, stderr := fleetStatus(t, monitorArgs, &offsetClock{})
	if code != 0 || s.Counters["clone_alarms"] != 0 || strings.Contains(stderr, "ALARM") {
		t.Fatalf("monitor: exit %d, clone alarms %d, stderr %s", code, s.Counters["clone_alarms"], stderr)
	}
}

func monitorRow(t *testing.T, args []string, id string) (row struct{ State, Reason string }) {
	t.Helper()
	s, _, _ := fleetStatus(t, args, &offsetClock{})
	for _, r := range s.Devices {
		if r.ID == id {
			row.State, row.Reason = r.State, r.Reason
			return row
		}
	}
	t.Fatalf("monitor shows no %s: %+v", id, s.Devices)
	return row
}

// TestLostStateRefusedOnMosquitto: a device that ran against the broker
// and lost state.bin refuses to start, says why and what to run, and
// changes nothing in its state directory.
func TestLostStateRefusedOnMosquitto(t *testing.T) {
	f := newSysFleet(t, "dev-1")
	f.startIssuer(t, nil)
	f.startDevices(t, "dev-1")
	f.issue(t, 1)
	f.waitEpoch(t, 1, "dev-1")
	d := f.devices["dev-1"]
	d.stop(t)
	if err := os.Remove(filepath.Join(d.dir, "state.bin")); err != nil {
		t.Fatal(err)
	}
	before := dirsnap.Take(t, d.dir)
	_, err := device.New(device.Config{ID: "dev-1", Broker: f.b.URL(), Password: f.b.Account("dev-1").Password,
		StateDir: d.dir, Cohort: f.cohort, IssuerKeys: f.pins, Logger: deviceLogger(f.devLog)})
	if !errors.Is(err, device.ErrIdentityLost) || !strings.Contains(err.Error(), "ekem-device reenroll -id dev-1") {
		t.Fatalf("New: %v, want ErrIdentityLost naming the command", err)
	}
	after := dirsnap.Take(t, d.dir)
	if len(after) != len(before) {
		t.Fatalf("state directory changed: %d entries before, %d after", len(before), len(after))
	}
	for p, v := range before {
		if after[p] != v {
			t.Fatalf("%s changed", p)
		}
	}
	if n := strings.Count(f.devLog.String(), "created device state"); n != 1 {
		t.Fatalf("device state created %d times, want once (the first start)", n)
	}
}

// TestReenrollApprovedOnline: a device that lost its state re-enrolls; the
// issuer holds the re-enrollment, the monitor and the issuer show it
// awaiting approval, an online approval brings the device back within two
// periods, and no clone alarm is raised anywhere (its Status seq starts
// above its earlier identity's). Under -reenroll auto no approval is
// needed.
func TestReenrollApprovedOnline(t *testing.T) {
	for _, auto := range []bool{false, true} {
		name := map[bool]string{false: "hold", true: "auto"}[auto]
		t.Run(name, func(t *testing.T) {
			f := newSysFleet(t, "dev-1", "dev-2")
			iss := f.startIssuer(t, func(c *ekissuer.Config) {
				if auto {
					c.Reenroll = ekissuer.ReenrollAuto
				}
			})
			f.startDevices(t, "dev-1", "dev-2")
			for e := uint64(1); e <= 3; e++ {
				f.issue(t, e)
				f.waitEpoch(t, e, "dev-1", "dev-2")
			}
			mon, _ := monitorFiles(t, f)
			d := f.devices["dev-1"]
			d.stop(t)
			if err := os.Remove(filepath.Join(d.dir, "state.bin")); err != nil {
				t.Fatal(err)
			}
			// ekem-device reenroll does this (cmd/ekem-device/reenroll.go).
			f.startDeviceWith(t, "dev-1", func(c *device.Config) { c.Reenroll = true })
			if auto {
				waitCounter(t, "issuer", iss.Counters, "registrations_reenrolled", 1)
			} else {
				sysWaitFor(t, "the issuer to hold the re-enrollment", func() bool { return iss.AwaitingApproval("dev-1") })
				if s, _ := iss.Standings(time.Now()); s[ekissuer.StandingAwaitingApproval] != 1 {
					t.Fatalf("issuer standings %v", s)
				}
				if r := monitorRow(t, mon, "dev-1"); r.State != "awaiting_approval" {
					t.Fatalf("monitor shows dev-1 %+v, want awaiting_approval", r)
				}
				// An epoch before approval goes to the old key: rejected.
				f.issue(t, 4)
				// The operator approves online, through the running
				// issuer's admin socket, as an operator would.
				sock := filepath.Join(t.TempDir(), "admin.sock")
				srv, err := adminsock.Listen(sock, iss.Admin(), slog.New(slog.DiscardHandler))
				if err != nil {
					t.Fatal(err)
				}
				defer srv.Close()
				code, out, errOut := runBin(t, nil, binary(t, "ekem-issuer"), "approve", "-admin-socket", sock,
					"-reason", "re-enrolled after a lost state", "dev-1")
				if code != 0 {
					t.Fatalf("ekem-issuer approve: exit %d\n%s%s", code, out, errOut)
				}
				if err := iss.Admin().Approve("dev-1", testOperator); !errors.Is(err, ekissuer.ErrNothingToApprove) {
					t.Fatalf("second Approve: %v", err)
				}
			}
			e := f.issueAndWait(t, "dev-1")
			f.waitEpoch(t, e, "dev-2")
			if r := monitorRow(t, mon, "dev-1"); r.State != "current" {
				t.Fatalf("monitor shows dev-1 %+v after approval, want current", r)
			}
			noCloneAlarm(t, f, mon)
			t.Logf("%s: re-enrolled device accepted epoch %d", name, e)
		})
	}
}

// TestResetLiveDevice: an operator reset of a running device whose keys
// rotated (its retained registration names a key it no longer holds)
// brings it back within two periods, without touching its files.
func TestResetLiveDevice(t *testing.T) {
	f := newSysFleet(t, "dev-1")
	iss := f.startIssuer(t, nil)
	f.startDevices(t, "dev-1")
	for e := uint64(1); e <= 3; e++ {
		f.issue(t, e)
		f.waitEpoch(t, e, "dev-1")
	}
	mon, _ := monitorFiles(t, f)
	if err := iss.Admin().Reset("dev-1", testOperator); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	sysWaitFor(t, "the issuer to pin the device's live key", func() bool {
		info, ok := iss.Device("dev-1")
		return ok && info.PinnedKeyHash != nil
	})
	e := f.issueAndWait(t, "dev-1")
	noCloneAlarm(t, f, mon)
	t.Logf("reset device accepted epoch %d", e)
}

// TestRejectingDeviceShownRejected: a device that rejects every ticket
// (it pins another issuer key) is shown rejected, with the reason, within
// two periods, and it reports the rejection again each epoch.
func TestRejectingDeviceShownRejected(t *testing.T) {
	f := newSysFleet(t, "dev-1", "dev-2")
	f.startIssuer(t, nil)
	other, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		t.Fatal(err)
	}
	otherPins, err := signature.NewKeySet(other.Public())
	if err != nil {
		t.Fatal(err)
	}
	f.startDevice(t, "dev-1")
	f.startDeviceWith(t, "dev-2", func(c *device.Config) { c.IssuerKeys = otherPins })
	for _, id := range []string{"dev-1", "dev-2"} {
		ctx, cancel := context.WithTimeout(context.Background(), sysTimeout)
		if _, err := f.iss.WaitRegistered(ctx, id); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	mon, _ := monitorFiles(t, f)
	for e := uint64(1); e <= 2; e++ {
		f.issue(t, e)
		f.waitEpoch(t, e, "dev-1")
		waitCounter(t, "dev-2", f.devices["dev-2"].agent.Counters, "rejected:unknown_issuer_key", e)
		sysWaitFor(t, "dev-2's rejection Status of this epoch", func() bool {
			s := f.devices["dev-2"].agent.Status()
			return s.State == wire.StateRejected && s.Seq == e
		})
		if r := monitorRow(t, mon, "dev-2"); r.State != "rejected" || r.Reason != "unknown_issuer_key" {
			t.Fatalf("epoch %d: monitor shows dev-2 %+v, want rejected (unknown_issuer_key)", e, r)
		}
	}
}

// TestBackupRestoreWayBack: a device's state restored from a backup is
// brought back by the documented path (README: Restoring a device from a
// backup): ekem-device reenroll -force on the restored directory, then an
// approval. The device accepts again, no (epoch, ctr) key is handed out
// twice, and the restored state hands out no key before its new ticket.
func TestBackupRestoreWayBack(t *testing.T) {
	f := newSysFleet(t, "dev-1")
	iss := f.startIssuer(t, nil)
	f.startDevices(t, "dev-1")
	d := f.devices["dev-1"]
	type name struct{ epoch, ctr uint64 }
	handed := map[name]bool{}
	keys := map[string]bool{}
	take := func(a *device.Agent, n int) {
		for range n {
			k, err := a.NextKey()
			if err != nil {
				t.Fatalf("NextKey: %v", err)
			}
			nm := name{k.Epoch, k.Ctr}
			if handed[nm] || keys[string(k.Bytes)] {
				t.Fatalf("key (%d, %d) handed out twice", k.Epoch, k.Ctr)
			}
			handed[nm], keys[string(k.Bytes)] = true, true
			k.Wipe()
		}
	}
	f.issue(t, 1)
	f.waitEpoch(t, 1, "dev-1")
	take(d.agent, 2)
	backup := filepath.Join(t.TempDir(), "backup")
	copyDir(t, d.dir, backup)
	take(d.agent, 3) // handed out after the backup: (1, 2..4)
	for e := uint64(2); e <= 3; e++ {
		f.issue(t, e)
		f.waitEpoch(t, e, "dev-1")
		take(d.agent, 2)
	}
	d.stop(t)
	// The restore: the backup replaces the state directory.
	if err := os.RemoveAll(d.dir); err != nil {
		t.Fatal(err)
	}
	copyDir(t, backup, d.dir)
	// The documented way back: re-enroll the restored directory (it
	// loads, hence -force), start the agent, approve.
	d = f.startDeviceWith(t, "dev-1", func(c *device.Config) { c.Reenroll = true })
	if _, err := d.agent.NextKey(); !errors.Is(err, device.ErrNoKey) {
		t.Fatalf("restored device hands out a key before its new ticket: %v", err)
	}
	sysWaitFor(t, "the issuer to hold the re-enrollment", func() bool { return iss.AwaitingApproval("dev-1") })
	if err := iss.Admin().Approve("dev-1", testOperator); err != nil {
		t.Fatal(err)
	}
	e := f.issueAndWait(t, "dev-1")
	take(d.agent, 3)
	mon, _ := monitorFiles(t, f)
	noCloneAlarm(t, f, mon)
	t.Logf("restored device accepted epoch %d; %d distinct keys handed out", e, len(handed))
}

// copyDir copies the regular files of src into dst (created 0700).
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() || e.Name() == "lock" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestResetOfflineThenRestart: the operator resets a running device with
// the issuer stopped (on its store), then starts the issuer. The broker
// still holds the device's first registration, whose key the device
// rotated away; the issuer does not pin that retained copy, clears the
// device's ticket, and pins the live registration the device answers
// with. The device accepts again within two periods, its files untouched.
func TestResetOfflineThenRestart(t *testing.T) {
	f := newSysFleet(t, "dev-1")
	iss := f.startIssuer(t, nil)
	f.startDevices(t, "dev-1")
	for e := uint64(1); e <= 2; e++ {
		f.issue(t, e)
		f.waitEpoch(t, e, "dev-1")
	}
	if err := iss.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := ekissuer.OpenStore(filepath.Join(f.dir, "issuer.db"), false)
	if err != nil {
		t.Fatal(err)
	}
	if err := (ekissuer.StoreAdmin{Store: st}).Reset("dev-1", testOperator); err != nil {
		t.Fatal(err)
	}
	st.Close()
	iss = f.startIssuer(t, nil)
	sysWaitFor(t, "the issuer to pin the device's live key", func() bool {
		info, ok := iss.Device("dev-1")
		return ok && info.PinnedKeyHash != nil
	})
	if n := iss.Counters()["registrations_rejected:retained_after_reset"]; n < 1 {
		t.Fatal("the retained registration was not refused")
	}
	reg, err := wire.ParseRegistration(f.devices["dev-1"].agent.Registration())
	if err != nil {
		t.Fatal(err)
	}
	if got := keyHashOf(reg.PublicKey); fmt.Sprintf("%x", f.deviceInfo(t, "dev-1").PinnedKeyHash) != got {
		t.Fatal("the issuer pinned another key than the device's live registration")
	}
	e := f.issueAndWait(t, "dev-1")
	mon, _ := monitorFiles(t, f)
	noCloneAlarm(t, f, mon)
	t.Logf("device reset offline accepted epoch %d", e)
}
