package issuer

import (
	"encoding/hex"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/entropykem/entropykem/internal/buildinfo"
	"github.com/entropykem/entropykem/pkg/standing"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Fleet standings exported as ekem_devices{standing=...}: the words of
// pkg/standing (one vocabulary with the monitor and the docs). Every device
// in the store is in exactly one, judged from the issuer's record at scrape
// time (t = Config.Now()) and only from authenticated evidence, so a
// device's own unauthenticated reports (rejected, equivocation) are the
// monitor's to show, never the issuer's:
//
//   - revoked: an operator revoked it (Issuer.Revoke); it gets no tickets.
//   - quarantined: two different Status messages with one seq were seen
//     (schema/PROTOCOL.md §10, a clone); it gets no tickets until an
//     operator acts (Reset, Release).
//   - awaiting_approval: a re-enrollment (schema/PROTOCOL.md §7.6) of the
//     device is held for an operator's Approve.
//   - pending: active with a pinned key, but no ticket yet (it registered
//     after the last epoch, or an operator reset it).
//   - stale: active, and its latest ticket has expired (t ≥ issued_at +
//     ttl_s of that ticket), confirmed or not: the device holds no fresh
//     key (it refuses to hand out keys, device.ErrStale). Either the
//     issuer stopped issuing or the device missed everything since.
//   - current: active, it confirmed its latest ticket in a verified Status
//     (ConfirmedEpoch = LastEpoch) and that ticket has not expired. Active
//     devices get a ticket every epoch, so this is "confirmed the latest
//     epoch".
//   - lagging: active, its latest ticket has not expired, but it has not
//     confirmed it: it confirmed an earlier epoch or none (offline, slow,
//     or rejecting tickets). Right after an epoch is issued every device is
//     lagging until its Status arrives.
const (
	StandingCurrent          = string(standing.Current)
	StandingLagging          = string(standing.Lagging)
	StandingStale            = string(standing.Stale)
	StandingPending          = string(standing.Pending)
	StandingAwaitingApproval = string(standing.AwaitingApproval)
	StandingQuarantined      = string(standing.Quarantined)
	StandingRevoked          = string(standing.Revoked)
)

// JudgedStandings returns every standing the issuer judges, in the order
// they are exported.
func JudgedStandings() []string {
	return []string{StandingCurrent, StandingLagging, StandingStale, StandingPending, StandingAwaitingApproval, StandingQuarantined, StandingRevoked}
}

// epochIssueBuckets are the ekem_epoch_issue_duration_seconds histogram
// buckets: an epoch of one device takes milliseconds, one of 100,000
// devices tens of seconds (one ML-KEM encapsulation each).
func epochIssueBuckets() []float64 {
	return []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250}
}

// promState is the issuer's Prometheus registry, built on first use (the
// zero value is ready).
type promState struct {
	once  sync.Once
	reg   *prometheus.Registry
	issue prometheus.Histogram
}

// registry returns the issuer's registry, building it once.
func (i *Issuer) registry() *prometheus.Registry {
	p := &i.prom
	p.once.Do(func() {
		p.issue = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ekem_epoch_issue_duration_seconds",
			Help:    "Time to plan, encapsulate, sign and persist one epoch (before publishing).",
			Buckets: epochIssueBuckets(),
		})
		p.reg = prometheus.NewRegistry()
		p.reg.MustRegister(p.issue, &issuerCollector{i: i}, buildInfo("issuer"))
	})
	return p.reg
}

// setEpochDuration records how long an epoch took to build and persist.
func (i *Issuer) setEpochDuration(d time.Duration) {
	i.issueNanos.Store(int64(d))
	i.registry()
	i.prom.issue.Observe(d.Seconds())
}

// Registry returns the Prometheus registry behind MetricsHandler, so an
// embedding program can serve it with its own metrics or gather it.
func (i *Issuer) Registry() *prometheus.Registry { return i.registry() }

