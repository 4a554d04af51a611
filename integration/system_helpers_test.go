package integration

// Helpers for the system tests (system_test.go, hostile_test.go): a real
// Mosquitto 2 broker running the shipped broker-config, the issuer and the
// devices in-process exactly as ekem-issuer and ekem-device wire them
// (cmd/ekemctl/demo.go), talking real MQTT over TCP.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/internal/logbuf"
	"github.com/entropykem/entropykem/internal/mosquittotest"
	"github.com/entropykem/entropykem/internal/natstest"
	ekissuer "github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
)

// sysTimeout bounds every wait of the system tests. Each wait is for one
// round trip through the broker (and a few ML-KEM and ML-DSA operations), so
// it is generous; a test never sleeps for correctness.
const sysTimeout = 10 * time.Second

// sysPeriod is the issuer's epoch period. The tests issue epochs by hand
// (IssueEpoch), so it only sets the default ticket ttl (2 periods).
const sysPeriod = time.Minute

// logBuffer keeps the issuer's and devices' JSON logs (logbuf.Buffer)
// and decodes them.
type logBuffer struct{ logbuf.Buffer }

// records decodes every JSON log line (slog.JSONHandler output).
func (l *logBuffer) records(t testing.TB) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(l.String()))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line is not JSON: %v: %.200q", err, sc.Text())
		}
		out = append(out, m)
	}
	return out
}

// hasRecord reports whether a log record has every attribute of want
// (compared as strings).
func (l *logBuffer) hasRecord(t testing.TB, want map[string]string) bool {
	t.Helper()
	for _, r := range l.records(t) {
		ok := true
		for k, v := range want {
			if fmt.Sprint(r[k]) != v {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// eventLog records a device's OnEvent callbacks.
type eventLog struct {
	mu     sync.Mutex
	events []device.Event
}

func (e *eventLog) add(ev device.Event) {
	e.mu.Lock()
	e.events = append(e.events, ev)
	e.mu.Unlock()
}

func (e *eventLog) all() []device.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]device.Event(nil), e.events...)
}

// accepted returns the accepted events in order.
func (e *eventLog) accepted() []device.Event {
	var out []device.Event
	for _, ev := range e.all() {
		if ev.Kind == device.EventAccepted {
			out = append(out, ev)
		}
	}
	return out
}

// ofKind returns the events of kind k.
func (e *eventLog) ofKind(k device.EventKind) []device.Event {
	var out []device.Event
	for _, ev := range e.all() {
		if ev.Kind == k {
			out = append(out, ev)
		}
	}
	return out
}

// sysDevice is one running device agent.
type sysDevice struct {
	id     string
	dir    string
	agent  *device.Agent
	events *eventLog
	runErr chan error
}

// stateFile returns the bytes of the device's encrypted state.bin.
func (d *sysDevice) stateFile(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(d.dir, "state.bin"))
	if err != nil {
		t.Fatalf("%s: read state.bin: %v", d.id, err)
	}
	return b
}

// stop closes the agent (as a powered-off device) and checks that Run
// returned without error.
func (d *sysDevice) stop(t testing.TB) {
	t.Helper()
	if err := d.agent.Close(); err != nil {
		t.Fatalf("%s: close: %v", d.id, err)
	}
	select {
	case err := <-d.runErr:
		if err != nil {
			t.Fatalf("%s: Run: %v", d.id, err)
		}
	case <-time.After(sysTimeout):
		t.Fatalf("%s: Run did not return after Close", d.id)
	}
}

// sysFleet is one broker, one issuer key, one cohort and the devices.
type sysFleet struct {
	b       *mosquittotest.Broker
	nats    *natstest.Cluster // instead of b, on the NATS cluster (nats_system_test.go)
	dir     string
	key     *signature.PrivateKey
	pins    *signature.KeySet
	cohort  cohort.Secret
	iss     *ekissuer.Issuer
	issLog  *logBuffer
	devLog  *logBuffer
	devices map[string]*sysDevice
}

