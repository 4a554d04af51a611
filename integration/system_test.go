package integration

// End-to-end tests of the running system: a real Mosquitto 2 with the shipped
// broker-config, the issuer and the devices in-process as the binaries run
// them, real MQTT over TCP. Epochs are issued by hand (IssueEpoch) so every
// step is deterministic; every wait is bounded by sysTimeout.

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/entropykem/entropykem/device"
	ekissuer "github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/envelope"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Five devices register, the issuer pins all five, three epochs follow.
// Every device ends on epoch 3, the issuer verified every device's confirm
// tag for epoch 3, and every ticket was encapsulated to a device KEM key
// never used before: epoch 1 to the pinned registration key, epoch e+1 to the
// next key the device announced in its Status for epoch e.
func TestSystemThreeEpochs(t *testing.T) {
	ids := []string{"dev-1", "dev-2", "dev-3", "dev-4", "dev-5"}
	f := newSysFleet(t, ids...)
	f.startIssuer(t, nil)
	f.startDevices(t, ids...)

	// The pinned key is the one each device registered.
	for _, id := range ids {
		reg, err := wire.ParseRegistration(f.devices[id].agent.Registration())
		if err != nil {
			t.Fatal(err)
		}
		if got, want := fmt.Sprintf("%x", f.deviceInfo(t, id).PinnedKeyHash), keyHashOf(reg.PublicKey); got != want {
			t.Fatalf("%s: issuer pinned key %s, device registered %s", id, got, want)
		}
	}

	used := map[string]string{}      // key hash → "device@epoch" that used it
	announced := map[string]string{} // device → hash of the next key in its latest Status
	keyEpoch := map[string]string{}  // key_epoch fingerprint → "device@epoch"
	for e := uint64(1); e <= 3; e++ {
		f.issue(t, e)
		f.waitEpoch(t, e, ids...)
		for _, id := range ids {
			info := f.deviceInfo(t, id)
			kh := fmt.Sprintf("%x", info.KeyHash)
			where := fmt.Sprintf("%s@%d", id, e)
			if prev, dup := used[kh]; dup {
				t.Fatalf("%s: ticket encapsulated to a device KEM key already used by %s", where, prev)
			}
			used[kh] = where
			want := fmt.Sprintf("%x", info.PinnedKeyHash)
			if e > 1 {
				want = announced[id]
			}
			if kh != want {
				t.Fatalf("%s: ticket encapsulated to key %s, want %s (epoch 1: the pinned key; later: the announced next key)", where, kh, want)
			}
			st := f.devices[id].agent.Status()
			if st.Epoch != e || st.State != wire.StateOK || st.Reason != 0 || st.PrevEpoch != nil {
				t.Fatalf("%s: Status epoch %d state %v reason %d prev_epoch %v, want epoch %d ok", where, st.Epoch, st.State, st.Reason, st.PrevEpoch, e)
			}
			if !bytes.Equal(st.TicketHash, info.TicketHash) {
				t.Fatalf("%s: device reports ticket %x, issuer's latest is %x", where, st.TicketHash, info.TicketHash)
			}
			if !info.NextKeyReady {
				t.Fatalf("%s: issuer has no verified next key after the confirmation", where)
			}
			next := keyHashOf(st.NextPK)
			if _, dup := used[next]; dup || next == kh {
				t.Fatalf("%s: device announced a next key that was already used", where)
			}
			announced[id] = next
		}
	}

	for _, id := range ids {
		d := f.devices[id]
		info := f.deviceInfo(t, id)
		if d.agent.Epoch() != 3 || info.ConfirmedEpoch != 3 || info.LastEpoch != 3 || info.State != ekissuer.StateActive {
			t.Fatalf("%s: device epoch %d, issuer ConfirmedEpoch %d LastEpoch %d state %s; want 3, 3, 3, active",
				id, d.agent.Epoch(), info.ConfirmedEpoch, info.LastEpoch, info.State)
		}
		acc := d.events.accepted()
		if len(acc) != 3 {
			t.Fatalf("%s: accepted %d tickets, want 3: %s", id, len(acc), describeEvents(d.events.all()))
		}
		for i, ev := range acc {
			where := fmt.Sprintf("%s@%d", id, i+1)
			if ev.Epoch != uint64(i+1) || ev.Gap || ev.State != wire.StateOK {
				t.Fatalf("%s: accepted event %+v, want epoch %d without gap", where, ev, i+1)
			}
			if prev, dup := keyEpoch[ev.Fingerprint]; dup {
				t.Fatalf("%s: key_epoch fingerprint %s repeats %s", where, ev.Fingerprint, prev)
			}
			keyEpoch[ev.Fingerprint] = where
		}
		for _, k := range []device.EventKind{device.EventRejected, device.EventFailed, device.EventStale} {
			if evs := d.events.ofKind(k); len(evs) > 0 {
				t.Fatalf("%s: unexpected %s events: %s", id, k, describeEvents(evs))
			}
		}
	}
	c := f.iss.Counters()
	if c["tickets_issued"] != 15 || c["epochs"] != 3 || c["registrations_pinned"] != 5 || c["statuses_verified"] < 15 {
		t.Fatalf("issuer counters %v: want 15 tickets, 3 epochs, 5 pins, at least 15 verified statuses", c)
	}
	for name, v := range c {
		if v > 0 && (strings.HasPrefix(name, "registrations_rejected:") || strings.HasPrefix(name, "status_rejected:") || name == "clone_detected") {
			t.Fatalf("issuer counter %s = %d in a clean run", name, v)
		}
	}
}

