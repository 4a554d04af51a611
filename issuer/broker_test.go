package issuer

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/entropykem/entropykem/internal/mqttc"
	"github.com/entropykem/entropykem/pkg/wire"
)

// allowAll lets every client connect and use every topic (mochi's own
// auth hook pulls in a YAML module this repository does not carry).
type allowAll struct{ mqtt.HookBase }

func (*allowAll) ID() string { return "allow-all" }
func (*allowAll) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}
func (*allowAll) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (*allowAll) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }

// broker is an in-process mochi broker with an inline observer that sees
// every publish (subscribed before any client connects: mochi 2.7.9 races
// when a client subscribes to retained messages while another publishes
// them, so tests subscribe before the issuer connects).
type broker struct {
	srv       *mqtt.Server
	addr      string
	observed  chan mqttc.Message
	closeOnce sync.Once
}

// startBroker runs a broker on addr ("" for a free port).
func startBroker(t *testing.T, addr string) *broker {
	t.Helper()
	if addr == "" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = ln.Addr().String()
		ln.Close()
	}
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: quietLogger()})
	if err := srv.AddHook(new(allowAll), nil); err != nil {
		t.Fatal(err)
	}
	b := &broker{srv: srv, addr: addr, observed: make(chan mqttc.Message, 4096)}
	if err := srv.Subscribe("#", 1, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		select {
		case b.observed <- mqttc.Message{Topic: pk.TopicName, Payload: bytes.Clone(pk.Payload), Retained: pk.FixedHeader.Retain}:
		default:
			t.Error("observer queue full")
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: addr})); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

func (b *broker) Close() { b.closeOnce.Do(func() { b.srv.Close() }) }

// next returns the next publish the broker saw.
func (b *broker) next(ctx context.Context) (mqttc.Message, bool) {
	select {
	case m := <-b.observed:
		return m, true
	case <-ctx.Done():
		return mqttc.Message{}, false
	}
}

