package device

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// memTransport is a Transport an embedder might write over a connection
// it already holds: here, channels the test drives.
type memTransport struct {
	in        chan Message
	connected chan struct{}

	mu        sync.Mutex
	filters   []string
	published []Message
	read      int // how many of published next returned
	sent      chan struct{}
}

func newMemTransport() *memTransport {
	return &memTransport{in: make(chan Message, 16), connected: make(chan struct{}, 1), sent: make(chan struct{}, 64)}
}

func (m *memTransport) Publish(topic string, payload []byte, retained bool) error {
	if !retained {
		return errors.New("every protocol publish is retained")
	}
	m.mu.Lock()
	m.published = append(m.published, Message{Topic: topic, Payload: payload})
	m.mu.Unlock()
	m.sent <- struct{}{}
	return nil
}

func (m *memTransport) Subscribe(filter string) error {
	m.mu.Lock()
	m.filters = append(m.filters, filter)
	m.mu.Unlock()
	return nil
}

func (m *memTransport) Receive(ctx context.Context) (Message, bool) {
	select {
	case msg := <-m.in:
		return msg, true
	case <-ctx.Done():
		return Message{}, false
	}
}

func (m *memTransport) Connected() <-chan struct{} { return m.connected }

// next waits for the next publish and returns it.
func (m *memTransport) next(t *testing.T) Message {
	t.Helper()
	select {
	case <-m.sent:
	case <-time.After(10 * time.Second):
		t.Fatal("no publish")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.read++
	return m.published[m.read-1]
}

// TestServeOverEmbedderTransport: an agent served over a Transport the
// embedder holds subscribes to the device's filters in the order of
// PROTOCOL.md §3.1, publishes its Registration on every connection,
// accepts a ticket delivered through it and publishes the Status there.
func TestServeOverEmbedderTransport(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Broker = "" }) // Serve needs no broker URL
	tr := newMemTransport()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.a.Serve(ctx, tr) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	tr.connected <- struct{}{}
	reg := tr.next(t)
	if reg.Topic != topics.Registration(devID) || string(reg.Payload) != string(e.a.Registration()) {
		t.Fatalf("first publish on %s, want the registration", reg.Topic)
	}
	tr.mu.Lock()
	filters := slices.Clone(tr.filters)
	tr.mu.Unlock()
	if want := []string{topics.AllIssuerKeys(), topics.Ticket(devID), topics.AllRoots()}; !slices.Equal(filters, want) {
		t.Fatalf("subscribed %q, want %q", filters, want)
	}

	iss, ep := e.is.issue(1, e.clock.Now(), regDevice(t, e.a.Registration()))
	tr.in <- Message{Topic: topics.Ticket(devID), Payload: iss.Ticket} // waits for its root
	tr.in <- Message{Topic: topics.Root(1), Payload: ep.Root}
	st := tr.next(t)
	s, err := wire.ParseStatus(st.Payload)
	if st.Topic != topics.Status(devID) || err != nil || s.Epoch != 1 || s.State != wire.StateOK {
		t.Fatalf("status on %s: %+v %v", st.Topic, s, err)
	}
	if err := e.a.WaitEpoch(ctx, 1); err != nil {
		t.Fatal(err)
	}

	// A reconnection: registration, then the last Status, unchanged.
	tr.connected <- struct{}{}
	if m := tr.next(t); m.Topic != topics.Registration(devID) {
		t.Fatalf("after reconnect: %s", m.Topic)
	}
	if m := tr.next(t); m.Topic != topics.Status(devID) || string(m.Payload) != string(st.Payload) {
		t.Fatalf("after reconnect: %s, not the last Status", m.Topic)
	}
}

func TestServeRefuses(t *testing.T) {
	e := newEnv(t, nil)
	if err := e.a.Serve(context.Background(), nil); !errors.Is(err, ErrConfig) {
		t.Fatalf("Serve(nil): %v", err)
	}
	e2 := newEnv(t, func(c *Config) { c.IssuerKeys = nil })
	if err := e2.a.Serve(context.Background(), newMemTransport()); !errors.Is(err, ErrConfig) {
		t.Fatalf("Serve without pins: %v", err)
	}
}

// TestFleetPinsOneKeySet: agents of a Fleet share verified roots, which
// is sound only for one set of pinned keys; another set is refused.
func TestFleetPinsOneKeySet(t *testing.T) {
	e := newEnv(t, nil)
	e.a.Close()
	f := NewFleet(e.is.pins)
	c := e.config()
	a, err := f.New(c)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	other, err := signature.NewKeySet(e.is.pins.Keys()...)
	if err != nil {
		t.Fatal(err)
	}
	c.IssuerKeys = other
	if _, err := f.New(c); !errors.Is(err, ErrConfig) {
		t.Fatalf("Fleet.New with other pins: %v", err)
	}
}
