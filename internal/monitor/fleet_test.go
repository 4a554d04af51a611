package monitor

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/trust"
	"github.com/entropykem/entropykem/pkg/wire"
)

var (
	topics = wire.Topics{Prefix: wire.DefaultPrefix}
	t0     = time.Unix(1767225600, 0)
)

// world issues real signed epochs for a few devices.
type world struct {
	t    testing.TB
	key  *signature.PrivateKey
	pins *signature.KeySet
	keys map[string]kem.PublicKey
}

func newWorld(t testing.TB, ids ...string) *world {
	t.Helper()
	key, err := signature.NewKeyFromSeed(signature.MLDSA65, bytes.Repeat([]byte{3}, signature.SeedSize))
	if err != nil {
		t.Fatal(err)
	}
	pins, err := signature.NewKeySet(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, key: key, pins: pins, keys: map[string]kem.PublicKey{}}
	sch, _ := kem.Lookup(kem.MLKEM768)
	for _, id := range ids {
		k, err := sch.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		w.keys[id] = k.PublicKey()
	}
	return w
}

// epoch issues epoch e to ids (ttl 1 h, issued at t0 + e minutes).
func (w *world) epoch(e uint64, ids ...string) *batch.Epoch {
	w.t.Helper()
	var devs []batch.Device
	for _, id := range ids {
		devs = append(devs, batch.Device{ID: id, Key: w.keys[id], Purpose: "p", Group: "g"})
	}
	ep, err := batch.Issue(w.key, batch.Params{Epoch: e, IssuedAt: uint64(t0.Unix()) + 60*e, TTL: 3600}, devs)
	if err != nil {
		w.t.Fatal(err)
	}
	return ep
}

