package integration

import (
	"crypto/tls"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/entropykem/entropykem/internal/mosquittotest"
)

// Topics of DESIGN.md with the default prefix.
const (
	prefix         = "ekem/v1/"
	topicEpoch     = prefix + "epoch"
	topicOnline    = prefix + "issuer/online"
	topicIssuerKey = prefix + "issuer/key/0011223344556677"
	waitTimeout    = 5 * time.Second // every positive wait in this package is bounded by this
	ackTimeout     = 5 * time.Second
	probePayload   = "forged"
)

func regTopic(id string) string    { return prefix + "reg/" + id }
func statusTopic(id string) string { return prefix + "status/" + id }
func ticketTopic(id string) string { return prefix + "ticket/" + id }
func rootTopic(epoch int) string   { return fmt.Sprintf("%sroot/%d", prefix, epoch) }

var clientSeq atomic.Int64

// dial connects one paho client (MQTT 3.1.1, clean session, no automatic
// reconnect) and returns the CONNECT result. user may be empty (anonymous).
func dial(url, user, password string, tlsCfg *tls.Config) (mqtt.Client, error) {
	o := mqtt.NewClientOptions().
		AddBroker(url).
		SetClientID(fmt.Sprintf("t%d-%s", clientSeq.Add(1), user)).
		SetUsername(user).
		SetPassword(password).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(ackTimeout).
		SetWriteTimeout(ackTimeout).
		SetProtocolVersion(4)
	if tlsCfg != nil {
		o.SetTLSConfig(tlsCfg)
	}
	return dialOptions(o)
}

func dialOptions(o *mqtt.ClientOptions) (mqtt.Client, error) {
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(ackTimeout) {
		c.Disconnect(0)
		return nil, fmt.Errorf("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	return c, nil
}

// connectAs connects with the password of account name; the test fails if
// the broker refuses.
func connectAs(t testing.TB, b *mosquittotest.Broker, name string) mqtt.Client {
	t.Helper()
	a := b.Account(name)
	c, err := dial(b.URL(), a.Username, a.Password, nil)
	if err != nil {
		t.Fatalf("connect as %s: %v", name, err)
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

// publish sends a QoS 1 message and waits for its PUBACK. Mosquitto also
// PUBACKs a publish that the ACL denies (and drops it), so success here says
// nothing about delivery: tests check what subscribers receive.
func publish(t testing.TB, c mqtt.Client, topic string, payload []byte, retained bool) {
	t.Helper()
	tok := c.Publish(topic, 1, retained, payload)
	if !tok.WaitTimeout(ackTimeout) {
		t.Fatalf("publish %s: no PUBACK within %v", topic, ackTimeout)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
}

func publishString(t testing.TB, c mqtt.Client, topic, payload string, retained bool) {
	t.Helper()
	publish(t, c, topic, []byte(payload), retained)
}

// message is one delivery seen by a recorder.
type message struct {
	Topic    string
	Payload  string
	Retained bool
}

// recorder is a subscriber that keeps every message it receives.
type recorder struct {
	name   string
	client mqtt.Client
	mu     sync.Mutex
	msgs   []message
	notify chan struct{} // signalled (non-blocking) on every message
}

// subscribe connects as account name, subscribes at QoS 1 to filters and
// waits for the SUBACK. Mosquitto grants every subscription (the ACL is
// applied per delivered message), so a SUBACK says nothing about access.
func subscribe(t testing.TB, b *mosquittotest.Broker, name string, filters ...string) *recorder {
	t.Helper()
	a := b.Account(name)
	return subscribeWith(t, b.URL(), a.Username, a.Password, nil, filters...)
}

func subscribeWith(t testing.TB, url, user, password string, tlsCfg *tls.Config, filters ...string) *recorder {
	t.Helper()
	r := &recorder{name: user, notify: make(chan struct{}, 1)}
	o := mqtt.NewClientOptions().
		AddBroker(url).
		SetClientID(fmt.Sprintf("t%d-%s", clientSeq.Add(1), user)).
		SetUsername(user).
		SetPassword(password).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectTimeout(ackTimeout).
		SetProtocolVersion(4).
		SetDefaultPublishHandler(r.handle)
	if tlsCfg != nil {
		o.SetTLSConfig(tlsCfg)
	}
	c, err := dialOptions(o)
	if err != nil {
		t.Fatalf("connect %s: %v", user, err)
	}
	t.Cleanup(func() { c.Disconnect(50) })
	r.client = c
	subs := make(map[string]byte, len(filters))
	for _, f := range filters {
		subs[f] = 1
	}
	tok := c.SubscribeMultiple(subs, nil)
	if !tok.WaitTimeout(ackTimeout) || tok.Error() != nil {
		t.Fatalf("subscribe %s to %v: %v", user, filters, tok.Error())
	}
	return r
}

func (r *recorder) handle(_ mqtt.Client, m mqtt.Message) {
	r.mu.Lock()
	r.msgs = append(r.msgs, message{Topic: m.Topic(), Payload: string(m.Payload()), Retained: m.Retained()})
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// messages returns a copy of everything received so far.
func (r *recorder) messages() []message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]message(nil), r.msgs...)
}

// waitUntil waits (bounded by timeout) until cond holds for the messages
// received so far, and fails the test otherwise.
func (r *recorder) waitUntil(t testing.TB, timeout time.Duration, what string, cond func([]message) bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if cond(r.messages()) {
			return
		}
		select {
		case <-r.notify:
		case <-deadline.C:
			t.Fatalf("%s: %s not received within %v (got %d messages)", r.name, what, timeout, len(r.messages()))
		}
	}
}

// waitFor waits for a message with this topic and payload.
func (r *recorder) waitFor(t testing.TB, topic, payload string) {
	t.Helper()
	r.waitUntil(t, waitTimeout, fmt.Sprintf("%s %q", topic, payload), func(ms []message) bool {
		return hasMessage(ms, topic, payload)
	})
}

// waitForTopic waits for any message on topic.
func (r *recorder) waitForTopic(t testing.TB, topic string) {
	t.Helper()
	r.waitUntil(t, waitTimeout, topic, func(ms []message) bool {
		for _, m := range ms {
			if m.Topic == topic {
				return true
			}
		}
		return false
	})
}

// mustNotHave fails the test for every received message that bad matches.
func (r *recorder) mustNotHave(t testing.TB, why string, bad func(message) bool) {
	t.Helper()
	for _, m := range r.messages() {
		if bad(m) {
			t.Errorf("%s received %s (payload %d bytes %.40q, retained %v): %s", r.name, m.Topic, len(m.Payload), m.Payload, m.Retained, why)
		}
	}
}

func hasMessage(ms []message, topic, payload string) bool {
	for _, m := range ms {
		if m.Topic == topic && m.Payload == payload {
			return true
		}
	}
	return false
}

func payloadIs(p string) func(message) bool {
	return func(m message) bool { return m.Payload == p }
}

func topicIs(topics ...string) func(message) bool {
	return func(m message) bool {
		for _, tp := range topics {
			if m.Topic == tp {
				return true
			}
		}
		return false
	}
}
