package conformance

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/entropykem/entropykem/internal/mqttc"
	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/merkle"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// DeviceOptions configure RunDevice.
type DeviceOptions struct {
	// Broker: the kit connects with the issuer's account (it publishes
	// tickets and roots and reads Registrations and Statuses).
	Broker Broker
	// DeviceID is the device under test. It must start from a fresh state
	// (no ticket accepted) and pin IssuerKey's public key.
	DeviceID string
	// IssuerKey signs every root; the device must pin its public key.
	IssuerKey *signature.PrivateKey
	// Skew and MaxJump are the device's configured clock skew (default
	// 30 s) and fast-forward bound (default 1000), PROTOCOL.md §8.2 rule 5.
	Skew    time.Duration
	MaxJump uint64
	// StaleWait bounds the wait for the stale Status (default 30 s): the
	// device checks at its own interval (§8.2).
	StaleWait time.Duration
	Timing    Timing
	Logger    *slog.Logger
}

// Device rule names, in the order RunDevice runs them.
const (
	RuleFirstTicket      = "first ticket"
	RuleTicketBeforeRoot = "ticket before root"
	RuleDuplicate        = "duplicate"
	RuleMalformed        = "malformed"
	RuleUnknownKey       = "unknown issuer key"
	RuleBadProof         = "bad proof"
	RuleBadChunkRoots    = "bad chunk roots"
	RuleBadChunkFields   = "malformed chunk fields"
	RuleBadSignature     = "bad signature"
	RuleWrongAudience    = "wrong audience"
	RuleWrongDeviceKey   = "wrong device key"
	RuleRollback         = "rollback"
	RuleEquivocation     = "equivocation"
	RuleNotYetValid      = "not yet valid"
	RuleExpired          = "expired"
	RuleFastForward      = "fast forward"
	RuleGap              = "gap"
	RuleChain            = "chain"
	RuleNextNotTaken     = "next key not taken"
	RuleHeldReplaced     = "held ticket replaced"
	RuleGroupSeed        = "cohort group seed"
	RuleBadGroupSeed     = "group seed that does not open"
	RuleRetiredKey       = "retired key"
	RuleRekey            = "re-key"
	RuleStale            = "stale"
)

// deviceRun is the state of one RunDevice.
type deviceRun struct {
	o       DeviceOptions
	ctx     context.Context
	cl      *mqttc.Client
	topics  wire.Topics
	log     *slog.Logger
	msgs    chan mqttc.Message
	filler  batch.Device // a second leaf, so that proofs are not empty
	regAlg  kem.ID
	reg     kem.PublicKey // registered key
	regs    [][]byte      // Registrations seen after the first
	seq     uint64        // last Status seq seen
	epoch   uint64        // device's last accepted epoch, as the kit issued it
	hash    []byte        // and its ticket_hash
	current kem.PublicKey // the key of the last accepted ticket
	next    kem.PublicKey // the next key announced in the last accepted Status
	retired kem.PublicKey
	last    batch.Issued // the last accepted ticket
	fresh   error        // set by follow: the next key was not fresh
	tickets map[uint64]issued
}

type issued struct {
	ticket, root []byte
	it           batch.Issued
}

// RunDevice runs every device rule against the device under test. The
// error is for a run that could not start (broker, no Registration);
// rule failures are in the Report.
func RunDevice(ctx context.Context, o DeviceOptions) (*Report, error) {
	if o.IssuerKey == nil || o.DeviceID == "" {
		return nil, errors.New("conformance: device mode needs a device id and an issuer key")
	}
	if err := wire.ValidateDeviceID(o.DeviceID); err != nil {
		return nil, fmt.Errorf("conformance: %w", err)
	}
	if o.Skew == 0 {
		o.Skew = 30 * time.Second
	}
	if o.MaxJump == 0 {
		o.MaxJump = accept.DefaultMaxJump
	}
	if o.StaleWait == 0 {
		o.StaleWait = 30 * time.Second
	}
	o.Timing = o.Timing.withDefaults()
	tp, err := topicsOf(o.Broker.Prefix)
	if err != nil {
		return nil, fmt.Errorf("conformance: %w", err)
	}
	r := &deviceRun{o: o, ctx: ctx, topics: tp, log: quietLogger(o.Logger), msgs: make(chan mqttc.Message, 256), tickets: map[uint64]issued{}}
	if r.cl, err = dial(ctx, o.Broker, o.Broker.ClientID, r.log); err != nil {
		return nil, fmt.Errorf("conformance: %w", err)
	}
	defer r.cl.Close()
	go r.pump()
	for _, f := range []string{tp.Registration(o.DeviceID), tp.Status(o.DeviceID)} {
		if err := r.cl.Subscribe(f); err != nil {
			return nil, fmt.Errorf("conformance: subscribe %s: %w", f, err)
		}
	}
	if err := r.setup(); err != nil {
		return nil, err
	}
	rep := &Report{Mode: "device"}
	r.rules(rep)
	return rep, nil
}

