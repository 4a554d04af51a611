package issuer

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// startedAt returns an env with the same key as e, its own store, started
// against broker addr; it returns Start's error.
func startOn(t *testing.T, addr string, mod func(*env)) (*env, error) {
	t.Helper()
	e := newEnv(t, func(c *Config) { c.Broker = "tcp://" + addr; c.BrokerQuiet = 200 * time.Millisecond })
	if mod != nil {
		mod(e)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return e, e.iss.Start(ctx)
}

// TestFenceBrokerAhead: a store behind the broker's roots (another copy
// of this issuer issued further) refuses to start, naming both epochs;
// the same store level with the broker starts.
func TestFenceBrokerAhead(t *testing.T) {
	b := startBroker(t, "")
	first, err := startOn(t, b.addr, func(e *env) {
		e.register(newDevice(t, "dev-1"))
	})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		first.issue()
	}
	first.iss.Close()

	behind, err := startOn(t, b.addr, func(e *env) {
		e.register(newDevice(t, "dev-1"))
		e.issue() // epoch 1 of its own: the broker holds 1..3 of the other store
	})
	if !errors.Is(err, ErrBrokerAhead) || !strings.Contains(err.Error(), "root of epoch 3") ||
		!strings.Contains(err.Error(), "ends at epoch 1") || !strings.Contains(err.Error(), "ekem-issuer recover") {
		t.Fatalf("store behind the broker: %v", err)
	}
	if behind.counter("fenced_starts") != 1 {
		t.Fatalf("fenced start not counted: %v", behind.iss.Counters())
	}
}

// TestFenceDivergentRoot: the broker holds, for an epoch the store also
// holds, a different root this issuer signed: two stores issued it.
func TestFenceDivergentRoot(t *testing.T) {
	b := startBroker(t, "")
	first, err := startOn(t, b.addr, func(e *env) { e.register(newDevice(t, "dev-1")) })
	if err != nil {
		t.Fatal(err)
	}
	first.issue()
	first.iss.Close()
	_, err = startOn(t, b.addr, func(e *env) {
		e.register(newDevice(t, "dev-2"))
		e.issue() // its own epoch 1
	})
	if !errors.Is(err, ErrBrokerAhead) || !strings.Contains(err.Error(), "differs from the store's") {
		t.Fatalf("divergent root: %v", err)
	}
}

// TestFenceForeignRoots: roots not signed by this issuer's keys (another
// issuer's, or garbage) prove nothing about this store: it starts.
func TestFenceForeignRoots(t *testing.T) {
	b := startBroker(t, "")
	other, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := (&wire.EpochRoot{Version: wire.Version, Epoch: 9, IssuedAt: 1, TreeSize: 1, Root: make([]byte, 32)}).Marshal()
	signed, err := signature.Sign1(other, payload)
	if err != nil {
		t.Fatal(err)
	}
	tp, _ := wire.NewTopics("")
	for topic, msg := range map[string][]byte{tp.Root(9): signed, tp.Root(10): []byte("garbage")} {
		if err := b.srv.Publish(topic, msg, true, 1); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := startOn(t, b.addr, nil); err != nil {
		t.Fatalf("foreign roots fenced a start: %v", err)
	}
}
