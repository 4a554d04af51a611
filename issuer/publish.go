package issuer

import (
	"context"
	"fmt"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/entropykem/entropykem/internal/mqttc"
)

const (
	// publishWindow bounds the QoS 1 publishes in flight at once.
	publishWindow = 1000
	// publishTries bounds the attempts per message.
	publishTries = 3
)

// pubMsg is one retained QoS 1 publish; an empty payload clears the topic.
type pubMsg struct {
	topic   string
	payload []byte
}

// Start connects to the broker (its MQTT will is Online false on
// {prefix}/issuer/online), subscribes to every registration and Status,
// starts handling them on its own goroutine and, after this and every
// later (re)connection, publishes Online true and republishes from the store
// every issuer key rotation announcement (on {prefix}/issuer/key/{new kid}),
// the last KeepRoots roots, every device's latest ticket and the EpochInfo,
// unchanged. ctx bounds only the first connection.
func (i *Issuer) Start(ctx context.Context) error {
	if i.cfg.Broker == "" {
		return fmt.Errorf("%w: no broker configured", ErrConfig)
	}
	if i.ctx.Err() != nil {
		return ErrClosed
	}
	if !i.started.CompareAndSwap(false, true) {
		return ErrStarted
	}
	ok := false
	defer func() {
		if !ok {
			i.started.Store(false) // Start may be tried again
		}
	}()
	// Fencing first: nothing is published from a store the broker
	// shows to be behind it.
	if err := i.fence(ctx); err != nil {
		return err
	}
	i.since = i.cfg.Now()
	will, err := i.online(false)
	if err != nil {
		return fmt.Errorf("issuer: %w", err)
	}
	o := i.mqttOptions()
	o.WillTopic, o.WillPayload, o.OnConnect = i.topics.Online(), will, i.onConnect
	c, err := mqttc.Dial(ctx, o)
	if err != nil {
		return fmt.Errorf("issuer: %w", err)
	}
	for _, f := range []string{i.topics.AllRegistrations(), i.topics.AllStatuses()} {
		if err := c.Subscribe(f); err != nil {
			c.Close()
			return fmt.Errorf("issuer: subscribe %s: %w", f, err)
		}
	}
	ok = true
	i.client.Store(c)
	close(i.ready)
	i.wg.Add(1)
	go i.processInbox(c.Inbox())
	i.log.Info("issuer started", "broker", i.cfg.Broker, "prefix", i.topics.Prefix)
	return nil
}

// onConnect runs after every (re)connection on mqttc's goroutine.
func (i *Issuer) onConnect() {
	select {
	case <-i.ready:
	case <-i.ctx.Done():
		return
	}
	if err := i.mayPublish(); err != nil {
		// A deposed leader reconnecting: not a message (cluster.go).
		i.log.Warn("reconnected without the leader lease: publishing nothing", "reason", "lease_lost")
		return
	}
	if b, err := i.online(true); err == nil {
		if err := i.client.Load().Publish(i.topics.Online(), b, true); err != nil {
			i.log.Warn("could not publish online status", "err", err)
		}
	}
	if err := i.republish(); err != nil {
		i.log.Error("republish failed", "reason", "republish_failed", "err", err)
	}
}

// republish publishes the store's record unchanged: every key rotation
// announcement (first, so a device can learn a new key before a root it
// signs), the last roots, every device's latest ticket (not those of
// revoked devices) and the EpochInfo.
func (i *Issuer) republish() error {
	i.pubMu.Lock()
	defer i.pubMu.Unlock()
	var msgs []pubMsg
	for _, r := range i.chain {
		msgs = append(msgs, pubMsg{topic: i.topics.IssuerKey(r.New.KID()), payload: r.Signed})
	}
	err := i.store.View(func(tx ReadTx) error {
		roots, err := tx.Roots()
		if err != nil {
			return err
		}
		for _, r := range roots {
			msgs = append(msgs, pubMsg{topic: i.topics.Root(r.Epoch), payload: r.Root})
		}
		if err := tx.Devices(func(r *record) error {
			switch {
			case r.Ticket != nil && r.State != stateRevoked:
				msgs = append(msgs, pubMsg{topic: i.topics.Ticket(r.ID), payload: r.Ticket})
			case r.RegKey == nil && r.Epoch > 0 && r.State == stateActive:
				// Reset after it had tickets: clearing its ticket makes a
				// running device register its live key (staleAfterReset).
				msgs = append(msgs, pubMsg{topic: i.topics.Ticket(r.ID)})
			}
			return nil
		}); err != nil {
			return err
		}
		info, err := tx.EpochInfo()
		if err == nil && info != nil {
			msgs = append(msgs, pubMsg{topic: i.topics.Epoch(), payload: info})
		}
		return err
	})
	if err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	failed := i.publishAll(msgs)
	i.count("republished", uint64(len(msgs)-failed))
	i.log.Info("republished from the store", "messages", len(msgs), "failed", failed)
	if failed > 0 {
		return fmt.Errorf("%w: %d of %d republished messages", ErrPublish, failed, len(msgs))
	}
	return nil
}