// pump moves the client's messages to r.msgs until ctx ends.
func (r *deviceRun) pump() {
	for {
		m, ok := r.cl.Inbox().Next(r.ctx)
		if !ok {
			return
		}
		select {
		case r.msgs <- m:
		case <-r.ctx.Done():
			return
		}
	}
}

// setup clears what an earlier run left on the device's ticket topic and
// waits for its Registration.
func (r *deviceRun) setup() error {
	if err := r.cl.Publish(r.topics.Ticket(r.o.DeviceID), nil, true); err != nil {
		return fmt.Errorf("conformance: clear ticket topic: %w", err)
	}
	sch, _ := kem.Lookup(kem.MLKEM768)
	fk, err := sch.GenerateKey()
	if err != nil {
		return err
	}
	r.filler = batch.Device{ID: "zz-conformance-filler", Key: fk.PublicKey(), Purpose: "conformance", Group: "kit"}
	deadline := time.After(r.o.Timing.Status * 3)
	for {
		select {
		case <-r.ctx.Done():
			return r.ctx.Err()
		case <-deadline:
			return fmt.Errorf("conformance: no Registration from %s on %s", r.o.DeviceID, r.topics.Registration(r.o.DeviceID))
		case m := <-r.msgs:
			if m.Topic == r.topics.Status(r.o.DeviceID) {
				if s, err := wire.ParseStatus(m.Payload); err == nil && s.Seq > r.seq && !m.Retained {
					r.seq = s.Seq // a device that already published: start after it
				}
				continue
			}
			if m.Topic != r.topics.Registration(r.o.DeviceID) || len(m.Payload) == 0 {
				continue
			}
			reg, err := wire.ParseRegistration(m.Payload)
			if err != nil {
				return fmt.Errorf("conformance: the device's Registration does not decode: %w", err)
			}
			sch, err := kem.Lookup(reg.KEMAlg)
			if err != nil {
				return fmt.Errorf("conformance: %w", err)
			}
			if r.reg, err = sch.ParsePublicKey(reg.PublicKey); err != nil {
				return fmt.Errorf("conformance: the device's key is invalid: %w", err)
			}
			r.regAlg, r.current = reg.KEMAlg, r.reg
			r.log.Info("device registered", "device", r.o.DeviceID, "kem", reg.KEMAlg.String())
			return nil
		}
	}
}

// ticketSpec describes one crafted ticket.
type ticketSpec struct {
	epoch    uint64
	key      kem.PublicKey
	prev     []byte
	aud      string
	issuedAt time.Time
	ttl      uint64
	signer   *signature.PrivateKey
	// chunked issues a streamed epoch (PROTOCOL.md §5.5): the device's
	// ticket and three fillers in chunks of 2 leaves, chunk by chunk.
	chunked bool
	// cohort, if set, makes the device a member of that cohort: the body
	// carries a fresh group seed (fields 11, 12; PROTOCOL.md §7.7).
	// badSeal seals it under another audience's seed key, so the device
	// cannot open it (a tree of the device's ticket alone).
	cohort  string
	badSeal bool
}