// MetricsHandler serves the issuer's metrics in the Prometheus exposition
// formats. Every name starts with ekem_, counters end in _total, durations
// are in seconds, and no label ever holds a device id (labels are bounded:
// results, reasons, states). See issuerCollector for the list.
func (i *Issuer) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(i.registry(), promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// HealthHandler is the liveness probe (/healthz): 200 "ok" while the issuer
// is not closed, else 503. A broker outage does not make it fail (the
// issuer reconnects by itself; restarting it would not help): that is
// ReadyHandler's job.
func (i *Issuer) HealthHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if i.ctx.Err() != nil {
			http.Error(w, "closed", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
}

// ReadyHandler is the readiness probe (/readyz): 200 "ready" when the
// issuer is started and connected to the broker, its store answers a read
// and the key that signs the next epoch is loaded; else 503 with one line
// per failed check ("broker: not connected", "store: ...", "key: not
// loaded", "key: epoch N needs key ...").
func (i *Issuer) ReadyHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if problems := i.readiness(); len(problems) > 0 {
			http.Error(w, strings.Join(problems, "\n"), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
}

// AdminHandler serves /metrics, /healthz and /readyz.
func (i *Issuer) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", i.MetricsHandler())
	mux.Handle("/healthz", i.HealthHandler())
	mux.Handle("/readyz", i.ReadyHandler())
	return mux
}

// readiness returns the failed readiness checks.
func (i *Issuer) readiness() []string {
	var out []string
	if i.ctx.Err() != nil {
		out = append(out, "issuer: closed")
	}
	if !i.brokerConnected() {
		out = append(out, "broker: not connected")
	}
	last, err := readLastEpoch(i.store)
	if err != nil {
		out = append(out, "store: not readable")
	}
	if i.cfg.Key == nil {
		out = append(out, "key: not loaded")
	} else if _, kid, err := signerFor(i.cfg, i.chain, last+1); err != nil {
		out = append(out, fmt.Sprintf("key: epoch %d needs key %x, which is not configured", last+1, kid))
	}
	return out
}

func (i *Issuer) brokerConnected() bool {
	c := i.client.Load()
	return c != nil && c.Connected() && i.ctx.Err() == nil
}

// buildInfo is ekem_build_info{role, version, goversion, revision} 1: the
// build "ekem-issuer version" reports (internal/buildinfo).
func buildInfo(role string) prometheus.Collector {
	bi := buildinfo.Read()
	if bi.Commit == buildinfo.UnknownCommit {
		bi.Commit = "" // an empty label rather than a word
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ekem_build_info", Help: "Build information; the value is always 1.",
		ConstLabels: prometheus.Labels{"role": role, "version": bi.Version, "goversion": bi.GoVersion, "revision": bi.Commit},
	})
	g.Set(1)
	return g
}

// Metric descriptions of issuerCollector. Label values are bounded sets:
// fixed results and states, and the issuer's own reason strings (never
// anything a message chose, except a device's reason code, which is
// mapped to its name or "unknown").
var (
	descRegistrations = prometheus.NewDesc("ekem_registrations_total",
		"Registrations handled, by result: pinned (first key), unchanged (same key again), rekeyed (valid re-key proof), rejected.",
		[]string{"result"}, nil)
	descRejects = prometheus.NewDesc("ekem_rejects_total",
		"Messages the issuer refused, by kind (registration, status, message) and reason.",
		[]string{"kind", "reason"}, nil)
	descStatuses = prometheus.NewDesc("ekem_statuses_total",
		"Status messages taken into the record, by the state the device reported (ok, gap: confirm verified; rejected, equivocation, stale: a problem report).",
		[]string{"state"}, nil)
	descDeviceReports = prometheus.NewDesc("ekem_device_reports_total",
		"Problem reports (rejected, equivocation, stale Status) by state and the device's reason code name.",
		[]string{"state", "reason"}, nil)
	descDuplicates = prometheus.NewDesc("ekem_statuses_duplicate_total",
		"Retained re-deliveries of a Status already recorded.", nil, nil)
	descConfirmFailures = prometheus.NewDesc("ekem_confirm_failures_total",
		"Status messages for the latest ticket whose confirm tag (check=confirm) or next-key tag (check=next_tag) failed verification.",
		[]string{"check"}, nil)
	descTickets = prometheus.NewDesc("ekem_tickets_issued_total", "Tickets issued (persisted), over all epochs.", nil, nil)
	descEpochs  = prometheus.NewDesc("ekem_epochs_issued_total", "Epochs issued (persisted) by this process.", nil, nil)
	descEpoch   = prometheus.NewDesc("ekem_current_epoch", "The last issued epoch (0: none yet).", nil, nil)
	descLastDur = prometheus.NewDesc("ekem_epoch_last_issue_duration_seconds",
		"Time to build, sign and persist the last epoch this process issued.", nil, nil)
	descClone = prometheus.NewDesc("ekem_clone_alarms_total",
		"ALARM: two different Status messages with one seq for one device (two devices share an id); the device was quarantined.", nil, nil)
	descEquivocation = prometheus.NewDesc("ekem_equivocation_alarms_total",
		"ALARM: a device reported equivocation (two different tickets for one epoch).", nil, nil)
	descDevices = prometheus.NewDesc("ekem_devices",
		"Devices by standing: current, lagging, stale, pending, awaiting_approval, quarantined, revoked (pkg/standing).",
		[]string{"standing"}, nil)
	descConnected = prometheus.NewDesc("ekem_broker_connected", "1 while the broker connection is up.", nil, nil)
	descPlain     = map[counter]*prometheus.Desc{
		cPublishFailures: prometheus.NewDesc("ekem_publish_failures_total", "Publishes that failed after every retry (republished after reconnection).", nil, nil),
		cPublishRetries:  prometheus.NewDesc("ekem_publish_retries_total", "Publish retries.", nil, nil),
		cRepublished:     prometheus.NewDesc("ekem_republished_messages_total", "Messages republished from the store after a (re)connection.", nil, nil),
		cStoreFailures:   prometheus.NewDesc("ekem_store_failures_total", "Store transactions that failed.", nil, nil),
		cStoreBadKey:     prometheus.NewDesc("ekem_store_bad_keys_total", "Stored device keys found invalid while planning an epoch.", nil, nil),
		cIssueFailures:   prometheus.NewDesc("ekem_issue_failures_total", "Epochs that could not be issued.", nil, nil),
		cEpochsAbandoned: prometheus.NewDesc("ekem_epochs_abandoned_total",
			"Streamed epochs begun but abandoned before their root was persisted (a store or key failure mid-stream); their numbers are never reused.", nil, nil),
		cStatusConflictUnauthenticated: prometheus.NewDesc("ekem_status_conflicts_unauthenticated_total",
			"Status messages that conflict with the recorded one (same seq, other bytes) where one of the two carries no verifying tag: counted, never a quarantine (issuer/conflict.go).", nil, nil),
		cLogLinesSuppressed: prometheus.NewDesc("ekem_log_lines_suppressed_total",
			"Log lines about refused messages not written because a device (or the issuer) was over its log budget; the messages themselves are counted as usual (issuer/loglimit.go).", nil, nil),
		cSigningKeyMissing: prometheus.NewDesc("ekem_signing_key_refusals_total",
			"Epochs refused because the key the stored key rotations require to sign them is not configured (-key, -next-key).", nil, nil),
	}
)

// Issuer signing key metrics (rotation.go). The kid label is the public
// key id in hex: a handful of values over the issuer's life.
var (
	descSigningKey = prometheus.NewDesc("ekem_signing_key_info",
		"The issuer key (kid, hex) that signs the next epoch (the last issued + 1) under the stored key rotations; the value is always 1.",
		[]string{"kid"}, nil)
	descNextKeyFrom = prometheus.NewDesc("ekem_signing_key_next_from_epoch",
		"First epoch signed by the next issuer key of a pending key rotation (0: no rotation pending).", nil, nil)
)

// reportStates are the Status states of a problem report.
var reportStates = []wire.State{wire.StateRejected, wire.StateEquivocation, wire.StateStale}

// issuerCollector computes the issuer's metrics at scrape time from
// the typed counters (counters.go) and the store.
type issuerCollector struct{ i *Issuer }

func (c *issuerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRegistrations, descRejects, descStatuses, descDeviceReports, descDuplicates,
		descConfirmFailures, descTickets, descEpochs, descEpoch, descLastDur, descClone, descEquivocation, descDevices, descConnected,
		descSigningKey, descNextKeyFrom} {
		ch <- d
	}
	for _, d := range descPlain {
		ch <- d
	}
}

