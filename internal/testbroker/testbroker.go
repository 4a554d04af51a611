// Package testbroker runs an in-process mochi MQTT broker that allows every
// client, and a watcher client that records what is published, for the
// tests of the device package and of ekem-device.
package testbroker

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/entropykem/entropykem/internal/mqttc"
)

// Start runs a broker on 127.0.0.1 (a free port) until the test ends and
// returns its tcp:// URL.
func Start(t testing.TB) string {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(allowAll), nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "tcp", Address: "127.0.0.1:0"})
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return "tcp://" + l.Address()
}

// allowAll lets every client connect and use every topic (the auth hook
// package of mochi pulls in a YAML module this repository does not use).
type allowAll struct{ mqtt.HookBase }

func (h *allowAll) ID() string { return "allow-all" }

func (h *allowAll) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *allowAll) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

func (h *allowAll) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

// Client is a test client (the issuer's side) that records every message
// of its subscriptions.
type Client struct {
	*mqttc.Client
	t    testing.TB
	mu   sync.Mutex
	msgs []mqttc.Message
	wake chan struct{}
}

// Dial connects a recording client and subscribes it to filters.
func Dial(t testing.TB, url, id string, filters ...string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := mqttc.Dial(ctx, mqttc.Options{Broker: url, ClientID: id, Username: id, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	c := &Client{Client: cl, t: t, wake: make(chan struct{}, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			m, ok := cl.Inbox().Next(context.Background())
			if !ok {
				return
			}
			c.mu.Lock()
			c.msgs = append(c.msgs, m)
			c.mu.Unlock()
			select {
			case c.wake <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() { cl.Close(); <-done })
	for _, f := range filters {
		if err := cl.Subscribe(f); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// Put publishes retained at QoS 1 or fails the test.
func (c *Client) Put(topic string, payload []byte) {
	c.t.Helper()
	if err := c.Publish(topic, payload, true); err != nil {
		c.t.Fatal(err)
	}
}

// On returns the payloads received on topic, in order.
func (c *Client) On(topic string) [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out [][]byte
	for _, m := range c.msgs {
		if m.Topic == topic {
			out = append(out, bytes.Clone(m.Payload))
		}
	}
	return out
}

// Wait waits (at most 30 s, a guard against hanging, not a timing check)
// until the n-th message on topic (1-based) has arrived and returns it.
func (c *Client) Wait(topic string, n int) []byte {
	c.t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		if got := c.On(topic); len(got) >= n {
			return got[n-1]
		}
		select {
		case <-c.wake:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			c.t.Fatalf("no message %d on %s", n, topic)
		}
	}
}
