package issuer

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/wire"
)

func TestConfigValidate(t *testing.T) {
	base := newEnv(t).cfg
	cases := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"ok", func(*Config) {}, ""},
		{"no key", func(c *Config) { c.Key = nil }, "no signing key"},
		{"no store", func(c *Config) { c.StorePath = "" }, "no store path"},
		{"zero period", func(c *Config) { c.Period = 0 }, "period must be between 1s"},
		{"short period", func(c *Config) { c.Period = 500 * time.Millisecond }, "period must be between 1s"},
		{"long ttl", func(c *Config) { c.TTL = (wire.MaxTTL + 1) * time.Second }, "ttl must be between"},
		{"fraction ttl", func(c *Config) { c.TTL = 1500 * time.Millisecond }, "whole number of seconds"},
		{"negative ttl", func(c *Config) { c.TTL = -time.Second }, "ttl must be between"},
		{"bad prefix", func(c *Config) { c.Prefix = "a/#" }, "prefix"},
		{"bad purpose", func(c *Config) { c.Purpose = "a;b" }, "purpose"},
		{"bad group", func(c *Config) { c.Group = "g r" }, "group"},
		{"keep roots", func(c *Config) { c.KeepRoots = 1 }, "keep roots must be at least 2, got 1"},
		{"bad kem", func(c *Config) { c.KEMs = []kem.ID{7} }, "kem"},
		{"bad broker", func(c *Config) { c.Broker = "http://x:1" }, "scheme"},
		{"broker no port", func(c *Config) { c.Broker = "tcp://host" }, "host:port"},
	}
	for _, c := range cases {
		cfg := base
		c.mod(&cfg)
		err := cfg.Validate()
		if c.want == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want ErrConfig containing %q", c.name, err, c.want)
		}
	}
	// The default TTL is twice the period, capped.
	if got := (Config{Period: time.Hour}).withDefaults().TTL; got != 2*time.Hour {
		t.Errorf("default ttl %v", got)
	}
	if got := (Config{Period: wire.MaxTTL * time.Second}).withDefaults().TTL; got != wire.MaxTTL*time.Second {
		t.Errorf("capped ttl %v", got)
	}
}

func TestRegistrationPinSameAndChanged(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, "dev-1")
	e.register(d)
	info, _ := e.iss.Device("dev-1")
	if !bytes.Equal(info.PinnedKeyHash, kem.PublicKeyHash(d.st.Current.PublicKey().Bytes())) || info.State != StateActive {
		t.Fatalf("pinned %+v", info)
	}
	if e.counter("registrations_pinned") != 1 {
		t.Fatal("pin not counted")
	}
	before := e.dump()

	// The same registration again (a retained re-delivery) is a no-op.
	e.iss.handle(e.iss.topics.Registration("dev-1"), d.registration())
	if e.counter("registrations_same") != 1 || !maps.EqualFunc(before, e.dump(), bytes.Equal) {
		t.Fatal("same key was not a no-op")
	}

	// Another key without a proof is refused; the pinned record is unchanged.
	other := newDevice(t, "dev-1")
	e.iss.handle(e.iss.topics.Registration("dev-1"), other.registration())
	if e.counter("registrations_rejected:key_changed") != 1 {
		t.Fatalf("counters %v", e.iss.Counters())
	}
	if !maps.EqualFunc(before, e.dump(), bytes.Equal) {
		t.Fatal("refused key change modified the store")
	}
	// Also after an epoch, and for a new key of another algorithm.
	e.issue()
	before = e.dump()
	e.iss.handle(e.iss.topics.Registration("dev-1"), other.registration())
	if e.counter("registrations_rejected:key_changed") != 2 || !maps.EqualFunc(before, e.dump(), bytes.Equal) {
		t.Fatal("refused key change after an epoch modified the store")
	}
}

