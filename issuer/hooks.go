// Test and embedding hooks: waiting until the issuer's record of a device
// says something, and handing it a message without a broker. Tests (here,
// integration, the conformance kit), benchmarks and embedders use them;
// the protocol role never calls them.

package issuer

import (
	"context"
	"fmt"
	"time"
)

// WaitFor waits until cond holds for the snapshot of device id, or ctx ends.
// cond is re-checked after every stored change.
func (i *Issuer) WaitFor(ctx context.Context, id string, cond func(DeviceInfo) bool) (DeviceInfo, error) {
	for {
		i.nmu.Lock()
		ch := i.changed
		i.nmu.Unlock()
		if d, ok := i.Device(id); ok && cond(d) {
			return d, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return DeviceInfo{}, fmt.Errorf("issuer: waiting for device %q: %w", id, ctx.Err())
		}
	}
}

// WaitRegistered waits until device id has a pinned key.
func (i *Issuer) WaitRegistered(ctx context.Context, id string) (DeviceInfo, error) {
	return i.WaitFor(ctx, id, func(d DeviceInfo) bool { return d.PinnedKeyHash != nil })
}

// WaitConfirmed waits until device id has confirmed, in a verified Status,
// a ticket of epoch at least epoch.
func (i *Issuer) WaitConfirmed(ctx context.Context, id string, epoch uint64) (DeviceInfo, error) {
	return i.WaitFor(ctx, id, func(d DeviceInfo) bool { return d.ConfirmedEpoch >= epoch })
}

// WaitIdle returns once the inbox is empty and no message is being handled
// (checked twice, a few milliseconds apart), or when ctx ends. It cannot see
// messages still in flight in the broker: to wait for a device's message,
// use WaitFor.
func (i *Issuer) WaitIdle(ctx context.Context) error {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	idleRounds := 0
	for {
		if i.idle() {
			idleRounds++
			if idleRounds >= 2 {
				return nil
			}
		} else {
			idleRounds = 0
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("issuer: wait idle: %w", ctx.Err())
		}
	}
}

// notify wakes every waiter of WaitFor.
func (i *Issuer) notify() {
	i.nmu.Lock()
	close(i.changed)
	i.changed = make(chan struct{})
	i.nmu.Unlock()
}

// HandleMessage processes one message as if it had arrived from the broker
// on topic: a registration or a Status, subject to every check. It is for
// tools and tests that feed messages without a broker; a started issuer
// handles its subscriptions itself.
func (i *Issuer) HandleMessage(topic string, payload []byte) { i.handle(topic, payload) }

// AwaitingApproval reports whether a re-enrollment of device id waits for
// Approve.
func (i *Issuer) AwaitingApproval(id string) bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	return isReenrollment(i.pending[id])
}
