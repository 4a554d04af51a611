package mqttc

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// The lean connection: a minimal MQTT 3.1.1 client (Options.Lean) for a
// publisher of many retained QoS 1 messages, the issuer. paho costs about
// 17 µs of client CPU per QoS 1 publish on the project's machine
// (shared/notes/perf-floor.md: a token, a store entry, a channel hop and a
// write system call each); this one encodes publishes into one buffered
// writer that a single goroutine flushes (many publishes per system call)
// and completes a publish's token when its PUBACK arrives. It speaks
// exactly what the issuer needs: CONNECT with credentials and a retained
// QoS 1 will, QoS 1 SUBSCRIBE, incoming PUBLISH at QoS 0 and 1 (PUBACKed),
// QoS 1 PUBLISH, keep-alive pings, and reconnection with Backoff after
// which the subscriptions are made again and Options.OnConnect runs.
// With use_username_as_clientid (broker-config), one account has one
// connection: that is why the lean client carries everything, not only the
// bulk publishes.

const (
	leanKeepAlive = 30 * time.Second
	leanBufSize   = 256 << 10
)

// token is a publish or subscribe in flight: paho's mqtt.Token and the
// lean connection's leanToken both satisfy it.
type token interface {
	Done() <-chan struct{}
	Error() error
}

type leanToken struct {
	done chan struct{}
	err  error
	code byte // a SUBACK's return code
}

func newLeanToken() *leanToken             { return &leanToken{done: make(chan struct{})} }
func (t *leanToken) Done() <-chan struct{} { return t.done }
func (t *leanToken) Error() error {
	select {
	case <-t.done:
		return t.err
	default:
		return nil
	}
}
func (t *leanToken) finish(err error) { t.err = err; close(t.done) }

// lean is one client's lean connection and its reconnection loop.
type lean struct {
	o       Options
	deliver func(Message)
	filters func() []string
	// retry is the Client whose retryLater takes a subscription refused
	// after a reconnection (a NATS cluster refuses them while it elects
	// new leaders: retry.go).
	retry atomic.Pointer[Client]

	mu        sync.Mutex // guards everything below
	conn      net.Conn
	w         *bufio.Writer
	pending   map[uint16]*leanToken
	nextID    uint16
	connected bool
	closing   bool

	flush  chan struct{} // wakes the flusher
	lost   chan struct{} // wakes the reconnection loop
	closed chan struct{}
	wg     sync.WaitGroup
}

func dialLean(ctx context.Context, o Options, deliver func(Message), filters func() []string) (*lean, error) {
	l := &lean{o: o, deliver: deliver, filters: filters, pending: map[uint16]*leanToken{},
		flush: make(chan struct{}, 1), lost: make(chan struct{}, 1), closed: make(chan struct{})}
	for n := 0; ; n++ {
		err := l.connect(ctx)
		if err == nil {
			break
		}
		if errors.Is(err, ErrRefused) {
			return nil, err
		}
		if permanent, hint := Classify(err); permanent {
			return nil, fmt.Errorf("%w: %s: %w (hint: %s)", ErrPermanent, o.Broker, err, hint)
		}
		wait := o.Backoff.Delay(n)
		o.Logger.Warn("mqtt connect failed, retrying", "broker", o.Broker, "err", err, "retry_in", wait.Round(time.Millisecond))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil, fmt.Errorf("mqttc: connect to %s: %w (last error: %v)", o.Broker, ctx.Err(), err)
		}
	}
	l.wg.Add(2)
	go l.flusher()
	go l.reconnector()
	l.afterConnect()
	return l, nil
}