func TestRegistrationRejects(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.KEMs = []kem.ID{kem.MLKEM768} })
	d := newDevice(t, "dev-1")
	reg := d.registration()
	r, _ := wire.ParseRegistration(reg)
	mk := func(mod func(*wire.Registration)) []byte {
		c := *r
		c.PublicKey = bytes.Clone(r.PublicKey)
		mod(&c)
		b, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	badKey := mk(func(c *wire.Registration) {
		for k := range 2 {
			c.PublicKey[k] = 0xff // coefficient 0xfff >= q: fails the FIPS 203 modulus check
		}
	})
	sch1024, _ := kem.Lookup(kem.MLKEM1024)
	k1024, _ := sch1024.GenerateKey()
	alg1024 := mk(func(c *wire.Registration) { c.KEMAlg, c.PublicKey = kem.MLKEM1024, k1024.PublicKey().Bytes() })
	top := e.iss.topics.Registration
	cases := []struct {
		topic   string
		payload []byte
		reason  string
	}{
		{top("dev-1"), []byte("garbage"), "malformed"},
		{top("dev-1"), append(bytes.Clone(reg), 0), "malformed"},
		{top("dev-1"), make([]byte, wire.MaxRegistration+1), "oversize"},
		{top("dev-2"), reg, "topic_mismatch"},
		{top("bad id"), reg, "bad_topic"},
		{top("dev-1"), badKey, "invalid_key"},
		{top("dev-1"), alg1024, "alg_not_allowed"},
		{top("ekem-issuer"), mk(func(c *wire.Registration) { c.DeviceID = "ekem-issuer" }), "reserved_id"},
		{top("EKEM-Monitor-2"), mk(func(c *wire.Registration) { c.DeviceID = "EKEM-Monitor-2" }), "reserved_id"},
	}
	total := uint64(0)
	for _, c := range cases {
		n := e.counter("registrations_rejected:" + c.reason)
		e.iss.handle(c.topic, c.payload)
		if got := e.counter("registrations_rejected:" + c.reason); got != n+1 {
			t.Errorf("%s: counter %d, counters %v", c.reason, got, e.iss.Counters())
		}
		total++
	}
	if len(e.dump()) != 0 {
		t.Fatal("a rejected registration was stored")
	}
	// An empty retained payload (a cleared topic) is ignored.
	e.iss.handle(top("dev-1"), nil)
	sum := uint64(0)
	for _, v := range e.iss.Counters() {
		sum += v
	}
	if len(e.dump()) != 0 || sum != total {
		t.Fatalf("empty payload not ignored: %v", e.iss.Counters())
	}
}

// firstEpoch registers d, issues an epoch and has d accept it.
func firstEpoch(e *env, d *device) *accept.Result {
	e.t.Helper()
	e.register(d)
	e.issue()
	return e.deliver(d)
}

func TestRekey(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, "dev-1")
	res := firstEpoch(e, d)

	sch, _ := kem.Lookup(kem.MLKEM768)
	nk, _ := sch.GenerateKey()
	newPK := nk.PublicKey().Bytes()
	mkReg := func(epoch uint64, th, tag []byte) []byte {
		r := &wire.Registration{Version: 1, DeviceID: "dev-1", KEMAlg: kem.MLKEM768, PublicKey: newPK, CreatedAt: 1767225700,
			Rekey: &wire.RekeyProof{Epoch: epoch, TicketHash: th, Tag: tag}}
		b, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := res.Secrets.RekeyTag(kem.PublicKeyHash(newPK))
	bad := bytes.Clone(good)
	bad[0] ^= 1
	before := e.dump()
	topic := e.iss.topics.Registration("dev-1")

	e.iss.handle(topic, mkReg(1, res.TicketHash, bad))
	if e.counter("registrations_rejected:bad_rekey_proof") != 1 || !maps.EqualFunc(before, e.dump(), bytes.Equal) {
		t.Fatalf("bad proof not refused cleanly: %v", e.iss.Counters())
	}
	wrongHash := bytes.Clone(res.TicketHash)
	wrongHash[31] ^= 1
	e.iss.handle(topic, mkReg(1, wrongHash, good))
	if e.counter("registrations_rejected:rekey_not_latest") != 1 || !maps.EqualFunc(before, e.dump(), bytes.Equal) {
		t.Fatalf("stale proof not refused cleanly: %v", e.iss.Counters())
	}
	// A tag computed for another key does not carry over.
	e.iss.handle(topic, mkReg(1, res.TicketHash, res.Secrets.RekeyTag(kem.PublicKeyHash(d.st.Current.PublicKey().Bytes()))))
	if e.counter("registrations_rejected:bad_rekey_proof") != 2 {
		t.Fatal("proof for another key accepted")
	}

	e.iss.handle(topic, mkReg(1, res.TicketHash, good))
	if e.counter("registrations_rekeyed") != 1 {
		t.Fatalf("valid proof refused: %v", e.iss.Counters())
	}
	info, _ := e.iss.Device("dev-1")
	if !bytes.Equal(info.PinnedKeyHash, kem.PublicKeyHash(newPK)) {
		t.Fatal("new key not pinned")
	}
	e.issue()
	_, _, body := e.latest("dev-1")
	if !bytes.Equal(body.PKHash, kem.PublicKeyHash(newPK)) {
		t.Fatal("next epoch not encapsulated to the re-keyed key")
	}
	if !bytes.Equal(body.Prev, res.TicketHash) {
		t.Fatal("chain broken by re-key")
	}
}

