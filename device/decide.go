package device

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Every ticket is handled in two steps. decide takes a.mu, applies
// accept.Accept, makes what it concluded durable (state.bin or
// status.cbor), releases a.mu in the same function and returns an outcome;
// report then counts, logs, publishes and emits it without the lock. No
// function returns with a.mu held or releases a lock it did not take.

// outcome is what decide concluded about one ticket.
type outcome struct {
	ev Event // Kind "": nothing to report (the agent was closed)
	// publish are the Statuses to publish, in order.
	publish [][]byte
	// notTaken: an accepted ticket was not to the announced next key.
	notTaken bool
	// reported is false for a rejection whose Status repeats the last
	// one and is not published again.
	reported bool
	// awaitingApproval: the device re-enrolled (its earlier key may still
	// be the issuer's).
	awaitingApproval bool
}

// processTicket runs the acceptance rules on the latest ticket if its
// epoch's root is here; otherwise the ticket waits for its root.
func (a *Agent) processTicket(pub publisher) {
	var root []byte
	tk, body, perr := wire.ParseTicket(a.ticket)
	a.ticketEpoch, a.pending = 0, false
	if perr == nil {
		a.ticketEpoch = body.Epoch
		epoch, hash := a.last()
		if body.Epoch == epoch && bytes.Equal(keyschedule.TicketHash(tk.Body), hash) {
			a.report(pub, outcome{ev: Event{Kind: EventDuplicate, Epoch: epoch, TicketEpoch: epoch}})
			a.onDuplicate(pub)
			return
		}
		var ok bool
		if root, ok = a.roots[body.Epoch]; !ok {
			a.log.Debug("ticket waits for its epoch root", "ticket_epoch", body.Epoch)
			a.pending = true
			return
		}
	}
	in := accept.Input{
		Ticket: a.ticket, Root: root, Pins: a.trust.KeysAt(a.ticketEpoch), Now: a.cfg.Now(),
		Policy: accept.Policy{Skew: a.cfg.Skew, MaxJump: a.cfg.MaxJump},
		Cohort: a.cfg.Cohort, Roots: a.rootCache,
	}
	a.report(pub, a.decide(in))
	a.checkStale(pub)
}

// decide applies accept.Accept to in under a.mu and commits the outcome:
// an accepted ticket's state and Status to state.bin, a rejection's Status
// to status.cbor (unless it repeats the last one).
func (a *Agent) decide(in accept.Input) outcome {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return outcome{}
	}
	res, err := accept.Accept(a.st, in)
	switch {
	case err == nil:
		return a.commitAccepted(res)
	case errors.Is(err, accept.ErrDuplicate):
		return outcome{ev: Event{Kind: EventDuplicate, Epoch: a.st.Epoch, TicketEpoch: a.st.Epoch}}
	case accept.IsRejection(err):
		return a.commitRejected(err)
	default:
		return a.failure(err)
	}
}

// failure is the outcome of a local failure. Called with a.mu held.
func (a *Agent) failure(err error) outcome {
	return outcome{ev: Event{Kind: EventFailed, Epoch: a.st.Epoch, TicketEpoch: a.ticketEpoch, Reason: accept.ReasonInternal, Err: err}}
}

// commitAccepted persists res with its Status. Called with a.mu held.
func (a *Agent) commitAccepted(res *accept.Result) outcome {
	fp := Fingerprint(res.EpochKey)
	clear(res.EpochKey)
	// §8.1: a ticket not to the announced next key means the issuer did
	// not take it (a Status it refused, e.g. next_alg, or never got); the
	// new state already announces a fresh one. Said, never silent.
	notTaken := a.st.Next != nil && !bytes.Equal(res.Body.PKHash, a.st.Next.PublicKey().Hash())
	next := res.State.Next
	s := a.newStatus(res.State, wire.StateOK, accept.ReasonNone)
	s.Confirm, s.NextTag = res.Secrets.Confirm(), res.NextTag
	s.NextAlg, s.NextPK = next.Scheme().ID(), next.PublicKey().Bytes()
	if res.Gap {
		s.State, s.PrevEpoch = wire.StateGap, &res.PrevEpoch
	}
	sb, err := a.commitState(res.State, s)
	if err != nil {
		return a.failure(err)
	}
	a.staleReported = false
	close(a.changed)
	a.changed = make(chan struct{})
	return outcome{
		ev: Event{Kind: EventAccepted, Epoch: s.Epoch, TicketEpoch: s.Epoch, Gap: res.Gap,
			PrevEpoch: res.PrevEpoch, Fingerprint: fp, State: s.State},
		publish: [][]byte{sb}, notTaken: notTaken, reported: true,
	}
}

