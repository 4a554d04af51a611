package issuer

import (
	"context"
	"fmt"
	"strings"

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
	if i.isClosed() {
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
	// The issuer publishes an epoch's tickets in bulk: its one connection
	// (one per account, broker-config) is mqttc's lean client, except
	// over WebSockets, which only paho speaks here.
	o.Lean = leanScheme(i.cfg.Broker)
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
	case <-i.closing:
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
	i.count(cRepublished, uint64(len(msgs)-failed))
	i.log.Info("republished from the store", "messages", len(msgs), "failed", failed)
	if failed > 0 {
		return fmt.Errorf("%w: %d of %d republished messages", ErrPublish, failed, len(msgs))
	}
	return nil
}

// publishAll publishes msgs retained at QoS 1 through mqttc's Bulk: at
// most publishWindow in flight, each failed message retried up to
// publishTries times in all. It returns how many were not published (each
// failure also counted in publish_failures). Callers hold i.pubMu.
func (i *Issuer) publishAll(msgs []pubMsg) int {
	b := i.bulk()
	if b == nil {
		return 0
	}
	for _, m := range msgs {
		b.Publish(m.topic, m.payload)
	}
	return i.finishBulk(b)
}

// bulk starts a bulk publish on the connection, nil before Start. The
// leader lease (cluster.go) is checked before every message: a deposed
// leader publishes nothing more.
func (i *Issuer) bulk() *mqttc.Bulk {
	c := i.client.Load()
	if c == nil {
		return nil
	}
	return c.Bulk(mqttc.BulkOptions{Window: publishWindow, Tries: publishTries, Stop: i.mayPublish, Done: i.closing})
}

// finishBulk waits for b, counts its retries, failures and fenced
// messages, and returns how many were not published.
func (i *Issuer) finishBulk(b *mqttc.Bulk) int {
	r := b.Finish()
	if r.Retried > 0 {
		i.count(cPublishRetries, uint64(r.Retried))
	}
	if r.Stopped > 0 {
		// The leader lease is lost: what is left is not published, and
		// not a failure to retry.
		i.count(cPublishFenced, uint64(r.Stopped))
		i.log.Warn("publishing stopped: the leader lease is lost", "reason", "lease_lost", "unsent", r.Stopped, "err", r.StopErr)
	}
	if r.Failed > 0 {
		i.count(cPublishFailures, uint64(r.Failed))
		i.log.Error("publish failed after retries", "reason", "publish_failed", "messages", r.Failed,
			"first_topic", r.FirstFailed)
	}
	return r.Failed + r.Stopped
}

// leanScheme reports whether mqttc's lean client speaks the broker URL's
// scheme (tcp:// and ssl://, tls://, mqtts://).
func leanScheme(broker string) bool {
	for _, p := range []string{"tcp://", "mqtt://", "ssl://", "tls://", "mqtts://"} {
		if strings.HasPrefix(broker, p) {
			return true
		}
	}
	return false
}