func info(t testing.TB, e uint64) []byte {
	b, err := (&wire.EpochInfo{Version: 1, Epoch: e, IssuedAt: uint64(t0.Unix()) + 60*e, PeriodS: 60, NextAt: uint64(t0.Unix()) + 60*e + 60}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// status builds a Status; ok and gap carry dummy (well-formed) tags and a
// next key, which the monitor does not verify (it holds no secrets).
func status(t testing.TB, id string, epoch, seq uint64, state wire.State, reason accept.Reason, tweak byte) []byte {
	t.Helper()
	st := &wire.Status{Version: 1, DeviceID: id, Epoch: epoch, State: state, Reason: uint64(reason), Time: uint64(t0.Unix()) + seq, Seq: seq}
	if epoch > 0 {
		st.TicketHash = bytes.Repeat([]byte{byte(epoch), tweak}, 16)
	}
	if state.Accepted() {
		sch, _ := kem.Lookup(kem.MLKEM768)
		k, err := sch.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		st.Confirm, st.NextAlg, st.NextPK, st.NextTag = bytes.Repeat([]byte{1}, 32), kem.MLKEM768, k.PublicKey().Bytes(), bytes.Repeat([]byte{2}, 32)
	}
	if state == wire.StateGap {
		prev := epoch - 1
		st.PrevEpoch = &prev
	}
	b, err := st.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func feedEpoch(f *Fleet, ep *batch.Epoch, e uint64, t testing.TB) {
	t.Helper()
	if a := f.Handle(topics.Root(e), ep.Root, t0); a != nil {
		t.Fatalf("valid root raised %v", a)
	}
	for _, tk := range ep.Tickets {
		f.Handle(topics.Ticket(tk.DeviceID), tk.Ticket, t0)
	}
	f.Handle(topics.Epoch(), info(t, e), t0)
}

func rowsByID(s Snapshot) map[string]Row {
	m := map[string]Row{}
	for _, r := range s.Devices {
		m[r.ID] = r
	}
	return m
}

func wantRow(t *testing.T, rows map[string]Row, id, state string, epoch, lag uint64, reason string) {
	t.Helper()
	r, ok := rows[id]
	if !ok {
		t.Fatalf("no row for %s", id)
	}
	if r.State != state || r.Epoch != epoch || r.Lag != lag || !strings.Contains(r.Reason, reason) {
		t.Errorf("%s: got state %s epoch %d lag %d reason %q; want %s %d %d %q", id, r.State, r.Epoch, r.Lag, r.Reason, state, epoch, lag, reason)
	}
}

// TestFleetStates drives devices into every state from real signed roots
// and tickets and crafted Status messages.
func TestFleetStates(t *testing.T) {
	ids := []string{"cur", "lag", "stale", "rej", "eq", "clone", "quar", "rev", "new"}
	w := newWorld(t, ids...)
	f := NewFleet(Config{Topics: topics, Pins: w.pins, TrackTickets: true})
	now := t0.Add(3 * time.Minute)

	// Epoch 1 to everyone but "new"; everyone confirms it.
	feedEpoch(f, w.epoch(1, ids[:8]...), 1, t)
	seq := map[string]uint64{}
	next := func(id string) uint64 { seq[id]++; return seq[id] }
	for _, id := range ids[:8] {
		f.Handle(topics.Status(id), status(t, id, 1, next(id), wire.StateOK, 0, 0), now)
	}
	// Epoch 2 withholds "quar" (quarantined at the issuer) and clears
	// "rev"'s ticket (revoked).
	ep2 := w.epoch(2, "cur", "lag", "stale", "rej", "eq", "clone")
	f.Handle(topics.Ticket("rev"), nil, now)
	feedEpoch(f, ep2, 2, t)
	for _, id := range []string{"cur", "clone"} {
		f.Handle(topics.Status(id), status(t, id, 2, next(id), wire.StateGap, 0, 0), now)
	}
	f.Handle(topics.Status("stale"), status(t, "stale", 1, next("stale"), wire.StateStale, accept.ReasonStale, 0), now)
	f.Handle(topics.Status("rej"), status(t, "rej", 1, next("rej"), wire.StateRejected, accept.ReasonBadSignature, 0), now)
	if a := f.Handle(topics.Status("eq"), status(t, "eq", 1, next("eq"), wire.StateEquivocation, accept.ReasonEquivocation, 0), now); a == nil || a.Kind != AlarmEquivocation || a.Device != "eq" {
		t.Fatalf("equivocation alarm: %v", a)
	}
	// A retained re-delivery of the same Status is no alarm...
	same := status(t, "cur", 2, 99, wire.StateOK, 0, 0)
	seq["cur"] = 99
	f.Handle(topics.Status("cur"), same, now)
	if a := f.Handle(topics.Status("cur"), same, now); a != nil {
		t.Fatalf("re-delivery raised %v", a)
	}
	// ...a different Status with the same seq is a clone.
	if a := f.Handle(topics.Status("clone"), status(t, "clone", 2, seq["clone"], wire.StateOK, 0, 9), now); a == nil || a.Kind != AlarmClone {
		t.Fatalf("clone alarm: %v", a)
	}
	// "new" has a ticket of epoch 2 but no Status yet.
	ep2new := w.epoch(2, "new")
	f.Handle(topics.Ticket("new"), ep2new.Tickets[0].Ticket, now)

	s := f.Snapshot(now)
	rows := rowsByID(s)
	wantRow(t, rows, "cur", StateCurrent, 2, 0, "")
	wantRow(t, rows, "lag", StateLagging, 1, 1, "")
	wantRow(t, rows, "stale", StateStale, 1, 1, "stale")
	wantRow(t, rows, "rej", StateRejected, 1, 1, "bad_signature")
	wantRow(t, rows, "eq", StateEquivocation, 1, 1, "equivocation")
	wantRow(t, rows, "clone", StateQuarantined, 2, 0, "clone")
	wantRow(t, rows, "quar", StateQuarantined, 1, 1, "withheld")
	wantRow(t, rows, "rev", StateRevoked, 1, 1, "cleared")
	wantRow(t, rows, "new", StatePending, 0, 0, "")
	if s.Epoch != 2 || s.MaxLag != 1 || s.Announced == nil || s.Announced.Epoch != 2 {
		t.Errorf("fleet epoch %d max lag %d announced %+v", s.Epoch, s.MaxLag, s.Announced)
	}
	want := map[string]int{StateCurrent: 1, StateLagging: 1, StateStale: 1, StateRejected: 1, StateEquivocation: 1,
		StateQuarantined: 2, StateRevoked: 1, StatePending: 1}
	for k, v := range want {
		if s.Totals[k] != v {
			t.Errorf("totals[%s] = %d, want %d (%v)", k, s.Totals[k], v, s.Totals)
		}
	}
	if s.Devices[0].State != StateRevoked || s.Devices[len(s.Devices)-1].State != StatePending {
		t.Errorf("rows not most severe first: %v", s.Devices)
	}
	c := s.Counters
	if c[CountClones] != 1 || c[CountEquivocation] != 1 || c[CountRootFailures] != 0 || c[CountMalformed] != 0 {
		t.Errorf("counters %v", c)
	}

	// Once the epoch-2 tickets expire, the unconfirmed ones are stale by
	// the monitor's own clock.
	later := t0.Add(2*time.Minute + time.Hour)
	rows = rowsByID(f.Snapshot(later))
	wantRow(t, rows, "lag", StateStale, 1, 1, "expired")
	wantRow(t, rows, "cur", StateStale, 2, 0, "expired")
}

// TestRootVerification: roots that do not verify under the pinned keys,
// or are published on another epoch's topic, are alarms and never move the
// fleet's epoch.
func TestRootVerification(t *testing.T) {
	w := newWorld(t, "a")
	other := newWorld(t, "a")
	otherKey, err := signature.NewKeyFromSeed(signature.MLDSA65, bytes.Repeat([]byte{4}, signature.SeedSize))
	if err != nil {
		t.Fatal(err)
	}
	other.key = otherKey
	f := NewFleet(Config{Topics: topics, Pins: w.pins})
	good := w.epoch(1, "a").Root
	forged := other.epoch(2, "a").Root
	flipped := bytes.Clone(w.epoch(3, "a").Root)
	flipped[len(flipped)-5] ^= 1
	for _, tc := range []struct {
		topic string
		msg   []byte
	}{
		{topics.Root(2), forged},
		{topics.Root(3), flipped},
		{topics.Root(7), good},            // epoch 1's root on root/7
		{topics.Prefix + "/root/x", good}, // bad topic
		{topics.Root(4), []byte{0xd2, 0x84}},
	} {
		a := f.Handle(tc.topic, tc.msg, t0)
		if a == nil || a.Kind != AlarmRoot {
			t.Errorf("%s: alarm %v", tc.topic, a)
		}
	}
	if a := f.Handle(topics.Root(1), good, t0); a != nil {
		t.Fatalf("good root: %v", a)
	}
	if a := f.Handle(topics.Root(5), nil, t0); a != nil {
		t.Fatalf("cleared root: %v", a)
	}
	s := f.Snapshot(t0)
	if s.Epoch != 1 || s.Counters[CountRootFailures] != 5 || len(s.RootFailures) != 5 {
		t.Fatalf("epoch %d failures %d %v", s.Epoch, s.Counters[CountRootFailures], s.RootFailures)
	}
	var out bytes.Buffer
	if err := WriteTable(&out, s, 0); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "ALARM    root "+topics.Root(2)+" FAILED VERIFICATION") {
		t.Errorf("table does not shout the failed root:\n%s", out.String())
	}
}

// TestIssuerKeyRotation: after a verified rotation A→B from epoch 3, the
// monitor verifies B's roots from epoch 3 on and refuses A's; before it,
// B's root is a failure. A second successor announced by A is an alarm.
func TestIssuerKeyRotation(t *testing.T) {
	w := newWorld(t, "a")
	b, err := signature.NewKeyFromSeed(signature.MLDSA65, bytes.Repeat([]byte{5}, signature.SeedSize))
	if err != nil {
		t.Fatal(err)
	}
	c, err := signature.NewKeyFromSeed(signature.MLDSA65, bytes.Repeat([]byte{6}, signature.SeedSize))
	if err != nil {
		t.Fatal(err)
	}
	f := NewFleet(Config{Topics: topics, Pins: w.pins})
	withKey := func(k *signature.PrivateKey, e uint64) []byte {
		old := w.key
		w.key = k
		defer func() { w.key = old }()
		return w.epoch(e, "a").Root
	}
	if a := f.Handle(topics.Root(3), withKey(b, 3), t0); a == nil || a.Kind != AlarmRoot {
		t.Fatalf("B's root before the announcement: alarm %v", a)
	}
	ab, err := trust.Sign(w.key, b.Public(), 3, 1)
	if err != nil {
		t.Fatal(err)
	}
	if a := f.Handle(topics.IssuerKey(b.Public().KID()), ab, t0); a != nil {
		t.Fatalf("announcement: alarm %v", a)
	}
	for _, tc := range []struct {
		e     uint64
		k     *signature.PrivateKey
		alarm bool
	}{{2, w.key, false}, {3, b, false}, {4, b, false}, {4, w.key, true}, {2, b, true}} {
		a := f.Handle(topics.Root(tc.e), withKey(tc.k, tc.e), t0)
		if (a != nil) != tc.alarm {
			t.Errorf("epoch %d signed by %x: alarm %v, want alarm %v", tc.e, tc.k.Public().KID(), a, tc.alarm)
		}
	}
	ac, _ := trust.Sign(w.key, c.Public(), 5, 1)
	if a := f.Handle(topics.IssuerKey(c.Public().KID()), ac, t0); a == nil || a.Kind != AlarmIssuerKey {
		t.Fatalf("second successor of A: alarm %v", a)
	}
	if n := f.Counters(); n[CountKeysLearned] != 1 || n[CountKeyConflicts] != 1 {
		t.Fatalf("counters %v", n)
	}
}

// TestMalformedIgnored: bad input is counted, never stored or fatal.
func TestMalformedIgnored(t *testing.T) {
	w := newWorld(t, "a")
	f := NewFleet(Config{Topics: topics, Pins: w.pins, TrackTickets: true})
	f.Handle(topics.Status("a"), []byte{0xff}, t0)
	f.Handle(topics.Status("b"), status(t, "a", 0, 1, wire.StateRejected, accept.ReasonMalformed, 0), t0) // id mismatch
	f.Handle(topics.Status("a"), bytes.Repeat([]byte{0}, wire.MaxStatus+1), t0)
	f.Handle(topics.Ticket("b"), w.epoch(1, "a").Tickets[0].Ticket, t0) // aud mismatch
	f.Handle(topics.Epoch(), []byte{1}, t0)
	f.Handle("$SYS/broker/clients/connected", []byte("many"), t0)
	s := f.Snapshot(t0)
	if len(s.Devices) != 0 || s.Counters[CountMalformed] != 6 || s.Announced != nil {
		t.Fatalf("devices %v counters %v", s.Devices, s.Counters)
	}
}

func TestSysAndPrometheus(t *testing.T) {
	w := newWorld(t, "dev-secret-id")
	f := NewFleet(Config{Topics: topics, Pins: w.pins})
	feedEpoch(f, w.epoch(1, "dev-secret-id"), 1, t)
	f.Handle(topics.Status("dev-secret-id"), status(t, "dev-secret-id", 1, 1, wire.StateOK, 0, 0), t0)
	f.Handle("$SYS/broker/clients/connected", []byte("12"), t0)
	f.Handle("$SYS/broker/uptime", []byte("3600 seconds"), t0)
	f.Handle("$SYS/broker/messages/received", []byte("12345"), t0)
	f.Handle("$SYS/broker/version", []byte("mosquitto version 2.0.21"), t0)
	f.Handle("$SYS/broker/unknown/thing", []byte("1"), t0)
	rec := httptest.NewRecorder()
	reg := NewRegistry(&Collector{Fleet: f, Now: func() time.Time { return t0 }, Connected: func() bool { return true }})
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`ekem_fleet_devices{state="current"} 1`,
		`ekem_fleet_devices{state="stale"} 0`,
		"ekem_fleet_epoch 1",
		"ekem_fleet_epoch_period_seconds 60",
		"ekem_fleet_broker_connected 1",
		"ekem_fleet_root_verification_failures_total 0",
		"ekem_broker_clients_connected 12",
		"ekem_broker_uptime_seconds 3600",
		"ekem_broker_messages_received_total 12345",
		`ekem_broker_info{version="mosquitto version 2.0.21"} 1`,
		`ekem_build_info{goversion="go`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "dev-secret-id") || strings.Contains(body, "unknown") {
		t.Errorf("a device id or an unlisted $SYS topic leaked into the metrics:\n%s", body)
	}
	var out bytes.Buffer
	if err := WriteJSON(&out, f.Snapshot(t0)); err != nil {
		t.Fatal(err)
	}
	var back Snapshot
	if err := json.Unmarshal(out.Bytes(), &back); err != nil || back.Broker["clients_connected"] != 12 || len(back.Devices) != 1 {
		t.Fatalf("json round trip: %v %+v", err, back)
	}
}

func TestTable(t *testing.T) {
	w := newWorld(t, "a", "b")
	f := NewFleet(Config{Topics: topics, Pins: w.pins})
	feedEpoch(f, w.epoch(1, "a", "b"), 1, t)
	feedEpoch(f, w.epoch(2, "a", "b"), 2, t)
	f.Handle(topics.Status("a"), status(t, "a", 2, 1, wire.StateOK, 0, 0), t0)
	f.Handle(topics.Status("b"), status(t, "b", 1, 1, wire.StateOK, 0, 0), t0)
	var out bytes.Buffer
	if err := WriteTable(&out, f.Snapshot(t0.Add(time.Minute)), 1); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{"DEVICE  EPOCH  LAG  LAST SEEN  STATE    REASON", "b       1      1    59s ago    lagging",
		"... 1 more devices", "fleet    2 devices, epoch 2 (root signature verified", "lagging 1, current 1"} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
}

// TestScale feeds 100,000 devices' Status messages: the model keeps one
// fixed-size record each and classifies them in one pass.
func TestScale(t *testing.T) {
	if testing.Short() {
		t.Skip("100k devices")
	}
	w := newWorld(t, "d")
	f := NewFleet(Config{Topics: topics, Pins: w.pins})
	feedEpoch(f, w.epoch(3, "d"), 3, t)
	const n = 100_000
	for k := range n {
		id := fmt.Sprintf("dev-%06d", k)
		st := &wire.Status{Version: 1, DeviceID: id, Epoch: uint64(1 + k%3), State: wire.StateRejected,
			Reason: uint64(accept.ReasonExpired), Time: uint64(t0.Unix()), Seq: 1, TicketHash: bytes.Repeat([]byte{1}, 32)}
		b, err := st.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		f.Handle(topics.Status(id), b, t0)
	}
	totals, maxLag := f.Totals(t0)
	if totals[StateRejected] != n || maxLag != 2 {
		t.Fatalf("totals %v max lag %d", totals, maxLag)
	}
	if s := f.Snapshot(t0); len(s.Devices) != n+1 || s.Devices[0].ID != "dev-000000" {
		t.Fatalf("snapshot of %d rows, first %v", len(s.Devices), s.Devices[0])
	}
}

func BenchmarkHandleStatus(b *testing.B) {
	w := newWorld(b, "d")
	f := NewFleet(Config{Topics: topics, Pins: w.pins})
	msgs := make([][]byte, 1000)
	for k := range msgs {
		msgs[k] = status(b, fmt.Sprintf("dev-%d", k), 1, 1, wire.StateOK, 0, 0)
	}
	b.ResetTimer()
	for k := 0; b.Loop(); k++ {
		m := msgs[k%len(msgs)]
		f.Handle(topics.Status(fmt.Sprintf("dev-%d", k%len(msgs))), m, t0)
	}
}

func BenchmarkSnapshot100k(b *testing.B) {
	w := newWorld(b, "d")
	f := NewFleet(Config{Topics: topics, Pins: w.pins})
	for k := range 100_000 {
		id := fmt.Sprintf("dev-%06d", k)
		f.Handle(topics.Status(id), status(b, id, 0, 1, wire.StateRejected, accept.ReasonMalformed, 0), t0)
	}
	b.ResetTimer()
	for b.Loop() {
		f.Snapshot(t0)
	}
}

// FuzzHandle: any topic and payload is handled without panic, and a
// message never creates more than one device record.
func FuzzHandle(f *testing.F) {
	w := newWorld(f, "a")
	ep := w.epoch(1, "a")
	f.Add(topics.Root(1), ep.Root)
	f.Add(topics.Ticket("a"), ep.Tickets[0].Ticket)
	f.Add(topics.Status("a"), status(f, "a", 1, 1, wire.StateOK, 0, 0))
	f.Add(topics.Status("a"), status(f, "a", 0, 2, wire.StateRejected, accept.ReasonMalformed, 0))
	f.Add(topics.Epoch(), info(f, 1))
	f.Add(topics.Registration("a"), registration(f, w, "a", 5, true))
	f.Add("$SYS/broker/uptime", []byte("12 seconds"))
	f.Add("$SYS/broker/version", []byte("mosquitto version 2"))
	next, err := signature.NewKeyFromSeed(signature.MLDSA65, bytes.Repeat([]byte{9}, signature.SeedSize))
	if err != nil {
		f.Fatal(err)
	}
	rot, err := trust.Sign(w.key, next.Public(), 2, 1)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(topics.IssuerKey(next.Public().KID()), rot)
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		fl := NewFleet(Config{Topics: topics, Pins: w.pins, TrackTickets: true})
		fl.Handle(topic, payload, t0)
		fl.Handle(topic, payload, t0)
		s := fl.Snapshot(t0)
		if len(s.Devices) > 1 {
			t.Fatalf("one topic made %d devices", len(s.Devices))
		}
	})
}

