package mqttc

import "time"

// Resubscribe replaces the subscription to filter, which must be one of
// the client's (Subscribe), with a new one, in the background: UNSUBSCRIBE,
// then SUBSCRIBE (retried like any refused subscription). The broker then
// delivers the filter's retained messages again. It is the remedy for a
// subscription that stopped delivering while the connection stayed up: a
// NATS cluster can leave the JetStream consumer behind an MQTT
// subscription stalled after a node's death (broker-config/nats/README.md),
// and a new subscription is a new consumer. It returns at once; a
// resubscription of filter already under way makes it a no-op.
func (c *Client) Resubscribe(filter string) {
	c.mu.Lock()
	known := false
	for _, f := range c.filters {
		known = known || f == filter
	}
	c.mu.Unlock()
	r := &c.retry
	r.mu.Lock()
	if r.pending == nil {
		r.pending = map[string]bool{}
	}
	if !known || r.pending[filter] || r.closed.Load() {
		r.mu.Unlock()
		return
	}
	r.pending[filter] = true
	r.mu.Unlock()
	go func() {
		err := c.unsubscribe(filter)
		if err == nil {
			err = c.subscribe(filter)
		}
		r.mu.Lock()
		delete(r.pending, filter)
		r.mu.Unlock()
		if err != nil {
			c.opts.Logger.Warn("mqtt resubscription failed; retrying", "filter", filter, "err", err)
			c.retryLater(filter)
			return
		}
		c.opts.Logger.Info("mqtt subscription replaced", "filter", filter)
	}()
}

// Peek subscribes to filters for hold, in the background, without making
// them the client's (they are not renewed after a reconnection), then
// unsubscribes. Their messages, the retained ones first, go to the Inbox
// like any other. It reads retained messages past a subscription that may
// have stopped delivering: on NATS each new subscription is a new
// consumer. A filter the client already has must not be peeked (the
// UNSUBSCRIBE would end both).
func (c *Client) Peek(filters []string, hold time.Duration) {
	go func() {
		var ok []string
		for _, f := range filters {
			if err := c.subscribe(f); err != nil {
				c.opts.Logger.Debug("peek subscription failed", "filter", f, "err", err)
				continue
			}
			ok = append(ok, f)
		}
		if len(ok) == 0 {
			return
		}
		select {
		case <-time.After(hold):
		case <-c.closed:
			return
		}
		if err := c.unsubscribe(ok...); err != nil {
			c.opts.Logger.Debug("peek unsubscribe failed", "filters", len(ok), "err", err)
		}
	}()
}

// unsubscribe sends one UNSUBSCRIBE for filters, on the lean connection or
// paho's, and waits for its UNSUBACK.
func (c *Client) unsubscribe(filters ...string) error {
	if c.l != nil {
		return c.l.unsubscribe(filters...)
	}
	return c.wait(c.c.Unsubscribe(filters...))
}