// commitRejected records a rejection: the state is unchanged, the Status
// is written to status.cbor (state.bin is not rewritten). A rejection
// whose Status would repeat the last one (same state, reason, epoch and
// ticket_hash) is reported again only for a ticket of another epoch than
// the last reported one: a rejection that persists is reported once per
// epoch (so observers see it is still there, and when), while a retained
// bad ticket re-delivered after a reconnect or restart is counted and
// logged but not published again. Called with a.mu held.
func (a *Agent) commitRejected(rerr error) outcome {
	reason := accept.ReasonOf(rerr)
	epoch, te := a.st.Epoch, a.ticketEpoch
	s := a.newStatus(a.st, accept.StateOf(rerr), reason)
	o := outcome{
		ev:               Event{Kind: EventRejected, Epoch: epoch, TicketEpoch: te, State: s.State, Reason: reason, Err: rerr},
		awaitingApproval: a.reenrolled || a.seqFloor > 0,
	}
	repeat := a.repeats(s) && (!a.rejectReported || a.rejectEpoch == te)
	if !repeat {
		sb, err := a.commitStatus(s)
		if err != nil {
			return a.failure(err)
		}
		o.reported, o.publish = true, [][]byte{sb}
		if te > 0 && te < epoch && a.acceptedStatus != nil {
			// An old ticket (a broker restored from an older save): the
			// retained topic goes back to the acceptance the issuer needs.
			o.publish = append(o.publish, a.acceptedStatus)
		}
	}
	// After a restart, the first repeat stands for the Status already
	// published (and republished on connect) for this ticket epoch.
	a.rejectReported, a.rejectEpoch = true, te
	return o
}

// report counts, logs, publishes and emits o. It runs without a.mu.
func (a *Agent) report(pub publisher, o outcome) {
	ev := o.ev
	switch ev.Kind {
	case "":
		return
	case EventDuplicate:
		a.count(cDuplicate)
	case EventFailed:
		a.count(cFailed)
		a.log.Error("local failure while processing a ticket; state unchanged", "reason", accept.ReasonInternal.String(), "err", ev.Err)
	case EventAccepted:
		a.count(cAccepted)
		if o.notTaken {
			a.count(cNextKeyNotTaken)
			a.log.Warn("the issuer did not use the announced next key; announcing a fresh one", "epoch", ev.Epoch,
				"reason", "next_key_not_taken")
		}
		a.log.Info("ticket accepted", "epoch", ev.Epoch, "state", ev.State.String(), "prev_epoch", ev.PrevEpoch, "key", ev.Fingerprint)
	case EventRejected:
		a.countRejected(ev.Reason)
		a.log.Warn("ticket rejected", "reason", ev.Reason.String(), "ticket_epoch", ev.TicketEpoch, "epoch", ev.Epoch, "reported", o.reported, "err", ev.Err)
		a.explainStranger(ev, o.awaitingApproval)
	}
	for _, sb := range o.publish {
		a.publishStatus(pub, sb)
	}
	a.emit(ev)
}

// explainStranger logs, once, why a device that never accepted a ticket
// gets tickets for a key it does not hold.
func (a *Agent) explainStranger(ev Event, awaitingApproval bool) {
	switch {
	case ev.Reason != accept.ReasonWrongDeviceKey || ev.Epoch != 0 || a.strangerLogged:
	case awaitingApproval:
		// Re-enrolled: the issuer still serves the earlier key until an
		// operator approves the new one.
		a.strangerLogged = true
		a.log.Warn("ticket for this device's earlier key: the re-enrollment awaits approval at the issuer (ekem-issuer approve "+a.cfg.ID+")",
			"reason", "awaiting_approval")
	default:
		// A device that never accepted a ticket gets one for a key it
		// never had: the issuer knows an earlier identity of this id.
		a.strangerLogged = true
		a.log.Error("the issuer holds another key for this device id: this device's earlier state is lost, or another device uses this id; "+
			"re-enroll it (ekem-device reenroll) and have the operator approve it, or have the operator approve its registration (ekem-issuer approve)",
			"reason", "identity_mismatch")
	}
}

// commitState writes st and its Status s into state.bin and, only once
// that is durable, makes them the agent's. Called with a.mu held.
func (a *Agent) commitState(st *accept.State, s *wire.Status) ([]byte, error) {
	var sb []byte
	seq, status := a.seq, a.status
	if s != nil {
		var err error
		if sb, err = s.Marshal(); err != nil {
			return nil, fmt.Errorf("device: status: %w", err)
		}
		seq, status = s.Seq, sb
	}
	enc, err := sealState(a.key, a.cfg.ID, st, seq, status)
	if err != nil {
		return nil, err
	}
	if err := writeAtomic(a.cfg.StateDir, stateFileName, enc); err != nil {
		return nil, err
	}
	if old := a.st; old != st && old.Ratchet != nil && old.Ratchet != st.Ratchet {
		old.Ratchet.Wipe()
	}
	a.st, a.seq, a.status, a.acceptedStatus = st, seq, status, status
	return sb, nil
}