func dial(t *testing.T, ctx context.Context, addr, id string, filters ...string) *mqttc.Client {
	t.Helper()
	c, err := mqttc.Dial(ctx, mqttc.Options{Broker: "tcp://" + addr, ClientID: id, Timeout: 3 * time.Second, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	for _, f := range filters {
		if err := c.Subscribe(f); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// await returns the first message from next for which ok holds.
func await(t *testing.T, ctx context.Context, next func(context.Context) (mqttc.Message, bool), what string, ok func(mqttc.Message) bool) mqttc.Message {
	t.Helper()
	for {
		m, more := next(ctx)
		if !more {
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		}
		if ok(m) {
			return m
		}
	}
}

// collect reads from next until every topic in want has a message whose
// payload is non-empty and for which ok holds, and returns the last one per
// topic.
func collect(t *testing.T, ctx context.Context, next func(context.Context) (mqttc.Message, bool), ok func(mqttc.Message) bool, want ...string) map[string][]byte {
	t.Helper()
	got := map[string][]byte{}
	for len(got) < len(want) {
		m, more := next(ctx)
		if !more {
			t.Fatalf("waiting for %v: %v (have %d)", want, ctx.Err(), len(got))
		}
		if slices.Contains(want, m.Topic) && len(m.Payload) > 0 && ok(m) {
			got[m.Topic] = m.Payload
		}
	}
	return got
}

func ticketOfEpoch(topic string, epoch uint64) func(mqttc.Message) bool {
	return func(m mqttc.Message) bool {
		if m.Topic != topic || len(m.Payload) == 0 {
			return false
		}
		_, b, err := wire.ParseTicket(m.Payload)
		return err == nil && b.Epoch == epoch
	}
}

func TestEndToEndWithBroker(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := startBroker(t, "")
	e := newEnv(t, func(c *Config) { c.Broker = "tcp://" + b.addr })
	tp := e.iss.topics
	d := newDevice(t, "dev-1")
	// The device subscribes before the issuer connects (see broker).
	dc := dial(t, ctx, b.addr, "dev-1", tp.Ticket("dev-1"), tp.AllRoots(), tp.Epoch(), tp.Online())
	if err := e.iss.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.iss.Start(ctx); !errors.Is(err, ErrStarted) {
		t.Fatalf("second Start: %v", err)
	}
	online := await(t, ctx, dc.Inbox().Next, "online", func(m mqttc.Message) bool { return m.Topic == tp.Online() })
	if o, err := wire.ParseOnline(online.Payload); err != nil || !o.Online {
		t.Fatalf("online %+v %v", o, err)
	}
	if err := dc.Publish(tp.Registration("dev-1"), d.registration(), true); err != nil {
		t.Fatal(err)
	}
	if _, err := e.iss.WaitRegistered(ctx, "dev-1"); err != nil {
		t.Fatal(err)
	}
	any := func(mqttc.Message) bool { return true }
	for epoch := uint64(1); epoch <= 2; epoch++ {
		e.clock.Set(e.clock.Now().Add(time.Hour))
		if got, err := e.iss.IssueEpoch(ctx); err != nil || got != epoch {
			t.Fatalf("issue %d: %d %v", epoch, got, err)
		}
		msgs := collect(t, ctx, dc.Inbox().Next, any, tp.Ticket("dev-1"), tp.Root(epoch), tp.Epoch())
		if ei, err := wire.ParseEpochInfo(msgs[tp.Epoch()]); err != nil || ei.Epoch != epoch {
			t.Fatalf("epoch info %+v %v", ei, err)
		}
		res := d.accept(msgs[tp.Ticket("dev-1")], msgs[tp.Root(epoch)], e.pins, e.clock.Now().Add(time.Second))
		if res.Gap || res.State.Epoch != epoch {
			t.Fatalf("epoch %d: gap %v", epoch, res.Gap)
		}
		if err := dc.Publish(tp.Status("dev-1"), d.status(res), true); err != nil {
			t.Fatal(err)
		}
		if _, err := e.iss.WaitConfirmed(ctx, "dev-1", epoch); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.iss.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	if c := e.iss.Counters(); c["statuses_verified"] != 2 || c["tickets_issued"] != 2 || c["publish_failures"] != 0 {
		t.Fatalf("counters %v", c)
	}
	// Close says goodbye on the online topic.
	if err := e.iss.Close(); err != nil {
		t.Fatal(err)
	}
	off := await(t, ctx, b.next, "offline", func(m mqttc.Message) bool {
		o, err := wire.ParseOnline(m.Payload)
		return m.Topic == tp.Online() && err == nil && !o.Online
	})
	_ = off
}

// TestPersistBeforePublish: an epoch issued before Start, or while the
// broker is down, is persisted; a broker with no retained messages gets it,
// byte for byte, when the issuer (re)connects.
func TestPersistBeforePublish(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	e := newEnv(t, func(c *Config) { c.Timeout = time.Second })
	d := newDevice(t, "dev-1")
	e.register(d)
	if ep := e.issue(); ep != 1 {
		t.Fatal(ep)
	}
	b := startBroker(t, "")
	e.iss.cfg.Broker = "tcp://" + b.addr
	if err := e.iss.Start(ctx); err != nil {
		t.Fatal(err)
	}
	tp := e.iss.topics
	stored1, root1, _ := e.latest("dev-1")
	got := collect(t, ctx, b.next, func(m mqttc.Message) bool { return true }, tp.Ticket("dev-1"), tp.Root(1), tp.Epoch())
	if !bytes.Equal(got[tp.Ticket("dev-1")], stored1) || !bytes.Equal(got[tp.Root(1)], root1) {
		t.Fatal("epoch 1 not published from the store on connect")
	}

	// The broker dies; epoch 2 cannot be published but is persisted.
	b.Close()
	ep, err := e.iss.IssueEpoch(ctx)
	if ep != 2 || !errors.Is(err, ErrPublish) {
		t.Fatalf("issue while down: %d %v", ep, err)
	}
	if e.counter("publish_failures") == 0 {
		t.Fatal("failures not counted")
	}
	if e.iss.LastEpoch() != 2 {
		t.Fatal("epoch 2 not persisted")
	}
	stored, storedRoot, _ := e.latest("dev-1")

	// A fresh broker (no retained messages) on the same address.
	b2 := startBroker(t, b.addr)
	// In one wait: the republication sends roots before tickets, the
	// failed epoch's retries (if the connection came back before they
	// ended) the ticket before the root.
	isTicket2 := ticketOfEpoch(tp.Ticket("dev-1"), 2)
	got = collect(t, ctx, b2.next, func(m mqttc.Message) bool { return m.Topic != tp.Ticket("dev-1") || isTicket2(m) },
		tp.Ticket("dev-1"), tp.Root(2))
	if !bytes.Equal(got[tp.Ticket("dev-1")], stored) {
		t.Fatal("republished ticket differs from the stored one")
	}
	if !bytes.Equal(got[tp.Root(2)], storedRoot) {
		t.Fatal("republished root differs")
	}
	// The device accepts the republished epoch (it never saw epoch 1).
	res := d.accept(stored, storedRoot, e.pins, e.clock.Now())
	if !res.Gap || res.State.Epoch != 2 {
		t.Fatalf("gap %v epoch %d", res.Gap, res.State.Epoch)
	}
}

// TestRun: the epoch clock issues the first epoch at once on a new store
// and then one every Period; Run returns nil when its context ends.
func TestRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := startBroker(t, "")
	e := newEnv(t, func(c *Config) {
		c.Broker = "tcp://" + b.addr
		c.Period = time.Second
		c.Now = time.Now
	})
	e.register(newDevice(t, "dev-1"))
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- e.iss.Run(runCtx) }()
	if _, err := e.iss.WaitFor(ctx, "dev-1", func(d DeviceInfo) bool { return d.LastEpoch >= 2 }); err != nil {
		t.Fatal(err)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if e.counter("epochs") < 2 {
		t.Fatalf("counters %v", e.iss.Counters())
	}
}

// TestOldRootsCleared: roots beyond KeepRoots are cleared on the broker
// with an empty retained publish; a revoked device's ticket topic too.
func TestOldRootsCleared(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := startBroker(t, "")
	e := newEnv(t, func(c *Config) { c.Broker = "tcp://" + b.addr; c.KeepRoots = 2 })
	e.register(newDevice(t, "dev-1"))
	e.register(newDevice(t, "dev-2"))
	if err := e.iss.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		e.issue()
	}
	tp := e.iss.topics
	await(t, ctx, b.next, "root/1 cleared", func(m mqttc.Message) bool { return m.Topic == tp.Root(1) && len(m.Payload) == 0 })
	if err := e.iss.Admin().Revoke("dev-2", testOp); err != nil {
		t.Fatal(err)
	}
	await(t, ctx, b.next, "ticket/dev-2 cleared", func(m mqttc.Message) bool { return m.Topic == tp.Ticket("dev-2") && len(m.Payload) == 0 })
}

func TestMetricsAndHealth(t *testing.T) {
	e := newEnv(t)
	e.register(newDevice(t, "dev-1"))
	e.issue()
	rec := httptest.NewRecorder()
	e.iss.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`ekem_registrations_total{result="pinned"} 1`,
		"ekem_tickets_issued_total 1",
		"ekem_current_epoch 1",
		"ekem_broker_connected 0",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
	rec = httptest.NewRecorder()
	e.iss.ReadyHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != 503 {
		t.Fatalf("ready while not connected: %d", rec.Code)
	}
}