// A device that is off during epochs 2 and 3 still gets tickets (the issuer
// has no verified next key for epoch 2, so it encapsulates epochs 2 and 3 to
// the key the epoch-2 ticket used: the next key announced at epoch 1). When it
// comes back (device.New on the same StateDir) before epoch 4, the retained
// ticket is epoch 3's: it accepts epoch 3 with a gap since epoch 1, reports
// state gap with prev_epoch 1, and the issuer verifies that Status. Epoch 4
// then follows directly, to a fresh key.
func TestSystemOfflineDeviceCatchesUp(t *testing.T) {
	ids := []string{"dev-1", "dev-2"}
	const off = "dev-2"
	f := newSysFleet(t, ids...)
	f.startIssuer(t, nil)
	f.startDevices(t, ids...)

	f.issue(t, 1)
	f.waitEpoch(t, 1, ids...)
	announced1 := keyHashOf(f.devices[off].agent.Status().NextPK)
	ticket1 := f.deviceInfo(t, off).TicketHash
	f.devices[off].stop(t)

	for e := uint64(2); e <= 3; e++ {
		f.issue(t, e)
		f.waitEpoch(t, e, "dev-1")
		info := f.deviceInfo(t, off)
		if info.LastEpoch != e || info.ConfirmedEpoch != 1 {
			t.Fatalf("epoch %d: issuer has %s on LastEpoch %d ConfirmedEpoch %d, want %d and 1", e, off, info.LastEpoch, info.ConfirmedEpoch, e)
		}
		if got := fmt.Sprintf("%x", info.KeyHash); got != announced1 {
			t.Fatalf("epoch %d: %s's ticket encapsulated to %s, want the next key it announced at epoch 1 (%s)", e, off, got, announced1)
		}
	}
	ticket3 := f.deviceInfo(t, off).TicketHash

	d := f.startDevice(t, off) // the same StateDir: the device restarts
	if got := d.agent.Epoch(); got != 1 {
		t.Fatalf("restarted %s loaded epoch %d, want 1", off, got)
	}
	f.waitEpoch(t, 3, off)
	acc := d.events.accepted()
	if len(acc) != 1 {
		t.Fatalf("restarted %s accepted %d tickets, want exactly one (epoch 3): %s", off, len(acc), describeEvents(d.events.all()))
	}
	ev := acc[0]
	if ev.Epoch != 3 || !ev.Gap || ev.PrevEpoch != 1 || ev.State != wire.StateGap {
		t.Fatalf("restarted %s: accepted event %+v, want epoch 3 with a gap since epoch 1", off, ev)
	}
	st := d.agent.Status()
	if st.State != wire.StateGap || st.PrevEpoch == nil || *st.PrevEpoch != 1 || st.Epoch != 3 || st.Reason != 0 {
		t.Fatalf("restarted %s: Status state %v epoch %d prev_epoch %v reason %d, want gap, 3, 1, 0", off, st.State, st.Epoch, st.PrevEpoch, st.Reason)
	}
	if !bytes.Equal(st.TicketHash, ticket3) || bytes.Equal(ticket3, ticket1) {
		t.Fatalf("restarted %s reports ticket %x, want the epoch-3 ticket %x", off, st.TicketHash, ticket3)
	}
	// The issuer verified the gap Status (confirm tag and next key).
	info := f.deviceInfo(t, off)
	if info.StatusState != wire.StateGap || !info.NextKeyReady || info.StatusEpoch != 3 {
		t.Fatalf("issuer: %s status state %v epoch %d next key ready %v, want gap, 3, true", off, info.StatusState, info.StatusEpoch, info.NextKeyReady)
	}
	if c := f.iss.Counters(); c["device_reported:gap"] != 1 {
		t.Fatalf("issuer counter device_reported:gap = %d, want 1 (%v)", c["device_reported:gap"], c)
	}
	if bad := d.events.ofKind(device.EventRejected); len(bad) > 0 {
		t.Fatalf("restarted %s rejected: %s", off, describeEvents(bad))
	}

	announced3 := keyHashOf(st.NextPK)
	f.issue(t, 4)
	f.waitEpoch(t, 4, ids...)
	acc = d.events.accepted()
	if len(acc) != 2 || acc[1].Epoch != 4 || acc[1].Gap || acc[1].State != wire.StateOK {
		t.Fatalf("%s after epoch 4: %s, want epoch 4 accepted without gap", off, describeEvents(d.events.all()))
	}
	if st := d.agent.Status(); st.State != wire.StateOK || st.PrevEpoch != nil || st.Epoch != 4 {
		t.Fatalf("%s: Status state %v epoch %d prev_epoch %v, want ok, 4, none", off, st.State, st.Epoch, st.PrevEpoch)
	}
	if got := fmt.Sprintf("%x", f.deviceInfo(t, off).KeyHash); got != announced3 || got == announced1 {
		t.Fatalf("%s: epoch-4 ticket encapsulated to %s, want the fresh key announced at epoch 3 (%s)", off, got, announced3)
	}
}

