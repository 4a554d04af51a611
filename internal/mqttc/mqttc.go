// Package mqttc is the project's one way of talking MQTT (paho, MQTT
// 3.1.1): auto-reconnect and connect-retry on, subscriptions re-made in the
// on-connect handler, message handlers that never block (messages go to an
// unbounded in-order inbox that the owner drains on its own goroutine), and
// a timeout on every wait.
package mqttc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// ErrTimeout is returned when the broker does not answer in time.
var ErrTimeout = errors.New("mqttc: timed out waiting for the broker")

// ErrNotConnected is returned by Publish while the connection is down.
var ErrNotConnected = errors.New("mqttc: not connected")

// Options configure a Client.
type Options struct {
	Broker   string // tcp://host:port, ssl://host:port
	ClientID string
	Username string
	Password string
	TLS      *tls.Config
	// Will, if set, is published retained at QoS 1 by the broker when the
	// connection drops without a DISCONNECT.
	WillTopic   string
	WillPayload []byte
	// OnConnect runs after every (re)connection and re-subscription, on its
	// own goroutine (so it may publish and wait).
	OnConnect func()
	// Timeout bounds every wait for the broker (default 10 s).
	Timeout time.Duration
	Logger  *slog.Logger
}

// Message is one received message.
type Message struct {
	Topic    string
	Payload  []byte
	Retained bool
}

// Client is a connected MQTT client.
type Client struct {
	c       mqtt.Client
	opts    Options
	inbox   *Inbox
	mu      sync.Mutex
	filters []string
}

// Dial connects to the broker, retrying until ctx ends. Every message of
// every subscription arrives, in order, on Inbox().
func Dial(ctx context.Context, o Options) (*Client, error) {
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	cl := &Client{opts: o, inbox: newInbox()}
	po := mqtt.NewClientOptions().AddBroker(o.Broker).SetClientID(o.ClientID).
		SetUsername(o.Username).SetPassword(o.Password).SetCleanSession(true).
		SetAutoReconnect(true).SetConnectRetry(false).
		SetMaxReconnectInterval(5 * time.Second).SetKeepAlive(30 * time.Second).
		SetConnectTimeout(o.Timeout).SetWriteTimeout(o.Timeout).SetOrderMatters(true).
		SetStore(newCopyStore()).
		SetOnConnectHandler(cl.onConnect).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			o.Logger.Warn("mqtt connection lost", "broker", o.Broker, "err", err)
		})
	if o.TLS != nil {
		po.SetTLSConfig(o.TLS)
	}
	if o.WillTopic != "" {
		po.SetBinaryWill(o.WillTopic, o.WillPayload, 1, true)
	}
	cl.c = mqtt.NewClient(po)
	if err := cl.connect(ctx); err != nil {
		return nil, err
	}
	return cl, nil
}

// ErrRefused is returned by Dial when the broker refuses the credentials:
// retrying cannot help, so Dial does not.
var ErrRefused = errors.New("mqttc: broker refused the connection")

// connect makes the first connection, retrying (every second, until ctx
// ends) while the broker is unreachable, but not when it refuses us.
// Once connected, paho reconnects by itself.
func (c *Client) connect(ctx context.Context) error {
	for {
		tok := c.c.Connect()
		select {
		case <-tok.Done():
		case <-ctx.Done():
			c.c.Disconnect(0)
			return fmt.Errorf("mqttc: connect to %s: %w", c.opts.Broker, ctx.Err())
		}
		err := tok.Error()
		switch {
		case err == nil:
			return nil
		case errors.Is(err, packets.ErrorRefusedNotAuthorised), errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword),
			errors.Is(err, packets.ErrorRefusedIDRejected):
			return fmt.Errorf("%w: %s: %w (hint: check the username, password or client certificate)", ErrRefused, c.opts.Broker, err)
		}
		c.opts.Logger.Warn("mqtt connect failed, retrying", "broker", c.opts.Broker, "err", err)
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return fmt.Errorf("mqttc: connect to %s: %w (last error: %v)", c.opts.Broker, ctx.Err(), err)
		}
	}
}

// Inbox is where every subscribed message arrives.
func (c *Client) Inbox() *Inbox { return c.inbox }

// Subscribe subscribes to filter at QoS 1 now and after every reconnect.
func (c *Client) Subscribe(filter string) error {
	c.mu.Lock()
	c.filters = append(c.filters, filter)
	c.mu.Unlock()
	return c.subscribe(filter)
}

// ErrSubscribeRefused is returned when the broker's SUBACK refuses a
// subscription (return code 0x80 or above), which paho reports as success.
var ErrSubscribeRefused = errors.New("mqttc: broker refused the subscription")

// subscribe subscribes at QoS 1 and checks the SUBACK's return code,
// retrying a refusal a few times (some brokers refuse a SUBSCRIBE whose
// packet id collides with a delivery in flight).
func (c *Client) subscribe(filter string) error {
	var err error
	for try := range 3 {
		if try > 0 {
			time.Sleep(time.Duration(try) * 100 * time.Millisecond)
		}
		tok := c.c.Subscribe(filter, 1, c.handle)
		if err = c.wait(tok); err != nil {
			continue
		}
		st, ok := tok.(*mqtt.SubscribeToken)
		if !ok {
			return nil
		}
		if code, found := st.Result()[filter]; found && code >= 0x80 {
			err = fmt.Errorf("%w: %s (code 0x%02x)", ErrSubscribeRefused, filter, code)
			continue
		}
		return nil
	}
	return err
}

