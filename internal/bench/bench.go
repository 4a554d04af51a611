// Package bench is the system benchmark behind `ekemctl bench`: in one run,
// on a real Mosquitto started with the shipped broker-config on loopback, it
// measures the broker floor (raw paho QoS 1 retained publishes of a
// ticket-sized payload), the issuer's epoch throughput through that broker,
// the issuer's crypto per ticket against its primitive floor, a device's
// ticket processing and memory, and a simulated fleet's rotation latency,
// and checks each against the project's performance goals.
//
// Every number is a median over Config.Reps repetitions unless it is a
// percentile; every ratio is between numbers measured in the same run.
// Timings are for this machine under its current load (Report.Machine).
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// ErrConfig is returned for an invalid Config.
var ErrConfig = errors.New("bench: invalid configuration")

// Config sizes one run. Zero values take the defaults.
type Config struct {
	// Devices is the issuer epoch size N (default 10000).
	Devices int
	// Fleet is the number of simulated device agents M (default 200).
	Fleet int
	// CryptoDevices is the epoch size of the crypto-only measurements
	// (default min(Devices, 10000)); per-ticket cost barely depends on it.
	CryptoDevices int
	// Reps is how many repetitions each median is over (default 3).
	Reps int
	// Dir is where the broker's and issuer's files go (default a new
	// directory under os.TempDir, removed afterwards). Device state
	// directories of the fleet go under /dev/shm when it exists.
	Dir string
	// FleetTimeout bounds the wait for the fleet's acknowledgements
	// (default 120 s).
	FleetTimeout time.Duration
	// Store, if set, is an empty PostgreSQL database (postgres://…): the
	// issuer epochs are then measured on it too, after the bbolt ones,
	// over the same devices in the same run.
	Store string
	// Broker is "mosquitto" (default) or "nats": also measure the publish
	// floor, the issuer's epoch and the memory per retained ticket on a
	// 3-node NATS JetStream cluster, side by side (nats.go).
	Broker string
	// SkipChild measures the device agent's RSS only from the fleet process
	// (divided) instead of also running one agent in its own process.
	SkipChild bool
}

func (c *Config) defaults() error {
	if c.Devices == 0 {
		c.Devices = 10000
	}
	if c.Fleet == 0 {
		c.Fleet = 200
	}
	if c.CryptoDevices == 0 {
		c.CryptoDevices = min(c.Devices, 10000)
	}
	if c.Reps == 0 {
		c.Reps = 3
	}
	if c.FleetTimeout == 0 {
		c.FleetTimeout = 120 * time.Second
	}
	if c.Broker == "" {
		c.Broker = BrokerMosquitto
	}
	switch {
	case c.Broker != BrokerMosquitto && c.Broker != BrokerNATS:
		return fmt.Errorf("%w: broker must be %s or %s, got %q", ErrConfig, BrokerMosquitto, BrokerNATS, c.Broker)
	case c.Devices < 2 || c.Devices > 2_000_000:
		return fmt.Errorf("%w: devices must be 2..2000000, got %d", ErrConfig, c.Devices)
	case c.Fleet < 1 || c.Fleet > 50_000:
		return fmt.Errorf("%w: fleet must be 1..50000, got %d", ErrConfig, c.Fleet)
	case c.CryptoDevices < 2 || c.CryptoDevices > c.Devices:
		return fmt.Errorf("%w: crypto devices must be 2..devices, got %d", ErrConfig, c.CryptoDevices)
	case c.Reps < 1 || c.Reps > 100:
		return fmt.Errorf("%w: reps must be 1..100, got %d", ErrConfig, c.Reps)
	}
	return nil
}

// Row is one measured quantity.
type Row struct {
	Key   string  `json:"key"`   // stable identifier, e.g. "publish.raw_rate"
	Label string  `json:"label"` // what the table prints
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	// Ratio, if not zero, is Value relative to the quantity named RatioTo.
	Ratio   float64   `json:"ratio,omitempty"`
	RatioTo string    `json:"ratio_to,omitempty"`
	Samples []float64 `json:"samples,omitempty"`
	Note    string    `json:"note,omitempty"`
}

// Goal is one performance goal and whether this run met it.
type Goal struct {
	Name     string `json:"name"`
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Pass     bool   `json:"pass"`
	Note     string `json:"note,omitempty"`
}

// Machine describes where the run happened.
type Machine struct {
	NumCPU       int    `json:"num_cpu"`
	CPU          string `json:"cpu"`
	GoVersion    string `json:"go_version"`
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end"`
	Mosquitto    string `json:"mosquitto"`
}

// Report is one run's result.
type Report struct {
	Machine  Machine       `json:"machine"`
	Config   Config        `json:"config"`
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration_ns"`
	Rows     []Row         `json:"rows"`
	Goals    []Goal        `json:"goals"`
	// FleetError says why the fleet measurement failed, if it did.
	FleetError string `json:"fleet_error,omitempty"`
}

