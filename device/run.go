package device

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// publisher is what the agent's handlers need of the Transport.
type publisher interface {
	Publish(topic string, payload []byte, retained bool) error
}

// Run connects to the broker (Config.Broker, internal/mqttc) and serves
// the device over that connection until ctx ends or Close is called, as
// Serve does; then it disconnects and returns nil. It returns an error
// only for a missing Broker or IssuerKeys, a client certificate of another
// account, a closed agent, or a concurrent Run or Serve. Run reconnects
// with jittered exponential backoff.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.cfg.checkRun(); err != nil {
		return err
	}
	return a.serve(ctx, nil)
}

// Serve runs the device over t, a connection the embedder already holds,
// until ctx ends or Close is called, and returns nil; it does not close t.
// It subscribes to {prefix}/issuer/key/+ (issuer key rotations, which it
// learns once verified), {prefix}/ticket/{id} and {prefix}/root/+, and
// processes tickets. After every (re)connection t reports, it republishes
// the Registration (retained, the same stored bytes every time) and the
// last Status unchanged. It returns an error only for a nil t, missing
// IssuerKeys, a closed agent, or a concurrent Run or Serve.
func (a *Agent) Serve(ctx context.Context, t Transport) error {
	if t == nil {
		return fmt.Errorf("%w: Serve needs a Transport", ErrConfig)
	}
	if err := a.cfg.checkServe(); err != nil {
		return err
	}
	return a.serve(ctx, t)
}

// serve is Run (t nil: dial mqttc) and Serve.
func (a *Agent) serve(ctx context.Context, t Transport) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := a.startRun(cancel); err != nil {
		return err
	}
	defer a.endRun()
	if t == nil {
		mt, err := a.dialMQTT(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("device: %w", err)
		}
		defer mt.Close()
		t = mt
	}
	// Issuer key rotations first, so that their retained announcements
	// arrive before the roots the new keys signed (a root whose key is not
	// known yet would be reported as a rejection, then accepted once the
	// key is learned). Then the ticket: its one retained message is
	// acknowledged before the roots' subscription. (mochi, the embedded
	// broker, refuses a SUBSCRIBE whose packet id equals that of a QoS 1
	// message it is still delivering, with a SUBACK that paho reports as
	// success; subscribing to root/+ first made that race likely.) A ticket
	// that arrives before its root waits for it.
	for _, f := range []string{a.topics.AllIssuerKeys(), a.topics.Ticket(a.cfg.ID), a.topics.AllRoots()} {
		if err := t.Subscribe(f); err != nil {
			a.log.Warn("subscribe failed; retried on reconnect", "filter", f, "err", err)
		}
	}
	a.loop(ctx, t)
	return nil
}

func (a *Agent) startRun(cancel context.CancelFunc) error {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	a.mu.Lock()
	closed := a.closed
	a.mu.Unlock()
	switch {
	case closed:
		return ErrClosed
	case a.running:
		return ErrRunning
	}
	a.running, a.cancel, a.done = true, cancel, make(chan struct{})
	return nil
}

func (a *Agent) endRun() {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	a.running = false
	close(a.done)
}

