package issuer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// Several issuer instances on one shared store (DESIGN "Issuer state";
// lease.go): each runs a Cluster. A standby polls the lease; the instance
// that takes it becomes the leader: it opens its Issuer (reading the
// store afresh, fencing against the broker, republishing), issues every
// Period, and renews the lease four times per lease period. When a renewal
// is refused (another instance took over) or the lease's local deadline
// passes without one (the database is unreachable, the process was
// paused), the leader stops publishing at once (Issuer.mayPublish, checked
// before every message), closes its Issuer, and becomes a standby again.
// Its epoch commits are fenced by the lease token in the store itself, so
// even a leader that never noticed cannot commit an epoch.

// ErrNoLeaseEngine: the store cannot be shared by several instances.
var ErrNoLeaseEngine = errors.New("issuer: the store has no leader lease (only PostgreSQL can be shared by several instances)")

// DefaultLeaseTTL is the longest default lease: the default is a third of
// the period, at most this.
const DefaultLeaseTTL = 15 * time.Second

// ClusterConfig configures one instance of a cluster.
type ClusterConfig struct {
	// Instance names this instance in the lease and the metrics; unique
	// per instance (default: the MQTT client id, which must be unique).
	Instance string
	// LeaseTTL is how long the lease lasts without renewal (default a
	// third of the period, at most DefaultLeaseTTL; at most half the
	// period): a standby takes over at most about LeaseTTL after the
	// leader stopped renewing.
	LeaseTTL time.Duration
}

// Cluster is one instance of several sharing a store.
type Cluster struct {
	cfg    Config
	cc     ClusterConfig
	log    *slog.Logger
	store  Store // this instance's lease connection
	leaser Leaser

	mu     sync.Mutex
	leader *Issuer

	isLeader atomic.Bool
	token    atomic.Uint64
	takeover atomic.Int64 // nanoseconds from polling to leading, last time
	reg      *prometheus.Registry
}

// NewCluster validates cfg and cc and opens the store (which must be a
// Leaser).
func NewCluster(cfg Config, cc ClusterConfig) (*Cluster, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if cc.Instance == "" {
		cc.Instance = cfg.ClientID
	}
	if cc.LeaseTTL == 0 {
		cc.LeaseTTL = min(cfg.Period/3, DefaultLeaseTTL)
	}
	if cc.LeaseTTL < 200*time.Millisecond || cc.LeaseTTL > cfg.Period/2 {
		return nil, fmt.Errorf("%w: lease ttl must be between 200ms and half the period (%v), got %v", ErrConfig, cfg.Period/2, cc.LeaseTTL)
	}
	st, err := OpenStore(cfg.StorePath, false)
	if err != nil {
		return nil, err
	}
	ls, ok := st.(Leaser)
	if !ok {
		st.Close()
		return nil, fmt.Errorf("%w: %s", ErrNoLeaseEngine, st.Name())
	}
	c := &Cluster{cfg: cfg, cc: cc, log: cfg.Logger.With("role", "issuer", "instance", cc.Instance), store: st, leaser: ls}
	c.reg = prometheus.NewRegistry()
	c.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ekem_issuer_leader",
		Help: "1 while this instance holds the leader lease and issues, 0 on a standby.", ConstLabels: prometheus.Labels{"instance": cc.Instance}},
		func() float64 {
			if c.isLeader.Load() {
				return 1
			}
			return 0
		}))
	c.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ekem_issuer_lease_token",
		Help: "The fencing token of the lease this instance holds or last held.", ConstLabels: prometheus.Labels{"instance": cc.Instance}},
		func() float64 { return float64(c.token.Load()) }))
	c.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ekem_issuer_takeover_seconds",
		Help: "How long this instance's last takeover took, from the lease to a started issuer.", ConstLabels: prometheus.Labels{"instance": cc.Instance}},
		func() float64 { return time.Duration(c.takeover.Load()).Seconds() }))
	return c, nil
}

// Leader reports whether this instance leads now.
func (c *Cluster) Leader() bool { return c.isLeader.Load() }

// Issuer is the running leader's Issuer, nil on a standby.
func (c *Cluster) Issuer() *Issuer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leader
}

