// Package mqttc is the project's one way of talking MQTT (paho, MQTT
// 3.1.1): auto-reconnect with exponential backoff and full jitter
// (Backoff), connection errors classified with hints (Classify; Dial fails
// fast on permanent ones), subscriptions re-made in the on-connect handler,
// message handlers that never block (messages go to an unbounded in-order
// inbox that the owner drains on its own goroutine), and a timeout on every
// wait. No paho type leaves this package; bulk publishing (Bulk) keeps
// its tokens inside.
package mqttc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
	// Backoff bounds the waits between connection attempts (default
	// DefaultBackoff).
	Backoff Backoff
	Logger  *slog.Logger
	// Lean uses the lean MQTT 3.1.1 connection (lean.go: tcp:// and
	// ssl:// only) instead of paho: far less client CPU per publish, for
	// a bulk publisher such as the issuer.
	Lean bool
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
	l       *lean // the lean connection, if Options.Lean (then c is nil)
	opts    Options
	inbox   *Inbox
	mu      sync.Mutex
	filters []string

	closed    chan struct{} // closed by Close: ends a reconnection wait
	closeOnce sync.Once
	attempt   atomic.Int32 // reconnection attempts since the connection was lost

	rmu     sync.Mutex
	lastErr error      // the last failed connection attempt's error
	lastEOF time.Time  // when the broker last closed a working connection
	quick   bool       // and we were back at the first attempt after it
	retry   retryState // refused subscriptions retried in the background (retry.go)
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
	o.Backoff = o.Backoff.orDefault()
	cl := &Client{opts: o, inbox: newInbox(), closed: make(chan struct{})}
	if o.Lean {
		l, err := dialLean(ctx, o, cl.inbox.put, cl.subscribed)
		if err != nil {
			return nil, err
		}
		cl.l = l
		l.retry.Store(cl)
		return cl, nil
	}
	// paho's own reconnection delay is made negligible (it has no
	// jitter); onReconnecting waits the jittered backoff before each
	// attempt instead.
	po := mqtt.NewClientOptions().AddBroker(o.Broker).SetClientID(o.ClientID).
		SetUsername(o.Username).SetPassword(o.Password).SetCleanSession(true).
		SetAutoReconnect(true).SetConnectRetry(false).
		SetMaxReconnectInterval(time.Millisecond).SetKeepAlive(30 * time.Second).
		SetConnectTimeout(o.Timeout).SetWriteTimeout(o.Timeout).SetOrderMatters(true).
		SetStore(newCopyStore()).
		SetOnConnectHandler(cl.onConnect).
		SetConnectionLostHandler(cl.onLost).
		SetReconnectingHandler(cl.onReconnecting).
		SetConnectionNotificationHandler(cl.onNotification)
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

// connect makes the first connection, retrying with Backoff (until ctx
// ends) while the broker is unreachable, one hinted log line per attempt;
// it fails at once when the broker refuses us (ErrRefused) or the error is
// a permanent configuration error (ErrPermanent, see Classify). Once
// connected, paho reconnects by itself, through onReconnecting.
func (c *Client) connect(ctx context.Context) error {
	for n := 0; ; n++ {
		tok := c.c.Connect()
		select {
		case <-tok.Done():
		case <-ctx.Done():
			c.c.Disconnect(0)
			return fmt.Errorf("mqttc: connect to %s: %w", c.opts.Broker, ctx.Err())
		}
		err := tok.Error()
		if err == nil {
			return nil
		}
		if refused(err) {
			return fmt.Errorf("%w: %s: %w (hint: check the username, password or client certificate)", ErrRefused, c.opts.Broker, err)
		}
		if e := c.takeLastErr(); e != nil {
			err = e // the network or TLS error behind paho's summary
		}
		permanent, hint := c.classify(err)
		if permanent {
			return fmt.Errorf("%w: %s: %w (hint: %s)", ErrPermanent, c.opts.Broker, err, hint)
		}
		wait := c.opts.Backoff.Delay(n)
		c.opts.Logger.Warn("mqtt connect failed, retrying", "broker", c.opts.Broker, "err", err, "hint", hint, "retry_in", wait.Round(time.Millisecond))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return fmt.Errorf("mqttc: connect to %s: %w (last error: %v)", c.opts.Broker, ctx.Err(), err)
		}
	}
}

// classify is Classify with what only the broker URL tells: a TLS
// connection that the server closes during the handshake (EOF) is most
// often TLS spoken to a plain MQTT port, which closes on the first bytes.
func (c *Client) classify(err error) (bool, string) {
	permanent, hint := Classify(err)
	closed := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		strings.Contains(err.Error(), "EOF") || strings.Contains(err.Error(), "connection reset")
	if hint == "" && closed &&
		(c.opts.TLS != nil || tlsScheme(c.opts.Broker)) {
		hint = "the broker closed the connection during the TLS handshake: is this a plain MQTT port (use tcp://), or the broker's TLS port?"
		if c.opts.TLS == nil || (len(c.opts.TLS.Certificates) == 0 && c.opts.TLS.GetClientCertificate == nil) {
			// With TLS 1.3 a broker's certificate_required alert can
			// reach the client as a bare close, after the handshake.
			hint += " Or the broker requires a TLS client certificate, and this client gives none (-tls-cert, -tls-key)."
		}
	}
	return permanent, hint
}

func tlsScheme(u string) bool {
	for _, p := range []string{"ssl://", "tls://", "mqtts://", "wss://"} {
		if strings.HasPrefix(u, p) {
			return true
		}
	}
	return false
}

func refused(err error) bool {
	return errors.Is(err, packets.ErrorRefusedNotAuthorised) || errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword) ||
		errors.Is(err, packets.ErrorRefusedIDRejected)
}

