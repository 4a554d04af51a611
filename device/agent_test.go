package device

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

func TestNewCreatesRegistration(t *testing.T) {
	e := newEnv(t, nil)
	r, err := wire.ParseRegistration(e.a.Registration())
	if err != nil {
		t.Fatal(err)
	}
	if r.DeviceID != devID || r.KEMAlg != kem.MLKEM768 || r.CreatedAt != uint64(e.clock.Now().Unix()) || r.Rekey != nil {
		t.Fatalf("registration %+v", r)
	}
	st := e.decrypted().st
	if !bytes.Equal(st.Current.PublicKey().Bytes(), r.PublicKey) || st.Epoch != 0 || st.Next != nil {
		t.Fatal("state does not hold the registered key as its only key")
	}
	disk, err := os.ReadFile(filepath.Join(e.dir, regFileName))
	if err != nil || !bytes.Equal(disk, e.a.Registration()) {
		t.Fatalf("registration.cbor differs from the published registration (%v)", err)
	}
	fi, err := os.Stat(filepath.Join(e.dir, stateFileName))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state.bin mode %v (%v)", fi.Mode(), err)
	}
	e.clock.Add(time.Hour)
	e.reopen()
	if !bytes.Equal(e.a.Registration(), disk) {
		t.Fatal("registration changed across a restart")
	}
	if e.a.Status().Seq != 0 || e.a.StatusBytes() != nil || e.a.Epoch() != 0 {
		t.Fatal("a new device has a status or an epoch")
	}
}

func TestAcceptRotatesAndReports(t *testing.T) {
	e := newEnv(t, nil)
	s1, iss1 := e.first()
	if s1.Seq != 1 || s1.Reason != 0 || s1.PrevEpoch != nil || s1.Time != uint64(e.clock.Now().Unix()) {
		t.Fatalf("epoch 1 status %+v", s1)
	}
	next := nextDevice(t, s1, iss1)
	if bytes.Equal(next.Key.Bytes(), regDevice(t, e.a.Registration()).Key.Bytes()) {
		t.Fatal("next key equals the registered key")
	}

	// Epoch 2 to the announced next key; the ticket comes before its root
	// and waits for it.
	e.clock.Add(time.Minute)
	iss2, ep2 := e.is.issue(2, e.clock.Now(), next)
	n := e.pub.n()
	e.ticket(iss2.Ticket)
	if e.pub.n() != n || e.a.Epoch() != 1 {
		t.Fatal("a ticket without its root was decided")
	}
	e.root(2, ep2.Root)
	s2, _ := e.pub.lastStatus(t)
	if s2.Epoch != 2 || s2.State != wire.StateOK || s2.Seq != 2 || s2.PrevEpoch != nil {
		t.Fatalf("epoch 2 status %+v", s2)
	}
	next2 := nextDevice(t, s2, iss2)
	st := e.decrypted().st
	if st.Epoch != 2 || !bytes.Equal(st.Current.PublicKey().Bytes(), next.Key.Bytes()) {
		t.Fatal("the key used by epoch 2 is not the current key")
	}
	if !bytes.Equal(st.Next.PublicKey().Bytes(), next2.Key.Bytes()) {
		t.Fatal("persisted next key is not the announced one")
	}

	// The registered key is gone: a ticket to it is refused.
	e.clock.Add(time.Minute)
	old := regDevice(t, e.a.Registration())
	old.Prev = s2.TicketHash
	issOld, epOld := e.is.issue(3, e.clock.Now(), old)
	e.deliver(issOld, epOld)
	if s, _ := e.pub.lastStatus(t); s.Reason != uint64(accept.ReasonWrongDeviceKey) {
		t.Fatalf("ticket to a retired key: reason %d", s.Reason)
	}

	// Epoch 5 (3 and 4 missed): accepted with a gap since 2.
	e.clock.Add(time.Minute)
	iss5, ep5 := e.is.issue(5, e.clock.Now(), next2)
	e.deliver(iss5, ep5)
	s5, _ := e.pub.lastStatus(t)
	if s5.State != wire.StateGap || s5.PrevEpoch == nil || *s5.PrevEpoch != 2 || s5.Epoch != 5 || s5.Seq != 4 {
		t.Fatalf("gap status %+v", s5)
	}
	nextDevice(t, s5, iss5)

	var fps []string
	for _, ev := range e.events {
		if ev.Kind == EventAccepted {
			if len(ev.Fingerprint) != 16 {
				t.Fatalf("fingerprint %q", ev.Fingerprint)
			}
			fps = append(fps, ev.Fingerprint)
		}
	}
	if len(fps) != 3 || fps[0] == fps[1] || fps[1] == fps[2] {
		t.Fatalf("accepted events' fingerprints %v", fps)
	}
	if c := e.a.Counters(); c["accepted"] != 3 || c["rejected:wrong_device_key"] != 1 {
		t.Fatalf("counters %v", c)
	}
	if got := e.a.Status(); got.Seq != 4 || got.Epoch != 5 {
		t.Fatalf("Status() %+v", got)
	}
}