// issue builds a ticket and its root per s (defaults: to the device, now,
// one hour, the kit's key).
func (r *deviceRun) issue(s ticketSpec) (issued, error) {
	if s.aud == "" {
		s.aud = r.o.DeviceID
	}
	if s.issuedAt.IsZero() {
		s.issuedAt = time.Now()
	}
	if s.ttl == 0 {
		s.ttl = 3600
	}
	if s.signer == nil {
		s.signer = r.o.IssuerKey
	}
	dev := batch.Device{ID: s.aud, Key: s.key, Prev: s.prev, Purpose: "conformance", Group: "kit"}
	if s.cohort != "" {
		dev.Cohort, dev.GroupSeed = s.cohort, make([]byte, keyschedule.GroupSeedSize)
		rand.Read(dev.GroupSeed)
	}
	if s.badSeal {
		return r.issueBadSeal(s, dev)
	}
	if s.chunked {
		return r.issueChunked(s, dev)
	}
	ep, err := batch.Issue(s.signer, batch.Params{Epoch: s.epoch, IssuedAt: uint64(s.issuedAt.Unix()), TTL: s.ttl}, []batch.Device{dev, r.filler})
	if err != nil {
		return issued{}, err
	}
	for _, t := range ep.Tickets {
		if t.DeviceID == s.aud {
			return issued{ticket: t.Ticket, root: ep.Root, it: t}, nil
		}
	}
	return issued{}, errors.New("conformance: ticket not issued")
}

// issueBadSeal issues dev alone in its epoch with a well-formed, validly
// signed body whose group seed is sealed for another audience: only the
// device's opening of the seed can refuse it.
func (r *deviceRun) issueBadSeal(s ticketSpec, dev batch.Device) (issued, error) {
	prev := dev.Prev
	if prev == nil {
		prev = make([]byte, 32)
	}
	sch := dev.Key.Scheme()
	body := &wire.TicketBody{Version: wire.Version, Aud: dev.ID, Epoch: s.epoch, IssuedAt: uint64(s.issuedAt.Unix()), TTL: s.ttl,
		KEMAlg: sch.ID(), Ciphertext: make([]byte, sch.CiphertextSize()), Prev: prev, PKHash: dev.Key.Hash(),
		Purpose: dev.Purpose, Group: dev.Group, Cohort: dev.Cohort, SealedGroupSeed: make([]byte, wire.SealedGroupSeedSize)}
	d, err := wire.DraftTicket(body, 0)
	if err != nil {
		return issued{}, err
	}
	ss := make([]byte, kem.SharedKeySize)
	if err := dev.Key.EncapsulateTo(d.Ciphertext(), ss); err != nil {
		return issued{}, err
	}
	if err := keyschedule.SealGroupSeedTo(d.SealedGroupSeed(), ss, s.epoch, dev.Cohort, "x"+dev.ID, dev.GroupSeed); err != nil {
		return issued{}, err
	}
	leaf := merkle.LeafHash(d.Body())
	ticket, err := d.Finish(0, 1, [][]byte{})
	if err != nil {
		return issued{}, err
	}
	signed, _, err := batch.SignRoot(s.signer, batch.Params{Epoch: s.epoch, IssuedAt: body.IssuedAt, TTL: s.ttl}, 1, batch.OneChunk, [][]byte{leaf})
	if err != nil {
		return issued{}, err
	}
	return issued{ticket: ticket, root: signed}, nil
}

// issueChunked issues a streamed epoch of the device and three fillers in
// chunks of 2 leaves (two chunks), as a streaming issuer does: each
// chunk's tickets, then the root that lists the chunk roots.
func (r *deviceRun) issueChunked(s ticketSpec, dev batch.Device) (issued, error) {
	devs := []batch.Device{dev}
	for n := range 3 {
		f := r.filler
		f.ID = fmt.Sprintf("%s-%d", r.filler.ID, n)
		devs = append(devs, f)
	}
	slices.SortFunc(devs, func(a, b batch.Device) int { return strings.Compare(a.ID, b.ID) })
	p := batch.Params{Epoch: s.epoch, IssuedAt: uint64(s.issuedAt.Unix()), TTL: s.ttl}
	const height, size = 1, 4
	var roots [][]byte
	var mine batch.Issued
	for c := uint64(0); c < 2; c++ {
		ch, err := batch.IssueChunk(p, size, height, c, devs[2*c:2*c+2])
		if err != nil {
			return issued{}, err
		}
		roots = append(roots, ch.Root)
		for _, t := range ch.Tickets {
			if t.DeviceID == s.aud {
				mine = t
			}
		}
	}
	signed, _, err := batch.SignRoot(s.signer, p, size, height, roots)
	if err != nil {
		return issued{}, err
	}
	return issued{ticket: mine.Ticket, root: signed, it: mine}, nil
}

// publish sends root then ticket (or ticket first), retained.
func (r *deviceRun) publish(epoch uint64, x issued, ticketFirst bool) error {
	root := func() error { return r.cl.Publish(r.topics.Root(epoch), x.root, true) }
	ticket := func() error { return r.cl.Publish(r.topics.Ticket(r.o.DeviceID), x.ticket, true) }
	first, second := root, ticket
	if ticketFirst {
		first, second = ticket, root
	}
	if err := first(); err != nil {
		return err
	}
	return second()
}

