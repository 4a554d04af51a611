package mqttc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/embedbroker"
	"github.com/entropykem/entropykem/internal/tcpproxy"
)

// TestBulk: a bulk of more messages than its window arrives complete and
// retained; Stop ends it and what is left is counted as stopped, not
// failed; on a closed connection every message fails after its tries and
// the retries are counted.
func TestBulk(t *testing.T) {
	for _, lean := range []bool{false, true} {
		t.Run(fmt.Sprintf("lean=%v", lean), func(t *testing.T) { testBulk(t, lean) })
	}
}

func testBulk(t *testing.T, lean bool) {
	b, err := embedbroker.Start("127.0.0.1:0", "ekem/v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.AddUser(embedbroker.IssuerUser, "pwi"); err != nil {
		t.Fatal(err)
	}
	if err := b.AddUser(embedbroker.MonitorUser, "pwm"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	o := Options{Broker: b.URL(), ClientID: "iss", Username: embedbroker.IssuerUser, Password: "pwi", Timeout: 2 * time.Second, Lean: lean}
	iss, err := Dial(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	const n = 250
	bulk := iss.Bulk(BulkOptions{Window: 16, Tries: 2})
	for k := range n {
		bulk.Publish(fmt.Sprintf("ekem/v1/ticket/dev-%03d", k), []byte(fmt.Sprint(k)))
	}
	if r := bulk.Finish(); r.Messages != n || r.Failed != 0 || r.Stopped != 0 || r.Retried != 0 {
		t.Fatalf("bulk: %+v", r)
	}
	got, err := FetchRetained(ctx, Options{Broker: b.URL(), ClientID: "mon", Username: embedbroker.MonitorUser, Password: "pwm",
		Timeout: 2 * time.Second}, []string{"ekem/v1/ticket/+"}, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("%d retained tickets, want %d", len(got), n)
	}

	stopAt := errors.New("lease lost")
	sent := 0
	bulk = iss.Bulk(BulkOptions{Window: 4, Stop: func() error {
		if sent == 10 {
			return stopAt
		}
		sent++
		return nil
	}})
	for k := range 30 {
		bulk.Publish(fmt.Sprintf("ekem/v1/ticket/dev-%03d", k), []byte("x"))
	}
	if r := bulk.Finish(); r.Stopped != 20 || r.Failed != 0 || !errors.Is(r.StopErr, stopAt) {
		t.Fatalf("stopped bulk: %+v", r)
	}

	iss.Close()
	bulk = iss.Bulk(BulkOptions{Window: 4, Tries: 2})
	for k := range 5 {
		bulk.Publish(fmt.Sprintf("ekem/v1/ticket/dev-%03d", k), []byte("y"))
	}
	if r := bulk.Finish(); r.Failed != 5 || r.Retried != 5 || r.FirstFailed != "ekem/v1/ticket/dev-000" {
		t.Fatalf("bulk on a closed connection: %+v", r)
	}
}

// TestLeanSubscribeAndReconnect: the lean connection subscribes (a refused
// SUBACK is an error), receives in order (QoS 1, acknowledged), reconnects
// after its connection is cut, subscribes again and runs OnConnect; after
// Close it is not connected and publishes fail.
func TestLeanSubscribeAndReconnect(t *testing.T) {
	b, err := embedbroker.Start("127.0.0.1:0", "ekem/v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for u, p := range map[string]string{embedbroker.IssuerUser: "pwi", "dev-1": "pw1", embedbroker.MonitorUser: "pwm"} {
		if err := b.AddUser(u, p); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	connects := make(chan struct{}, 4)
	px, err := tcpproxy.New(strings.TrimPrefix(b.URL(), "tcp://"))
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()
	iss, err := Dial(ctx, Options{Broker: "tcp://" + px.Addr(), ClientID: "iss", Username: embedbroker.IssuerUser, Password: "pwi", Lean: true,
		Timeout: 2 * time.Second, WillTopic: "ekem/v1/issuer/online", WillPayload: []byte("gone"),
		Backoff:   Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond},
		OnConnect: func() { connects <- struct{}{} }})
	if err != nil {
		t.Fatal(err)
	}
	defer iss.Close()
	if err := iss.Subscribe("ekem/v1/reg/+"); err != nil {
		t.Fatal(err)
	}
	if err := iss.Subscribe("ekem/v1/ticket/+"); !errors.Is(err, ErrSubscribeRefused) {
		t.Fatalf("a refused subscription: %v", err)
	}
	dev, err := Dial(ctx, Options{Broker: b.URL(), ClientID: "dev-1", Username: "dev-1", Password: "pw1", Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	for _, p := range []string{"a", "b", "c"} {
		if err := dev.Publish("ekem/v1/reg/dev-1", []byte(p), false); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"a", "b", "c"} {
		m, ok := iss.Inbox().Next(ctx)
		if !ok || string(m.Payload) != want || m.Topic != "ekem/v1/reg/dev-1" {
			t.Fatalf("got %q %q %v, want %q in order", m.Topic, m.Payload, ok, want)
		}
	}
	<-connects // the first connection
	// The broker drops the issuer: it reconnects, subscribes again, runs
	// OnConnect, and receives again.
	if px.CutAll() == 0 {
		t.Fatal("tcpproxy: no connection to cut")
	}
	select {
	case <-connects:
	case <-ctx.Done():
		t.Fatal("no reconnection")
	}
	if err := dev.Publish("ekem/v1/reg/dev-1", []byte("d"), false); err != nil {
		t.Fatal(err)
	}
	if m, ok := iss.Inbox().Next(ctx); !ok || string(m.Payload) != "d" {
		t.Fatalf("after reconnecting: %q %v", m.Payload, ok)
	}
	if !iss.Connected() {
		t.Fatal("not connected")
	}
	iss.Close()
	if iss.Connected() {
		t.Fatal("connected after Close")
	}
	if err := iss.Publish("ekem/v1/epoch", []byte("x"), true); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("publish after Close: %v", err)
	}
}
