package conformance

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/entropykem/entropykem/internal/mqttc"
	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Account is one device account on the broker.
type Account struct {
	ID       string
	Password string
}

// IssuerOptions configure RunIssuer.
type IssuerOptions struct {
	// Broker: URL, prefix and TLS; Username and Password are unused (each
	// played device connects with its own Account).
	Broker Broker
	// Devices are at least three device accounts the issuer under test has
	// never seen (a fresh store for these ids).
	Devices []Account
	// IssuerKeys are the issuer's public keys, as a device pins them.
	IssuerKeys *signature.KeySet
	// KEM of the played devices (default ML-KEM-768; must be allowed by the
	// issuer, as must ML-KEM-1024 be refused or allowed — either way a
	// next_alg change is refused).
	KEM kem.ID
	// Timing.Status bounds the wait for each next ticket: set it to a few
	// issuing periods (default 10 s; run the issuer with a short period).
	Timing Timing
	Logger *slog.Logger
	// Cohort, if set, is the cohort the operator made every played device
	// a member of before the run (the ids enrolled, then
	// "ekem-issuer cohort ID COHORT"): RuleIssuerGroupKey then checks
	// PROTOCOL.md §7.7 on every ticket. Empty skips that rule.
	Cohort string
}

// Issuer rule names, in the order RunIssuer runs them.
const (
	RuleIssuerFirst       = "first ticket to the registered key"
	RuleIssuerOnline      = "online and epoch info"
	RuleIssuerNextKey     = "verified next key used"
	RuleIssuerBadConfirm  = "refused Status: bad confirm"
	RuleIssuerNextAlg     = "refused Status: next_alg"
	RuleIssuerResume      = "rotation resumes"
	RuleIssuerRekeyFirst  = "re-key before Status"
	RuleIssuerStatusFirst = "Status before re-key"
	RuleIssuerUnprovenKey = "key change without proof"
	RuleIssuerHostile     = "hostile input"
	RuleIssuerChain       = "prev chains tickets"
	RuleIssuerGroupKey    = "cohort group seed"
	RuleIssuerStreamed    = "streamed epoch"
	minIssuerModeDevices  = 3
	defaultIssuerModeKEM  = kem.MLKEM768
)

type kitDevice struct {
	run     *issuerRun
	id      string
	cl      *mqttc.Client
	st      *accept.State
	reg     []byte
	seq     uint64
	roots   map[uint64][]byte
	ticket  []byte // the latest ticket not yet accepted
	epoch   uint64
	hash    []byte
	res     *accept.Result
	used    []byte // pk_hash of the last accepted ticket
	info    *wire.EpochInfo
	online  *wire.Online
	chain   []string // violations of §5.2's prev
	infoErr error
	// groups are the group keys derived from the accepted tickets, by
	// epoch; cohortErrs what §7.7 violations the tickets showed.
	groups     map[uint64][]byte
	cohortErrs []string
	// streamed counts the accepted tickets of streamed epochs (a root
	// with chunk fields, PROTOCOL.md §5.4, §5.5): Accept checked each
	// path in its chunk and the chunk roots against the root.
	streamed int
}

type issuerRun struct {
	o      IssuerOptions
	ctx    context.Context
	topics wire.Topics
	log    *slog.Logger
	coh    cohort.Secret
	devs   []*kitDevice
}