// TestIsTerminal: -watch clears the screen only on a terminal; a file or a
// buffer (a pipe, the journal) gets plain tables.
func TestIsTerminal(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if IsTerminal(f) || IsTerminal(&bytes.Buffer{}) {
		t.Fatal("a file or a buffer taken for a terminal")
	}
}

// A Status without a tag (rejected, stale, equivocation) that conflicts with
// the recorded one is a suspicious report, never a clone: it is counted and
// shown, and the device's state does not change. Two conflicting
// acceptances are still a clone.
func TestConflictWithoutTagIsSuspicious(t *testing.T) {
	w := newWorld(t, "dev", "twin")
	f := NewFleet(Config{Topics: topics, Pins: w.pins})
	now := t0.Add(3 * time.Minute)
	feedEpoch(f, w.epoch(1, "dev", "twin"), 1, t)
	f.Handle(topics.Status("dev"), status(t, "dev", 1, 5, wire.StateOK, 0, 0), now)
	before := rowsByID(f.Snapshot(now))["dev"]

	// A forged rejection with the device's seq (only the password needed).
	a := f.Handle(topics.Status("dev"), status(t, "dev", 1, 5, wire.StateRejected, accept.ReasonBadSignature, 0), now)
	if a == nil || a.Kind != AlarmSuspicious || a.Device != "dev" {
		t.Fatalf("forged rejection: alarm %v, want %s", a, AlarmSuspicious)
	}
	s := f.Snapshot(now)
	row := rowsByID(s)["dev"]
	if row.State != before.State || row.Seq != before.Seq || row.Suspicious != 1 {
		t.Fatalf("forged rejection changed the device: %+v, was %+v", row, before)
	}
	if s.Counters[CountSuspicious] != 1 || s.Counters[CountClones] != 0 {
		t.Fatalf("counters %v", s.Counters)
	}
	// Two different acceptances with one seq: a clone.
	f.Handle(topics.Status("twin"), status(t, "twin", 1, 3, wire.StateOK, 0, 0), now)
	if a := f.Handle(topics.Status("twin"), status(t, "twin", 1, 3, wire.StateOK, 0, 7), now); a == nil || a.Kind != AlarmClone {
		t.Fatalf("two acceptances with one seq: alarm %v, want %s", a, AlarmClone)
	}
	var buf strings.Builder
	if err := WriteTable(&buf, f.Snapshot(now), 10); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "suspicious reports 1") {
		t.Errorf("rendered view lacks the suspicious report count:\n%s", buf.String())
	}
}