// The issuer is closed after two epochs and reopened on the same store: the
// next epoch is 3, never 1 or 2 again, and the devices accept it. A second
// restart with the issuer's wall clock one day in the past still issues
// epoch 4 (the epoch number never follows the clock), and the devices accept
// that too (the ttl covers the day).
func TestSystemIssuerRestartReusesNoEpoch(t *testing.T) {
	ids := []string{"dev-1", "dev-2"}
	f := newSysFleet(t, ids...)
	const ttl = 72 * time.Hour
	withTTL := func(c *ekissuer.Config) { c.TTL = ttl }
	iss := f.startIssuer(t, withTTL)
	f.startDevices(t, ids...)
	f.issue(t, 1)
	f.waitEpoch(t, 1, ids...)
	f.issue(t, 2)
	f.waitEpoch(t, 2, ids...)

	restart := func(step string, mod func(*ekissuer.Config), want uint64) {
		t.Helper()
		before := map[string]ekissuer.DeviceInfo{}
		for _, id := range ids {
			before[id] = f.deviceInfo(t, id)
		}
		if err := iss.Close(); err != nil {
			t.Fatalf("%s: close issuer: %v", step, err)
		}
		iss = f.startIssuer(t, mod)
		if got := iss.LastEpoch(); got != want-1 {
			t.Fatalf("%s: reopened issuer's last epoch is %d, want %d", step, got, want-1)
		}
		for _, id := range ids {
			info := f.deviceInfo(t, id)
			if !bytes.Equal(info.TicketHash, before[id].TicketHash) || !bytes.Equal(info.PinnedKeyHash, before[id].PinnedKeyHash) || !info.NextKeyReady {
				t.Fatalf("%s: %s's record changed across the restart: %+v, was %+v", step, id, info, before[id])
			}
		}
		f.issue(t, want)
		f.waitEpoch(t, want, ids...)
		for _, id := range ids {
			info := f.deviceInfo(t, id)
			st := f.devices[id].agent.Status()
			if st.State != wire.StateOK || st.Epoch != want {
				t.Fatalf("%s: %s Status state %v epoch %d, want ok %d", step, id, st.State, st.Epoch, want)
			}
			if bytes.Equal(info.TicketHash, before[id].TicketHash) {
				t.Fatalf("%s: %s's epoch-%d ticket repeats the previous one", step, id, want)
			}
		}
	}
	restart("restart", withTTL, 3)

	dayAgo := func() time.Time { return time.Now().Add(-24 * time.Hour) }
	restart("restart with the clock a day behind", func(c *ekissuer.Config) {
		withTTL(c)
		c.Now = dayAgo
	}, 4)
	// The clock really was a day behind: epoch 4 says it was issued then.
	info, err := iss.EpochInfo()
	if err != nil || info == nil {
		t.Fatalf("store: last epoch info %v, %v", info, err)
	}
	if age := time.Since(time.Unix(int64(info.IssuedAt), 0)); info.Epoch != 4 || age < 23*time.Hour || age > 25*time.Hour {
		t.Fatalf("epoch %d issued_at is %v ago, want epoch 4 issued a day ago", info.Epoch, age)
	}

	for _, id := range ids {
		d := f.devices[id]
		acc := d.events.accepted()
		if len(acc) != 4 {
			t.Fatalf("%s accepted %d tickets, want 4: %s", id, len(acc), describeEvents(d.events.all()))
		}
		for i, ev := range acc {
			if ev.Epoch != uint64(i+1) || ev.Gap {
				t.Fatalf("%s: accepted %s, want epochs 1..4 in order without gaps", id, describeEvents(acc))
			}
		}
		for _, k := range []device.EventKind{device.EventRejected, device.EventFailed, device.EventStale} {
			if evs := d.events.ofKind(k); len(evs) > 0 {
				t.Fatalf("%s: unexpected %s events: %s", id, k, describeEvents(evs))
			}
		}
	}
	if c := iss.Counters(); c["epochs"] != 1 {
		t.Fatalf("last issuer counted %d epochs, want 1 (%v)", c["epochs"], c)
	}
}