// newSysFleet starts a real Mosquitto with accounts for ids (it skips, or
// fails under EKEM_REQUIRE_MOSQUITTO=1, when there is no mosquitto binary),
// and makes an ML-DSA-87 issuer key and a software cohort secret.
func newSysFleet(t *testing.T, ids ...string) *sysFleet {
	t.Helper()
	return newSysFleetWith(t, mosquittotest.Options{Devices: ids})
}

// newSysFleetWith is newSysFleet with the broker options given (client
// certificates, more accounts than the devices that run).
func newSysFleetWith(t *testing.T, opts mosquittotest.Options) *sysFleet {
	t.Helper()
	b := mosquittotest.Start(t, opts)
	key, err := signature.GenerateKey(signature.MLDSA87)
	if err != nil {
		t.Fatal(err)
	}
	pins, err := signature.NewKeySet(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	coh, err := cohort.NewSoftware(secret)
	if err != nil {
		t.Fatal(err)
	}
	f := &sysFleet{
		b: b, dir: t.TempDir(), key: key, pins: pins, cohort: coh,
		issLog: &logBuffer{}, devLog: &logBuffer{}, devices: map[string]*sysDevice{},
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("issuer log:\n%s", tail(f.issLog.String(), 60))
			t.Logf("device log:\n%s", tail(f.devLog.String(), 60))
		}
	})
	return f
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// issuerConfig is the configuration ekem-issuer run would use against this
// broker, with the JSON log captured in f.issLog.
func (f *sysFleet) issuerConfig() ekissuer.Config {
	a := f.account(issuer)
	cfg := ekissuer.Config{
		Broker: f.brokerURL(), Username: a.Username, Password: a.Password,
		Key: f.key, StorePath: filepath.Join(f.dir, "issuer.db"), Period: sysPeriod,
		Logger: slog.New(slog.NewJSONHandler(f.issLog, &slog.HandlerOptions{Level: slog.LevelDebug})), // the issuer adds role=issuer itself
	}
	if f.nats != nil {
		// As broker-config/nats/README.md tells an operator to run it.
		cfg.NudgeInterval = natsNudge
	}
	return cfg
}

// startIssuer opens the issuer's store (f.dir/issuer.db, so a second call
// reopens the same store), applies mod and starts it. It is closed at the
// end of the test.
func (f *sysFleet) startIssuer(t *testing.T, mod func(*ekissuer.Config)) *ekissuer.Issuer {
	t.Helper()
	cfg := f.issuerConfig()
	if mod != nil {
		mod(&cfg)
	}
	iss, err := ekissuer.New(cfg)
	if err != nil {
		t.Fatalf("issuer.New: %v", err)
	}
	t.Cleanup(func() { iss.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), sysTimeout)
	defer cancel()
	if err := iss.Start(ctx); err != nil {
		t.Fatalf("issuer.Start: %v", err)
	}
	f.iss = iss
	return iss
}

// startDevice creates (or, if its state directory already holds one,
// reopens) device id and runs it. It is closed at the end of the test.
func (f *sysFleet) startDevice(t *testing.T, id string) *sysDevice {
	t.Helper()
	return f.startDeviceWith(t, id, nil)
}

// startDeviceWith is startDevice with mod applied to the configuration.
func (f *sysFleet) startDeviceWith(t *testing.T, id string, mod func(*device.Config)) *sysDevice {
	t.Helper()
	d := &sysDevice{id: id, dir: filepath.Join(f.dir, id), events: &eventLog{}, runErr: make(chan error, 1)}
	c := device.Config{
		ID: id, Broker: f.brokerURL(), Password: f.account(id).Password, StateDir: d.dir,
		Cohort: f.cohort, IssuerKeys: f.pins, Logger: deviceLogger(f.devLog), OnEvent: d.events.add,
	}
	if mod != nil {
		mod(&c)
	}
	a, err := device.New(c)
	if err != nil {
		t.Fatalf("device.New(%s): %v", id, err)
	}
	d.agent = a
	t.Cleanup(func() { a.Close() })
	go func() { d.runErr <- a.Run(context.Background()) }()
	f.devices[id] = d
	return d
}