// nextStatus returns the first Status with seq above the last seen, or nil
// after d.
func (r *deviceRun) nextStatus(d time.Duration) (*wire.Status, error) {
	timeout := time.After(d)
	for {
		select {
		case <-r.ctx.Done():
			return nil, r.ctx.Err()
		case <-timeout:
			return nil, nil
		case m := <-r.msgs:
			if m.Topic == r.topics.Registration(r.o.DeviceID) {
				if len(m.Payload) > 0 {
					r.regs = append(r.regs, m.Payload)
				}
				continue
			}
			if m.Topic != r.topics.Status(r.o.DeviceID) || len(m.Payload) == 0 || m.Retained {
				continue // retained: an earlier run's, delivered on subscribing
			}
			s, err := wire.ParseStatus(m.Payload)
			if err != nil {
				return nil, fmt.Errorf("the device published a Status that does not decode: %w", err)
			}
			if s.Seq <= r.seq {
				continue // a republication
			}
			if s.Seq != r.seq+1 {
				err = fmt.Errorf("seq %d after %d: seq must increase by one (§5.6)", s.Seq, r.seq)
			}
			r.seq = s.Seq
			return s, err
		}
	}
}

func (r *deviceRun) mustStatus() (*wire.Status, error) {
	s, err := r.nextStatus(r.o.Timing.Status)
	if err == nil && s == nil {
		err = fmt.Errorf("no Status within %v", r.o.Timing.Status)
	}
	return s, err
}

// resignChunkedRoot returns a mutation for reject that replaces a chunked
// epoch root's payload with what payload makes of it, signed with the
// issuer's key, so that only the check of the changed field refuses it.
func (r *deviceRun) resignChunkedRoot(payload func(*wire.EpochRoot) ([]byte, error)) func(*issued) {
	return func(x *issued) {
		p, err := signature.ParseSign1(x.root)
		if err != nil {
			return
		}
		er, err := wire.ParseEpochRoot(p.Payload)
		if err != nil || !er.Chunked() {
			return
		}
		b, err := payload(er)
		if err != nil {
			return
		}
		if signed, err := signature.Sign1(r.o.IssuerKey, b); err == nil {
			x.root = signed
		}
	}
}

// deliver issues the ticket s describes, publishes it after its root and
// checks that the device accepts it (reporting a gap, or not).
func (r *deviceRun) deliver(s ticketSpec, gap bool) error {
	x, err := r.issue(s)
	if err != nil {
		return err
	}
	if err := r.publish(s.epoch, x, false); err != nil {
		return err
	}
	return r.expectAccepted(s.epoch, x, gap)
}

// expectAccepted checks the Status of an accepted ticket (§5.6, §7.3,
// §7.4) and moves the kit's view of the device forward.
func (r *deviceRun) expectAccepted(epoch uint64, x issued, gap bool) error {
	s, err := r.mustStatus()
	if err != nil {
		return err
	}
	if !s.State.Accepted() {
		return fmt.Errorf("state %v reason %d (%s), want it accepted", s.State, s.Reason, accept.Reason(s.Reason))
	}
	if s.Epoch != epoch || !bytes.Equal(s.TicketHash, x.it.TicketHash) {
		return fmt.Errorf("the Status reports epoch %d, want %d and its ticket_hash", s.Epoch, epoch)
	}
	// The device accepted this ticket: follow it, whatever else is wrong,
	// so that one failure does not make every later rule fail.
	prevEpoch := r.epoch
	err = r.follow(epoch, x, s)
	want := wire.StateOK
	if gap {
		want = wire.StateGap
	}
	switch {
	case err != nil:
		return err
	case s.State != want:
		return fmt.Errorf("state %v, want %v", s.State, want)
	case !x.it.Secrets.CheckConfirm(s.Confirm):
		return errors.New("confirm does not verify (§7.3)")
	case !x.it.Secrets.CheckNextKey(kem.PublicKeyHash(s.NextPK), s.NextTag):
		return errors.New("next_tag does not verify (§7.4)")
	case gap && (s.PrevEpoch == nil || *s.PrevEpoch != prevEpoch):
		return fmt.Errorf("prev_epoch missing or not %d", prevEpoch)
	}
	_, body, err := wire.ParseTicket(x.ticket)
	if err != nil {
		return err
	}
	if s.NextAlg != body.KEMAlg {
		return fmt.Errorf("next_alg %v, the ticket's kem_alg is %v (§7.4)", s.NextAlg, body.KEMAlg)
	}
	return r.fresh
}

