package issuer

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/entropykem/entropykem/internal/mqttc"
	"github.com/entropykem/entropykem/pkg/keyschedule"
)

// TestLeaseGatesPublishing: an issuer whose leader lease has passed its
// deadline publishes nothing, neither an epoch's messages nor Online at
// Close; with a valid lease it publishes as a lone issuer does, and its
// epoch says Online again.
func TestLeaseGatesPublishing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := startBroker(t, "")
	e := newEnv(t, func(c *Config) { c.Broker = "tcp://" + b.addr })
	tp := e.iss.topics
	e.register(newDevice(t, "dev-1"))
	e.iss.lease.Store(&Lease{Token: 7, Holder: "a", Until: time.Now().Add(time.Hour)})
	if got := e.iss.leaseToken(); got != 7 {
		t.Fatalf("lease token %d", got)
	}
	if err := e.iss.Start(ctx); err != nil {
		t.Fatal(err)
	}
	any := func(mqttc.Message) bool { return true }
	e.clock.Set(e.clock.Now().Add(time.Hour))
	if ep, err := e.iss.IssueEpoch(ctx); err != nil || ep != 1 {
		t.Fatalf("issue with a valid lease: %d %v", ep, err)
	}
	collect(t, ctx, b.next, any, tp.Root(1), tp.Ticket("dev-1"), tp.Epoch(), tp.Online())
	drain := func() (out []mqttc.Message) { // until 500 ms pass without a message
		for {
			quiet, stop := context.WithTimeout(ctx, 500*time.Millisecond)
			m, ok := b.next(quiet)
			stop()
			if !ok {
				return out
			}
			if strings.HasPrefix(m.Topic, tp.Prefix+"/") {
				out = append(out, m)
			}
		}
	}
	drain() // the Online of the connection and of the epoch

	// The lease's deadline passes (a pause, a lost database).
	e.iss.lease.Store(&Lease{Token: 7, Holder: "a", Until: time.Now().Add(-time.Millisecond)})
	e.clock.Set(e.clock.Now().Add(time.Hour))
	ep, err := e.iss.IssueEpoch(ctx)
	if ep != 2 || err == nil {
		// bbolt has no lease: the commit stands, the publishing does not.
		t.Fatalf("issue past the lease: %d %v, want 2 and a publish error", ep, err)
	}
	if n := e.counter("publish_fenced"); n == 0 {
		t.Fatalf("no publish fenced: %v", e.iss.Counters())
	}
	if err := e.iss.Close(); err != nil {
		t.Fatal(err)
	}
	for _, m := range drain() {
		t.Errorf("published past the lease: %s (%d bytes)", m.Topic, len(m.Payload))
	}
}

// TestStoreBehindRefused: a store put back under the running issuer (a
// database restored in place) makes it refuse every epoch rather than
// reuse an epoch number.
func TestStoreBehindRefused(t *testing.T) {
	e := newEnv(t)
	e.register(newDevice(t, "dev-1"))
	e.issue()
	e.issue()
	// Back to epoch 1 under the running issuer.
	bs := e.iss.store.(*boltStore)
	if err := bs.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keyLastEpoch, keyschedule.U64(1))
	}); err != nil {
		t.Fatal(err)
	}
	if ep, err := e.iss.IssueEpoch(context.Background()); !errors.Is(err, ErrStoreBehind) || ep != 0 {
		t.Fatalf("issue on a store behind: %d %v", ep, err)
	}
	if last := e.iss.LastEpoch(); last != 1 {
		t.Fatalf("last epoch %d after a refused epoch", last)
	}
}