func TestStatusVerifiedAndNextKeyUsed(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, "dev-1")
	res := firstEpoch(e, d)
	e.iss.handle(e.iss.topics.Status("dev-1"), d.status(res))
	info, _ := e.iss.Device("dev-1")
	if info.ConfirmedEpoch != 1 || !info.NextKeyReady || !info.Confirmed() || info.StatusSeq != 1 {
		t.Fatalf("status not verified: %+v %v", info, e.iss.Counters())
	}
	e.clock.Set(e.clock.Now().Add(time.Hour))
	if ep := e.issue(); ep != 2 {
		t.Fatalf("epoch %d", ep)
	}
	_, _, body := e.latest("dev-1")
	if !bytes.Equal(body.PKHash, kem.PublicKeyHash(res.State.Next.PublicKey().Bytes())) {
		t.Fatal("epoch 2 not encapsulated to the verified next key")
	}
	if !bytes.Equal(body.Prev, res.TicketHash) {
		t.Fatal("prev is not the previous ticket hash")
	}
	// The device accepts it directly (no gap) and confirms.
	res2 := e.deliver(d)
	if res2.Gap {
		t.Fatal("device saw a gap")
	}
	e.iss.handle(e.iss.topics.Status("dev-1"), d.status(res2))
	if info, _ := e.iss.Device("dev-1"); info.ConfirmedEpoch != 2 {
		t.Fatalf("epoch 2 not confirmed: %+v", info)
	}
}

func TestKeySelectionWithoutStatus(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, "dev-1")
	firstEpoch(e, d)
	_, _, b1 := e.latest("dev-1")
	e.issue()
	_, _, b2 := e.latest("dev-1")
	if !bytes.Equal(b1.PKHash, b2.PKHash) {
		t.Fatal("without a verified status the previous key must be reused")
	}
	if !bytes.Equal(b1.PKHash, kem.PublicKeyHash(d.st.Current.PublicKey().Bytes())) {
		t.Fatal("first ticket not encapsulated to the registered key")
	}
	// The device, which moved on to a next key it announced but the issuer
	// never verified, still accepts (rule 3: the current key is live).
	res := e.deliver(d)
	if res.Gap || res.State.Epoch != 2 {
		t.Fatalf("epoch 2: gap %v epoch %d", res.Gap, res.State.Epoch)
	}
}

func TestStatusRejects(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, "dev-1")
	d2 := newDevice(t, "dev-2")
	e.register(d2)
	res := firstEpoch(e, d)
	res2 := e.deliver(d2)
	stTopic := e.iss.topics.Status("dev-1")
	before := e.dump()
	flip := func(b []byte) []byte { c := bytes.Clone(b); c[0] ^= 1; return c }
	invalidPK := bytes.Clone(res.State.Next.PublicKey().Bytes())
	invalidPK[0], invalidPK[1] = 0xff, 0xff
	otherHash := flip(res.TicketHash)
	cases := []struct {
		name, topic string
		payload     []byte
		reason      string
	}{
		{"bad confirm", stTopic, d.status(res, func(s *wire.Status) { s.Confirm = flip(s.Confirm) }), "bad_confirm"},
		{"bad next tag", stTopic, d.status(res, func(s *wire.Status) { s.NextTag = flip(s.NextTag) }), "bad_next_tag"},
		{"next key swapped", stTopic, d.status(res, func(s *wire.Status) { s.NextPK = flip(s.NextPK) }), "bad_next_tag"},
		{"invalid next key", stTopic, d.status(res, func(s *wire.Status) {
			s.NextPK = invalidPK
			s.NextTag = res.Secrets.NextKeyTag(kem.PublicKeyHash(invalidPK))
		}), "invalid_next_key"},
		{"wrong ticket hash", stTopic, d.status(res, func(s *wire.Status) { s.TicketHash = otherHash }), "stale_status"},
		{"wrong epoch", stTopic, d.status(res, func(s *wire.Status) { s.Epoch = 2 }), "epoch_mismatch"},
		{"topic mismatch", e.iss.topics.Status("dev-2"), d.status(res), "topic_mismatch"},
		{"other device's valid status", stTopic, d2.status(res2), "topic_mismatch"},
		{"garbage", stTopic, []byte{0xa1, 0x00, 0x01}, "malformed"},
		{"trailing byte", stTopic, append(d.status(res), 0), "malformed"},
		{"oversize", stTopic, make([]byte, wire.MaxStatus+1), "oversize"},
		{"bad topic", e.iss.topics.Prefix + "/status/a/b", d.status(res), "bad_topic"},
		{"unknown device", e.iss.topics.Status("dev-3"), newDevice(t, "dev-3").status(res, func(s *wire.Status) { s.DeviceID = "dev-3" }), "unknown_device"},
	}
	for _, c := range cases {
		n := e.counter("status_rejected:" + c.reason)
		e.iss.handle(c.topic, c.payload)
		if e.counter("status_rejected:"+c.reason) != n+1 {
			t.Errorf("%s: not rejected as %s: %v", c.name, c.reason, e.iss.Counters())
		}
		if !maps.EqualFunc(before, e.dump(), bytes.Equal) {
			t.Fatalf("%s: the store changed", c.name)
		}
	}
	if e.counter("statuses_verified") != 0 || e.counter("clone_detected") != 0 {
		t.Fatalf("counters %v", e.iss.Counters())
	}
	// After all that, the genuine Status (a fresh seq) still verifies.
	e.iss.handle(stTopic, d.status(res))
	if info, _ := e.iss.Device("dev-1"); info.ConfirmedEpoch != 1 {
		t.Fatal("genuine status refused after rejected ones")
	}
}