func (c *issuerCollector) Collect(ch chan<- prometheus.Metric) {
	i := c.i
	snap := i.cnt.snapshot()
	c1 := func(k counter) uint64 { return snap.plain[k] }
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	regs := map[string]uint64{"pinned": c1(cRegistrationsPinned), "unchanged": c1(cRegistrationsSame),
		"rekeyed": c1(cRegistrationsRekeyed), "rejected": 0}
	checks := map[string]uint64{"confirm": 0, "next_tag": 0}
	for k, v := range snap.rejects {
		counter(descRejects, v, k.kind.String(), k.reason)
		switch {
		case k.kind == rejectRegistration:
			regs["rejected"] += v
		case k.kind == rejectStatus && k.reason == "bad_confirm":
			checks["confirm"] += v
		case k.kind == rejectStatus && k.reason == "bad_next_tag":
			checks["next_tag"] += v
		}
	}
	states := map[wire.State]uint64{wire.StateRejected: 0, wire.StateEquivocation: 0, wire.StateStale: 0}
	gap, verified := c1(cStatusesGap), c1(cStatusesVerified)
	states[wire.StateGap] = gap
	states[wire.StateOK] = verified - min(gap, verified)
	for k, v := range snap.reports {
		if slices.Contains(reportStates, k.state) {
			states[k.state] += v
			counter(descDeviceReports, v, k.state.String(), k.reason)
		}
	}
	for r, v := range regs {
		counter(descRegistrations, v, r)
	}
	for s, v := range states {
		counter(descStatuses, v, s.String())
	}
	for k, v := range checks {
		counter(descConfirmFailures, v, k)
	}
	for k, d := range descPlain {
		counter(d, c1(k))
	}
	counter(descDuplicates, c1(cStatusesDuplicate))
	counter(descTickets, c1(cTicketsIssued))
	counter(descEpochs, c1(cEpochs))
	counter(descClone, c1(cCloneDetected))
	counter(descEquivocation, c1(cEquivocationReported))
	last := i.LastEpoch()
	gauge(descEpoch, float64(last))
	kid := i.cfg.Key.Public().KID()
	if k, ok := i.chain.signerAt(last + 1); ok {
		kid = k
	}
	gauge(descSigningKey, 1, hex.EncodeToString(kid))
	nextFrom := 0.0
	if p := i.chain.pending(last); p != nil {
		nextFrom = float64(p.From)
	}
	gauge(descNextKeyFrom, nextFrom)
	gauge(descLastDur, time.Duration(i.issueNanos.Load()).Seconds())
	connected := 0.0
	if i.brokerConnected() {
		connected = 1
	}
	gauge(descConnected, connected)
	standings, err := i.standings(i.cfg.Now())
	if err != nil {
		i.log.Error("store read failed", "reason", "store_failure", "err", err)
		ch <- prometheus.NewInvalidMetric(descDevices, err)
		return
	}
	for _, s := range JudgedStandings() {
		gauge(descDevices, float64(standings[s]), s)
	}
}

