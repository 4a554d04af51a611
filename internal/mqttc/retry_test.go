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
}

func (g *gate) ID() string { return "gate" }
func (g *gate) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}
func (g *gate) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }
func (g *gate) OnACLCheck(_ *mochi.Client, topic string, write bool) bool {
	return write || topic != g.filter || g.open.Load()
}

// A refused subscription is retried in the background until the broker
// grants it; messages published after that arrive.
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
	pub, err := Dial(ctx, Options{Broker: url, ClientID: "pub", Timeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	g.open.Store(true)
	// The retry grants the subscription within a few pauses; publish until
	// a message gets through.
	for {
		if err := pub.Publish("t/x", []byte("m"), false); err != nil {
			t.Fatal(err)
		}
		mctx, mcancel := context.WithTimeout(ctx, 200*time.Millisecond)
		m, ok := sub.Inbox().Next(mctx)
		mcancel()
		if ok {
			if m.Topic != "t/x" {
				t.Fatalf("got %s", m.Topic)
			}
			return
		}
		if ctx.Err() != nil {
			t.Fatal("the refused subscription was never retried")
		}
	}
}