// follow moves the kit's view of the device past the accepted ticket x
// reported by s; it sets r.fresh to an error if the announced next key is
// not a fresh one (§8.1).
func (r *deviceRun) follow(epoch uint64, x issued, s *wire.Status) error {
	_, body, err := wire.ParseTicket(x.ticket)
	if err != nil {
		return err
	}
	sch, err := kem.Lookup(s.NextAlg)
	if err != nil {
		return fmt.Errorf("next_alg: %w", err)
	}
	next, err := sch.ParsePublicKey(s.NextPK)
	if err != nil {
		return fmt.Errorf("next_pk invalid: %w", err)
	}
	r.fresh = nil
	for _, k := range []kem.PublicKey{r.current, r.next} {
		if k != nil && bytes.Equal(k.Hash(), next.Hash()) {
			r.fresh = errors.New("next_pk repeats a key already used or announced (§8.1: a fresh next key after every accepted ticket)")
		}
	}
	used := r.keyOf(body.PKHash)
	if used != nil && r.current != nil && !bytes.Equal(used.Hash(), r.current.Hash()) {
		r.retired = r.current
	}
	r.epoch, r.hash, r.last, r.current, r.next = epoch, x.it.TicketHash, x.it, used, next
	r.tickets[epoch] = x
	return nil
}

func (r *deviceRun) keyOf(pkHash []byte) kem.PublicKey {
	for _, k := range []kem.PublicKey{r.current, r.next, r.reg} {
		if k != nil && bytes.Equal(k.Hash(), pkHash) {
			return k
		}
	}
	return nil
}

// expectRejected checks a rejection Status: the device's last accepted
// ticket is unchanged (§8.2) and the reason is the rule's.
func (r *deviceRun) expectRejected(state wire.State, reason accept.Reason) error {
	s, err := r.mustStatus()
	if err != nil {
		return err
	}
	switch {
	case s.State != state || s.Reason != uint64(reason):
		return fmt.Errorf("state %v reason %d (%s), want %v reason %d (%s)", s.State, s.Reason, accept.Reason(s.Reason), state, reason, reason)
	case s.Epoch != r.epoch || !bytes.Equal(s.TicketHash, r.hash):
		return fmt.Errorf("the Status reports epoch %d: a rejection must not change the last accepted ticket (epoch %d)", s.Epoch, r.epoch)
	}
	return nil
}

// expectNothing checks that no new Status arrives for a while.
func (r *deviceRun) expectNothing() error {
	s, err := r.nextStatus(r.o.Timing.Quiet)
	if err != nil {
		return err
	}
	if s != nil {
		return fmt.Errorf("unexpected Status: state %v reason %d epoch %d", s.State, s.Reason, s.Epoch)
	}
	return nil
}

// randomKey is a valid key of the device's algorithm that it does not hold.
func (r *deviceRun) randomKey() (kem.PublicKey, error) {
	sch, _ := kem.Lookup(r.regAlg)
	k, err := sch.GenerateKey()
	if err != nil {
		return nil, err
	}
	return k.PublicKey(), nil
}

// reject issues a ticket that only the named rule refuses and checks the
// rejection.
func (r *deviceRun) reject(s ticketSpec, mutate func(*issued), state wire.State, reason accept.Reason) error {
	if s.key == nil {
		s.key = r.next
	}
	if s.prev == nil {
		s.prev = r.hash
	}
	x, err := r.issue(s)
	if err != nil {
		return err
	}
	if mutate != nil {
		mutate(&x)
	}
	if err := r.publish(s.epoch, x, false); err != nil {
		return err
	}
	err = r.expectRejected(state, reason)
	if s.epoch > r.epoch {
		// Clear the probe's root (§3: the device forgets it), so that
		// probes never crowd out the roots of lower epochs a later rule
		// needs: a device need keep only its 2 highest (§8.2).
		if cerr := r.cl.Publish(r.topics.Root(s.epoch), nil, true); cerr != nil && err == nil {
			err = cerr
		}
	}
	return err
}