// Standings counts the devices in the store by standing at time now (see
// StandingCurrent and the others). It reads every record once: O(devices).
func (i *Issuer) Standings(now time.Time) (map[string]int, error) { return i.standings(now) }

func (i *Issuer) standings(now time.Time) (map[string]int, error) {
	out := make(map[string]int, 7)
	for _, s := range JudgedStandings() {
		out[s] = 0
	}
	j := judge(now, i.awaitingApproval())
	err := i.store.View(func(tx ReadTx) error {
		return tx.Devices(func(r *record) error {
			out[j(r)]++
			return nil
		})
	})
	return out, err
}

// judge returns the standing of a record at now: awaiting_approval for
// an active device whose re-enrollment is held (awaiting), else standingOf.
// Every ticket of one epoch has the epoch's issued_at and ttl_s
// (IssueEpoch), so it decodes one ticket per epoch.
func judge(now time.Time, awaiting map[string]bool) func(*record) string {
	t, expiry := unixSeconds(now), map[uint64]uint64{}
	return func(r *record) string {
		if awaiting[r.ID] && r.State == stateActive {
			return StandingAwaitingApproval
		}
		return standingOf(r, t, expiry)
	}
}

// judge is judge at the issuer's clock, with its held re-enrollments.
func (i *Issuer) judge() func(*record) string { return judge(i.cfg.Now(), i.awaitingApproval()) }

// standingOf classifies one record at Unix time t; expiry caches each
// epoch's ticket expiry (0: its ticket did not decode, treated as expired).
func standingOf(r *record, t uint64, expiry map[uint64]uint64) string {
	switch {
	case r.State == stateRevoked:
		return StandingRevoked
	case r.State == stateQuarantined:
		return StandingQuarantined
	case r.Epoch == 0 || r.Ticket == nil:
		return StandingPending
	}
	exp, ok := expiry[r.Epoch]
	if !ok {
		if _, body, err := wire.ParseTicket(r.Ticket); err == nil {
			exp = body.IssuedAt + body.TTL
		}
		expiry[r.Epoch] = exp
	}
	switch {
	case t >= exp:
		return StandingStale
	case r.ConfirmedEpoch == r.Epoch:
		return StandingCurrent
	default:
		return StandingLagging
	}
}