func TestRejectionsLeaveStateAlone(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxJump = 5 })
	s1, iss1 := e.first()
	next := nextDevice(t, s1, iss1)
	reg := regDevice(t, e.a.Registration())
	now := e.clock.Now()
	_, epOther := e.is.issue(2, now, next)

	unpinned, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		t.Fatal(err)
	}
	issUnpinned, epUnpinned := e.is.issueWith(unpinned, 2, now, 600, next)
	issBadSig, epBadSig := e.is.issue(2, now, next)
	badSig := bytes.Clone(epBadSig.Root)
	badSig[len(badSig)-40] ^= 1
	reg.Prev = iss1.TicketHash
	issEquiv, epEquiv := e.is.issue(1, now, reg)
	issOld, epOld := e.is.issueWith(e.is.key, 2, now.Add(-time.Hour), 600, next)
	issFuture, epFuture := e.is.issueWith(e.is.key, 2, now.Add(time.Hour), 600, next)
	issJump, epJump := e.is.issue(7, now, next)
	issOtherEpoch, _ := e.is.issue(2, now, next)
	_, epWrongRoot := e.is.issue(2, now, next) // a valid root, of another tree

	cases := []struct {
		name         string
		epoch        uint64
		root, ticket []byte
		reason       accept.Reason
		state        wire.State
	}{
		{"garbage ticket", 2, epOther.Root, []byte("not a ticket"), accept.ReasonMalformed, wire.StateRejected},
		{"unpinned issuer", 2, epUnpinned.Root, issUnpinned.Ticket, accept.ReasonUnknownIssuerKey, wire.StateRejected},
		{"garbage root", 2, []byte{0xd2, 0x84}, issBadSig.Ticket, accept.ReasonMalformed, wire.StateRejected},
		{"root of another tree", 2, epWrongRoot.Root, issOtherEpoch.Ticket, accept.ReasonBadProof, wire.StateRejected},
		{"bad root signature", 2, badSig, issBadSig.Ticket, accept.ReasonBadSignature, wire.StateRejected},
		{"another device's ticket", 2, epOther.Root, ticketOf(t, epOther, "dev-other"), accept.ReasonWrongAudience, wire.StateRejected},
		{"equivocation", 1, epEquiv.Root, issEquiv.Ticket, accept.ReasonEquivocation, wire.StateEquivocation},
		{"expired", 2, epOld.Root, issOld.Ticket, accept.ReasonExpired, wire.StateRejected},
		{"not yet valid", 2, epFuture.Root, issFuture.Ticket, accept.ReasonNotYetValid, wire.StateRejected},
		{"fast forward", 7, epJump.Root, issJump.Ticket, accept.ReasonFastForward, wire.StateRejected},
	}
	stateBefore := e.stateFile()
	seq := s1.Seq
	counts := map[accept.Reason]uint64{}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := e.pub.n()
			// Clear the epoch's root, so the ticket waits for the case's
			// root and is decided exactly once.
			e.root(c.epoch, nil)
			e.ticket(c.ticket)
			e.root(c.epoch, c.root)
			if e.pub.n() != n+1 {
				t.Fatalf("%d publishes, want 1", e.pub.n()-n)
			}
			s, raw := e.pub.lastStatus(t)
			seq++
			if s.State != c.state || s.Reason != uint64(c.reason) || s.Seq != seq {
				t.Fatalf("status state %v reason %d seq %d, want %v %d %d", s.State, s.Reason, s.Seq, c.state, c.reason, seq)
			}
			if s.Epoch != 1 || !bytes.Equal(s.TicketHash, iss1.TicketHash) {
				t.Fatal("rejection status does not name the last accepted ticket")
			}
			if s.Confirm != nil || s.NextPK != nil || s.NextTag != nil || s.NextAlg != 0 || s.PrevEpoch != nil {
				t.Fatal("rejection status carries accept-only fields")
			}
			counts[c.reason]++
			if got := e.a.Counters()["rejected:"+c.reason.String()]; got != counts[c.reason] {
				t.Fatalf("counter rejected:%s = %d", c.reason, got)
			}
			if !bytes.Equal(e.stateFile(), stateBefore) {
				t.Fatal("state.bin was rewritten by a rejection")
			}
			disk, err := os.ReadFile(filepath.Join(e.dir, statusFileName))
			if err != nil || !bytes.Equal(disk, raw) {
				t.Fatalf("status.cbor is not the published rejection (%v)", err)
			}
			if e.a.Epoch() != 1 {
				t.Fatal("epoch changed")
			}
			ev := e.events[len(e.events)-1]
			if ev.Kind != EventRejected || ev.Reason != c.reason || ev.Err == nil {
				t.Fatalf("event %+v", ev)
			}
		})
	}

	// The sequence survives a restart: the last Status is the newest
	// rejection, from status.cbor, and the next one continues from it.
	e.reopen()
	if st := e.a.Status(); st.Seq != seq || st.Reason != uint64(accept.ReasonFastForward) {
		t.Fatalf("after restart Status() = %+v", st)
	}
	iss2, ep2 := e.is.issue(2, e.clock.Now(), next)
	e.deliver(iss2, ep2)
	if s, _ := e.pub.lastStatus(t); s.Epoch != 2 || s.Seq != seq+1 || s.State != wire.StateOK {
		t.Fatalf("accept after rejections: %+v", s)
	}
	e.reopen()
	if st := e.a.Status(); st.Seq != seq+1 || st.Epoch != 2 {
		t.Fatalf("after accept and restart Status() = %+v", st)
	}
}