func TestCloneDetection(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, "dev-1")
	d2 := newDevice(t, "dev-2")
	e.register(d2)
	res := firstEpoch(e, d)
	// A clone holds the same state and accepts the same ticket, drawing
	// another next key: same seq, different Status.
	clone := &device{t: t, id: d.id, st: nil, seq: d.seq, cohort: d.cohort}
	st := d.status(res)
	topic := e.iss.topics.Status("dev-1")
	e.iss.handle(topic, st)
	e.iss.handle(topic, st) // retained re-delivery: harmless
	if e.counter("statuses_duplicate") != 1 || e.counter("clone_detected") != 0 {
		t.Fatalf("duplicate: %v", e.iss.Counters())
	}
	cloneRes := *res
	cloneRes.State = res.State.Clone()
	sch, _ := kem.Lookup(kem.MLKEM768)
	other, _ := sch.GenerateKey()
	cloneRes.State.Next = other
	cloneRes.NextTag = res.Secrets.NextKeyTag(kem.PublicKeyHash(other.PublicKey().Bytes()))
	e.iss.handle(topic, clone.status(&cloneRes))
	if e.counter("clone_detected") != 1 {
		t.Fatalf("clone not detected: %v", e.iss.Counters())
	}
	info, _ := e.iss.Device("dev-1")
	if info.State != StateQuarantined {
		t.Fatalf("state %s", info.State)
	}
	e.issue()
	if info, _ := e.iss.Device("dev-1"); info.LastEpoch != 1 {
		t.Fatal("quarantined device got a ticket")
	}
	if info, _ := e.iss.Device("dev-2"); info.LastEpoch != 2 {
		t.Fatal("other device missed the epoch")
	}
	// Its statuses are now ignored.
	before := e.dump()
	e.iss.handle(topic, d.status(res))
	if e.counter("status_rejected:device_quarantined") != 1 || !maps.EqualFunc(before, e.dump(), bytes.Equal) {
		t.Fatal("quarantined device's status changed the store")
	}
	// An operator releases it; it gets tickets again.
	if err := e.iss.Admin().Release("dev-1", testOp); err != nil {
		t.Fatal(err)
	}
	e.issue()
	if info, _ := e.iss.Device("dev-1"); info.LastEpoch != 3 || info.State != StateActive || info.HasStatus {
		t.Fatalf("after release: %+v", info)
	}
}

