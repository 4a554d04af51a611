package mqttc

import (
	"context"
	"fmt"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Bulk publishing: many retained QoS 1 messages through one connection
// with a sliding window of publishes in flight (each PUBACK lets the next
// message go, so the pipeline never drains between windows), a bounded wait
// for progress, and counted retries. The issuer publishes its epochs and
// republishes its record this way.

// BulkOptions configure a Bulk.
type BulkOptions struct {
	// Window bounds the publishes in flight (default 1000).
	Window int
	// Tries bounds the attempts per message (default 3); a later attempt
	// waits (try-1)·250 ms first.
	Tries int
	// Stop, if set, is asked before each message: a non-nil error stops
	// the bulk, and what is left is reported as Stopped, not retried.
	Stop func() error
	// Done ends the waits between tries early (the owner closing).
	Done <-chan struct{}
}

// BulkResult is what a Bulk did.
type BulkResult struct {
	// Messages were given to Publish.
	Messages int
	// Failed failed every try, or were never sent because the broker
	// stalled on every try; Stopped were not sent because Stop said so.
	Failed, Stopped int
	// Retried counts the publishes of later tries.
	Retried int
	// FirstFailed is the topic of the first failed message.
	FirstFailed string
	// StopErr is Stop's error, if it stopped the bulk.
	StopErr error
}

type bulkMsg struct {
	topic   string
	payload []byte
}

type inflight struct {
	tok token
	m   bulkMsg
}

// Bulk publishes retained QoS 1 messages with a sliding window. It is
// used by one goroutine at a time.
type Bulk struct {
	c        *Client
	o        BulkOptions
	ring     []inflight // ring[head:] are in flight, oldest first
	head     int
	deadline *time.Timer
	stalled  bool
	stopped  bool
	failed   []bulkMsg // to retry
	res      BulkResult
}

// Bulk starts a bulk publish on c's connection.
func (c *Client) Bulk(o BulkOptions) *Bulk {
	if o.Window <= 0 {
		o.Window = 1000
	}
	if o.Tries <= 0 {
		o.Tries = 3
	}
	return &Bulk{c: c, o: o, ring: make([]inflight, 0, o.Window)}
}

// Publish sends one retained QoS 1 message (an empty payload clears the
// topic), waiting first for the oldest publish in flight if the window is
// full. payload must not change until Finish returns.
func (b *Bulk) Publish(topic string, payload []byte) {
	b.res.Messages++
	b.send(bulkMsg{topic, payload})
}

func (b *Bulk) send(m bulkMsg) {
	if b.stopped {
		b.res.Stopped++
		return
	}
	if b.o.Stop != nil {
		if err := b.o.Stop(); err != nil {
			b.stopped, b.res.StopErr = true, err
			b.res.Stopped++
			return
		}
	}
	if b.stalled {
		b.failed = append(b.failed, m)
		return
	}
	if len(b.ring)-b.head == b.o.Window {
		b.settle(b.ring[b.head], true)
		b.ring[b.head] = inflight{}
		b.head++
		if b.head == len(b.ring) || b.head >= b.o.Window {
			b.ring = append(b.ring[:0], b.ring[b.head:]...)
			b.head = 0
		}
	}
	b.ring = append(b.ring, inflight{b.c.publishToken(m.topic, m.payload, true), m})
}

// settle waits for f, each wait bounded by the client's timeout since the
// last progress; once that expires the broker is taken to be stalled: what
// is in flight and everything not yet sent fails for this try, so a stalled
// broker costs one timeout per try, not one per message.
func (b *Bulk) settle(f inflight, wait bool) {
	done := false
	select {
	case <-f.tok.Done():
		done = true
	default:
	}
	if b.deadline == nil {
		b.deadline = time.NewTimer(b.c.opts.Timeout)
	}
	switch {
	case done:
		// Progress: the wait for the next one starts now (go ≥ 1.23
		// timers: Reset never leaves a stale expiry in the channel).
		b.deadline.Reset(b.c.opts.Timeout)
	case wait && !b.stalled:
		select {
		case <-f.tok.Done():
			done = true
			b.deadline.Reset(b.c.opts.Timeout)
		case <-b.deadline.C:
			b.stalled = true
		}
	}
	if !done || f.tok.Error() != nil {
		var err error
		if done {
			err = f.tok.Error()
		}
		b.c.opts.Logger.Debug("publish failed", "topic", f.m.topic, "timed_out", !done, "err", err)
		b.failed = append(b.failed, f.m)
	}
}

// drain waits for every publish in flight.
func (b *Bulk) drain() {
	for _, f := range b.ring[b.head:] {
		b.settle(f, true)
	}
	b.ring, b.head = b.ring[:0], 0
}

// Finish waits for every publish, retries the failed ones (up to Tries
// in all), and returns what happened. The Bulk is done.
func (b *Bulk) Finish() BulkResult {
	b.drain()
	for try := 2; try <= b.o.Tries && len(b.failed) > 0 && !b.stopped; try++ {
		select {
		case <-time.After(time.Duration(try-1) * 250 * time.Millisecond):
		case <-b.o.Done:
		}
		todo := b.failed
		b.failed, b.stalled = nil, false
		if b.deadline != nil {
			b.deadline.Reset(b.c.opts.Timeout) // a new try: a new wait for progress
		}
		for _, m := range todo {
			if !b.stopped {
				b.res.Retried++
			}
			b.send(m)
		}
		b.drain()
	}
	if b.deadline != nil {
		b.deadline.Stop()
	}
	b.res.Failed = len(b.failed)
	if len(b.failed) > 0 {
		b.res.FirstFailed = b.failed[0].topic
	}
	b.failed = nil
	return b.res
}

// PahoFloor measures the broker floor the way a plain paho client
// publishes: it connects with o (no auto-reconnect, no ordering, paho's
// default in-memory store), publishes payload retained at QoS 1 to every
// topic with at most window in flight, and returns the time from the first
// publish to the last PUBACK. ekemctl bench compares the issuer with it.
func PahoFloor(ctx context.Context, o Options, topics []string, payload []byte, window int) (time.Duration, error) {
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	po := mqtt.NewClientOptions().AddBroker(o.Broker).SetClientID(o.ClientID).
		SetUsername(o.Username).SetPassword(o.Password).
		SetCleanSession(true).SetAutoReconnect(false).SetKeepAlive(30 * time.Second).
		SetConnectTimeout(o.Timeout).SetWriteTimeout(o.Timeout)
	if o.TLS != nil {
		po.SetTLSConfig(o.TLS)
	}
	cl := mqtt.NewClient(po)
	tok := cl.Connect()
	if !tok.WaitTimeout(o.Timeout) || tok.Error() != nil {
		return 0, fmt.Errorf("mqttc: paho floor: connect to %s: %v", o.Broker, tok.Error())
	}
	defer cl.Disconnect(250)
	ring := make([]mqtt.Token, window)
	wait := func(t mqtt.Token) error {
		if !t.WaitTimeout(o.Timeout) {
			return fmt.Errorf("mqttc: paho floor: %w", ErrTimeout)
		}
		if err := t.Error(); err != nil {
			return fmt.Errorf("mqttc: paho floor: publish: %w", err)
		}
		return nil
	}
	start := time.Now()
	for i, topic := range topics {
		if i%1024 == 0 && ctx.Err() != nil {
			return 0, ctx.Err()
		}
		slot := i % window
		if ring[slot] != nil {
			if err := wait(ring[slot]); err != nil {
				return 0, err
			}
		}
		ring[slot] = cl.Publish(topic, 1, true, payload)
	}
	for _, t := range ring {
		if t != nil {
			if err := wait(t); err != nil {
				return 0, err
			}
		}
	}
	return time.Since(start), nil
}