func TestRootRetriedWhenReplaced(t *testing.T) {
	e := newEnv(t, nil)
	s1, iss1 := e.first()
	iss2, ep2 := e.is.issue(2, e.clock.Now(), nextDevice(t, s1, iss1))
	bad := bytes.Clone(ep2.Root)
	bad[len(bad)-40] ^= 1
	e.root(2, bad)
	e.ticket(iss2.Ticket)
	if s, _ := e.pub.lastStatus(t); s.Reason != uint64(accept.ReasonBadSignature) {
		t.Fatalf("reason %d", s.Reason)
	}
	e.root(2, ep2.Root) // the issuer republishes the right root
	if s, _ := e.pub.lastStatus(t); s.Epoch != 2 || s.State != wire.StateOK {
		t.Fatalf("ticket not retried with the new root: %+v", s)
	}
	// A cleared root is forgotten; further roots of old epochs are bounded.
	e.root(2, nil)
	if _, ok := e.a.roots[2]; ok {
		t.Fatal("empty retained root did not clear the epoch")
	}
	for i := uint64(10); i < 30; i++ {
		e.root(i, ep2.Root)
	}
	if len(e.a.roots) != DefaultRootEpochs {
		t.Fatalf("%d roots kept", len(e.a.roots))
	}
	if _, ok := e.a.roots[29]; !ok {
		t.Fatal("newest root evicted")
	}
}