func TestEpochsNeverRepeat(t *testing.T) {
	e := newEnv(t)
	if _, err := e.iss.IssueEpoch(context.Background()); !errors.Is(err, ErrNoDevices) {
		t.Fatalf("empty fleet: %v", err)
	}
	d := newDevice(t, "dev-1")
	e.register(d)
	if ep := e.issue(); ep != 1 {
		t.Fatalf("first epoch %d (an empty attempt must not use a number)", ep)
	}
	e.reopen()
	if ep := e.issue(); ep != 2 {
		t.Fatalf("after reopen %d", ep)
	}
	// The clock goes back a year: epochs still increase; issued_at follows
	// the clock.
	e.clock.Set(e.clock.Now().AddDate(-1, 0, 0))
	e.reopen()
	if ep := e.issue(); ep != 3 {
		t.Fatalf("after clock change %d", ep)
	}
	_, _, body := e.latest("dev-1")
	if body.Epoch != 3 || body.IssuedAt != uint64(e.clock.Now().Unix()) {
		t.Fatalf("body epoch %d issued_at %d", body.Epoch, body.IssuedAt)
	}
	if body.TTL != 7200 || body.Purpose != "telemetry" || body.Group != "plant-7" {
		t.Fatalf("body %+v", body)
	}
	var last uint64
	var info *wire.EpochInfo
	err := e.iss.store.View(func(tx ReadTx) (err error) {
		last, info, err = lastEpochInfo(tx)
		return err
	})
	if err != nil || last != 3 || info.Epoch != 3 || info.PeriodS != 3600 {
		t.Fatalf("last %d %+v %v", last, info, err)
	}
}

func TestRootsPruned(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.KeepRoots = 2 })
	e.register(newDevice(t, "dev-1"))
	for range 4 {
		e.issue()
	}
	var epochs []uint64
	e.iss.store.View(func(tx ReadTx) error {
		roots, err := tx.Roots()
		for _, r := range roots {
			epochs = append(epochs, r.Epoch)
		}
		return err
	})
	if len(epochs) != 2 || epochs[0] != 3 || epochs[1] != 4 {
		t.Fatalf("stored roots %v", epochs)
	}
}

func TestOperatorActions(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, "dev-1")
	res := firstEpoch(e, d)
	// A replacement device with a new key is refused, then pinned by Reset.
	repl := newDevice(t, "dev-1")
	e.iss.handle(e.iss.topics.Registration("dev-1"), repl.registration())
	if e.counter("registrations_rejected:key_changed") != 1 {
		t.Fatal("key change not refused")
	}
	if err := e.iss.Admin().Reset("dev-1", testOp); err != nil {
		t.Fatal(err)
	}
	info, _ := e.iss.Device("dev-1")
	if !bytes.Equal(info.PinnedKeyHash, kem.PublicKeyHash(repl.st.Current.PublicKey().Bytes())) {
		t.Fatal("reset did not pin the pending registration")
	}
	e.issue()
	_, _, body := e.latest("dev-1")
	if !bytes.Equal(body.PKHash, kem.PublicKeyHash(repl.st.Current.PublicKey().Bytes())) || !bytes.Equal(body.Prev, res.TicketHash) {
		t.Fatal("after reset: wrong key or broken chain")
	}
	// Revoke: no more tickets; statuses ignored.
	if err := e.iss.Admin().Revoke("dev-1", testOp); err != nil {
		t.Fatal(err)
	}
	e.register(newDevice(t, "dev-2"))
	e.issue()
	if info, _ := e.iss.Device("dev-1"); info.LastEpoch != 2 || info.State != StateRevoked {
		t.Fatalf("revoked: %+v", info)
	}
	for _, f := range []func(string, Operator) error{e.iss.Admin().Reset, e.iss.Admin().Revoke, e.iss.Admin().Release} {
		if err := f("nobody", testOp); !errors.Is(err, ErrUnknownDevice) {
			t.Fatalf("unknown device: %v", err)
		}
	}
}