// Store is this instance's store (the lease connection); StoreAdmin over
// it serves operator commands on a standby as on the leader.
func (c *Cluster) Store() Store { return c.store }

// Close releases the store. Run must have returned.
func (c *Cluster) Close() error { return c.store.Close() }

// MetricsHandler serves the cluster's metrics (which instance leads) and,
// on the leader, every metric of its Issuer.
func (c *Cluster) MetricsHandler() http.Handler {
	g := prometheus.Gatherers{c.reg, prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		if iss := c.Issuer(); iss != nil {
			return iss.Registry().Gather()
		}
		return nil, nil
	})}
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{})
}

// Run takes part in the cluster until ctx ends: standby until it takes
// the lease, then leader until it loses it, and so on. It returns nil when
// ctx ends (releasing a held lease, so a standby takes over at once), or
// the error that makes leading impossible for any instance (the broker
// fence: ErrBrokerAhead; a signing key error).
func (c *Cluster) Run(ctx context.Context) error {
	ttl := c.cc.LeaseTTL
	poll := ttl / 4
	if st, err := c.leaser.LeaseStatus(ctx); err == nil && st.Live && st.Holder == c.cc.Instance {
		c.log.Warn("the live lease is held under this instance's name: another instance has the same name "+
			"(each needs its own -client-id), or this is a restart within the lease", "reason", "instance_name_in_use",
			"token", st.Token)
	}
	c.log.Info("standby: waiting for the leader lease", "lease_ttl", ttl)
	failing := false // logged once per outage, not at every poll
	for {
		start := time.Now()
		l, ok, err := c.leaser.AcquireLease(ctx, c.cc.Instance, ttl)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			c.log.Warn("lease poll failed; retrying", "reason", "lease_poll_failed", "err", err)
			failing = true
		case err == nil && failing:
			c.log.Info("lease poll works again")
			failing = false
		}
		if ok {
			err := c.lead(ctx, l, start)
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, ErrBrokerAhead) || errors.Is(err, ErrSigningKey) || errors.Is(err, ErrConfig) || errors.Is(err, ErrStoreCorrupt) {
				return err
			}
			c.log.Warn("standby again", "reason", "lease_lost", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(poll):
		}
	}
}

// lead runs the Issuer while l is held, and returns why it stopped.
func (c *Cluster) lead(ctx context.Context, l Lease, polled time.Time) error {
	ttl := c.cc.LeaseTTL
	lctx, lost := context.WithCancelCause(ctx)
	defer lost(nil)
	var cur atomic.Pointer[Lease]
	cur.Store(&l)
	c.token.Store(l.Token)
	c.log.Info("leader lease taken", "token", l.Token)

	// Renew four times per lease period; give up the moment a renewal is
	// refused or the deadline passes.
	var wg sync.WaitGroup
	defer wg.Wait()
	defer lost(nil)
	wg.Go(func() {
		t := time.NewTicker(ttl / 4)
		defer t.Stop()
		for {
			select {
			case <-lctx.Done():
				return
			case <-t.C:
			}
			old := cur.Load()
			rctx, cancel := context.WithDeadline(lctx, old.Until)
			nl, err := c.leaser.RenewLease(rctx, *old, ttl)
			cancel()
			switch {
			case err == nil:
				cur.Store(&nl)
				c.mu.Lock()
				if c.leader != nil {
					c.leader.lease.Store(&nl)
				}
				c.mu.Unlock()
			case errors.Is(err, ErrNotLeader):
				lost(err)
				return
			case !old.Valid():
				lost(fmt.Errorf("%w: lease expired without renewal: %w", ErrNotLeader, err))
				return
			}
		}
	})
	// The deadline itself, in case a renewal hangs.
	wg.Go(func() {
		for {
			l := cur.Load()
			select {
			case <-lctx.Done():
				return
			case <-time.After(time.Until(l.Until)):
			}
			if !cur.Load().Valid() {
				lost(fmt.Errorf("%w: lease deadline passed", ErrNotLeader))
				return
			}
		}
	})

	iss, err := New(c.cfg)
	if err != nil {
		return err
	}
	// Under c.mu, so that a renewal (which stores cur, then takes c.mu)
	// reaches iss either way.
	c.mu.Lock()
	c.leader = iss
	iss.lease.Store(cur.Load())
	c.mu.Unlock()
	c.isLeader.Store(true)
	defer func() {
		c.isLeader.Store(false)
		c.mu.Lock()
		c.leader = nil
		c.mu.Unlock()
		iss.Close()
		if ctx.Err() != nil && cur.Load().Valid() {
			// Shut down: hand over at once.
			rctx, cancel := context.WithTimeout(context.Background(), ttl)
			_ = c.leaser.ReleaseLease(rctx, *cur.Load())
			cancel()
		}
	}()
	wg.Go(func() {
		select {
		case <-iss.ready: // started: fenced, connected, subscribed
			c.takeover.Store(int64(time.Since(polled)))
			c.log.Info("leading", "token", l.Token, "takeover", time.Since(polled))
		case <-lctx.Done():
		}
	})
	err = iss.Run(lctx)
	if cause := context.Cause(lctx); cause != nil && ctx.Err() == nil {
		c.log.Warn("leader lease lost: stopped publishing", "reason", "lease_lost", "token", l.Token, "err", cause)
		return cause
	}
	return err
}

