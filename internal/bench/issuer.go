package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// begunMsg is the issuer's log message once an epoch's number is
// persisted and its stream starts (issuer/epoch.go): plan before it,
// crypto, persistence and publishing overlapped after it.
const begunMsg = "epoch begun"

// phaseHandler is a slog.Handler that remembers when the issuer logged
// begunMsg, and drops everything else.
type phaseHandler struct {
	mu sync.Mutex
	at time.Time
}

func (h *phaseHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *phaseHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == begunMsg {
		h.mu.Lock()
		h.at = time.Now()
		h.mu.Unlock()
	}
	return nil
}
func (h *phaseHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *phaseHandler) WithGroup(string) slog.Handler      { return h }

func (h *phaseHandler) take() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	t := h.at
	h.at = time.Time{}
	return t
}

// rssSampler records the peak VmRSS of this process (where the issuer
// runs) every 50 ms until stopped.
type rssSampler struct {
	stop chan struct{}
	done chan struct{}
	peak float64
}

func sampleRSS() *rssSampler {
	s := &rssSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			s.peak = max(s.peak, rssOf(os.Getpid()))
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// end stops the sampler and returns the peak RSS in bytes.
func (s *rssSampler) end() float64 {
	close(s.stop)
	<-s.done
	return s.peak
}

// benchIssuer measures IssueEpoch for Devices devices through the broker.
// Registrations are preloaded with HandleMessage (each is verified and
// pinned exactly as from the broker) into a store on /dev/shm, which is
// then copied to Dir, so the measured epochs persist to the real disk.
func benchIssuer(ctx context.Context, c Config, b *broker, keys *keyPool, dir string, rep *Report, logf func(string, ...any)) error {
	key, err := signature.GenerateKey(signature.MLDSA87)
	if err != nil {
		return err
	}
	store := filepath.Join(dir, "issuer.db")
	t := time.Now()
	if err := preload(store, key, keys, c.Devices); err != nil {
		return err
	}
	logf("issuer: preloaded %d registrations in %v", c.Devices, time.Since(t).Round(time.Millisecond))
	base := rssOf(os.Getpid())
	sampler := sampleRSS()
	rates, pubRates, builds, totals, err := issuerEpochs(ctx, c, b, key, store, "ekem-bench-issuer", logf)
	peak := sampler.end()
	if err != nil {
		return err
	}
	raw := rep.value("publish.raw_rate")
	rate := median(rates)
	rep.add(Row{Key: "issuer.epoch_rate", Label: "issuer IssueEpoch end to end (plan, then crypto+persist+publish streamed)", Value: rate, Unit: "tickets/s",
		Ratio: rate / raw, RatioTo: "publish.raw_rate", Samples: rates, Note: fmt.Sprintf("N=%d; epoch 1 inserts, later epochs replace", c.Devices)})
	ins := rep.value("publish.raw_rate_insert")
	rep.add(Row{Key: "issuer.epoch_rate_insert", Label: "issuer epoch 1 (inserts), against the floor's rep 1", Value: rates[0], Unit: "tickets/s",
		Ratio: rates[0] / ins, RatioTo: "publish.raw_rate_insert"})
	if repl := rep.value("publish.raw_rate_replace"); len(rates) > 1 && repl > 0 {
		r := median(rates[1:])
		rep.add(Row{Key: "issuer.epoch_rate_replace", Label: "issuer later epochs (replace), against the floor's later reps", Value: r, Unit: "tickets/s",
			Ratio: r / repl, RatioTo: "publish.raw_rate_replace", Samples: rates[1:]})
	}
	if len(pubRates) > 0 {
		rep.add(Row{Key: "issuer.publish_rate", Label: "issuer streamed phase (crypto+persist+publish, after the plan)", Value: median(pubRates), Unit: "msg/s",
			Ratio: median(pubRates) / raw, RatioTo: "publish.raw_rate", Samples: pubRates})
		rep.add(Row{Key: "issuer.build_persist", Label: "issuer plan (before the first chunk)", Value: median(builds), Unit: "s",
			Ratio: median(builds) / median(totals), RatioTo: "share of the epoch", Samples: builds})
	}
	rep.add(Row{Key: "issuer.rss_peak", Label: "issuer: peak RSS of the bench process during the epochs", Value: peak / 1e6, Unit: "MB",
		Note: fmt.Sprintf("the issuer runs in-process; %.0f MB before its first epoch (the bench's %d raw keys among it)", base/1e6, c.Devices)})
	rep.add(Row{Key: "issuer.rss_growth", Label: "issuer: peak RSS growth during the epochs", Value: (peak - base) / 1e6, Unit: "MB"})
	if b.nats == nil { // one Mosquitto process; a NATS cluster's nodes are measured by benchNATS
		rep.add(Row{Key: "broker.rss_after_epochs", Label: "Mosquitto RSS after the epochs", Value: rssOf(b.pid()) / 1e6, Unit: "MB",
			Note: fmt.Sprintf("%d retained tickets of the issuer and %d of the floor", c.Devices, c.Devices)})
	}
	ep := median(totals)
	rep.add(Row{Key: "issuer.epoch_time", Label: fmt.Sprintf("issuer epoch time, N=%d", c.Devices), Value: ep, Unit: "s", Samples: totals})
	rep.add(Row{Key: "issuer.epoch_time_first", Label: fmt.Sprintf("issuer epoch 1 time (inserts), N=%d", c.Devices), Value: totals[0], Unit: "s"})
	proj := ep * 1e6 / float64(c.Devices)
	rep.add(Row{Key: "issuer.projection_1m", Label: "projected 1M-device epoch (linear in N)", Value: proj, Unit: "s",
		Note: fmt.Sprintf("from N=%d; tree depth adds <2%%", c.Devices)})
	if c.Store == "" {
		return nil
	}
	// The same epochs on PostgreSQL: the bbolt store's state (the same
	// devices, after the epochs above) copied into the empty database.
	t = time.Now()
	if err := copyToStore(store, c.Store); err != nil {
		return err
	}
	logf("issuer: copied %d devices into %s in %v", c.Devices, redacted(c.Store), time.Since(t).Round(time.Millisecond))
	_, _, pgBuilds, pgTotals, err := issuerEpochs(ctx, c, b, key, c.Store, "ekem-bench-issuer-pg", logf)
	if err != nil {
		return err
	}
	pe := median(pgTotals)
	rep.add(Row{Key: "issuer.pg.epoch_time", Label: fmt.Sprintf("issuer epoch time on PostgreSQL, N=%d", c.Devices), Value: pe, Unit: "s",
		Ratio: pe / ep, RatioTo: "issuer.epoch_time", Samples: pgTotals, Note: "same devices, broker and run as the bbolt epochs; every epoch replaces"})
	if len(pgBuilds) > 0 {
		rep.add(Row{Key: "issuer.pg.build_persist", Label: "issuer plan on PostgreSQL (before the first chunk)", Value: median(pgBuilds), Unit: "s",
			Ratio: median(pgBuilds) / median(builds), RatioTo: "issuer.build_persist", Samples: pgBuilds})
	}
	return nil
}

// issuerEpochs runs c.Reps epochs of an issuer on store and returns, per
// epoch, the end-to-end rate, the publish rate, the plan+crypto+persist
// time and the total time.
func issuerEpochs(ctx context.Context, c Config, b *broker, key *signature.PrivateKey, store, clientID string,
	logf func(string, ...any)) (rates, pubRates, builds, totals []float64, err error) {
	ph := &phaseHandler{}
	iss, err := issuer.New(issuer.Config{
		Broker: b.url(), Username: brokerconfig.IssuerAccount, Password: b.password(brokerconfig.IssuerAccount),
		ClientID: clientID, Key: key, StorePath: store, Period: time.Hour, Timeout: 30 * time.Second,
		Logger: slog.New(ph),
	})
	if err != nil {
		return nil, nil, nil, nil, err
	}
	defer iss.Close()
	if err := iss.Start(ctx); err != nil {
		return nil, nil, nil, nil, err
	}
	for range c.Reps {
		t0 := time.Now()
		e, err := iss.IssueEpoch(ctx)
		d := time.Since(t0)
		if err != nil {
			return nil, nil, nil, nil, fmt.Errorf("bench: issuer epoch: %w", err)
		}
		begun := ph.take()
		logf("issuer: epoch %d of %d tickets in %v (%s)", e, c.Devices, d.Round(time.Millisecond), redacted(store))
		rates = append(rates, float64(c.Devices)/d.Seconds())
		totals = append(totals, d.Seconds())
		if !begun.IsZero() {
			builds = append(builds, begun.Sub(t0).Seconds())
			pubRates = append(pubRates, float64(c.Devices)/t0.Add(d).Sub(begun).Seconds())
		}
	}
	return rates, pubRates, builds, totals, nil
}

// copyToStore copies the bbolt store at from into the empty store to.
func copyToStore(from, to string) error {
	src, err := issuer.OpenStore(from, true)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := issuer.OpenStore(to, false)
	if err != nil {
		return err
	}
	defer dst.Close()
	_, err = issuer.CopyStore(dst, src)
	return err
}

// redacted names a store without credentials.
func redacted(store string) string {
	if !issuer.IsPostgresStore(store) {
		return store
	}
	if u, err := url.Parse(store); err == nil {
		if u.User != nil {
			u.User = url.User(u.User.Username())
		}
		return u.Host + u.Path
	}
	return "postgres"
}

// preload registers n devices into a new store at path. Each registration
// is its own store transaction (as a trickle of registrations would be), so
// the store is built on /dev/shm, where fsync is free, and copied.
func preload(path string, key *signature.PrivateKey, keys *keyPool, n int) error {
	tmpDir := ""
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		tmpDir = "/dev/shm"
	}
	tmp, err := os.MkdirTemp(tmpDir, "ekem-bench-store-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	tmpStore := filepath.Join(tmp, "issuer.db")
	iss, err := issuer.New(issuer.Config{Key: key, StorePath: tmpStore, Period: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	now := uint64(time.Now().Unix())
	for i := range n {
		reg := &wire.Registration{Version: wire.Version, DeviceID: deviceID(i), KEMAlg: kem.MLKEM1024, PublicKey: keys.raw[i], CreatedAt: now}
		b, err := reg.Marshal()
		if err != nil {
			iss.Close()
			return err
		}
		iss.HandleMessage(wire.DefaultPrefix+"/reg/"+deviceID(i), b)
	}
	pinned := iss.Counters()["registrations_pinned"]
	if err := iss.Close(); err != nil {
		return err
	}
	if pinned != uint64(n) {
		return fmt.Errorf("bench: issuer pinned %d of %d registrations", pinned, n)
	}
	return copyFile(tmpStore, path)
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