// TestOlderStatus: a broker restored from an older save re-delivers older
// Status messages; they are not a clone sign. An older acceptance of the
// latest ticket that went out after a later Status (a device that could not
// publish it before a rejection) still confirms the ticket.
func TestOlderStatus(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, "dev-1")
	res := firstEpoch(e, d)
	topic := e.iss.topics.Status("dev-1")
	s1 := d.status(res)
	e.iss.handle(topic, s1)
	e.issue()
	res2 := e.deliver(d)
	e.iss.handle(topic, d.status(res2))
	before := e.dump()
	e.iss.handle(topic, s1) // the broker's older save
	if e.counter("clone_detected") != 0 || e.counter("statuses_older") != 1 || !maps.EqualFunc(before, e.dump(), bytes.Equal) {
		t.Fatalf("older Status: %v", e.iss.Counters())
	}
	e.issue()
	res3 := e.deliver(d)
	accepted := d.status(res3)
	rejection := d.status(res3, func(s *wire.Status) {
		s.State, s.Reason, s.Confirm, s.NextAlg, s.NextPK, s.NextTag, s.PrevEpoch = wire.StateRejected, 6, nil, 0, nil, nil, nil
	})
	e.iss.handle(topic, rejection)
	e.iss.handle(topic, accepted)
	info, _ := e.iss.Device("dev-1")
	if info.State != StateActive || info.ConfirmedEpoch != 3 || info.StatusSeq != 4 {
		t.Fatalf("late acceptance: state %s confirmed %d seq %d, %v", info.State, info.ConfirmedEpoch, info.StatusSeq, e.iss.Counters())
	}
	e.issue()
	info, _ = e.iss.Device("dev-1")
	if !bytes.Equal(info.KeyHash, kem.PublicKeyHash(res3.State.Next.PublicKey().Bytes())) {
		t.Fatal("the next key of the late acceptance was not used")
	}
	// The same seq with other bytes, but an acceptance of an earlier ticket
	// (its tags cannot be checked against the latest ticket): counted,
	// never a clone.
	e.iss.handle(topic, rejection)
	before = e.dump()
	forged := d.status(res3, func(s *wire.Status) { s.Seq = 4 })
	e.iss.handle(topic, forged)
	if e.counter("clone_detected") != 0 || e.counter("status_conflict_unauthenticated") != 1 || !maps.EqualFunc(before, e.dump(), bytes.Equal) {
		t.Fatalf("same seq, other bytes, unauthenticated: %v", e.iss.Counters())
	}
}

// Only two Statuses whose tags verify and that conflict (one seq, other
// bytes) quarantine a device (DESIGN.md, Issuer rules). A forged rejected
// Status with the device's seq, sent with only its broker password, is
// counted, changes nothing stored and leaves the device issuing; the
// device's authenticated Status then replaces it.
func TestQuarantineOnlyOnAuthenticatedConflict(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, "dev-1")
	e.register(d)
	topic := e.iss.topics.Status(d.id)
	e.issue()
	res1 := e.deliver(d)
	e.iss.handle(topic, d.status(res1))
	e.issue()
	res2 := e.deliver(d)

	// The attacker predicts the device's next seq and forges a rejection.
	forged := d.status(res2, func(s *wire.Status) {
		s.State, s.Reason, s.Confirm, s.NextAlg, s.NextPK, s.NextTag, s.PrevEpoch = wire.StateRejected, 6, nil, 0, nil, nil, nil
	})
	d.seq-- // the real device uses the same seq next
	e.iss.handle(topic, forged)
	// A second forgery with that seq: a conflict the issuer cannot
	// authenticate.
	forged2 := d.status(res2, func(s *wire.Status) {
		s.State, s.Reason, s.Confirm, s.NextAlg, s.NextPK, s.NextTag, s.PrevEpoch = wire.StateStale, uint64(accept.ReasonStale), nil, 0, nil, nil, nil
	})
	d.seq--
	before := e.dump()
	e.iss.handle(topic, forged2)
	if e.counter("clone_detected") != 0 || e.counter("status_conflict_unauthenticated") != 1 || !maps.EqualFunc(before, e.dump(), bytes.Equal) {
		t.Fatalf("unauthenticated conflict: %v", e.iss.Counters())
	}
	// The device's real acceptance with that seq is authenticated: it is
	// verified and recorded, and the device stays active.
	real := d.status(res2)
	e.iss.handle(topic, real)
	info, _ := e.iss.Device(d.id)
	if info.State != StateActive || info.ConfirmedEpoch != 2 || e.counter("clone_detected") != 0 || e.counter("status_conflict_unauthenticated") != 2 {
		t.Fatalf("authenticated Status after a forgery: state %s confirmed %d, %v", info.State, info.ConfirmedEpoch, e.iss.Counters())
	}
	e.issue() // still issued to
	if info, _ := e.iss.Device(d.id); info.LastEpoch != 3 {
		t.Fatalf("device not issued epoch 3 after the forgery: last epoch %d", info.LastEpoch)
	}
	res3 := e.deliver(d)

	// A clone: a second Status with the same seq whose tags verify (the
	// clone decapsulated the same ticket) but whose bytes differ.
	first := d.status(res3)
	d.seq--
	second := d.status(res3, func(s *wire.Status) { s.Time++ })
	e.iss.handle(topic, first)
	e.iss.handle(topic, second)
	info, _ = e.iss.Device(d.id)
	if info.State != StateQuarantined || e.counter("clone_detected") != 1 {
		t.Fatalf("two authenticated Statuses with one seq: state %s, %v", info.State, e.iss.Counters())
	}
}
