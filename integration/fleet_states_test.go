package integration

// The fleet's standings on a real Mosquitto: current, lagging (a device
// closed for an epoch), stale (tickets past their ttl), quarantined (a
// clone: a second, different Status with a repeated seq, published from
// the device's own account), revoked (OnlineAdmin.Revoke) and a device
// reporting equivocation, as seen by the issuer's metrics
// (MetricsHandler, scraped through httptest) and by "ekemctl fleet status
// -json" (internal/monitor's run function, in-process, with the read-only
// monitor account, once over passwords and once over TLS client
// certificates).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/entropykem/entropykem/device"
	fleetmon "github.com/entropykem/entropykem/internal/monitor"
	"github.com/entropykem/entropykem/internal/mosquittotest"
	"github.com/entropykem/entropykem/internal/mqttc"
	ekissuer "github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// offsetClock is a wall clock that a test can move forward, shared by the
// issuer, the devices and the monitor.
type offsetClock struct{ off atomic.Int64 }

func (c *offsetClock) Now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *offsetClock) Advance(d time.Duration) { c.off.Add(int64(d)) }

// startClockedDevice is startDevice with the shared clock and a fast stale
// check.
func (f *sysFleet) startClockedDevice(t *testing.T, id string, clk *offsetClock) *sysDevice {
	t.Helper()
	return f.startDeviceWith(t, id, func(c *device.Config) { c.Now, c.StaleInterval = clk.Now, 20*time.Millisecond })
}

// issuerSamples scrapes the issuer's /metrics.
func issuerSamples(t testing.TB, iss *ekissuer.Issuer) map[string]float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	iss.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	out := map[string]float64{}
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		k := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[k+1:], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", line, err)
		}
		out[line[:k]] = v
	}
	return out
}

// waitStandings waits until the issuer's ekem_devices gauges equal want.
func waitStandings(t testing.TB, iss *ekissuer.Issuer, want map[string]int) {
	t.Helper()
	var got map[string]float64
	sysWaitFor(t, "issuer standings "+strconv.Quote(strings.ReplaceAll(strings.TrimSpace(stringMap(want)), "\n", " ")), func() bool {
		got = issuerSamples(t, iss)
		for _, s := range ekissuer.JudgedStandings() {
			if got[`ekem_devices{standing="`+s+`"}`] != float64(want[s]) {
				return false
			}
		}
		return true
	})
}

func stringMap(m map[string]int) string {
	var b strings.Builder
	for _, s := range ekissuer.JudgedStandings() {
		if m[s] != 0 {
			b.WriteString(s + "=" + strconv.Itoa(m[s]) + " ")
		}
	}
	return b.String()
}

// monitorFiles writes the issuer public key and the monitor's password and
// TLS files, and returns the flags for both ways in.
func monitorFiles(t *testing.T, f *sysFleet) (passwordArgs, tlsArgs []string) {
	t.Helper()
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pub := write("issuer.pub", signature.MarshalPublicKeyPEM(f.key.Public()))
	pw := write("monitor.pw", []byte(f.b.Monitor().Password+"\n"))
	cr := f.b.Creds()
	ca := write("ca.crt", cr.CA.CertPEM())
	mc := cr.Clients["ekem-monitor"]
	cert, key := write("monitor.crt", mc.CertPEM), write("monitor.key", mc.KeyPEM)
	common := []string{"-issuer-pub", pub, "-json", "-settle", "300ms", "-timeout", "20s"}
	passwordArgs = append([]string{"-broker", f.b.URL(), "-username", "ekem-monitor", "-password-file", pw}, common...)
	tlsArgs = append([]string{"-broker", f.b.TLSURL(), "-ca", ca, "-cert", cert, "-key", key}, common...)
	return passwordArgs, tlsArgs
}

// fleetStatus runs "ekemctl fleet status ARGS" in-process and decodes its
// JSON; it returns the snapshot and the exit code.
func fleetStatus(t *testing.T, args []string, clk *offsetClock) (fleetmon.Snapshot, int, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	o, err := fleetmon.ParseOptions(args, &stderr)
	if err != nil {
		t.Fatalf("fleet status flags: %v", err)
	}
	o.Now = clk.Now
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code, err := fleetmon.Run(ctx, o, &stdout, &stderr)
	if err != nil {
		t.Fatalf("fleet status: exit %d: %v\nstderr: %s", code, err, stderr.String())
	}
	var s fleetmon.Snapshot
	if err := json.Unmarshal(stdout.Bytes(), &s); err != nil {
		t.Fatalf("fleet status -json output: %v\n%s", err, stdout.String())
	}
	return s, code, stderr.String()
}