// onConnect runs in paho's handler: it must not block, so it only
// starts the re-subscription and the owner's hook on a goroutine.
func (c *Client) onConnect(mqtt.Client) {
	c.mu.Lock()
	filters := append([]string(nil), c.filters...)
	c.mu.Unlock()
	go func() {
		for _, f := range filters {
			if err := c.subscribe(f); err != nil {
				c.opts.Logger.Error("mqtt resubscribe failed", "filter", f, "err", err)
			}
		}
		if c.opts.OnConnect != nil {
			c.opts.OnConnect()
		}
	}()
}

// handle is paho's message handler: it copies and enqueues, never blocks.
func (c *Client) handle(_ mqtt.Client, m mqtt.Message) {
	c.inbox.put(Message{Topic: m.Topic(), Payload: append([]byte(nil), m.Payload()...), Retained: m.Retained()})
}

// Publish publishes at QoS 1 and waits for the PUBACK (which is not
// durability: see PROTOCOL.md §6).
func (c *Client) Publish(topic string, payload []byte, retained bool) error {
	return c.wait(c.c.Publish(topic, 1, retained, payload))
}

// PublishAsync starts a QoS 1 publish; Wait on the result with WaitAll.
func (c *Client) PublishAsync(topic string, payload []byte, retained bool) mqtt.Token {
	return c.c.Publish(topic, 1, retained, payload)
}

// WaitAll waits for every token, each within the timeout, and returns how
// many failed and the first error.
func (c *Client) WaitAll(toks []mqtt.Token) (failed int, first error) {
	for _, t := range toks {
		if err := c.wait(t); err != nil {
			failed++
			if first == nil {
				first = err
			}
		}
	}
	return failed, first
}

// Connected reports whether the connection is up.
func (c *Client) Connected() bool { return c.c.IsConnectionOpen() }

func (c *Client) wait(t mqtt.Token) error {
	if !t.WaitTimeout(c.opts.Timeout) {
		return ErrTimeout
	}
	if err := t.Error(); err != nil {
		if errors.Is(err, mqtt.ErrNotConnected) {
			return fmt.Errorf("%w: %w", ErrNotConnected, err)
		}
		return fmt.Errorf("mqttc: %w", err)
	}
	return nil
}

// Close disconnects cleanly (so no will message is sent) and closes the
// inbox.
func (c *Client) Close() {
	c.c.Disconnect(250)
	c.inbox.close()
}

// Inbox is an unbounded FIFO of messages: paho's handler never waits on
// the consumer, and nothing is dropped.
type Inbox struct {
	mu     sync.Mutex
	queue  []Message
	ready  chan struct{}
	closed bool
}

func newInbox() *Inbox { return &Inbox{ready: make(chan struct{}, 1)} }

func (b *Inbox) put(m Message) {
	b.mu.Lock()
	if !b.closed {
		b.queue = append(b.queue, m)
	}
	b.mu.Unlock()
	select {
	case b.ready <- struct{}{}:
	default:
	}
}

func (b *Inbox) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	select {
	case b.ready <- struct{}{}:
	default:
	}
}

// Next returns the next message, waiting until one arrives, the inbox is
// closed (ok false) or ctx ends (ok false).
func (b *Inbox) Next(ctx context.Context) (m Message, ok bool) {
	for {
		b.mu.Lock()
		if len(b.queue) > 0 {
			m = b.queue[0]
			b.queue[0] = Message{}
			b.queue = b.queue[1:]
			b.mu.Unlock()
			return m, true
		}
		closed := b.closed
		b.mu.Unlock()
		if closed {
			return Message{}, false
		}
		select {
		case <-b.ready:
		case <-ctx.Done():
			return Message{}, false
		}
	}
}

// Len is the number of queued messages.
func (b *Inbox) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue)
}

// FetchRetained connects with o, subscribes to filters and returns the
// retained messages delivered until none came for quiet (or ctx ends,
// which is an error), then disconnects cleanly. MQTT marks no end of the
// retained burst that follows a SUBACK; quiet bounds how long a pause
// inside it may be. Cleared topics (empty payloads) are left out.
func FetchRetained(ctx context.Context, o Options, filters []string, quiet time.Duration) ([]Message, error) {
	o.OnConnect, o.WillTopic, o.WillPayload = nil, "", nil
	c, err := Dial(ctx, o)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	for _, f := range filters {
		if err := c.subscribe(f); err != nil {
			return nil, fmt.Errorf("mqttc: subscribe %s: %w", f, err)
		}
	}
	var out []Message
	for {
		qctx, cancel := context.WithTimeout(ctx, quiet)
		m, ok := c.inbox.Next(qctx)
		cancel()
		if !ok {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("mqttc: reading retained messages from %s: %w", o.Broker, err)
			}
			return out, nil
		}
		if m.Retained && len(m.Payload) > 0 {
			out = append(out, m)
		}
	}
}