// RunIssuer runs every issuer rule against the issuer under test.
func RunIssuer(ctx context.Context, o IssuerOptions) (*Report, error) {
	if len(o.Devices) < minIssuerModeDevices {
		return nil, fmt.Errorf("conformance: issuer mode needs %d device accounts, got %d", minIssuerModeDevices, len(o.Devices))
	}
	if o.IssuerKeys == nil || o.IssuerKeys.Len() == 0 {
		return nil, errors.New("conformance: issuer mode needs the issuer's public key")
	}
	if o.KEM == 0 {
		o.KEM = defaultIssuerModeKEM
	}
	o.Timing = o.Timing.withDefaults()
	tp, err := topicsOf(o.Broker.Prefix)
	if err != nil {
		return nil, fmt.Errorf("conformance: %w", err)
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	coh, err := cohort.NewSoftware(secret)
	if err != nil {
		return nil, err
	}
	r := &issuerRun{o: o, ctx: ctx, topics: tp, log: quietLogger(o.Logger), coh: coh}
	for _, a := range o.Devices[:minIssuerModeDevices] {
		d, err := r.connect(a)
		if err != nil {
			return nil, err
		}
		defer d.cl.Close()
		r.devs = append(r.devs, d)
	}
	rep := &Report{Mode: "issuer"}
	r.rules(rep)
	return rep, nil
}

func (r *issuerRun) connect(a Account) (*kitDevice, error) {
	if err := wire.ValidateDeviceID(a.ID); err != nil {
		return nil, fmt.Errorf("conformance: %w", err)
	}
	sch, err := kem.Lookup(r.o.KEM)
	if err != nil {
		return nil, fmt.Errorf("conformance: %w", err)
	}
	k, err := sch.GenerateKey()
	if err != nil {
		return nil, err
	}
	st, err := accept.NewState(a.ID, k)
	if err != nil {
		return nil, err
	}
	b := r.o.Broker
	b.Username, b.Password = a.ID, a.Password
	cl, err := dial(r.ctx, b, a.ID, r.log)
	if err != nil {
		return nil, fmt.Errorf("conformance: device %s: %w", a.ID, err)
	}
	d := &kitDevice{run: r, id: a.ID, cl: cl, st: st, roots: map[uint64][]byte{}}
	for _, f := range []string{r.topics.Ticket(a.ID), r.topics.AllRoots(), r.topics.Epoch(), r.topics.Online()} {
		if err := cl.Subscribe(f); err != nil {
			cl.Close()
			return nil, fmt.Errorf("conformance: device %s: subscribe %s: %w", a.ID, f, err)
		}
	}
	return d, nil
}

func (d *kitDevice) register(mod func(*wire.Registration)) error {
	pk := d.st.Current.PublicKey()
	reg := &wire.Registration{Version: 1, DeviceID: d.id, KEMAlg: pk.Scheme().ID(), PublicKey: pk.Bytes(), CreatedAt: uint64(time.Now().Unix())}
	if mod != nil {
		mod(reg)
	}
	b, err := reg.Marshal()
	if err != nil {
		return err
	}
	d.reg = b
	return d.cl.Publish(d.run.topics.Registration(d.id), b, true)
}

// got is a ticket with its root.
type got struct {
	ticket, root []byte
	body         *wire.TicketBody
}

// next waits for a ticket of an epoch after the last accepted one whose
// root has arrived.
func (d *kitDevice) next() (*got, error) {
	timeout := time.After(d.run.o.Timing.Status)
	for {
		// Take in everything queued first: the latest ticket is the one
		// that counts (an older one would make the kit lag behind).
		for d.cl.Inbox().Len() > 0 {
			m, err := d.read(timeout)
			if err != nil {
				return nil, err
			}
			d.take(m)
		}
		if d.ticket != nil {
			if _, body, err := wire.ParseTicket(d.ticket); err == nil && body.Epoch > d.epoch {
				if root, ok := d.roots[body.Epoch]; ok {
					g := &got{ticket: d.ticket, root: root, body: body}
					d.ticket = nil
					return g, nil
				}
			}
		}
		m, err := d.read(timeout)
		if err != nil {
			return nil, err
		}
		d.take(m)
	}
}

// take records one received message.
func (d *kitDevice) take(m mqttc.Message) {
	{
		tp := d.run.topics
		switch {
		case m.Topic == tp.Ticket(d.id):
			if len(m.Payload) > 0 {
				d.ticket = m.Payload
			}
		case m.Topic == tp.Epoch():
			if len(m.Payload) > 0 {
				d.info, d.infoErr = wire.ParseEpochInfo(m.Payload)
			}
		case m.Topic == tp.Online():
			if len(m.Payload) > 0 {
				if o, err := wire.ParseOnline(m.Payload); err == nil {
					d.online = o
				} else {
					d.infoErr = err
				}
			}
		default:
			if e, err := tp.EpochOf(m.Topic); err == nil && len(m.Payload) > 0 {
				d.roots[e] = m.Payload
				for k := range d.roots {
					if k+16 < e {
						delete(d.roots, k)
					}
				}
			}
		}
	}
}

func (d *kitDevice) read(timeout <-chan time.Time) (mqttc.Message, error) {
	ctx, cancel := context.WithCancel(d.run.ctx)
	defer cancel()
	go func() {
		select {
		case <-timeout:
			cancel()
		case <-ctx.Done():
		}
	}()
	m, ok := d.cl.Inbox().Next(ctx)
	if !ok {
		if d.run.ctx.Err() != nil {
			return m, d.run.ctx.Err()
		}
		return m, fmt.Errorf("device %s: no new ticket within %v", d.id, d.run.o.Timing.Status)
	}
	return m, nil
}

// accept runs the device acceptance rules (the issuer's ticket must pass
// them all) with extra as an additional live key (a re-keyed one).
func (d *kitDevice) accept(g *got, extra kem.PrivateKey) (*accept.Result, error) {
	st := d.st
	if extra != nil && bytes.Equal(extra.PublicKey().Hash(), g.body.PKHash) {
		st = st.Clone()
		st.Next = extra
	}
	res, err := accept.Accept(st, accept.Input{Ticket: g.ticket, Root: g.root, Pins: d.run.o.IssuerKeys, Now: time.Now(),
		Policy: accept.Policy{Skew: 30 * time.Second}, Cohort: d.run.coh})
	if err != nil {
		return nil, fmt.Errorf("device %s: the issuer's ticket of epoch %d fails acceptance: %w", d.id, g.body.Epoch, err)
	}
	if d.hash != nil && g.body.Epoch == d.epoch+1 && !bytes.Equal(g.body.Prev, d.hash) {
		d.chain = append(d.chain, fmt.Sprintf("%s epoch %d: prev is not epoch %d's ticket_hash", d.id, g.body.Epoch, d.epoch))
	}
	if d.hash == nil && !bytes.Equal(g.body.Prev, make([]byte, 32)) {
		d.chain = append(d.chain, fmt.Sprintf("%s epoch %d: first ticket's prev is not zero", d.id, g.body.Epoch))
	}
	d.st, d.epoch, d.hash, d.res, d.used = res.State, g.body.Epoch, res.TicketHash, res, g.body.PKHash
	if p, err := signature.ParseSign1(g.root); err == nil {
		if er, err := wire.ParseEpochRoot(p.Payload); err == nil && er.Chunked() {
			d.streamed++
		}
	}
	if want := d.run.o.Cohort; want != "" {
		switch {
		case g.body.Cohort != want || res.State.Group == nil:
			d.cohortErrs = append(d.cohortErrs, fmt.Sprintf("%s epoch %d: cohort %q, want %q with a group seed", d.id, g.body.Epoch, g.body.Cohort, want))
		default:
			k, _ := res.State.Group.KeyOf(g.body.Epoch)
			if d.groups == nil {
				d.groups = map[uint64][]byte{}
			}
			d.groups[g.body.Epoch] = bytes.Clone(k)
		}
	}
	return res, nil
}

// status publishes the Status reporting the last accepted ticket.
func (d *kitDevice) status(mod func(*wire.Status)) error {
	r := d.res
	d.seq++
	s := &wire.Status{Version: 1, DeviceID: d.id, Epoch: d.epoch, State: wire.StateOK, Time: uint64(time.Now().Unix()), Seq: d.seq,
		TicketHash: r.TicketHash, Confirm: r.Secrets.Confirm(), NextAlg: r.State.Next.Scheme().ID(),
		NextPK: r.State.Next.PublicKey().Bytes(), NextTag: r.NextTag}
	if r.Gap {
		p := r.PrevEpoch
		s.State, s.PrevEpoch = wire.StateGap, &p
	}
	if mod != nil {
		mod(s)
	}
	b, err := s.Marshal()
	if err != nil {
		return err
	}
	return d.cl.Publish(d.run.topics.Status(d.id), b, true)
}

// nextAccepted waits for and accepts the next ticket.
func (d *kitDevice) nextAccepted(extra kem.PrivateKey) (*got, error) {
	g, err := d.next()
	if err != nil {
		return nil, err
	}
	_, err = d.accept(g, extra)
	return g, err
}

// expectKey waits for the next ticket and checks it is to want (a pk_hash).
// With announced set, want is the next key of the Status just sent: if
// the ticket is to the key the previous ticket used instead, the issuer
// may have issued before the Status arrived, so the device reports the new
// ticket and expects its next key once more.
func (d *kitDevice) expectKey(want []byte, what string, announced bool, extra kem.PrivateKey) error {
	prevUsed := d.used
	for try := 0; ; try++ {
		g, err := d.nextAccepted(extra)
		if err != nil {
			return err
		}
		switch {
		case bytes.Equal(g.body.PKHash, want):
			return nil
		case announced && bytes.Equal(g.body.PKHash, prevUsed) && try < 2:
			if err := d.status(nil); err != nil {
				return err
			}
			want, prevUsed = d.res.State.Next.PublicKey().Hash(), d.used
			continue
		}
		return fmt.Errorf("epoch %d is encapsulated to %x, want %s %x", g.body.Epoch, g.body.PKHash[:8], what, want[:8])
	}
}

// waitInfo waits until EpochInfo and Online have arrived.
func (d *kitDevice) waitInfo() error {
	timeout := time.After(d.run.o.Timing.Status)
	for d.info == nil || d.online == nil || d.info.Epoch < d.epoch {
		m, err := d.read(timeout)
		if err != nil {
			return fmt.Errorf("no Online, or no EpochInfo of epoch %d or later, within %v", d.epoch, d.run.o.Timing.Status)
		}
		d.take(m)
	}
	return nil
}

func (r *issuerRun) rules(rep *Report) {
	a, b, c := r.devs[0], r.devs[1], r.devs[2]
	ok := true
	rep.add(RuleIssuerFirst, "§5.1 §6 §10 (pin on first use)", func() error {
		for _, d := range r.devs {
			if err := d.register(nil); err != nil {
				return err
			}
		}
		for _, d := range r.devs {
			reg := d.st.Current.PublicKey().Hash()
			g, err := d.nextAccepted(nil)
			if err != nil {
				ok = false
				return err
			}
			if !bytes.Equal(g.body.PKHash, reg) {
				ok = false
				return fmt.Errorf("%s: first ticket not to the registered key", d.id)
			}
		}
		return nil
	})
	if !ok {
		return // nothing else can work
	}
	rep.add(RuleIssuerOnline, "§3.1 §5.7", func() error {
		if err := a.waitInfo(); err != nil {
			return err
		}
		switch {
		case a.infoErr != nil:
			return a.infoErr
		case a.online == nil || !a.online.Online:
			return errors.New("no Online with online = true on {prefix}/issuer/online")
		case a.info == nil:
			return errors.New("no EpochInfo on {prefix}/epoch")
		case a.info.Epoch < a.epoch:
			return fmt.Errorf("EpochInfo says epoch %d, a ticket of epoch %d arrived", a.info.Epoch, a.epoch)
		}
		return nil
	})
	rep.add(RuleIssuerNextKey, "§6 step 1 §7.4", func() error {
		if err := a.status(nil); err != nil {
			return err
		}
		return a.expectKey(a.res.State.Next.PublicKey().Hash(), "the announced next key", true, nil)
	})
	rep.add(RuleIssuerBadConfirm, "§7.3 §10 (refused: key of the previous ticket)", func() error {
		if err := b.status(func(s *wire.Status) { s.Confirm = flip(s.Confirm) }); err != nil {
			return err
		}
		// Twice: the first ticket may have been issued before the Status
		// arrived; the second was issued after.
		used := b.used
		if err := b.expectKey(used, "the key the previous ticket used", false, nil); err != nil {
			return err
		}
		return b.expectKey(used, "the key the previous ticket used", false, nil)
	})
	rep.add(RuleIssuerNextAlg, "§7.4 §10 (next_alg = ticket kem_alg)", func() error {
		other := kem.MLKEM1024
		if r.o.KEM == kem.MLKEM1024 {
			other = kem.MLKEM768
		}
		sch, _ := kem.Lookup(other)
		k, err := sch.GenerateKey()
		if err != nil {
			return err
		}
		pk := k.PublicKey().Bytes()
		sec := c.res.Secrets
		if err := c.status(func(s *wire.Status) {
			s.NextAlg, s.NextPK, s.NextTag = other, pk, sec.NextKeyTag(kem.PublicKeyHash(pk))
		}); err != nil {
			return err
		}
		used := c.used
		if err := c.expectKey(used, "the key the previous ticket used", false, nil); err != nil {
			return err
		}
		return c.expectKey(used, "the key the previous ticket used", false, nil)
	})
	rep.add(RuleIssuerResume, "§8.1 (a fresh next key is taken)", func() error {
		if err := c.status(nil); err != nil {
			return err
		}
		return c.expectKey(c.res.State.Next.PublicKey().Hash(), "the fresh next key", true, nil)
	})
	rekey := func(d *kitDevice, statusFirst bool) error {
		var last error
		for try := 0; try < 2; try++ {
			if try > 0 {
				if _, err := d.nextAccepted(nil); err != nil {
					return err
				}
			}
			sch, _ := kem.Lookup(r.o.KEM)
			k, err := sch.GenerateKey()
			if err != nil {
				return err
			}
			res := d.res
			send := []func() error{
				func() error { return d.status(nil) },
				func() error {
					return d.register(func(reg *wire.Registration) {
						reg.PublicKey = k.PublicKey().Bytes()
						reg.Rekey = &wire.RekeyProof{Epoch: d.epoch, TicketHash: res.TicketHash, Tag: res.Secrets.RekeyTag(k.PublicKey().Hash())}
					})
				},
			}
			if !statusFirst {
				send[0], send[1] = send[1], send[0]
			}
			for _, f := range send {
				if err := f(); err != nil {
					return err
				}
			}
			if last = d.expectKey(k.PublicKey().Hash(), "the re-keyed key", false, k); last == nil {
				return nil
			}
		}
		return last
	}
	rep.add(RuleIssuerRekeyFirst, "§7.5 (either topic order)", func() error { return rekey(a, false) })
	rep.add(RuleIssuerStatusFirst, "§7.5 (either topic order)", func() error { return rekey(b, true) })
	rep.add(RuleIssuerUnprovenKey, "§7.5 §10 (refused without proof)", func() error {
		sch, _ := kem.Lookup(r.o.KEM)
		k, err := sch.GenerateKey()
		if err != nil {
			return err
		}
		orig := c.reg
		if err := c.register(func(reg *wire.Registration) { reg.PublicKey = k.PublicKey().Bytes() }); err != nil {
			return err
		}
		g, err := c.nextAccepted(nil)
		// Put the genuine registration back.
		c.reg = orig
		if perr := c.cl.Publish(r.topics.Registration(c.id), orig, true); perr != nil && err == nil {
			err = perr
		}
		if err != nil {
			return err
		}
		if bytes.Equal(g.body.PKHash, k.PublicKey().Hash()) {
			return errors.New("the issuer took a new key without a re-key proof")
		}
		return nil
	})
	rep.add(RuleIssuerHostile, "§4 §10 (refused, issuer keeps going)", func() error {
		regT, stT := r.topics.Registration(a.id), r.topics.Status(a.id)
		claimB, err := (&wire.Registration{Version: 1, DeviceID: b.id, KEMAlg: r.o.KEM, PublicKey: a.st.Next.PublicKey().Bytes(), CreatedAt: 1}).Marshal()
		if err != nil {
			return err
		}
		hostile := [][2][]byte{
			{[]byte(regT), {0xa1, 0x00, 0x01}},
			{[]byte(regT), make([]byte, wire.MaxRegistration+1)},
			{[]byte(regT), claimB},
			{[]byte(stT), {0xff, 0xff}},
			{[]byte(stT), append(bytes.Clone(a.reg), 0)},
		}
		for _, h := range hostile {
			if err := a.cl.Publish(string(h[0]), h[1], true); err != nil {
				return err
			}
		}
		// Put a's genuine registration back, then check a and b still get
		// good tickets to their expected keys.
		if err := a.cl.Publish(regT, a.reg, true); err != nil {
			return err
		}
		if err := a.status(nil); err != nil {
			return err
		}
		if err := a.expectKey(a.res.State.Next.PublicKey().Hash(), "the announced next key", true, nil); err != nil {
			return err
		}
		_, err = b.nextAccepted(nil)
		return err
	})
	rep.add(RuleIssuerGroupKey, "§7.7 (one group seed per cohort and epoch, sealed for each member)", func() error {
		if r.o.Cohort == "" {
			return skip("no cohort given (-cohort): make the played ids members and name it")
		}
		var errs []string
		byEpoch := map[uint64][]byte{}
		byKey := map[string]uint64{}
		shared := 0
		for _, d := range r.devs {
			errs = append(errs, d.cohortErrs...)
			for e, k := range d.groups {
				if prev, ok := byEpoch[e]; ok {
					shared++
					if !bytes.Equal(prev, k) {
						errs = append(errs, fmt.Sprintf("epoch %d: members derived different group keys (the seeds differ)", e))
					}
					continue
				}
				if e2, ok := byKey[string(k)]; ok {
					errs = append(errs, fmt.Sprintf("epochs %d and %d: the same group key (a seed reused)", e, e2))
				}
				byEpoch[e], byKey[string(k)] = k, e
			}
		}
		if len(errs) > 0 {
			return fmt.Errorf("%s", strings.Join(errs, "; "))
		}
		if shared == 0 {
			return errors.New("no epoch in which two played devices got a ticket: nothing to compare")
		}
		return nil
	})
	rep.add(RuleIssuerStreamed, "§5.4 §5.5 (tickets prove inclusion in their chunk)", func() error {
		n := 0
		for _, d := range r.devs {
			n += d.streamed
		}
		if n == 0 {
			return skip("no streamed epoch seen: run the issuer with chunks smaller than the played devices (ekem-issuer -chunk-leaves 2)")
		}
		return nil // every ticket counted passed Accept, chunk proof and chunk roots included
	})
	rep.add(RuleIssuerChain, "§5.2 (prev)", func() error {
		var all []string
		for _, d := range r.devs {
			all = append(all, d.chain...)
		}
		if len(all) > 0 {
			return fmt.Errorf("%v", all)
		}
		return nil
	})
}

func flip(b []byte) []byte {
	c := bytes.Clone(b)
	c[0] ^= 1
	return c
}
