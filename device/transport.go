package device

import (
	"context"

	"github.com/entropykem/entropykem/internal/mqttc"
)

// Message is one message the Transport received on a subscribed filter.
type Message struct {
	Topic   string
	Payload []byte
}

// Transport is the agent's connection to the MQTT broker. Run dials one
// (internal/mqttc: reconnection with backoff, re-subscription, an inbox
// that never blocks the client's handler); an embedder that already holds
// a connection implements Transport on it and calls Serve.
//
// The agent calls Subscribe once per filter before it reads anything
// (schema/PROTOCOL.md §3.1: {prefix}/issuer/key/+, {prefix}/ticket/{id},
// {prefix}/root/+, at QoS 1, in that order), and Publish and Receive from
// one goroutine, Serve's.
type Transport interface {
	// Publish publishes payload on topic at QoS 1 and returns once the
	// broker acknowledged it, or with an error (the agent republishes
	// what it must after the next connection).
	Publish(topic string, payload []byte, retained bool) error
	// Subscribe subscribes to filter at QoS 1, now and again after every
	// reconnection.
	Subscribe(filter string) error
	// Receive returns the next message of a subscribed filter, in the
	// order received, waiting for one. ok is false once ctx ends or the
	// connection is closed for good. A Transport must not drop messages
	// while the agent is busy (the client's handler must not block on the
	// agent either: queue them).
	Receive(ctx context.Context) (m Message, ok bool)
	// Connected delivers a value after every (re)connection, once the
	// subscriptions are in place again; the agent then republishes its
	// Registration and last Status. One pending value is enough: a
	// Transport may drop a value while one is pending.
	Connected() <-chan struct{}
}

// mqttTransport is the default Transport: an mqttc client dialled by Run.
type mqttTransport struct {
	cl        *mqttc.Client
	connected chan struct{}
}

// dialMQTT connects to a.cfg.Broker as a.cfg says, retrying until ctx
// ends.
func (a *Agent) dialMQTT(ctx context.Context) (*mqttTransport, error) {
	t := &mqttTransport{connected: make(chan struct{}, 1)}
	cl, err := mqttc.Dial(ctx, mqttc.Options{
		Broker: a.cfg.Broker, ClientID: a.cfg.ClientID, Username: a.cfg.Username,
		Password: a.cfg.Password, TLS: a.cfg.TLS, Timeout: a.cfg.Timeout, Logger: a.log,
		OnConnect: func() {
			select {
			case t.connected <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		return nil, err
	}
	t.cl = cl
	return t, nil
}

func (t *mqttTransport) Publish(topic string, payload []byte, retained bool) error {
	return t.cl.Publish(topic, payload, retained)
}

func (t *mqttTransport) Subscribe(filter string) error { return t.cl.Subscribe(filter) }

// Resubscribe replaces a subscription (device/behind.go).
func (t *mqttTransport) Resubscribe(filter string) { t.cl.Resubscribe(filter) }

func (t *mqttTransport) Receive(ctx context.Context) (Message, bool) {
	m, ok := t.cl.Inbox().Next(ctx)
	return Message{Topic: m.Topic, Payload: m.Payload}, ok
}

func (t *mqttTransport) Connected() <-chan struct{} { return t.connected }

func (t *mqttTransport) Close() { t.cl.Close() }
