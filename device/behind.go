package device

import (
	"time"
)

// A subscription that stops delivering while the connection stays up is
// replaced. A NATS cluster can leave the JetStream consumer behind an MQTT
// subscription stalled after a node's death (broker-config/nats/README.md,
// "After a node's death"); the device cannot see the stall, but it can see
// its effect:
//   - the root of an epoch newer than its own arrived, and no ticket of
//     that epoch (or later) followed within resubscribeAfter: the ticket
//     subscription is replaced (the broker then delivers the retained
//     ticket again), at most once per resubscribeAfter;
//   - its latest ticket expired (stale): every subscription is replaced,
//     at most once per staleResubscribeEvery, in case the roots' stalled
//     too.
//
// On Mosquitto neither happens unless the issuer is late or down, and then
// a resubscription costs a SUBSCRIBE and a retained re-delivery.
var (
	resubscribeAfter      = 10 * time.Second
	staleResubscribeEvery = time.Minute
)

// resubscriber is what checkBehind needs of the Transport: Run's own
// (internal/mqttc) has it; an embedder's Transport may implement it too.
type resubscriber interface{ Resubscribe(filter string) }

// behindState is owned by the Run goroutine.
type behindState struct {
	aheadEpoch uint64    // the newest root's epoch above the device's
	aheadSince time.Time // when it arrived
	lastResub  time.Time
	lastStale  time.Time // last resubscription because of staleness
	statusSent time.Time // last Status publish (onDuplicate)
}

// noteRoot records a root of epoch e newer than the device's.
func (a *Agent) noteRoot(e uint64) {
	if e > a.Epoch() && e > a.behind.aheadEpoch {
		a.behind.aheadEpoch, a.behind.aheadSince = e, time.Now()
	}
}

// checkBehind runs on every stale-check tick.
func (a *Agent) checkBehind(r resubscriber) {
	b := &a.behind
	now := time.Now()
	a.mu.Lock()
	epoch := a.st.Epoch
	stale := a.staleReported && a.staleEpoch == epoch
	a.mu.Unlock()
	if stale && now.Sub(b.lastStale) >= staleResubscribeEvery {
		b.lastStale, b.lastResub = now, now
		a.count(cResubscribed)
		a.log.Warn("latest ticket expired: replacing every subscription, in case the broker stopped delivering", "epoch", epoch)
		for _, f := range []string{a.topics.AllIssuerKeys(), a.topics.Ticket(a.cfg.ID), a.topics.AllRoots()} {
			r.Resubscribe(f)
		}
		return
	}
	if b.aheadEpoch == 0 || epoch >= b.aheadEpoch || a.ticketEpoch >= b.aheadEpoch {
		b.aheadEpoch = 0 // caught up, or the ticket came (accepted or not)
		return
	}
	if now.Sub(b.aheadSince) < resubscribeAfter || now.Sub(b.lastResub) < resubscribeAfter {
		return
	}
	b.lastResub = now
	a.count(cResubscribed)
	a.log.Warn("the root of a newer epoch came but not its ticket: replacing the ticket subscription",
		"epoch", epoch, "root_epoch", b.aheadEpoch, "waited", now.Sub(b.aheadSince).Round(time.Second).String())
	r.Resubscribe(a.topics.Ticket(a.cfg.ID))
}