func TestDuplicateChangesNothing(t *testing.T) {
	e := newEnv(t, nil)
	_, iss1 := e.first()
	before, n := e.stateFile(), e.pub.n()
	st := e.a.Status()
	e.ticket(iss1.Ticket)
	e.root(1, e.a.roots[1]) // re-delivered root: not retried, already accepted
	e.ticket(iss1.Ticket)
	if e.pub.n() != n {
		t.Fatal("a duplicate published something")
	}
	if !bytes.Equal(e.stateFile(), before) {
		t.Fatal("a duplicate rewrote state.bin")
	}
	if _, err := os.Stat(filepath.Join(e.dir, statusFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a duplicate wrote status.cbor")
	}
	if c := e.a.Counters(); c["duplicate"] != 2 || c["accepted"] != 1 {
		t.Fatalf("counters %v", c)
	}
	if e.a.Status().Seq != st.Seq {
		t.Fatal("seq moved")
	}
	// A duplicate needs no root: it is recognised by its hash even after
	// the root was cleared.
	e.root(1, nil)
	e.ticket(iss1.Ticket)
	if c := e.a.Counters(); c["duplicate"] != 3 {
		t.Fatalf("counters %v", c)
	}
}

func TestRepeatedRejectionReportedOnce(t *testing.T) {
	e := newEnv(t, nil)
	e.first()
	n := e.pub.n()
	for _, g := range []string{"garbage", "garbage", "other garbage"} {
		e.ticket([]byte(g))
	}
	if e.pub.n() != n+1 || e.a.Counters()["rejected:malformed"] != 3 {
		t.Fatalf("%d publishes, counters %v", e.pub.n()-n, e.a.Counters())
	}
	// Also after a restart (a retained bad ticket is re-delivered).
	e.reopen()
	e.ticket([]byte("garbage"))
	if e.pub.n() != n+1 {
		t.Fatal("a repeated rejection was reported again after a restart")
	}
	// Another reason is a new report.
	unpinned, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		t.Fatal(err)
	}
	iss, ep := e.is.issueWith(unpinned, 2, e.clock.Now(), 600, regDevice(t, e.a.Registration()))
	e.deliver(iss, ep)
	if s, _ := e.pub.lastStatus(t); e.pub.n() != n+2 || s.Reason != uint64(accept.ReasonUnknownIssuerKey) {
		t.Fatal("a different rejection was not reported")
	}
}

func TestLocalFailurePublishesNothing(t *testing.T) {
	e := newEnv(t, nil)
	s1, iss1 := e.first()
	iss2, ep2 := e.is.issue(2, e.clock.Now(), nextDevice(t, s1, iss1))
	before, n := e.stateFile(), e.pub.n()
	e.cohort.setFail(true)
	e.deliver(iss2, ep2)
	if e.pub.n() != n || !bytes.Equal(e.stateFile(), before) || e.a.Epoch() != 1 {
		t.Fatal("a local failure published or changed state")
	}
	if ev := e.events[len(e.events)-1]; ev.Kind != EventFailed || ev.Reason != accept.ReasonInternal {
		t.Fatalf("event %+v", ev)
	}
	if e.a.Counters()["failed"] != 1 {
		t.Fatalf("counters %v", e.a.Counters())
	}
	e.cohort.setFail(false)
	e.root(2, ep2.Root) // retried when the root is delivered again
	if e.a.Epoch() != 2 {
		t.Fatal("ticket not accepted once the TPM answers again")
	}
}