// Row returns the row with key k.
func (r *Report) Row(k string) (Row, bool) {
	for _, x := range r.Rows {
		if x.Key == k {
			return x, true
		}
	}
	return Row{}, false
}

func (r *Report) add(row Row) { r.Rows = append(r.Rows, row) }

func (r *Report) value(k string) float64 {
	x, _ := r.Row(k)
	return x.Value
}

// RowKeys are the keys every complete report has, in table order.
var RowKeys = []string{
	"publish.raw_rate", "publish.ticket_bytes",
	"issuer.epoch_rate", "issuer.publish_rate", "issuer.build_persist", "issuer.epoch_time", "issuer.projection_1m",
	"crypto.floor_parsed", "crypto.issue_parsed", "crypto.floor_parse", "crypto.issue_parse", "crypto.issue_parallel", "crypto.seed_per_ticket",
	"device.accept_median", "device.accept_p99", "device.accept_uncached", "device.rss_process", "device.rss_fleet_per_agent",
	"fleet.ack_50", "fleet.ack_99", "fleet.ack_100", "fleet.issue_time",
}

// Run runs every measurement and returns the report. progress receives
// one line per step.
func Run(ctx context.Context, c Config, progress io.Writer) (*Report, error) {
	if err := c.defaults(); err != nil {
		return nil, err
	}
	raiseFileLimit()
	rep := &Report{Config: c, Started: time.Now(), Machine: machine()}
	rep.Config.Store = redacted(c.Store) // the report is shared: no password
	logf := func(format string, a ...any) { fmt.Fprintf(progress, "bench: "+format+"\n", a...) }
	dir := c.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "ekem-bench-")
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		defer os.RemoveAll(d)
		dir = d
	}
	keys, err := newKeyPool(ctx, c.Devices, logf)
	if err != nil {
		return nil, err
	}
	cr, err := benchCrypto(ctx, c, keys, logf)
	if err != nil {
		return nil, err
	}
	rep.Rows = append(rep.Rows, cr.rows...)
	if err := benchDevice(ctx, c, keys, rep, logf); err != nil {
		return nil, err
	}
	fleetIDs := make([]string, c.Fleet)
	for k := range fleetIDs {
		fleetIDs[k] = fmt.Sprintf("fleet-%05d", k)
	}
	logf("starting mosquitto with broker-config (%d device accounts)", c.Fleet)
	b, err := startBroker(filepath.Join(dir, "broker"), fleetIDs)
	if err != nil {
		return nil, err
	}
	defer b.stop()
	rep.Machine.Mosquitto = mosquittoVersion()
	size, err := ticketSize(cr.bodyLen, c.Devices)
	if err != nil {
		return nil, err
	}
	per, err := memPerTicket([]int{b.pid()}, c.Devices, func() error { return benchPublish(ctx, c, b, size, rep, logf) })
	if err != nil {
		return nil, err
	}
	rep.add(Row{Key: "broker.mem_per_ticket", Label: "Mosquitto: RSS per retained ticket", Value: per[0], Unit: "B"})
	if err := benchIssuer(ctx, c, b, keys, dir, rep, logf); err != nil {
		return nil, err
	}
	if c.Broker == BrokerNATS {
		if err := benchNATS(ctx, c, keys, size, dir, rep, logf); err != nil {
			return nil, err
		}
	}
	keys = nil // the fleet makes its own keys
	if err := benchFleet(ctx, c, b, fleetIDs, dir, rep, logf); err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		logf("fleet: %v", err) // the other measurements still stand
		rep.FleetError = err.Error()
	}
	for _, k := range RowKeys {
		if _, ok := rep.Row(k); !ok {
			rep.add(Row{Key: k, Label: k, Value: -1, Note: "not measured: " + rep.FleetError})
		}
	}
	rep.Machine.LoadAvgEnd = loadAvg()
	rep.Duration = time.Since(rep.Started)
	rep.Goals = goals(rep)
	return rep, nil
}

// raiseFileLimit lifts RLIMIT_NOFILE for this process and the broker it
// starts (which inherits it): a fleet of M in-process agents needs 2M
// descriptors here (a socket and a state-directory lock each) and M in the
// broker. As root it also raises the hard limit to minFiles; otherwise the
// soft limit goes up to the hard one.
func raiseFileLimit() {
	const minFiles = 1 << 17
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) != nil {
		return
	}
	if l.Max < minFiles {
		want := syscall.Rlimit{Cur: minFiles, Max: minFiles}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) == nil {
			return
		}
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l) // best effort: the fleet reports what failed
	}
}

func machine() Machine {
	m := Machine{NumCPU: runtime.NumCPU(), GoVersion: runtime.Version(), LoadAvgStart: loadAvg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "n/a"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "n/a"
	}
	return strings.Join(f[:3], " ")
}

// median returns the median of xs (0 for none).
func median(xs []float64) float64 { return percentile(xs, 50) }

// percentile returns the p-th percentile (nearest rank) of xs.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	k := int(float64(len(s))*p/100+0.999999) - 1
	return s[min(max(k, 0), len(s)-1)]
}

func micros(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
