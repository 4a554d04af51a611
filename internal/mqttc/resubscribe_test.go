package mqttc

import (
	"context"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/embedbroker"
)

// Resubscribe makes the broker deliver the filter's retained message
// again; an unknown filter is ignored.
func TestResubscribeRedeliversRetained(t *testing.T) {
	b, err := embedbroker.Start("127.0.0.1:0", "ekem/v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for u, p := range map[string]string{"dev-1": "pw1", embedbroker.IssuerUser: "pwi"} {
		if err := b.AddUser(u, p); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	iss, err := Dial(ctx, Options{Broker: b.URL(), ClientID: "iss", Username: embedbroker.IssuerUser, Password: "pwi", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer iss.Close()
	if err := iss.Publish("ekem/v1/ticket/dev-1", []byte("t1"), true); err != nil {
		t.Fatal(err)
	}
	dev, err := Dial(ctx, Options{Broker: b.URL(), ClientID: "dev-1", Username: "dev-1", Password: "pw1", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if err := dev.Subscribe("ekem/v1/ticket/dev-1"); err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		m, ok := dev.Inbox().Next(ctx)
		if !ok || string(m.Payload) != "t1" || !m.Retained {
			t.Fatalf("round %d: got %q retained %v, %v; want the retained t1", round, m.Payload, m.Retained, ok)
		}
		dev.Resubscribe("ekem/v1/root/+") // not one of dev's: nothing happens
		dev.Resubscribe("ekem/v1/ticket/dev-1")
	}
}

// Peek delivers a filter's retained message to the inbox, then
// unsubscribes: a later publish on it does not arrive.
func TestPeek(t *testing.T) {
	b, err := embedbroker.Start("127.0.0.1:0", "ekem/v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.AddUser(embedbroker.IssuerUser, "pwi"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	o := Options{Broker: b.URL(), Username: embedbroker.IssuerUser, Password: "pwi", Timeout: 5 * time.Second}
	o.ClientID = "pub"
	pub, err := Dial(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if err := pub.Publish("ekem/v1/root/1", []byte("r1"), true); err != nil {
		t.Fatal(err)
	}
	o.ClientID = "peeker"
	c, err := Dial(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Peek([]string{"ekem/v1/root/1"}, 100*time.Millisecond)
	if m, ok := c.Inbox().Next(ctx); !ok || string(m.Payload) != "r1" || !m.Retained {
		t.Fatalf("peek: %q retained %v, %v", m.Payload, m.Retained, ok)
	}
	time.Sleep(500 * time.Millisecond) // past hold: unsubscribed
	if err := pub.Publish("ekem/v1/root/1", []byte("r2"), true); err != nil {
		t.Fatal(err)
	}
	qctx, qcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer qcancel()
	if m, ok := c.Inbox().Next(qctx); ok {
		t.Fatalf("delivered after the peek ended: %q", m.Payload)
	}
}