// wantFleet checks rows (id → state, epoch, lag) and totals.
func wantFleet(t *testing.T, s fleetmon.Snapshot, epoch uint64, rows map[string]fleetmon.Row) {
	t.Helper()
	if s.Epoch != epoch {
		t.Errorf("fleet epoch %d, want %d", s.Epoch, epoch)
	}
	got := map[string]fleetmon.Row{}
	for _, r := range s.Devices {
		got[r.ID] = r
	}
	totals := map[string]int{}
	for id, w := range rows {
		totals[w.State]++
		g, ok := got[id]
		if !ok {
			t.Errorf("fleet status has no row for %s", id)
			continue
		}
		if g.State != w.State || g.Epoch != w.Epoch || g.Lag != w.Lag || !strings.Contains(g.Reason, w.Reason) {
			t.Errorf("%s: state %s epoch %d lag %d reason %q; want %s %d %d %q", id, g.State, g.Epoch, g.Lag, g.Reason, w.State, w.Epoch, w.Lag, w.Reason)
		}
	}
	if len(s.Devices) != len(rows) {
		t.Errorf("fleet status has %d rows, want %d", len(s.Devices), len(rows))
	}
	for _, st := range fleetmon.States {
		if s.Totals[st] != totals[st] {
			t.Errorf("totals[%s] = %d, want %d", st, s.Totals[st], totals[st])
		}
	}
}

// publishAs publishes one retained Status from a device's own account.
func publishAs(t *testing.T, f *sysFleet, id string, payload []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sysTimeout)
	defer cancel()
	c, err := mqttc.Dial(ctx, mqttc.Options{Broker: f.b.URL(), ClientID: id + "-crafted", Username: id,
		Password: f.b.Account(id).Password, Timeout: sysTimeout, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("dial as %s: %v", id, err)
	}
	defer c.Close()
	if err := c.Publish(wire.Topics{Prefix: wire.DefaultPrefix}.Status(id), payload, true); err != nil {
		t.Fatalf("publish as %s: %v", id, err)
	}
}