// connect dials, sends CONNECT, reads the CONNACK and starts the reader.
func (l *lean) connect(ctx context.Context) error {
	u, err := url.Parse(l.o.Broker)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%w: broker URL %q", ErrPermanent, l.o.Broker)
	}
	dctx, cancel := context.WithTimeout(ctx, l.o.Timeout)
	defer cancel()
	var conn net.Conn
	switch u.Scheme {
	case "tcp", "mqtt":
		conn, err = (&net.Dialer{}).DialContext(dctx, "tcp", u.Host)
	case "ssl", "tls", "mqtts":
		cfg := &tls.Config{}
		if l.o.TLS != nil {
			cfg = l.o.TLS.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		conn, err = (&tls.Dialer{Config: cfg}).DialContext(dctx, "tcp", u.Host)
	default:
		return fmt.Errorf("%w: the lean client speaks tcp:// and ssl:// only, not %s", ErrPermanent, u.Scheme)
	}
	if err != nil {
		return err
	}
	if err := l.handshake(conn); err != nil {
		conn.Close()
		return err
	}
	l.mu.Lock()
	l.conn, l.w, l.connected = conn, bufio.NewWriterSize(conn, leanBufSize), true
	l.mu.Unlock()
	l.wg.Add(2)
	go l.reader(conn, bufio.NewReaderSize(conn, 64<<10))
	go l.pinger(conn)
	return nil
}

// handshake writes CONNECT and checks the CONNACK.
func (l *lean) handshake(conn net.Conn) error {
	var p []byte
	p = appendString(p, "MQTT")
	flags := byte(0x02) // clean session
	if l.o.Username != "" {
		flags |= 0x80
	}
	if l.o.Password != "" {
		flags |= 0x40
	}
	if l.o.WillTopic != "" {
		flags |= 0x20 | 0x08 | 0x04 // will retain, QoS 1, flag
	}
	p = append(p, 4, flags)
	p = binary.BigEndian.AppendUint16(p, uint16(leanKeepAlive/time.Second))
	p = appendString(p, l.o.ClientID)
	if l.o.WillTopic != "" {
		p = appendString(p, l.o.WillTopic)
		p = appendBytes(p, l.o.WillPayload)
	}
	if l.o.Username != "" {
		p = appendString(p, l.o.Username)
	}
	if l.o.Password != "" {
		p = appendString(p, l.o.Password)
	}
	conn.SetDeadline(time.Now().Add(l.o.Timeout))
	defer conn.SetDeadline(time.Time{})
	if _, err := conn.Write(appendPacket(nil, 0x10, p)); err != nil {
		return err
	}
	var ack [4]byte
	if _, err := io.ReadFull(conn, ack[:]); err != nil {
		return fmt.Errorf("mqttc: reading CONNACK: %w", err)
	}
	if ack[0] != 0x20 || ack[1] != 2 {
		return fmt.Errorf("mqttc: not a CONNACK: % x", ack)
	}
	switch ack[3] {
	case 0:
		return nil
	case 2, 4, 5:
		return fmt.Errorf("%w: %s: CONNACK return code %d (hint: check the username, password or client certificate)", ErrRefused, l.o.Broker, ack[3])
	default:
		return fmt.Errorf("mqttc: %s: CONNACK return code %d", l.o.Broker, ack[3])
	}
}

func appendString(b []byte, s string) []byte {
	return append(binary.BigEndian.AppendUint16(b, uint16(len(s))), s...)
}

func appendBytes(b, s []byte) []byte {
	return append(binary.BigEndian.AppendUint16(b, uint16(len(s))), s...)
}

// appendPacket appends a packet: its fixed header, remaining length and body.
func appendPacket(b []byte, first byte, body []byte) []byte {
	b = appendHead(b, first, len(body))
	return append(b, body...)
}