func (r *deviceRun) rules(rep *Report) {
	probe := r.epoch // epochs of rejected tickets: each its own, so nothing is re-evaluated
	nextProbe := func() uint64 { probe++; return probe }
	rep.add(RuleFirstTicket, "§5.6 §7.3 §7.4 §8.2", func() error {
		probe = 1
		return r.deliver(ticketSpec{epoch: 1, key: r.reg}, false)
	})
	rep.add(RuleTicketBeforeRoot, "§8.2 (a ticket before its root), §5.5 (a streamed epoch)", func() error {
		// A streamed epoch: the ticket's path is in its chunk, and the
		// root comes last, as a streaming issuer publishes them.
		x, err := r.issue(ticketSpec{epoch: 2, key: r.next, prev: r.hash, chunked: true})
		if err != nil {
			return err
		}
		if err := r.cl.Publish(r.topics.Ticket(r.o.DeviceID), x.ticket, true); err != nil {
			return err
		}
		if err := r.expectNothing(); err != nil {
			return fmt.Errorf("while the root is missing: %w", err)
		}
		if err := r.cl.Publish(r.topics.Root(2), x.root, true); err != nil {
			return err
		}
		probe = 2
		return r.expectAccepted(2, x, false)
	})
	rep.add(RuleDuplicate, "§8.2 rule 4 (duplicate)", func() error {
		x, ok := r.tickets[r.epoch]
		if !ok {
			return skip("no accepted ticket")
		}
		if err := r.cl.Publish(r.topics.Ticket(r.o.DeviceID), x.ticket, true); err != nil {
			return err
		}
		return r.expectNothing()
	})
	rep.add(RuleMalformed, "§8.2 rule 1, reason 1", func() error {
		if err := r.cl.Publish(r.topics.Ticket(r.o.DeviceID), []byte{0xa1, 0x00, 0x02}, true); err != nil {
			return err
		}
		return r.expectRejected(wire.StateRejected, accept.ReasonMalformed)
	})
	rep.add(RuleUnknownKey, "§8.2 rule 1, reason 2", func() error {
		other, err := signature.GenerateKey(r.o.IssuerKey.Alg())
		if err != nil {
			return err
		}
		return r.reject(ticketSpec{epoch: nextProbe(), signer: other}, nil, wire.StateRejected, accept.ReasonUnknownIssuerKey)
	})
	rep.add(RuleBadProof, "§8.2 rule 2, reason 3", func() error {
		return r.reject(ticketSpec{epoch: nextProbe()}, func(x *issued) {
			t, _, err := wire.ParseTicket(x.ticket)
			if err != nil || len(t.Path) == 0 {
				return
			}
			t.Path[0] = bytes.Clone(t.Path[0])
			t.Path[0][0] ^= 1
			if b, err := t.Marshal(); err == nil {
				x.ticket = b
			}
		}, wire.StateRejected, accept.ReasonBadProof)
	})
	rep.add(RuleBadChunkRoots, "§5.5 §8.2 rule 2, reason 3", func() error {
		// The kit's own signature over chunk roots that do not hash to
		// the root: only the chunk check refuses it.
		return r.reject(ticketSpec{epoch: nextProbe(), chunked: true}, r.resignChunkedRoot(func(er *wire.EpochRoot) ([]byte, error) {
			er.ChunkRoots[1] = bytes.Clone(er.ChunkRoots[0])
			return er.Marshal()
		}), wire.StateRejected, accept.ReasonBadProof)
	})
	rep.add(RuleBadChunkFields, "§5.4 §8.2 rule 1, reason 1", func() error {
		// The kit's own signature over a root listing one chunk root more
		// than ceil(tree_size / 2^h): a decoding error, not a proof one.
		return r.reject(ticketSpec{epoch: nextProbe(), chunked: true}, r.resignChunkedRoot(func(er *wire.EpochRoot) ([]byte, error) {
			b := cbor.AppendMapHead(nil, 7)
			for k, v := range []uint64{er.Version, er.Epoch, er.IssuedAt, er.TreeSize} {
				b = cbor.AppendUint(cbor.AppendUint(b, uint64(k)), v)
			}
			b = cbor.AppendBytes(cbor.AppendUint(b, 4), er.Root)
			b = cbor.AppendUint(cbor.AppendUint(b, 5), er.ChunkHeight)
			roots := append(er.ChunkRoots, er.ChunkRoots[0])
			b = cbor.AppendArrayHead(cbor.AppendUint(b, 6), len(roots))
			for _, h := range roots {
				b = cbor.AppendBytes(b, h)
			}
			return b, nil
		}), wire.StateRejected, accept.ReasonMalformed)
	})
	rep.add(RuleBadSignature, "§8.2 rule 2, reason 4", func() error {
		return r.reject(ticketSpec{epoch: nextProbe()}, func(x *issued) {
			x.root = bytes.Clone(x.root)
			x.root[len(x.root)-1] ^= 1 // the signature's last byte
		}, wire.StateRejected, accept.ReasonBadSignature)
	})
	rep.add(RuleWrongAudience, "§8.2 rule 3, reason 5", func() error {
		return r.reject(ticketSpec{epoch: nextProbe(), aud: "x" + r.o.DeviceID}, nil, wire.StateRejected, accept.ReasonWrongAudience)
	})
	rep.add(RuleWrongDeviceKey, "§8.2 rule 3, reason 6", func() error {
		k, err := r.randomKey()
		if err != nil {
			return err
		}
		return r.reject(ticketSpec{epoch: nextProbe(), key: k}, nil, wire.StateRejected, accept.ReasonWrongDeviceKey)
	})
	rep.add(RuleRollback, "§8.2 rule 4, reason 7", func() error {
		if r.epoch < 2 {
			return skip("needs two accepted tickets")
		}
		// A validly signed ticket of an older epoch to a live key: only
		// the order rule refuses it.
		return r.reject(ticketSpec{epoch: r.epoch - 1, prev: make([]byte, 32)}, nil, wire.StateRejected, accept.ReasonRollback)
	})
	rep.add(RuleEquivocation, "§8.2 rule 4, state 3 reason 8", func() error {
		prev := r.tickets[r.epoch-1].it.TicketHash
		x, err := r.issue(ticketSpec{epoch: r.epoch, key: r.current, prev: prev})
		if err != nil {
			return err
		}
		if err := r.publish(r.epoch, x, false); err != nil {
			return err
		}
		err = r.expectRejected(wire.StateEquivocation, accept.ReasonEquivocation)
		// Put the genuine root back for later re-deliveries.
		if perr := r.cl.Publish(r.topics.Root(r.epoch), r.tickets[r.epoch].root, true); perr != nil && err == nil {
			err = perr
		}
		return err
	})
	rep.add(RuleNotYetValid, "§8.2 rule 5, reason 9", func() error {
		at := time.Now().Add(r.o.Skew + time.Hour)
		return r.reject(ticketSpec{epoch: nextProbe(), issuedAt: at}, nil, wire.StateRejected, accept.ReasonNotYetValid)
	})
	rep.add(RuleExpired, "§8.2 rule 5, reason 10", func() error {
		at := time.Now().Add(-r.o.Skew - 2*time.Hour)
		return r.reject(ticketSpec{epoch: nextProbe(), issuedAt: at, ttl: 60}, nil, wire.StateRejected, accept.ReasonExpired)
	})
	rep.add(RuleFastForward, "§8.2 rule 5, reason 11", func() error {
		return r.reject(ticketSpec{epoch: r.epoch + r.o.MaxJump + 1}, nil, wire.StateRejected, accept.ReasonFastForward)
	})
	rep.add(RuleGap, "§8.2 rule 6 (gap)", func() error {
		e := nextProbe() + 1 // at least one epoch missed
		probe = e
		bogus := make([]byte, 32)
		rand.Read(bogus)
		return r.deliver(ticketSpec{epoch: e, key: r.next, prev: bogus}, true)
	})
	rep.add(RuleChain, "§8.2 rule 6 (direct successor)", func() error {
		e := r.epoch + 1
		probe = e
		return r.deliver(ticketSpec{epoch: e, key: r.next, prev: r.hash}, false)
	})
	rep.add(RuleNextNotTaken, "§7.4 §8.1 (ticket to current: a fresh next key)", func() error {
		e := r.epoch + 1
		probe = e
		return r.deliver(ticketSpec{epoch: e, key: r.current, prev: r.hash}, false) // which checks next_pk is fresh
	})
	rep.add(RuleHeldReplaced, "§8.2 (a ticket before its root: only the latest delivery is held)", func() error {
		// Two streamed epochs' tickets before their roots: the second
		// delivery replaces the first, so the first's root decides
		// nothing and the second's is accepted (with a gap: the first
		// epoch is missing from the device's chain).
		e := r.epoch + 1
		a, err := r.issue(ticketSpec{epoch: e, key: r.next, prev: r.hash, chunked: true})
		if err != nil {
			return err
		}
		b, err := r.issue(ticketSpec{epoch: e + 1, key: r.next, prev: r.hash, chunked: true})
		if err != nil {
			return err
		}
		if err := r.cl.Publish(r.topics.Ticket(r.o.DeviceID), a.ticket, true); err != nil {
			return err
		}
		if err := r.cl.Publish(r.topics.Ticket(r.o.DeviceID), b.ticket, true); err != nil {
			return err
		}
		if err := r.expectNothing(); err != nil {
			return fmt.Errorf("while both roots are missing: %w", err)
		}
		if err := r.cl.Publish(r.topics.Root(e), a.root, true); err != nil {
			return err
		}
		if err := r.expectNothing(); err != nil {
			return fmt.Errorf("the root of the replaced ticket: %w", err)
		}
		probe = e + 1
		if err := r.cl.Publish(r.topics.Root(e+1), b.root, true); err != nil {
			return err
		}
		return r.expectAccepted(e+1, b, true)
	})
	rep.add(RuleGroupSeed, "§5.2 §7.7 (a cohort member's ticket is accepted)", func() error {
		e := r.epoch + 1
		probe = e
		return r.deliver(ticketSpec{epoch: e, key: r.next, prev: r.hash, cohort: "kit-cohort"}, false)
	})
	rep.add(RuleBadGroupSeed, "§7.7 §8.2 rule 7, reason 1", func() error {
		return r.reject(ticketSpec{epoch: nextProbe(), cohort: "kit-cohort", badSeal: true}, nil, wire.StateRejected, accept.ReasonMalformed)
	})
	rep.add(RuleRetiredKey, "§8.1 §8.2 rule 3 (a retired key is refused)", func() error {
		if r.retired == nil {
			return skip("no key was retired")
		}
		return r.reject(ticketSpec{epoch: nextProbe(), key: r.retired}, nil, wire.StateRejected, accept.ReasonWrongDeviceKey)
	})
	rep.add(RuleRekey, "§7.5 (device side, optional)", func() error {
		if len(r.regs) == 0 {
			return skip("the device published no re-key")
		}
		for _, b := range r.regs {
			reg, err := wire.ParseRegistration(b)
			if err != nil {
				return fmt.Errorf("a later Registration does not decode: %w", err)
			}
			if reg.Rekey == nil {
				if !bytes.Equal(reg.PublicKey, r.reg.Bytes()) {
					return errors.New("a Registration of another key without a re-key proof")
				}
				continue
			}
			x, ok := r.tickets[reg.Rekey.Epoch]
			if !ok || !bytes.Equal(x.it.TicketHash, reg.Rekey.TicketHash) || !x.it.Secrets.CheckRekey(kem.PublicKeyHash(reg.PublicKey), reg.Rekey.Tag) {
				return fmt.Errorf("re-key proof for epoch %d does not verify", reg.Rekey.Epoch)
			}
		}
		return nil
	})
	rep.add(RuleStale, "§8.2 (stale, state 4 reason 12)", func() error {
		e := nextProbe()
		gap := e != r.epoch+1
		const ttl = 60
		// Valid now, stale in about 5 s: issued_at + ttl + skew = now + 5 s.
		at := time.Now().Add(-r.o.Skew - ttl*time.Second + 5*time.Second)
		x, err := r.issue(ticketSpec{epoch: e, key: r.next, prev: r.hash, issuedAt: at, ttl: ttl})
		if err != nil {
			return err
		}
		if err := r.publish(e, x, false); err != nil {
			return err
		}
		if err := r.expectAccepted(e, x, gap); err != nil {
			return fmt.Errorf("the short-lived ticket: %w", err)
		}
		s, err := r.nextStatus(r.o.StaleWait)
		switch {
		case err != nil:
			return err
		case s == nil:
			return fmt.Errorf("no stale Status within %v of expiry", r.o.StaleWait)
		case s.State != wire.StateStale || s.Reason != uint64(accept.ReasonStale) || s.Epoch != e:
			return fmt.Errorf("state %v reason %d epoch %d, want stale 12 epoch %d", s.State, s.Reason, s.Epoch, e)
		}
		return nil
	})
}
