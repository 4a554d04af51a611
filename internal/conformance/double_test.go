package conformance

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/mqttc"
	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// brokenDevice is a test double: a small device built on pkg/accept, with
// one deliberate bug, to show that the kit catches it.
type brokenDevice struct {
	id, broker, password string
	pins                 *signature.KeySet
	bug                  string // "rollback": accepts an older epoch; "prev": never reports a gap; "held": keeps the first ticket waiting for its root
}

func (d *brokenDevice) run(ctx context.Context, t *testing.T) {
	sch, _ := kem.Lookup(kem.MLKEM768)
	k, err := sch.GenerateKey()
	if err != nil {
		t.Error(err)
		return
	}
	st, _ := accept.NewState(d.id, k)
	coh, _ := cohort.NewSoftware(bytes.Repeat([]byte{7}, 32))
	tp, _ := wire.NewTopics(wire.DefaultPrefix)
	cl, err := mqttc.Dial(ctx, mqttc.Options{Broker: d.broker, ClientID: d.id, Username: d.id, Password: d.password, Timeout: 10 * time.Second, Logger: quietLogger(nil)})
	if err != nil {
		if ctx.Err() == nil {
			t.Error(err)
		}
		return
	}
	defer cl.Close()
	reg, _ := (&wire.Registration{Version: 1, DeviceID: d.id, KEMAlg: kem.MLKEM768, PublicKey: k.PublicKey().Bytes(), CreatedAt: uint64(time.Now().Unix())}).Marshal()
	if err := cl.Publish(tp.Registration(d.id), reg, true); err != nil {
		t.Error(err)
		return
	}
	for _, f := range []string{tp.Ticket(d.id), tp.AllRoots()} {
		if err := cl.Subscribe(f); err != nil {
			t.Error(err)
			return
		}
	}
	var seq uint64
	publish := func(s *wire.Status) {
		seq++
		s.Version, s.DeviceID, s.Seq, s.Time = 1, d.id, seq, uint64(time.Now().Unix())
		if b, err := s.Marshal(); err == nil {
			cl.Publish(tp.Status(d.id), b, true)
		}
	}
	roots := map[uint64][]byte{}
	var ticket []byte
	var staleDone uint64
	evaluate := func() {
		_, body, perr := wire.ParseTicket(ticket)
		var root []byte
		if perr == nil {
			var ok bool
			if root, ok = roots[body.Epoch]; !ok {
				return // waits for its root
			}
		}
		cur := st
		if d.bug == "rollback" && perr == nil && body.Epoch < st.Epoch {
			cur = st.Clone()
			cur.Epoch, cur.TicketHash = 0, nil // forgets the order
		}
		res, err := accept.Accept(cur, accept.Input{Ticket: ticket, Root: root, Pins: d.pins, Now: time.Now(),
			Policy: accept.Policy{Skew: 30 * time.Second}, Cohort: coh})
		switch {
		case errors.Is(err, accept.ErrDuplicate):
			return
		case err != nil:
			publish(&wire.Status{Epoch: st.Epoch, TicketHash: st.TicketHash, State: accept.StateOf(err), Reason: uint64(accept.ReasonOf(err))})
			return
		}
		st = res.State
		s := &wire.Status{Epoch: st.Epoch, TicketHash: res.TicketHash, State: wire.StateOK, Confirm: res.Secrets.Confirm(),
			NextAlg: st.Next.Scheme().ID(), NextPK: st.Next.PublicKey().Bytes(), NextTag: res.NextTag}
		if res.Gap && d.bug != "prev" {
			p := res.PrevEpoch
			s.State, s.PrevEpoch = wire.StateGap, &p
		}
		publish(s)
	}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	msgs := make(chan mqttc.Message)
	go func() {
		for {
			m, ok := cl.Inbox().Next(ctx)
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
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if st.Stale(uint64(time.Now().Unix()), 30) && staleDone != st.Epoch {
				staleDone = st.Epoch
				publish(&wire.Status{Epoch: st.Epoch, TicketHash: st.TicketHash, State: wire.StateStale, Reason: uint64(accept.ReasonStale)})
			}
		case m := <-msgs:
			if m.Topic == tp.Ticket(d.id) {
				if d.bug == "held" {
					if _, body, err := wire.ParseTicket(ticket); err == nil && body.Epoch > st.Epoch && roots[body.Epoch] == nil {
						continue // a ticket waits: later deliveries are dropped
					}
				}
				if ticket = m.Payload; len(ticket) > 0 {
					evaluate()
				}
				continue
			}
			e, err := tp.EpochOf(m.Topic)
			if err != nil || len(m.Payload) == 0 {
				continue
			}
			roots[e] = m.Payload
			if _, body, err := wire.ParseTicket(ticket); err == nil && body.Epoch == e && e > st.Epoch {
				evaluate()
			}
		}
	}
}
