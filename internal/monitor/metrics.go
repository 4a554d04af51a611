package monitor

import (
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/entropykem/entropykem/internal/buildinfo"
)

var (
	descFleetDevices = prometheus.NewDesc("ekem_fleet_devices",
		"Devices by state as the monitor sees them: revoked, quarantined, equivocation, stale, rejected, lagging, current, pending (internal/monitor).",
		[]string{"state"}, nil)
	descFleetEpoch = prometheus.NewDesc("ekem_fleet_epoch",
		"The latest epoch whose EpochRoot verified under the pinned issuer keys (0: none).", nil, nil)
	descFleetEpochIssued = prometheus.NewDesc("ekem_fleet_epoch_issued_timestamp_seconds",
		"issued_at of the latest verified EpochRoot, Unix seconds.", nil, nil)
	descFleetPeriod = prometheus.NewDesc("ekem_fleet_epoch_period_seconds",
		"The epoch period the issuer announces (EpochInfo period_s, unsigned; absent until one is seen), for the stalled-issuer alert.", nil, nil)
	descFleetMaxLag = prometheus.NewDesc("ekem_fleet_max_lag_epochs",
		"The largest number of epochs a device's last Status is behind the latest verified root.", nil, nil)
	descFleetRootFailures = prometheus.NewDesc("ekem_fleet_root_verification_failures_total",
		"ALARM: EpochRoot messages that failed verification under the pinned issuer keys.", nil, nil)
	descFleetClones = prometheus.NewDesc("ekem_fleet_clone_alarms_total",
		"ALARM: two different Status messages with one seq seen for one device.", nil, nil)
	descFleetSuspicious = prometheus.NewDesc("ekem_fleet_suspicious_reports_total",
		"Status messages that conflict with the recorded one (one seq) where one of the two carries no tag: possibly forged by an account holder; no device's state changes.", nil, nil)
	descFleetEquivocation = prometheus.NewDesc("ekem_fleet_equivocation_alarms_total",
		"ALARM: Status messages reporting equivocation (two tickets for one epoch).", nil, nil)
	descFleetKeysLearned = prometheus.NewDesc("ekem_fleet_issuer_keys_learned_total",
		"Issuer key rotations the monitor verified and now trusts for their epochs.", nil, nil)
	descFleetKeyConflicts = prometheus.NewDesc("ekem_fleet_issuer_key_conflicts_total",
		"ALARM: an issuer key announced two different successors.", nil, nil)
	descFleetMessages  = prometheus.NewDesc("ekem_fleet_messages_total", "Messages the monitor received.", nil, nil)
	descFleetMalformed = prometheus.NewDesc("ekem_fleet_malformed_messages_total",
		"Messages the monitor could not decode or that broke a rule (ignored).", nil, nil)
	descFleetConnected = prometheus.NewDesc("ekem_fleet_broker_connected", "1 while the monitor's broker connection is up.", nil, nil)
	descBrokerVersion  = prometheus.NewDesc("ekem_broker_info", "The broker's $SYS/broker/version; the value is always 1.", []string{"version"}, nil)
)

// sysDescs are the ekem_broker_* metrics from $SYS, by name.
var sysDescs = func() map[string]*prometheus.Desc {
	m := map[string]*prometheus.Desc{}
	for topic, name := range sysMetrics {
		m[name] = prometheus.NewDesc("ekem_broker_"+name, "The broker's "+topic+".", nil, nil)
	}
	return m
}()

// Collector exports a Fleet as Prometheus metrics (computed at scrape
// time, O(devices)); no label holds a device id.
type Collector struct {
	Fleet *Fleet
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Connected, if set, reports whether the broker connection is up.
	Connected func() bool
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFleetDevices, descFleetEpoch, descFleetEpochIssued, descFleetPeriod, descFleetMaxLag,
		descFleetRootFailures, descFleetClones, descFleetSuspicious, descFleetEquivocation, descFleetMessages, descFleetMalformed,
		descFleetKeysLearned, descFleetKeyConflicts,
		descFleetConnected, descBrokerVersion} {
		ch <- d
	}
	for _, d := range sysDescs {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	f := c.Fleet
	f.mu.Lock()
	totals, maxLag := f.totalsLocked(unix(now()))
	latest, issued := f.latest, f.roots[f.latest]
	var period uint64
	if f.info != nil {
		period = f.info.PeriodS
	}
	counts := map[string]uint64{}
	for k, v := range f.counts {
		counts[k] = v
	}
	sys := map[string]float64{}
	for k, v := range f.sys {
		sys[k] = v
	}
	version := f.sysText["version"]
	f.mu.Unlock()

	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	for _, s := range States {
		gauge(descFleetDevices, float64(totals[s]), s)
	}
	gauge(descFleetEpoch, float64(latest))
	if latest > 0 {
		gauge(descFleetEpochIssued, float64(issued))
	}
	if period > 0 {
		gauge(descFleetPeriod, float64(period))
	}
	gauge(descFleetMaxLag, float64(maxLag))
	counter(descFleetRootFailures, float64(counts[CountRootFailures]))
	counter(descFleetClones, float64(counts[CountClones]))
	counter(descFleetSuspicious, float64(counts[CountSuspicious]))
	counter(descFleetEquivocation, float64(counts[CountEquivocation]))
	counter(descFleetMessages, float64(counts[CountMessages]))
	counter(descFleetMalformed, float64(counts[CountMalformed]))
	counter(descFleetKeysLearned, float64(counts[CountKeysLearned]))
	counter(descFleetKeyConflicts, float64(counts[CountKeyConflicts]))
	if c.Connected != nil {
		v := 0.0
		if c.Connected() {
			v = 1
		}
		gauge(descFleetConnected, v)
	}
	names := make([]string, 0, len(sys))
	for k := range sys {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		typ := prometheus.GaugeValue
		if len(k) > 6 && k[len(k)-6:] == "_total" {
			typ = prometheus.CounterValue
		}
		ch <- prometheus.MustNewConstMetric(sysDescs[k], typ, sys[k])
	}
	if version != "" {
		gauge(descBrokerVersion, 1, version)
	}
}

// NewRegistry returns a registry with c and ekem_build_info{role="monitor"}.
func NewRegistry(c *Collector) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, buildInfo())
	return reg
}

func buildInfo() prometheus.Collector {
	bi := buildinfo.Read() // the same build as "ekemctl version"
	if bi.Commit == buildinfo.UnknownCommit {
		bi.Commit = "" // an empty label, as before, rather than a word
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ekem_build_info", Help: "Build information; the value is always 1.",
		ConstLabels: prometheus.Labels{"role": "monitor", "version": bi.Version, "goversion": bi.GoVersion, "revision": bi.Commit},
	})
	g.Set(1)
	return g
}