// onNotification keeps the error of each failed connection attempt (paho
// calls it synchronously from its connecting goroutine).
func (c *Client) onNotification(_ mqtt.Client, n mqtt.ConnectionNotification) {
	var err error
	switch v := n.(type) {
	case mqtt.ConnectionNotificationBrokerFailed:
		err = v.Reason
	case mqtt.ConnectionNotificationFailed:
		err = v.Reason
	default:
		return
	}
	c.rmu.Lock()
	if err != nil {
		c.lastErr = err
	}
	c.rmu.Unlock()
}

func (c *Client) takeLastErr() error {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	err := c.lastErr
	c.lastErr = nil
	return err
}

// takeoverWindow: a broker that closes a working connection twice within
// it, having accepted us again at once in between, is handing our client
// id to another client.
const takeoverWindow = 2 * time.Minute

// onLost logs a lost connection. MQTT 3.1.1 gives no reason when a broker
// drops a session because another client connected with the same client
// id: the connection just ends (EOF). When that happens again right after
// the broker accepted us back at the first attempt, the log names it.
func (c *Client) onLost(_ mqtt.Client, err error) {
	now := time.Now()
	c.rmu.Lock()
	eof := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
	takeover := eof && c.quick && now.Sub(c.lastEOF) < takeoverWindow
	if eof {
		c.lastEOF = now
	}
	c.quick = false
	c.rmu.Unlock()
	switch {
	case takeover:
		c.opts.Logger.Error("mqtt session taken over: the broker keeps closing this connection as soon as it accepts it, "+
			"which it does when another client connects with the same client id; two agents may be running with this id",
			"broker", c.opts.Broker, "client_id", c.opts.ClientID, "reason", "session_taken_over", "err", err)
	case eof:
		c.opts.Logger.Warn("mqtt connection closed by the broker (a broker restart, or another client taking over client id "+
			c.opts.ClientID+"); reconnecting", "broker", c.opts.Broker, "client_id", c.opts.ClientID, "err", err)
	default:
		c.opts.Logger.Warn("mqtt connection lost; reconnecting", "broker", c.opts.Broker, "err", err)
	}
}

// onReconnecting runs in paho's reconnecting goroutine before every
// attempt: it logs the previous attempt's failure (one hinted line per
// attempt) and waits the attempt's jittered backoff, or until Close.
func (c *Client) onReconnecting(mqtt.Client, *mqtt.ClientOptions) {
	n := int(c.attempt.Add(1)) - 1
	wait := c.opts.Backoff.Delay(n)
	if err := c.takeLastErr(); err != nil && n > 0 {
		permanent, hint := c.classify(err)
		c.opts.Logger.Warn("mqtt reconnect failed, retrying", "broker", c.opts.Broker, "attempt", n, "err", err,
			"permanent", permanent, "hint", hint, "retry_in", wait.Round(time.Millisecond))
	}
	select {
	case <-time.After(wait):
	case <-c.closed:
	}
}

// Inbox is where every subscribed message arrives.
func (c *Client) Inbox() *Inbox { return c.inbox }

// subscribed returns the filters to subscribe again after a reconnection.
func (c *Client) subscribed() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.filters...)
}

// Subscribe subscribes to filter at QoS 1 now and after every reconnect.
func (c *Client) Subscribe(filter string) error {
	c.mu.Lock()
	c.filters = append(c.filters, filter)
	c.mu.Unlock()
	if c.l != nil {
		return c.l.subscribe(filter)
	}
	err := c.subscribe(filter)
	if err != nil {
		c.retryLater(filter)
	}
	return err
}

// ErrSubscribeRefused is returned when the broker's SUBACK refuses a
// subscription (return code 0x80 or above), which paho reports as success.
var ErrSubscribeRefused = errors.New("mqttc: broker refused the subscription")

// subscribe subscribes at QoS 1 and checks the SUBACK's return code,
// retrying a refusal a few times (some brokers refuse a SUBSCRIBE whose
// packet id collides with a delivery in flight).
func (c *Client) subscribe(filter string) error {
	if c.l != nil {
		return c.l.subscribe(filter)
	}
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
	attempts := c.attempt.Swap(0)
	if attempts == 1 {
		c.rmu.Lock()
		c.quick = !c.lastEOF.IsZero() && time.Since(c.lastEOF) < takeoverWindow
		c.rmu.Unlock()
	}
	c.opts.Logger.Debug("mqtt connected", "broker", c.opts.Broker, "client_id", c.opts.ClientID, "reconnect_attempts", attempts)
	c.mu.Lock()
	filters := append([]string(nil), c.filters...)
	c.mu.Unlock()
	go func() {
		for _, f := range filters {
			if err := c.subscribe(f); err != nil {
				c.opts.Logger.Error("mqtt resubscribe failed; retrying", "filter", f, "err", err)
				c.retryLater(f)
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
	return c.wait(c.publishToken(topic, payload, retained))
}

// publishToken starts a QoS 1 publish on the connection.
func (c *Client) publishToken(topic string, payload []byte, retained bool) token {
	if c.l != nil {
		return c.l.publish(topic, payload, retained)
	}
	return c.c.Publish(topic, 1, retained, payload)
}

// Connected reports whether the connection is up.
func (c *Client) Connected() bool {
	if c.l != nil {
		return c.l.isConnected()
	}
	return c.c.IsConnectionOpen()
}

func (c *Client) wait(t token) error {
	select {
	case <-t.Done():
	case <-time.After(c.opts.Timeout):
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
	c.closeOnce.Do(func() { close(c.closed) })
	c.retry.closed.Store(true)
	if c.l != nil {
		c.l.close()
		c.inbox.close()
		return
	}
	c.retry.closed.Store(true)
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
