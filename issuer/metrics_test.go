package issuer

import (
	"bufio"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// scrape GETs h and returns every sample as "name{labels}" → value, and
// the whole body.
func scrape(t testing.TB, h http.Handler) (map[string]float64, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("/metrics: %d %s", rec.Code, rec.Body)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(rec.Body.String()))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad sample %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out, rec.Body.String()
}

func wantSamples(t testing.TB, got map[string]float64, want map[string]float64) {
	t.Helper()
	for k, v := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("no sample %s", k)
			continue
		}
		if g != v {
			t.Errorf("%s = %v, want %v", k, g, v)
		}
	}
}

func standingSamples(cur, lag, stale, pending, quar, rev float64) map[string]float64 {
	return map[string]float64{
		`ekem_devices{standing="current"}`: cur, `ekem_devices{standing="lagging"}`: lag,
		`ekem_devices{standing="stale"}`: stale, `ekem_devices{standing="pending"}`: pending, `ekem_devices{standing="awaiting_approval"}`: 0,
		`ekem_devices{standing="quarantined"}`: quar, `ekem_devices{standing="revoked"}`: rev,
	}
}

// TestMetricsFleetStandings drives devices into every standing and checks
// ekem_devices, the alarms, the reject and status counters, the histogram,
// and that no device id appears anywhere in the exposition.
func TestMetricsFleetStandings(t *testing.T) {
	e := newEnv(t)
	cur, lag, clone, rev, eq := newDevice(t, "dev-cur"), newDevice(t, "dev-lag"), newDevice(t, "dev-clone"), newDevice(t, "dev-rev"), newDevice(t, "dev-eq")
	for _, d := range []*device{cur, lag, clone, rev, eq} {
		e.register(d)
	}
	// A malformed registration is a reject with its reason.
	e.iss.handle(e.iss.topics.Registration("dev-x"), []byte{0xa0})
	if err := e.iss.Admin().Revoke("dev-rev", testOp); err != nil {
		t.Fatal(err)
	}
	got, _ := scrape(t, e.iss.MetricsHandler())
	wantSamples(t, got, standingSamples(0, 0, 0, 4, 0, 1))
	wantSamples(t, got, map[string]float64{"ekem_current_epoch": 0, "ekem_epoch_issue_duration_seconds_count": 0})

	e.issue()
	for _, d := range []*device{cur, eq} {
		e.iss.handle(e.iss.topics.Status(d.id), d.status(e.deliver(d)))
	}
	cloneRes := e.deliver(clone)
	e.iss.handle(e.iss.topics.Status(clone.id), clone.status(cloneRes))
	// dev-clone: a second, different Status with the same seq whose tags
	// verify (an unauthenticated one would not quarantine).
	clone.seq--
	e.iss.handle(e.iss.topics.Status(clone.id), clone.status(cloneRes, func(s *wire.Status) { s.Time++ }))
	// dev-eq: reports equivocation (an alarm) with the next seq.
	e.iss.handle(e.iss.topics.Status(eq.id), eq.statusProblem(wire.StateEquivocation, accept.ReasonEquivocation, 1, e.record(eq.id).TicketHash))
	// dev-lag: a Status with a bad confirm tag is refused.
	r := e.deliver(lag)
	e.iss.handle(e.iss.topics.Status(lag.id), lag.status(r, func(s *wire.Status) { s.Confirm[0] ^= 1 }))
	// A device registered after the epoch has no ticket yet.
	e.register(newDevice(t, "dev-new"))

	got, body := scrape(t, e.iss.MetricsHandler())
	// dev-eq reported a problem after confirming, so its record still
	// says it confirmed epoch 1: current.
	wantSamples(t, got, standingSamples(2, 1, 0, 1, 1, 1))
	wantSamples(t, got, map[string]float64{
		"ekem_current_epoch":                                                    1,
		"ekem_epochs_issued_total":                                              1,
		"ekem_tickets_issued_total":                                             4,
		"ekem_epoch_issue_duration_seconds_count":                               1,
		"ekem_clone_alarms_total":                                               1,
		"ekem_equivocation_alarms_total":                                        1,
		`ekem_registrations_total{result="pinned"}`:                             6,
		`ekem_registrations_total{result="rejected"}`:                           1,
		`ekem_rejects_total{kind="registration",reason="malformed"}`:            1,
		`ekem_rejects_total{kind="status",reason="bad_confirm"}`:                1,
		`ekem_confirm_failures_total{check="confirm"}`:                          1,
		`ekem_confirm_failures_total{check="next_tag"}`:                         0,
		`ekem_statuses_total{state="ok"}`:                                       3,
		`ekem_statuses_total{state="equivocation"}`:                             1,
		`ekem_statuses_total{state="stale"}`:                                    0,
		`ekem_device_reports_total{reason="equivocation",state="equivocation"}`: 1,
		"ekem_broker_connected":                                                 0,
	})
	if !strings.Contains(body, `ekem_build_info{goversion="go`) {
		t.Errorf("no ekem_build_info:\n%s", body)
	}
	if strings.Contains(body, "dev-") {
		t.Errorf("a device id appears in the metrics:\n%s", body)
	}

	// Past the tickets' ttl (default 2 periods), every issued device that
	// is still active is stale, confirmed or not.
	e.clock.Set(e.clock.Now().Add(2*time.Hour + time.Second))
	got, _ = scrape(t, e.iss.MetricsHandler())
	wantSamples(t, got, standingSamples(0, 0, 3, 1, 1, 1))
	// One second earlier they were not.
	e.clock.Set(e.clock.Now().Add(-2 * time.Second))
	got, _ = scrape(t, e.iss.MetricsHandler())
	wantSamples(t, got, standingSamples(2, 1, 0, 1, 1, 1))
}