func TestStorageFailurePublishesNothing(t *testing.T) {
	e := newEnv(t, nil)
	s1, iss1 := e.first()
	iss2, ep2 := e.is.issue(2, e.clock.Now(), nextDevice(t, s1, iss1))
	// Replace the directory's state.bin name with a directory: the rename
	// of every state write fails, whatever the process' privileges.
	good := e.stateFile()
	path := filepath.Join(e.dir, stateFileName)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(path, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	n := e.pub.n()
	e.deliver(iss2, ep2)
	if e.pub.n() != n || e.a.Epoch() != 1 || e.a.Counters()["failed"] != 1 {
		t.Fatalf("storage failure: %d publishes, epoch %d, counters %v", e.pub.n()-n, e.a.Epoch(), e.a.Counters())
	}
	if _, err := e.a.NextKey(); err == nil {
		t.Fatal("NextKey handed out a key it could not persist")
	}
	if err := os.RemoveAll(path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := e.a.NextKey()
	if err != nil || k.Epoch != 1 || k.Ctr != 0 {
		t.Fatalf("after a failed NextKey the next key is %v (%v), want (1, 0)", k, err)
	}
}

func TestStaleReportedOnce(t *testing.T) {
	e := newEnv(t, nil)
	e.first()
	if _, err := e.a.NextKey(); err != nil {
		t.Fatal(err)
	}
	n := e.pub.n()
	e.a.checkStale(e.pub)
	if e.pub.n() != n {
		t.Fatal("stale reported for a live ticket")
	}
	e.clock.Add(600*time.Second + DefaultSkew + time.Second)
	before := e.stateFile()
	for range 3 {
		e.a.checkStale(e.pub)
	}
	if e.pub.n() != n+1 {
		t.Fatalf("%d stale reports, want 1", e.pub.n()-n)
	}
	s, raw := e.pub.lastStatus(t)
	if s.State != wire.StateStale || s.Reason != uint64(accept.ReasonStale) || s.Epoch != 1 || s.Confirm != nil {
		t.Fatalf("stale status %+v", s)
	}
	if !bytes.Equal(e.stateFile(), before) {
		t.Fatal("stale report rewrote state.bin")
	}
	if _, err := e.a.NextKey(); !errors.Is(err, ErrStale) {
		t.Fatalf("NextKey while stale: %v", err)
	}
	// Restart while stale: the same Status is republished on connect and
	// the stale period is not reported again.
	e.reopen()
	n = e.pub.n()
	e.a.onConnect(e.pub)
	// Registration, the stale Status, then the last acceptance (its
	// confirm tag may not have reached the issuer).
	if e.pub.n() != n+3 || !bytes.Equal(e.pub.msgs[n+1].payload, raw) || !bytes.Equal(e.pub.msgs[n].payload, e.a.Registration()) {
		t.Fatal("reconnect did not republish exactly the registration, the stale status and the acceptance")
	}
	if acc, err := wire.ParseStatus(e.pub.msgs[n+2].payload); err != nil || acc.State != wire.StateOK || acc.Epoch != 1 {
		t.Fatalf("reconnect did not republish the last acceptance: %+v %v", acc, err)
	}
	if e.pub.msgs[n].topic != topics.Registration(devID) || !e.pub.msgs[n].retained {
		t.Fatal("registration not published retained on its topic")
	}
	e.a.Close()
	e.mod = func(c *Config) { c.AllowStale = true }
	e.open()
	if k, err := e.a.NextKey(); err != nil || k.Ctr != 1 {
		t.Fatalf("AllowStale NextKey %v %v", k, err)
	}
}

func TestRestartKeepsEpochAndStatus(t *testing.T) {
	e := newEnv(t, nil)
	s1, iss1 := e.first()
	iss2, ep2 := e.is.issue(2, e.clock.Now(), nextDevice(t, s1, iss1))
	e.deliver(iss2, ep2)
	raw := e.a.StatusBytes()
	reg := e.a.Registration()
	e.reopen()
	if e.a.Epoch() != 2 || !bytes.Equal(e.a.StatusBytes(), raw) || !bytes.Equal(e.a.Registration(), reg) {
		t.Fatal("restart lost the epoch, the status or the registration")
	}
	n := e.pub.n()
	e.a.onConnect(e.pub)
	if e.pub.n() != n+2 || !bytes.Equal(e.pub.msgs[n+1].payload, raw) {
		t.Fatal("restart did not republish the identical status")
	}
	// The retained ticket re-delivered after the restart is a duplicate.
	e.deliver(iss2, ep2)
	if e.pub.n() != n+2 || e.a.Counters()["duplicate"] != 1 {
		t.Fatal("re-delivery after restart was not a silent duplicate")
	}
}

func TestNextKeyNeverRepeats(t *testing.T) {
	e := newEnv(t, nil)
	if _, err := e.a.NextKey(); !errors.Is(err, ErrNoKey) {
		t.Fatalf("NextKey before a ticket: %v", err)
	}
	e.first()
	seen := map[[2]uint64]bool{}
	var keys [][]byte
	take := func() {
		t.Helper()
		k, err := e.a.NextKey()
		if err != nil {
			t.Fatal(err)
		}
		id := [2]uint64{k.Epoch, k.Ctr}
		if seen[id] {
			t.Fatalf("(epoch, ctr) %v handed out twice", id)
		}
		seen[id] = true
		for _, o := range keys {
			if bytes.Equal(o, k.Bytes) {
				t.Fatal("key bytes repeated")
			}
		}
		keys = append(keys, k.Bytes)
		// Persisted before it was returned.
		if got := e.decrypted().st.Ratchet.NextCtr(); got != k.Ctr+1 {
			t.Fatalf("state.bin next ctr %d after handing out ctr %d", got, k.Ctr)
		}
	}
	take()
	take()
	e.reopen()
	take()
	if !seen[[2]uint64{1, 2}] {
		t.Fatal("counter did not continue across the restart")
	}
	env, err := e.a.Seal([]byte("hello"))
	if err != nil || len(env) == 0 {
		t.Fatal(err)
	}
	if e.decrypted().st.Ratchet.NextCtr() != 4 {
		t.Fatal("Seal did not persist its key's advance")
	}
}

func TestWrongCohortFailsClearly(t *testing.T) {
	e := newEnv(t, nil)
	e.first()
	e.a.Close()
	before := e.stateFile()
	e.cohort = newCohort(t, 8)
	_, err := New(e.config())
	if !errors.Is(err, ErrStateKey) {
		t.Fatalf("other cohort secret: %v", err)
	}
	if !bytes.Equal(e.stateFile(), before) {
		t.Fatal("state.bin touched")
	}
	// A state copied to another device id does not load either.
	e.cohort = newCohort(t, 7)
	other := filepath.Join(t.TempDir(), "copy")
	if err := os.MkdirAll(other, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(other, stateFileName), before, 0o600); err != nil {
		t.Fatal(err)
	}
	c := e.config()
	c.ID, c.StateDir = "dev-0002", other
	if _, err := New(c); !errors.Is(err, ErrStateKey) {
		t.Fatalf("other device id: %v", err)
	}
	e.open() // the right secret still works
	if e.a.Epoch() != 1 {
		t.Fatal("state lost")
	}
}

func TestCorruptStateFailsClearly(t *testing.T) {
	e := newEnv(t, nil)
	e.first()
	e.a.Close()
	good := e.stateFile()
	path := filepath.Join(e.dir, stateFileName)
	flip := func(i int) []byte { b := bytes.Clone(good); b[i] ^= 0x40; return b }
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"ciphertext bit", flip(len(good) - 20), ErrStateKey},
		{"nonce bit", flip(10), ErrStateKey},
		{"magic", flip(0), ErrStateCorrupt},
		{"version", flip(4), ErrStateCorrupt},
		{"truncated", good[:len(good)-1], ErrStateKey},
		{"header only", good[:stateHeaderSize], ErrStateCorrupt},
		{"empty", nil, ErrStateCorrupt},
		{"too large", append(bytes.Clone(good), make([]byte, MaxStateFile)...), ErrStateCorrupt},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := os.WriteFile(path, c.data, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := New(e.config())
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			if got := e.stateFile(); !bytes.Equal(got, c.data) {
				t.Fatal("corrupt state.bin was modified")
			}
		})
	}
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	// A corrupt or foreign status.cbor is an error too.
	spath := filepath.Join(e.dir, statusFileName)
	for _, b := range [][]byte{[]byte("junk"), statusFor(t, "dev-other", 9)} {
		if err := os.WriteFile(spath, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := New(e.config()); !errors.Is(err, ErrStateCorrupt) {
			t.Fatalf("bad status.cbor: %v", err)
		}
	}
	// Same seq as state.bin's Status but other bytes: contradiction.
	if err := os.WriteFile(spath, statusFor(t, devID, 1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(e.config()); !errors.Is(err, ErrStateCorrupt) {
		t.Fatalf("conflicting status.cbor: %v", err)
	}
	if err := os.Remove(spath); err != nil {
		t.Fatal(err)
	}
	// Registration missing after the first ticket: cannot be recreated.
	rpath := filepath.Join(e.dir, regFileName)
	reg, _ := os.ReadFile(rpath)
	os.Remove(rpath)
	if _, err := New(e.config()); !errors.Is(err, ErrStateCorrupt) {
		t.Fatalf("missing registration: %v", err)
	}
	os.WriteFile(rpath, reg, 0o600)
	e.open()
}

func statusFor(t testing.TB, id string, seq uint64) []byte {
	t.Helper()
	b, err := (&wire.Status{Version: 1, DeviceID: id, State: wire.StateRejected, Reason: 1, Time: 1, Seq: seq}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLeftoverTempFilesIgnored(t *testing.T) {
	e := newEnv(t, nil)
	e.first()
	e.a.Close()
	good := e.stateFile()
	// A crash after the temp file was written, before the rename.
	leftovers := []string{stateFileName + tmpInfix + "123", statusFileName + tmpInfix + "9", regFileName + tmpInfix + "x"}
	for _, n := range leftovers {
		if err := os.WriteFile(filepath.Join(e.dir, n), []byte("half-written"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	keep := filepath.Join(e.dir, "notes.txt")
	os.WriteFile(keep, []byte("mine"), 0o600)
	e.open()
	if e.a.Epoch() != 1 || !bytes.Equal(e.stateFile(), good) {
		t.Fatal("state not loaded from state.bin")
	}
	for _, n := range leftovers {
		if _, err := os.Stat(filepath.Join(e.dir, n)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("leftover %s not removed", n)
		}
	}
	if _, err := os.Stat(keep); err != nil {
		t.Fatal("an unrelated file was removed")
	}
	// A crash during the very first write: only a temp file exists.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, stateFileName+tmpInfix+"1"), []byte("x"), 0o600)
	c := e.config()
	c.StateDir = dir
	a, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	if ents, _ := os.ReadDir(dir); len(ents) != 3 { // state.bin, registration.cbor, lock
		t.Fatalf("directory holds %d entries", len(ents))
	}
}

func TestStateDirLock(t *testing.T) {
	e := newEnv(t, nil)
	if _, err := New(e.config()); !errors.Is(err, ErrLocked) {
		t.Fatalf("second agent on one directory: %v", err)
	}
	e.reopen() // Close releases it
}

func TestConfigAndLifecycleErrors(t *testing.T) {
	e := newEnv(t, nil)
	good := e.config()
	for name, mod := range map[string]func(*Config){
		"bad id":     func(c *Config) { c.ID = "a/b" },
		"no dir":     func(c *Config) { c.StateDir = "" },
		"no cohort":  func(c *Config) { c.Cohort = nil },
		"bad kem":    func(c *Config) { c.KEM = 0x99 },
		"bad prefix": func(c *Config) { c.Prefix = "a/#" },
		"neg skew":   func(c *Config) { c.Skew = -1 },
	} {
		c := good
		c.StateDir = t.TempDir()
		mod(&c)
		if _, err := New(c); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v", name, err)
		}
	}
	c := good
	c.StateDir, c.MustExist = t.TempDir(), true
	if _, err := New(c); !errors.Is(err, ErrNoState) {
		t.Fatalf("MustExist: %v", err)
	}
	c = good
	c.StateDir, c.Broker = t.TempDir(), ""
	a, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Run(t.Context()); !errors.Is(err, ErrConfig) {
		t.Fatalf("Run without broker: %v", err)
	}
	a.Close()
	if err := a.Run(t.Context()); !errors.Is(err, ErrConfig) && !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close: %v", err)
	}
	e.a.Close()
	if err := e.a.Run(t.Context()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close: %v", err)
	}
	if _, err := e.a.NextKey(); !errors.Is(err, ErrClosed) {
		t.Fatalf("NextKey after Close: %v", err)
	}
}

// batchDevice is used by the fuzz seeds.
var _ = batch.Device{}