// repeats reports whether s says what the last Status said. Called with
// a.mu held.
func (a *Agent) repeats(s *wire.Status) bool {
	if a.status == nil {
		return false
	}
	last, err := wire.ParseStatus(a.status)
	return err == nil && last.State == s.State && last.Reason == s.Reason &&
		last.Epoch == s.Epoch && bytes.Equal(last.TicketHash, s.TicketHash)
}

// commitStatus persists a Status that changes no state (status.cbor).
// Called with a.mu held.
func (a *Agent) commitStatus(s *wire.Status) ([]byte, error) {
	sb, err := s.Marshal()
	if err != nil {
		return nil, fmt.Errorf("device: status: %w", err)
	}
	if err := writeAtomic(a.cfg.StateDir, statusFileName, sb); err != nil {
		return nil, err
	}
	a.seq, a.status = s.Seq, sb
	return sb, nil
}

// checkStale publishes a stale Status once per expired epoch.
func (a *Agent) checkStale(pub publisher) {
	epoch, sb, err := a.commitStale()
	switch {
	case err != nil:
		a.count(cFailed)
		a.log.Error("cannot persist stale status", "err", err)
	case sb != nil:
		a.count(cStale)
		a.log.Warn("latest ticket expired; reporting stale", "epoch", epoch, "reason", accept.ReasonStale.String())
		a.publishStatus(pub, sb)
		a.emit(Event{Kind: EventStale, Epoch: epoch, State: wire.StateStale, Reason: accept.ReasonStale})
	}
}

// commitStale persists a stale Status if the last ticket expired and its
// epoch's expiry was not reported yet; sb is nil when there is nothing to
// report.
func (a *Agent) commitStale() (epoch uint64, sb []byte, err error) {
	now := a.cfg.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed || !a.st.Stale(unix(now), uint64(a.cfg.Skew/time.Second)) ||
		(a.staleReported && a.staleEpoch == a.st.Epoch) {
		return 0, nil, nil
	}
	epoch = a.st.Epoch
	if sb, err = a.commitStatus(a.newStatus(a.st, wire.StateStale, accept.ReasonStale)); err != nil {
		return epoch, nil, err
	}
	a.staleEpoch, a.staleReported = epoch, true
	return epoch, sb, nil
}

// newStatus starts the next Status for state st. Called with a.mu held.
// Its seq is the last one plus one; a re-enrolled device starts above its
// re-enrollment's created_at (schema/PROTOCOL.md §7.6), so that it never
// repeats a seq its earlier identity used: the issuer and the monitor would
// take that for a clone.
func (a *Agent) newStatus(st *accept.State, state wire.State, reason accept.Reason) *wire.Status {
	return &wire.Status{
		Version: wire.Version, DeviceID: a.cfg.ID, Epoch: st.Epoch, State: state,
		Reason: uint64(reason), Time: unix(a.cfg.Now()), Seq: max(a.seq, a.seqFloor) + 1,
		TicketHash: bytes.Clone(st.TicketHash),
	}
}

// publishStatus publishes a Status retained at QoS 1. A failure is only
// logged: the Status is persisted and republished after reconnecting.
func (a *Agent) publishStatus(pub publisher, sb []byte) {
	a.behind.statusSent = time.Now()
	if err := pub.Publish(a.topics.Status(a.cfg.ID), sb, true); err != nil {
		a.count(cPublishFailed)
		a.log.Warn("status publish failed; republished on reconnect", "err", err)
	}
}

func (a *Agent) emit(e Event) {
	if a.cfg.OnEvent != nil {
		e.DeviceID = a.cfg.ID
		a.cfg.OnEvent(e)
	}
}

func (a *Agent) count(c counter) {
	a.mu.Lock()
	a.counters.plain[c]++
	a.mu.Unlock()
}

func (a *Agent) countRejected(r accept.Reason) {
	a.mu.Lock()
	if a.counters.rejected == nil {
		a.counters.rejected = make(map[accept.Reason]uint64)
	}
	a.counters.rejected[r]++
	a.mu.Unlock()
}

// last returns the last accepted epoch and ticket hash.
func (a *Agent) last() (uint64, []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.st.Epoch, a.st.TicketHash
}
