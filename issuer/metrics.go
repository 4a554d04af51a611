package issuer

import (
	"encoding/hex"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/entropykem/entropykem/internal/buildinfo"
	"github.com/entropykem/entropykem/pkg/wire"
)

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
		cNudged:          prometheus.NewDesc("ekem_nudged_messages_total", "Roots and unconfirmed tickets of the latest epoch republished by the nudge (Config.NudgeInterval).", nil, nil),
		cStatusPeeks:     prometheus.NewDesc("ekem_status_peeks_total", "Status topics of unconfirmed devices read by a brief subscription of their own (nudge).", nil, nil),
		cResubscribed:    prometheus.NewDesc("ekem_resubscriptions_total", "Times the issuer replaced its Status and registration subscriptions, which a peek showed had missed a Status (nudge).", nil, nil),
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
