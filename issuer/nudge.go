package issuer

import (
	"time"
)

// Nudging (Config.NudgeInterval): a broker that loses what it acknowledged
// is healed by the issuer, without a reconnection.
//
// A NATS JetStream cluster can, while a dead node's streams elect new
// leaders, acknowledge a retained message it then loses, or leave a
// subscription without deliveries for a while (broker-config/nats/README.md,
// "After a node's death"). The issuer republishes its whole record after
// each of its own reconnections, but a client whose node survived does not
// reconnect. So the issuer republishes, unchanged from the store, the
// latest root and the tickets of that epoch it has no confirmation of:
// NudgeInterval after it first saw the epoch, then 3, 7, ... intervals
// after it (at most nudgeRounds times per epoch, so that devices that are
// simply offline cost a few messages per epoch, not a stream). A device that receives its
// accepted ticket again republishes its Status (device.Agent), which heals
// a lost Status too.
//
// The issuer's own Status subscription can stall the same way (its
// connection survived, so it never resubscribes). From the second nudge of
// an epoch on, the issuer also peeks (mqttc.Client.Peek, a new, brief
// subscription) at the retained Status of up to peekMax unconfirmed
// devices; if a peeked device then turns out confirmed, its Status had
// come past the issuer's subscription, which the issuer replaces (status/+
// and reg/+, at most once per epoch: the broker re-delivers every retained
// Status and registration).

// nudgeRounds bounds the nudges per epoch: the last is 255 intervals
// after the epoch.
const nudgeRounds = 8

// peekMax bounds the Status topics peeked at per nudge.
const peekMax = 64

// nudgeState is nudgeLoop's, per epoch.
type nudgeState struct {
	epoch        uint64
	seen         time.Time
	rounds       int
	peeked       map[string]bool
	resubscribed bool
}

// nudgeLoop runs until Close when NudgeInterval is set.
func (i *Issuer) nudgeLoop() {
	defer i.wg.Done()
	select {
	case <-i.ready:
	case <-i.closing:
		return
	}
	tick := time.NewTicker(i.cfg.NudgeInterval / 4)
	defer tick.Stop()
	var st nudgeState
	for {
		select {
		case <-i.closing:
			return
		case <-tick.C:
		}
		last, err := i.lastEpoch()
		if err != nil || last == 0 {
			continue
		}
		if last != st.epoch {
			st = nudgeState{epoch: last, seen: time.Now(), peeked: map[string]bool{}}
			continue
		}
		// Nudge k (from 0) is due (2^(k+1)-1) intervals after the epoch
		// was seen: 1, 3, 7, ... intervals.
		if st.rounds >= nudgeRounds || time.Since(st.seen) < i.cfg.NudgeInterval*time.Duration(1<<(st.rounds+1)-1) {
			continue
		}
		st.rounds++
		i.nudge(&st)
	}
}

func (i *Issuer) lastEpoch() (uint64, error) {
	var e uint64
	err := i.store.View(func(tx ReadTx) error {
		var err error
		e, err = tx.LastEpoch()
		return err
	})
	return e, err
}

// nudge republishes the epoch's root and the tickets of the epoch not yet
// confirmed, if the epoch is still the latest; from the second round on it
// peeks at their Statuses, and replaces the issuer's subscriptions if a
// peek found what they had missed.
func (i *Issuer) nudge(st *nudgeState) {
	c := i.client.Load()
	if i.mayPublish() != nil || c == nil || !c.Connected() {
		return
	}
	i.pubMu.Lock()
	defer i.pubMu.Unlock()
	var msgs []pubMsg
	var unconfirmed []string
	missed := false
	err := i.store.View(func(tx ReadTx) error {
		if last, err := tx.LastEpoch(); err != nil || last != st.epoch {
			return err
		}
		root, err := tx.Root(st.epoch)
		if err != nil || root == nil {
			return err
		}
		msgs = append(msgs, pubMsg{topic: i.topics.Root(st.epoch), payload: root})
		return tx.Devices(func(r *record) error {
			if r.State != stateActive || r.Ticket == nil || r.Epoch != st.epoch {
				return nil
			}
			if r.ConfirmedEpoch == st.epoch {
				missed = missed || st.peeked[r.ID]
				return nil
			}
			msgs = append(msgs, pubMsg{topic: i.topics.Ticket(r.ID), payload: r.Ticket})
			unconfirmed = append(unconfirmed, r.ID)
			return nil
		})
	})
	if err != nil {
		i.log.Warn("nudge: cannot read the store", "err", err)
		return
	}
	if missed && !st.resubscribed {
		st.resubscribed = true
		i.count(cResubscribed, 1)
		i.log.Warn("a Status the issuer's subscription had not delivered came by a peek: replacing the issuer's subscriptions", "epoch", st.epoch)
		c.Resubscribe(i.topics.AllStatuses())
		c.Resubscribe(i.topics.AllRegistrations())
	}
	// The root goes out every round, confirmations or not (one message):
	// a root lost after every device had it live would be missing for a
	// device that subscribes later.
	failed := i.publishAll(msgs)
	i.count(cNudged, uint64(len(msgs)-failed))
	i.log.Info("republished the latest root and the unconfirmed tickets (nudge)", "epoch", st.epoch, "tickets", len(msgs)-1, "failed", failed)
	if st.rounds < 2 || len(unconfirmed) == 0 {
		return
	}
	var peek []string
	for _, id := range unconfirmed {
		if len(peek) == peekMax {
			break
		}
		peek = append(peek, i.topics.Status(id))
		st.peeked[id] = true
	}
	i.count(cStatusPeeks, uint64(len(peek)))
	c.Peek(peek, i.cfg.NudgeInterval)
}