// deviceLogger logs a device's records as JSON into buf.
func deviceLogger(buf *logBuffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})).With("role", "device")
}

// startDevices starts ids and waits until the issuer pinned every one.
func (f *sysFleet) startDevices(t *testing.T, ids ...string) {
	t.Helper()
	for _, id := range ids {
		f.startDevice(t, id)
	}
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), sysTimeout)
		_, err := f.iss.WaitRegistered(ctx, id)
		cancel()
		if err != nil {
			t.Fatalf("issuer did not pin %s: %v", id, err)
		}
	}
}

// issue issues one epoch and checks its number.
func (f *sysFleet) issue(t *testing.T, want uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sysTimeout)
	defer cancel()
	e, err := f.iss.IssueEpoch(ctx)
	if err != nil {
		t.Fatalf("IssueEpoch (want epoch %d): %v", want, err)
	}
	if e != want {
		t.Fatalf("IssueEpoch issued epoch %d, want %d", e, want)
	}
}

// waitEpoch waits until every device of ids accepted epoch e and the issuer
// verified its confirm tag for e (DeviceInfo.ConfirmedEpoch == e).
func (f *sysFleet) waitEpoch(t *testing.T, e uint64, ids ...string) {
	t.Helper()
	for _, id := range ids {
		d := f.devices[id]
		ctx, cancel := context.WithTimeout(context.Background(), sysTimeout)
		err := d.agent.WaitEpoch(ctx, e)
		cancel()
		if err != nil {
			t.Fatalf("%s did not accept epoch %d: %v (events %s)", id, e, err, describeEvents(d.events.all()))
		}
		if got := d.agent.Epoch(); got != e {
			t.Fatalf("%s is on epoch %d, want %d", id, got, e)
		}
		ctx, cancel = context.WithTimeout(context.Background(), sysTimeout)
		info, err := f.iss.WaitConfirmed(ctx, id, e)
		cancel()
		if err != nil {
			info, _ = f.iss.Device(id)
			t.Fatalf("issuer did not verify %s's confirm tag for epoch %d: %v (ConfirmedEpoch %d, LastEpoch %d)",
				id, e, err, info.ConfirmedEpoch, info.LastEpoch)
		}
		if info.ConfirmedEpoch != e || info.LastEpoch != e {
			t.Fatalf("issuer: %s ConfirmedEpoch %d LastEpoch %d, want %d", id, info.ConfirmedEpoch, info.LastEpoch, e)
		}
	}
}

// deviceInfo returns the issuer's snapshot of id.
func (f *sysFleet) deviceInfo(t testing.TB, id string) ekissuer.DeviceInfo {
	t.Helper()
	info, ok := f.iss.Device(id)
	if !ok {
		t.Fatalf("issuer does not know %s", id)
	}
	return info
}

func describeEvents(evs []device.Event) string {
	var s []string
	for _, ev := range evs {
		x := fmt.Sprintf("%s(e=%d te=%d", ev.Kind, ev.Epoch, ev.TicketEpoch)
		if ev.Gap {
			x += fmt.Sprintf(" gap since %d", ev.PrevEpoch)
		}
		if ev.Reason != 0 {
			x += " " + ev.Reason.String()
		}
		s = append(s, x+")")
	}
	return "[" + strings.Join(s, " ") + "]"
}

// sysWaitFor polls cond (every 10 ms) until it holds or sysTimeout passes,
// then fails the test with what.
func sysWaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(sysTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", sysTimeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitCounter waits until counters()[name] reaches at least want.
func waitCounter(t testing.TB, who string, counters func() map[string]uint64, name string, want uint64) {
	t.Helper()
	deadline := time.Now().Add(sysTimeout)
	for {
		c := counters()
		if c[name] >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: counter %q is %d, want at least %d within %v; counters %v", who, name, c[name], want, sysTimeout, c)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// keyHashOf is the pk_hash of an encapsulation key.
func keyHashOf(pk []byte) string { return fmt.Sprintf("%x", kem.PublicKeyHash(pk)) }