// reStatus returns the device's last Status, changed by mod and
// re-encoded.
func reStatus(t *testing.T, last []byte, mod func(*wire.Status)) []byte {
	t.Helper()
	st, err := wire.ParseStatus(last)
	if err != nil {
		t.Fatal(err)
	}
	mod(st)
	b, err := st.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFleetStandingsOnMosquitto(t *testing.T) {
	ids := []string{"cur", "lag", "quar", "rev", "eqv"}
	f := newSysFleet(t, ids...)
	// A second broker, with client certificates for the TLS listener
	// (the monitor uses both listeners); the first one idles.
	f.b = mosquittotest.Start(t, mosquittotest.Options{Devices: ids, TLS: true})
	clk := &offsetClock{}
	iss := f.startIssuer(t, func(c *ekissuer.Config) { c.Now = clk.Now })
	for _, id := range ids {
		f.startClockedDevice(t, id, clk)
	}
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), sysTimeout)
		if _, err := iss.WaitRegistered(ctx, id); err != nil {
			t.Fatalf("%s not pinned: %v", id, err)
		}
		cancel()
	}
	pwArgs, tlsArgs := monitorFiles(t, f)
	waitStandings(t, iss, map[string]int{"pending": 5})

	// Epoch 1: everyone current.
	f.issue(t, 1)
	f.waitEpoch(t, 1, ids...)
	waitStandings(t, iss, map[string]int{"current": 5})
	s, code, _ := fleetStatus(t, pwArgs, clk)
	row := func(state string, epoch, lag uint64, reason string) fleetmon.Row {
		return fleetmon.Row{State: state, Epoch: epoch, Lag: lag, Reason: reason}
	}
	wantFleet(t, s, 1, map[string]fleetmon.Row{"cur": row("current", 1, 0, ""), "lag": row("current", 1, 0, ""),
		"quar": row("current", 1, 0, ""), "rev": row("current", 1, 0, ""), "eqv": row("current", 1, 0, "")})
	if code != fleetmon.ExitOK {
		t.Errorf("exit %d with no alarm", code)
	}

	// "lag" is powered off for an epoch; "eqv" goes off and its account
	// reports equivocation; "quar" is cloned (a second, different Status
	// with its last seq); "rev" is revoked.
	f.devices["lag"].stop(t)
	f.devices["eqv"].stop(t)
	eqLast := f.devices["eqv"].agent.StatusBytes()
	publishAs(t, f, "eqv", reStatus(t, eqLast, func(s *wire.Status) {
		s.Seq++
		s.State, s.Reason = wire.StateEquivocation, uint64(accept.ReasonEquivocation)
		s.Confirm, s.NextAlg, s.NextPK, s.NextTag, s.PrevEpoch = nil, 0, nil, nil, nil
	}))
	waitCounter(t, "issuer", iss.Counters, "equivocation_reported", 1)
	quarLast := f.devices["quar"].agent.StatusBytes()
	// The broker binds the client id to the username: the clone's
	// connection takes over quar's session, and quar, reconnecting, would
	// republish its own Status, which a monitor reading at that moment sees
	// as the clone itself ("clone") rather than the issuer's withholding.
	// quar is off while its clone speaks, so the view is deterministic.
	f.devices["quar"].stop(t)
	publishAs(t, f, "quar", reStatus(t, quarLast, func(s *wire.Status) { s.Time++ }))
	ctx, cancel := context.WithTimeout(context.Background(), sysTimeout)
	if _, err := iss.WaitFor(ctx, "quar", func(d ekissuer.DeviceInfo) bool { return d.State == ekissuer.StateQuarantined }); err != nil {
		t.Fatalf("clone not quarantined: %v", err)
	}
	cancel()
	if err := iss.Admin().Revoke("rev", ekissuer.Operator{Actor: "test", Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	f.issue(t, 2)
	f.waitEpoch(t, 2, "cur")
	waitStandings(t, iss, map[string]int{"current": 1, "lagging": 2, "quarantined": 1, "revoked": 1})
	m := issuerSamples(t, iss)
	for k, v := range map[string]float64{
		"ekem_clone_alarms_total": 1, "ekem_equivocation_alarms_total": 1, "ekem_current_epoch": 2,
		"ekem_tickets_issued_total": 5 + 3, "ekem_epoch_issue_duration_seconds_count": 2, "ekem_broker_connected": 1,
		`ekem_statuses_total{state="equivocation"}`: 1, `ekem_registrations_total{result="pinned"}`: 5,
	} {
		if m[k] != v {
			t.Errorf("issuer metric %s = %v, want %v", k, m[k], v)
		}
	}
	want2 := map[string]fleetmon.Row{"cur": row("current", 2, 0, ""), "lag": row("lagging", 1, 1, ""),
		"quar": row("quarantined", 1, 1, "withheld"), "rev": row("revoked", 1, 1, "no ticket"),
		"eqv": row("equivocation", 1, 1, "equivocation")}
	s, code, stderr := fleetStatus(t, pwArgs, clk)
	wantFleet(t, s, 2, want2)
	if code != fleetmon.ExitAlarm || !strings.Contains(stderr, "ALARM equivocation") {
		t.Errorf("equivocation: exit %d, stderr %q", code, stderr)
	}
	// $SYS figures are published every sys_interval, so only their
	// presence is certain this early.
	_, up := s.Broker["uptime_seconds"]
	_, ret := s.Broker["retained_messages"]
	if !up || !ret || s.Counters[fleetmon.CountRootFailures] != 0 {
		t.Errorf("broker figures %v, counters %v", s.Broker, s.Counters)
	}
	// The same over TLS with the monitor's client certificate.
	s, _, _ = fleetStatus(t, tlsArgs, clk)
	wantFleet(t, s, 2, want2)

	// Past the tickets' ttl (2 periods) and the devices' skew: the
	// running device reports stale, and the issuer and the monitor judge
	// every active device with an expired ticket stale.
	clk.Advance(2*sysPeriod + device.DefaultSkew + time.Minute)
	sysWaitFor(t, "cur reports stale", func() bool { return len(f.devices["cur"].events.ofKind(device.EventStale)) > 0 })
	waitStandings(t, iss, map[string]int{"stale": 3, "quarantined": 1, "revoked": 1})
	s, _, _ = fleetStatus(t, pwArgs, clk)
	wantFleet(t, s, 2, map[string]fleetmon.Row{"cur": row("stale", 2, 0, "stale"), "lag": row("stale", 1, 1, "expired"),
		"quar": row("quarantined", 1, 1, "withheld"), "rev": row("revoked", 1, 1, "no ticket"),
		"eqv": row("equivocation", 1, 1, "equivocation")})
}