// statusProblem returns the next Status (seq advanced) reporting state
// with reason for epoch, whose accepted ticket hashed to ticketHash.
func (d *device) statusProblem(state wire.State, reason accept.Reason, epoch uint64, ticketHash []byte) []byte {
	d.t.Helper()
	d.seq++
	st := &wire.Status{Version: 1, DeviceID: d.id, Epoch: epoch, State: state, Reason: uint64(reason), Time: 1767225620, Seq: d.seq, TicketHash: ticketHash}
	b, err := st.Marshal()
	if err != nil {
		d.t.Fatal(err)
	}
	return b
}

func TestHealthAndReadiness(t *testing.T) {
	e := newEnv(t)
	h := e.iss.AdminHandler()
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz of a live issuer: %d", code)
	}
	code, body := get("/readyz")
	if code != 503 || !strings.Contains(body, "broker: not connected") || strings.Contains(body, "store") || strings.Contains(body, "key") {
		t.Fatalf("/readyz before Start: %d %q", code, body)
	}
	if code, _ := get("/metrics"); code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	if err := e.iss.Close(); err != nil {
		t.Fatal(err)
	}
	if code, _ := get("/healthz"); code != 503 {
		t.Fatalf("/healthz of a closed issuer: %d", code)
	}
	code, body = get("/readyz")
	if code != 503 || !strings.Contains(body, "issuer: closed") || !strings.Contains(body, "store: not readable") {
		t.Fatalf("/readyz after Close: %d %q", code, body)
	}
}

// BenchmarkStandings10k measures one ekem_devices computation over 10,000
// stored devices (a scrape reads every record once; one ticket per epoch
// is decoded).
func BenchmarkStandings10k(b *testing.B) {
	e := newEnv(b)
	e.register(newDevice(b, "dev-0"))
	e.issue()
	tmpl := e.record("dev-0")
	err := e.iss.store.Update(func(tx Tx) error {
		for k := 1; k < 10_000; k++ {
			r := *tmpl
			r.ID = fmt.Sprintf("dev-%d", k)
			if err := tx.PutDevice(&r); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	now := e.clock.Now()
	b.ResetTimer()
	for b.Loop() {
		s, err := e.iss.Standings(now)
		if err != nil || s[StandingLagging] != 10_000 {
			b.Fatalf("%v %v", s, err)
		}
	}
}

// TestMetricsSigningKey: ekem_signing_key_info names the key that signs the
// next epoch, ekem_signing_key_next_from_epoch is the first epoch of the
// pending key rotation (0: none), and ekem_signing_key_refusals_total
// counts epochs refused because that key is not configured.
func TestMetricsSigningKey(t *testing.T) {
	e := newEnv(t)
	k0, k1 := e.cfg.Key, testKey(t, 0x11)
	info := func(k *signature.PrivateKey) string { return `ekem_signing_key_info{kid="` + kidHex(k) + `"}` }
	check := func(signer, other *signature.PrivateKey, nextFrom, refusals float64) {
		t.Helper()
		got, _ := scrape(t, e.iss.MetricsHandler())
		wantSamples(t, got, map[string]float64{info(signer): 1, "ekem_signing_key_next_from_epoch": nextFrom,
			"ekem_signing_key_refusals_total": refusals})
		if _, ok := got[info(other)]; ok {
			t.Errorf("%s exported too", info(other))
		}
	}
	e.register(newDevice(t, "dev-1"))
	check(k0, k1, 0, 0)
	e.issue()
	e.announce(k0, k1, 1) // k1 signs from epoch 3 on
	e.restart(k0, nil)
	check(k0, k1, 3, 0)
	e.issue()
	check(k1, k0, 3, 0) // epoch 3 is next: k1's, still pending
	if _, err := e.iss.IssueEpoch(t.Context()); !errors.Is(err, ErrSigningKey) {
		t.Fatalf("epoch 3 without k1: %v", err)
	}
	check(k1, k0, 3, 1)
	e.restart(k0, k1)
	e.issue()
	check(k1, k0, 0, 0)
}