func appendHead(b []byte, first byte, n int) []byte {
	b = append(b, first)
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

// send writes one packet with a packet id under l.mu and registers its
// token; the flusher sends it.
func (l *lean) send(first byte, body func(id uint16) []byte) *leanToken {
	t := newLeanToken()
	l.mu.Lock()
	if !l.connected {
		l.mu.Unlock()
		t.finish(fmt.Errorf("%w: lean connection to %s", ErrNotConnected, l.o.Broker))
		return t
	}
	for {
		l.nextID++
		if l.nextID == 0 {
			l.nextID = 1
		}
		if l.pending[l.nextID] == nil {
			break
		}
	}
	id := l.nextID
	l.pending[id] = t
	_, err := l.w.Write(body(id))
	l.mu.Unlock()
	if err != nil {
		l.drop(err)
	}
	l.kick()
	return t
}

func (l *lean) kick() {
	select {
	case l.flush <- struct{}{}:
	default:
	}
}

// publish sends a QoS 1 PUBLISH.
func (l *lean) publish(topic string, payload []byte, retained bool) *leanToken {
	first := byte(0x32)
	if retained {
		first |= 0x01
	}
	return l.send(first, func(id uint16) []byte {
		n := 2 + len(topic) + 2 + len(payload)
		b := appendHead(make([]byte, 0, n+5), first, n)
		b = appendString(b, topic)
		b = binary.BigEndian.AppendUint16(b, id)
		return append(b, payload...)
	})
}

// subscribe sends a QoS 1 SUBSCRIBE and waits for its SUBACK.
func (l *lean) subscribe(filter string) error {
	t := l.send(0x82, func(id uint16) []byte {
		body := binary.BigEndian.AppendUint16(nil, id)
		body = append(appendString(body, filter), 1)
		return appendPacket(nil, 0x82, body)
	})
	select {
	case <-t.Done():
	case <-time.After(l.o.Timeout):
		return ErrTimeout
	}
	if t.err != nil {
		return t.err
	}
	if t.code >= 0x80 {
		return fmt.Errorf("%w: %s (code 0x%02x)", ErrSubscribeRefused, filter, t.code)
	}
	return nil
}

// unsubscribe sends one UNSUBSCRIBE for filters and waits for its
// UNSUBACK (Resubscribe, Peek: resubscribe.go).
func (l *lean) unsubscribe(filters ...string) error {
	t := l.send(0xa2, func(id uint16) []byte {
		body := binary.BigEndian.AppendUint16(nil, id)
		for _, f := range filters {
			body = appendString(body, f)
		}
		return appendPacket(nil, 0xa2, body)
	})
	select {
	case <-t.Done():
	case <-time.After(l.o.Timeout):
		return ErrTimeout
	}
	return t.err
}

// flusher writes out what send buffered, many packets per system call.
func (l *lean) flusher() {
	defer l.wg.Done()
	for {
		select {
		case <-l.flush:
		case <-l.closed:
			return
		}
		l.mu.Lock()
		var err error
		if l.connected && l.w.Buffered() > 0 {
			l.conn.SetWriteDeadline(time.Now().Add(l.o.Timeout))
			err = l.w.Flush()
		}
		l.mu.Unlock()
		if err != nil {
			l.drop(err)
		}
	}
}

// reader reads the broker's packets until the connection ends.
func (l *lean) reader(conn net.Conn, r *bufio.Reader) {
	defer l.wg.Done()
	err := func() error {
		for {
			conn.SetReadDeadline(time.Now().Add(leanKeepAlive * 3 / 2))
			first, err := r.ReadByte()
			if err != nil {
				return err
			}
			n, mult := 0, 1
			for k := 0; ; k++ {
				d, err := r.ReadByte()
				if err != nil {
					return err
				}
				n += int(d&0x7f) * mult
				mult *= 128
				if d&0x80 == 0 {
					break
				}
				if k == 3 {
					return errors.New("mqttc: bad remaining length")
				}
			}
			body := make([]byte, n)
			if _, err := io.ReadFull(r, body); err != nil {
				return err
			}
			if err := l.handle(first, body); err != nil {
				return err
			}
		}
	}()
	l.dropConn(conn, err)
}

func (l *lean) handle(first byte, body []byte) error {
	switch first >> 4 {
	case 4, 9, 11: // PUBACK, SUBACK, UNSUBACK
		if len(body) < 2 {
			return errors.New("mqttc: short acknowledgement")
		}
		id := binary.BigEndian.Uint16(body)
		l.mu.Lock()
		t := l.pending[id]
		delete(l.pending, id)
		l.mu.Unlock()
		if t != nil {
			if first>>4 == 9 && len(body) > 2 {
				t.code = body[2]
			}
			t.finish(nil)
		}
	case 3: // PUBLISH
		qos := (first >> 1) & 3
		if len(body) < 2 {
			return errors.New("mqttc: short PUBLISH")
		}
		tl := int(binary.BigEndian.Uint16(body))
		if len(body) < 2+tl {
			return errors.New("mqttc: short PUBLISH topic")
		}
		topic, rest := string(body[2:2+tl]), body[2+tl:]
		if qos > 0 {
			if len(rest) < 2 {
				return errors.New("mqttc: PUBLISH without its packet id")
			}
			id := binary.BigEndian.Uint16(rest)
			rest = rest[2:]
			l.mu.Lock()
			if l.connected {
				l.w.Write([]byte{0x40, 2, byte(id >> 8), byte(id)})
			}
			l.mu.Unlock()
			l.kick()
		}
		l.deliver(Message{Topic: topic, Payload: rest, Retained: first&1 == 1})
	case 13: // PINGRESP
	}
	return nil
}

// pinger sends PINGREQ every half keep-alive while conn is current.
func (l *lean) pinger(conn net.Conn) {
	defer l.wg.Done()
	t := time.NewTicker(leanKeepAlive / 2)
	defer t.Stop()
	for {
		select {
		case <-l.closed:
			return
		case <-t.C:
		}
		l.mu.Lock()
		if l.conn != conn || !l.connected {
			l.mu.Unlock()
			return
		}
		l.w.Write([]byte{0xc0, 0})
		l.mu.Unlock()
		l.kick()
	}
}

// drop ends the current connection after a write error.
func (l *lean) drop(err error) {
	l.mu.Lock()
	conn := l.conn
	l.mu.Unlock()
	l.dropConn(conn, err)
}

// dropConn marks conn lost (once), fails every publish in flight and wakes
// the reconnection loop.
func (l *lean) dropConn(conn net.Conn, err error) {
	l.mu.Lock()
	if l.conn != conn || !l.connected {
		l.mu.Unlock()
		return
	}
	l.connected = false
	pending := l.pending
	l.pending = map[uint16]*leanToken{}
	closing := l.closing
	l.mu.Unlock()
	conn.Close()
	for _, t := range pending {
		t.finish(fmt.Errorf("%w: connection lost: %v", ErrNotConnected, err))
	}
	if !closing {
		l.o.Logger.Warn("mqtt connection lost; reconnecting", "broker", l.o.Broker, "err", err)
		select {
		case l.lost <- struct{}{}:
		default:
		}
	}
}

// reconnector reconnects after every loss, with Backoff, then subscribes
// again and runs OnConnect on its own goroutine.
func (l *lean) reconnector() {
	defer l.wg.Done()
	for {
		select {
		case <-l.closed:
			return
		case <-l.lost:
		}
		for n := 0; ; n++ {
			select {
			case <-time.After(l.o.Backoff.Delay(n)):
			case <-l.closed:
				return
			}
			err := l.connect(context.Background())
			if err == nil {
				break
			}
			l.o.Logger.Warn("mqtt reconnect failed, retrying", "broker", l.o.Broker, "attempt", n, "err", err)
		}
		l.afterConnect()
	}
}

// afterConnect re-makes the subscriptions and runs the owner's hook.
func (l *lean) afterConnect() {
	go func() {
		for _, f := range l.filters() {
			if err := l.subscribe(f); err != nil {
				l.o.Logger.Error("mqtt resubscribe failed; retrying", "filter", f, "err", err)
				if c := l.retry.Load(); c != nil {
					c.retryLater(f)
				}
			}
		}
		if l.o.OnConnect != nil {
			l.o.OnConnect()
		}
	}()
}

func (l *lean) isConnected() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.connected
}

// close sends DISCONNECT (so the broker does not publish the will) and
// stops every goroutine.
func (l *lean) close() {
	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		return
	}
	l.closing = true
	conn := l.conn
	if l.connected {
		l.w.Write([]byte{0xe0, 0})
		l.conn.SetWriteDeadline(time.Now().Add(250 * time.Millisecond))
		l.w.Flush()
	}
	l.mu.Unlock()
	close(l.closed)
	if conn != nil {
		l.dropConn(conn, errors.New("closed"))
		conn.Close()
	}
	l.wg.Wait()
}
