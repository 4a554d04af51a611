package mqttc

import (
	"sync"
	"sync/atomic"
	"time"
)

// A subscription the broker refuses (SUBACK 0x80) or does not acknowledge
// in time is retried in the background while the connection is up, with a
// growing pause (retryPause × attempt, at most retryMaxPause), until the
// broker grants it or the connection drops (then onConnect subscribes
// again) or the client is closed. Mosquitto never refuses a SUBSCRIBE; a
// NATS cluster refuses one for a few seconds after losing a node, while the
// JetStream stream behind MQTT subscriptions elects a new leader
// (broker-config/nats/README.md). Without the retry a device that
// reconnected in that window would never receive its tickets.
const (
	retryPause    = 500 * time.Millisecond
	retryMaxPause = 5 * time.Second
)

type retryState struct {
	mu      sync.Mutex
	pending map[string]bool
	closed  atomic.Bool
}

// retryLater starts the background retry of filter unless one is running.
func (c *Client) retryLater(filter string) {
	r := &c.retry
	r.mu.Lock()
	if r.pending == nil {
		r.pending = map[string]bool{}
	}
	if r.pending[filter] || r.closed.Load() {
		r.mu.Unlock()
		return
	}
	r.pending[filter] = true
	r.mu.Unlock()
	go func() {
		defer func() {
			r.mu.Lock()
			delete(r.pending, filter)
			r.mu.Unlock()
		}()
		for attempt := 1; ; attempt++ {
			pause := min(time.Duration(attempt)*retryPause, retryMaxPause)
			time.Sleep(pause)
			if r.closed.Load() || !c.Connected() {
				return
			}
			err := c.subscribe(filter)
			if err == nil {
				c.opts.Logger.Info("mqtt subscription granted after retrying", "filter", filter, "attempts", attempt)
				return
			}
			c.opts.Logger.Warn("mqtt subscription still refused; retrying", "filter", filter, "attempt", attempt, "err", err)
		}
	}()
}
