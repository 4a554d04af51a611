package mqttc

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// gate refuses subscriptions to one filter until opened, as a NATS cluster
// refuses them while it elects new stream leaders.
type gate struct {
	mochi.HookBase
	filter string
	open   atomic.Bool
	after  atomic.Int64 // SUBSCRIBE packets for filter received while open
}

func (g *gate) ID() string { return "gate" }
func (g *gate) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck || b == mochi.OnSubscribe
}
func (g *gate) OnSubscribe(_ *mochi.Client, pk packets.Packet) packets.Packet {
	for _, f := range pk.Filters {
		if f.Filter == g.filter && g.open.Load() {
			g.after.Add(1)
		}
	}
	return pk
}
func (g *gate) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }
func (g *gate) OnACLCheck(_ *mochi.Client, topic string, write bool) bool {
	return write || topic != g.filter || g.open.Load()
}

// A refused subscription is retried in the background until the broker
// grants it, and then no more.
func TestRefusedSubscriptionRetried(t *testing.T) {
	srv := mochi.New(&mochi.Options{Logger: slog.New(slog.DiscardHandler)})
	g := &gate{filter: "t/x"}
	if err := srv.AddHook(g, nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "tcp", Address: "127.0.0.1:0"})
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	url := "tcp://" + l.Address()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sub, err := Dial(ctx, Options{Broker: url, ClientID: "sub", Timeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := sub.Subscribe("t/x"); !errors.Is(err, ErrSubscribeRefused) {
		t.Fatalf("Subscribe while refused: %v, want ErrSubscribeRefused", err)
	}
	g.open.Store(true)
	// The background retry sends SUBSCRIBE again within a few pauses
	// (mochi, unlike NATS, would deliver to the refused filter anyway, so
	// the test counts SUBSCRIBE packets rather than messages).
	for g.after.Load() == 0 {
		if ctx.Err() != nil {
			t.Fatal("the refused subscription was never retried")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Once granted, the retry stops. A SUBSCRIBE already on its way when
	// the gate opened (a paho wait that timed out on a loaded machine) may
	// still arrive, so count from a pause later, then wait longer than the
	// longest pause between retries.
	time.Sleep(retryPause)
	n := g.after.Load()
	time.Sleep(retryMaxPause + retryPause)
	if g.after.Load() != n {
		t.Fatalf("still subscribing after the grant: %d SUBSCRIBE packets, then %d", n, g.after.Load())
	}
}