// A device restarted on the same StateDir never hands out a message key
// (epoch, ctr) it handed out before the restart: NextKey persists the
// advanced ratchet before returning the key (PROTOCOL.md §8.3). Each key
// seals with a zero nonce, so a repeated (epoch, ctr) would reuse a
// ChaCha20-Poly1305 key and nonce.
func TestSystemDeviceRestartNeverReusesMessageKey(t *testing.T) {
	const id = "dev-1"
	f := newSysFleet(t, id)
	f.startIssuer(t, nil)
	f.startDevices(t, id)
	f.issue(t, 1)
	f.waitEpoch(t, 1, id)

	seen := map[envelope.Header]bool{}
	seal := func(d *sysDevice, n int) {
		t.Helper()
		for range n {
			env, err := d.agent.Seal([]byte("reading"))
			if err != nil {
				t.Fatalf("%s: Seal: %v", id, err)
			}
			h, err := envelope.ParseHeader(env)
			if err != nil {
				t.Fatal(err)
			}
			if seen[h] || h.Epoch != 1 {
				t.Fatalf("%s handed out message key %s again (or of the wrong epoch): the ratchet step was not persisted before the key was handed out", id, h)
			}
			seen[h] = true
		}
	}
	seal(f.devices[id], 3)
	f.devices[id].stop(t)
	d := f.startDevice(t, id)
	seal(d, 3)
	if len(seen) != 6 {
		t.Fatalf("%d distinct message keys, want 6", len(seen))
	}
}