// loop is the agent goroutine: every message, reconnection and stale
// check is handled here, one at a time.
func (a *Agent) loop(ctx context.Context, t Transport) {
	msgs := make(chan Message)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(msgs)
		for {
			m, ok := t.Receive(ctx)
			if !ok {
				return
			}
			select {
			case msgs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	defer wg.Wait()
	tick := time.NewTicker(a.cfg.StaleInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.Connected():
			a.onConnect(t)
		case m, ok := <-msgs:
			if !ok {
				return
			}
			a.handle(t, m)
		case <-tick.C:
			a.checkStale(t)
			if r, ok := t.(resubscriber); ok {
				a.checkBehind(r)
			}
		}
	}
}

// onConnect republishes what the broker must hold for this device.
func (a *Agent) onConnect(pub publisher) {
	a.mu.Lock()
	reg, status, accepted := a.reg, a.status, a.acceptedStatus
	a.mu.Unlock()
	if err := pub.Publish(a.topics.Registration(a.cfg.ID), reg, true); err != nil {
		a.log.Warn("registration publish failed; retried on reconnect", "err", err)
	}
	a.republishStatus(pub, status, accepted)
	a.checkStale(pub)
}

// republishStatus publishes the last Status again, then the last
// acceptance if it differs: so that the acceptance is what the retained
// topic holds. If the connection dropped before it was sent and a
// rejection followed (say, of an old ticket a restored broker
// re-delivered), the issuer still needs its confirm tag and next key. The
// issuer verifies it though its seq is lower; the rejection was reported
// just before.
func (a *Agent) republishStatus(pub publisher, status, accepted []byte) {
	if status != nil {
		a.publishStatus(pub, status)
	}
	if accepted != nil && !bytes.Equal(accepted, status) {
		a.publishStatus(pub, accepted)
	}
}

// statusResendAfter: a ticket the device already accepted, received again
// at least this long after its last Status was sent, makes it send its
// Status again. The issuer republishes a ticket whose confirmation it has
// not seen (issuer.Config.NudgeInterval), and after its own reconnection:
// on a broker that lost the Status, this is how the confirmation arrives.
// The issuer drops a Status it already has (statuses_duplicate).
var statusResendAfter = 5 * time.Second

// onDuplicate handles the re-delivery of the accepted ticket.
func (a *Agent) onDuplicate(pub publisher) {
	if sent := a.behind.statusSent; !sent.IsZero() && time.Since(sent) < statusResendAfter {
		return
	}
	a.count(cStatusResent)
	a.mu.Lock()
	status, accepted := a.status, a.acceptedStatus
	a.mu.Unlock()
	a.republishStatus(pub, status, accepted)
}

// handle dispatches one received message by its topic (wire.Topics.Parse).
func (a *Agent) handle(pub publisher, m Message) {
	tp, err := a.topics.Parse(m.Topic)
	switch {
	case tp.Kind == wire.TopicTicket && err == nil && tp.DeviceID == a.cfg.ID:
		if len(m.Payload) == 0 {
			a.ticket = nil // retained ticket cleared
			a.onTicketCleared(pub)
			return
		}
		a.ticket = bounded(m.Payload, wire.MaxTicket)
		a.processTicket(pub)
	case tp.Kind == wire.TopicIssuerKey:
		// The announcement is verified whatever its kid level says.
		a.onIssuerKey(pub, m.Topic, m.Payload)
	case tp.Kind == wire.TopicRoot && err == nil:
		a.onRoot(pub, tp.Epoch, m.Payload)
	default:
		if err == nil {
			err = fmt.Errorf("a %v topic is not subscribed", tp.Kind)
		}
		a.log.Warn("ignoring message on unexpected topic", "topic", m.Topic, "err", err)
	}
}

// onRoot keeps (or, on an empty payload, forgets) the root of epoch e.
func (a *Agent) onRoot(pub publisher, e uint64, payload []byte) {
	if len(payload) == 0 {
		delete(a.roots, e)
		return
	}
	a.roots[e] = bounded(payload, signature.MaxSign1Size)
	a.noteRoot(e)
	for len(a.roots) > DefaultRootEpochs {
		delete(a.roots, minKey(a.roots))
	}
	// Retry the latest ticket if it waited for this root, or if it is not
	// accepted yet and the issuer replaced its epoch's root.
	if a.ticket != nil && a.ticketEpoch == e && (a.pending || e > a.Epoch()) {
		a.processTicket(pub)
	}
}

// bounded keeps at most max+1 bytes of b: enough for the decoder to see
// that it is too large, without holding an unbounded payload.
func bounded(b []byte, max int) []byte {
	if len(b) > max+1 {
		return b[:max+1]
	}
	return b
}

func minKey(m map[uint64][]byte) uint64 {
	first, min := true, uint64(0)
	for k := range m {
		if first || k < min {
			first, min = false, k
		}
	}
	return min
}

// onTicketCleared handles an empty publish on the device's ticket topic:
// the issuer cleared it, because an operator reset the device (its pinned
// key is forgotten and its next registration is pinned as the first) or
// revoked it. The retained registration may name a key the device no
// longer holds (keys rotate every epoch), and an issuer that pinned it
// would strand the device; so the device registers its newest live key
// (the announced next key, else the current one), keeping the
// re-enrollment mark of its registration, and publishes it. It never
// touches state.bin. A revoked device's registration is refused by the
// issuer and changes nothing there.
func (a *Agent) onTicketCleared(pub publisher) {
	reg, live, err := a.registerLiveKey()
	if err != nil {
		a.count(cFailed)
		a.log.Error("cannot register the live key after the issuer cleared the ticket", "err", err)
		return
	}
	a.log.Warn("the issuer cleared this device's ticket (reset or revoke): registration of the live key republished",
		"pk_hash", hex.EncodeToString(live.Hash()[:8]))
	if err := pub.Publish(a.topics.Registration(a.cfg.ID), reg, true); err != nil {
		a.log.Warn("registration publish failed; retried on reconnect", "err", err)
	}
}