// mayPublish is nil while this Issuer may publish: always for a lone
// issuer, while its lease is valid for an instance of a cluster.
func (i *Issuer) mayPublish() error {
	if l := i.lease.Load(); l != nil && !l.Valid() {
		return fmt.Errorf("%w: lease %d expired", ErrNotLeader, l.Token)
	}
	return nil
}

// leaseToken is the fencing token of its epoch commits, 0 for a lone
// issuer.
func (i *Issuer) leaseToken() uint64 {
	if l := i.lease.Load(); l != nil {
		return l.Token
	}
	return 0
}

// ErrStandby: a write admin action reached a standby instance.
var ErrStandby = errors.New("issuer: this instance is a standby")

// Admin serves operator actions on this instance (its admin socket): the
// leader's running Issuer answers all of them (approve included, which
// needs the registration only it holds); a standby answers the read-only
// ones from the database and refuses the others (ErrStandby). Every
// action except approve also works on the database directly (-store URL).
func (c *Cluster) Admin() Admin { return clusterAdmin{c} }

type clusterAdmin struct{ c *Cluster }

// pick is the leader's Admin, or nil on a standby.
func (a clusterAdmin) pick() Admin {
	if iss := a.c.Issuer(); iss != nil {
		return iss.Admin()
	}
	return nil
}

func (a clusterAdmin) read() Admin {
	if l := a.pick(); l != nil {
		return l
	}
	return StoreAdmin{Store: a.c.store}
}

func (a clusterAdmin) write(action string) (Admin, error) {
	if l := a.pick(); l != nil {
		return l, nil
	}
	return nil, fmt.Errorf("%w: %s is a write; run it on the leader's socket, or with -store URL against the database", ErrStandby, action)
}

func (a clusterAdmin) Devices() ([]DeviceInfo, error)       { return a.read().Devices() }
func (a clusterAdmin) Device(id string) (DeviceInfo, error) { return a.read().Device(id) }
func (a clusterAdmin) LastEpoch() (uint64, error)           { return a.read().LastEpoch() }
func (a clusterAdmin) Audit() ([]AuditEntry, error)         { return a.read().Audit() }
func (a clusterAdmin) Backup(w io.Writer) error             { return a.read().Backup(w) }

func (a clusterAdmin) Reset(id string, op Operator) error {
	l, err := a.write("reset")
	if err != nil {
		return err
	}
	return l.Reset(id, op)
}

func (a clusterAdmin) Revoke(id string, op Operator) error {
	l, err := a.write("revoke")
	if err != nil {
		return err
	}
	return l.Revoke(id, op)
}

func (a clusterAdmin) Release(id string, op Operator) error {
	l, err := a.write("release")
	if err != nil {
		return err
	}
	return l.Release(id, op)
}

func (a clusterAdmin) Approve(id string, op Operator) error {
	l, err := a.write("approve")
	if err != nil {
		return err
	}
	return l.Approve(id, op)
}