// publishAll publishes msgs retained at QoS 1, at most publishWindow in
// flight, retrying each failed message up to publishTries times in all. It
// returns how many failed for good (each also counted in publish_failures).
// Callers hold i.pubMu.
func (i *Issuer) publishAll(msgs []pubMsg) int {
	c := i.client.Load()
	if c == nil {
		return 0
	}
	todo := msgs
	for try := 1; try <= publishTries && len(todo) > 0; try++ {
		if err := i.mayPublish(); err != nil {
			// The leader lease is lost (cluster.go): what is left is
			// not published, and not a failure to retry.
			i.count("publish_fenced", uint64(len(todo)))
			i.log.Warn("publishing stopped: the leader lease is lost", "reason", "lease_lost", "unsent", len(todo), "err", err)
			return len(todo)
		}
		if try > 1 {
			i.count("publish_retries", uint64(len(todo)))
			select {
			case <-time.After(time.Duration(try-1) * 250 * time.Millisecond):
			case <-i.ctx.Done():
			}
		}
		todo = i.publishRound(c, todo)
	}
	if len(todo) > 0 {
		i.count("publish_failures", uint64(len(todo)))
		i.log.Error("publish failed after retries", "reason", "publish_failed", "messages", len(todo),
			"first_topic", todo[0].topic)
	}
	return len(todo)
}

// publishRound publishes msgs once, keeping at most publishWindow
// publishes in flight (a sliding window: each PUBACK lets the next message
// go, so the pipeline never drains between windows), and returns those that
// failed. Each wait for the oldest publish is bounded by the configured
// timeout since the last progress; once that expires the broker is taken to
// be stalled: what is still in flight and everything not yet sent fail for
// this round (publishAll retries them), so a stalled broker costs one
// timeout per round, not one per message.
func (i *Issuer) publishRound(c *mqttc.Client, msgs []pubMsg) []pubMsg {
	var failed []pubMsg
	type inflight struct {
		tok mqtt.Token
		k   int
	}
	ring := make([]inflight, 0, min(publishWindow, len(msgs)))
	head := 0 // ring[head:] are in flight, oldest first
	deadline := time.NewTimer(i.cfg.Timeout)
	defer deadline.Stop()
	stalled := false
	settle := func(f inflight, wait bool) {
		done := false
		if wait && !stalled {
			select {
			case <-f.tok.Done():
				done = true
				deadline.Reset(i.cfg.Timeout)
			case <-deadline.C:
				stalled = true
			}
		}
		if !done {
			select {
			case <-f.tok.Done():
				done = true
			default:
			}
		}
		if !done || f.tok.Error() != nil {
			var err error
			if done {
				err = f.tok.Error()
			}
			i.log.Debug("publish failed", "topic", msgs[f.k].topic, "timed_out", !done, "err", err)
			failed = append(failed, msgs[f.k])
		}
	}
	for k := range msgs {
		if stalled {
			failed = append(failed, msgs[k:]...)
			break
		}
		if i.mayPublish() != nil {
			// The leader lease is lost: not one more message (publishAll
			// counts them).
			failed = append(failed, msgs[k:]...)
			break
		}
		if len(ring)-head == publishWindow {
			settle(ring[head], true)
			ring[head] = inflight{}
			head++
			if head == len(ring) || head >= publishWindow {
				ring = append(ring[:0], ring[head:]...)
				head = 0
			}
		}
		ring = append(ring, inflight{c.PublishAsync(msgs[k].topic, msgs[k].payload, true), k})
	}
	for _, f := range ring[head:] {
		settle(f, true)
	}
	return failed
}
