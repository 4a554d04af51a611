package issuer

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// chosenKey is the key an epoch encapsulates to for one device.
type chosenKey struct {
	alg kem.ID
	raw []byte
}

// selectKey applies schema/PROTOCOL.md §6 step 1: the verified next key for
// the latest ticket, else the key the latest ticket used, else the
// registered key. ok is false for a device that gets no ticket.
func selectKey(r *record) (chosenKey, bool) {
	switch {
	case r.State != stateActive || r.RegKey == nil:
		return chosenKey{}, false
	case r.NextKey != nil:
		return chosenKey{r.NextAlg, r.NextKey}, true
	case r.Key != nil:
		return chosenKey{r.KeyAlg, r.Key}, true
	default:
		return chosenKey{r.RegAlg, r.RegKey}, true
	}
}

// epochConflictTries bounds the plans of one epoch that ErrEpochConflict
// refuses.
const epochConflictTries = 3

// plan is what one epoch issues, read from the store.
type plan struct {
	epoch   uint64
	signer  *signature.PrivateKey // the key the stored rotations require for epoch
	devices []batch.Device
	keys    map[string]chosenKey
	records map[string]*record
}

// IssueEpoch issues one epoch now: epoch = last issued + 1 (persisted, so
// it never repeats across restarts or clock changes; the wall clock only
// sets issued_at). Tickets go to every active device with a pinned key.
// Everything is persisted in one store transaction before anything is
// published; then the root, every ticket and the EpochInfo are published
// retained at QoS 1.
//
// With no device to issue to, it returns 0 and ErrNoDevices and uses no
// epoch number. Before Start nothing is published (Start republishes from
// the store). If some publishes fail, it returns the epoch and an error
// wrapping ErrPublish: the epoch stands and is republished after the next
// reconnection.
func (i *Issuer) IssueEpoch(ctx context.Context) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("issuer: issue epoch: %w", err)
	}
	if i.ctx.Err() != nil {
		return 0, ErrClosed
	}
	start := time.Now()
	msgs, e, n, err := i.issueAndPersist()
	for try := 1; errors.Is(err, ErrEpochConflict) && try < epochConflictTries; try++ {
		// An operator changed a device of the plan (a shared store):
		// nothing was committed, so planning again is safe.
		i.log.Info("epoch planned again: a device record changed meanwhile", "err", err)
		msgs, e, n, err = i.issueAndPersist()
	}
	if err != nil {
		return 0, err
	}
	i.count("epochs", 1)
	i.count("tickets_issued", uint64(n))
	i.setEpochDuration(time.Since(start))
	i.log.Info("epoch issued and persisted", "epoch", e, "tickets", n)
	i.notify()
	if i.client.Load() == nil {
		return e, nil
	}
	i.pubMu.Lock()
	failed := i.publishAll(msgs)
	i.pubMu.Unlock()
	if failed > 0 {
		return e, fmt.Errorf("%w: %d of %d messages of epoch %d (it is persisted and will be republished)", ErrPublish, failed, len(msgs), e)
	}
	return e, nil
}

// issueAndPersist builds, signs and persists one epoch under i.mu, and
// returns the messages to publish.
func (i *Issuer) issueAndPersist() ([]pubMsg, uint64, int, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	p, err := i.plan()
	if err != nil {
		return nil, 0, 0, err
	}
	now := i.cfg.Now()
	issuedAt := unixSeconds(now)
	ttl := uint64(i.cfg.TTL / time.Second)
	ep, err := batch.Issue(p.signer, batch.Params{Epoch: p.epoch, IssuedAt: issuedAt, TTL: ttl}, p.devices)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("issuer: epoch %d: %w", p.epoch, err)
	}
	periodS := max(uint64(i.cfg.Period/time.Second), 1)
	info := &wire.EpochInfo{Version: wire.Version, Epoch: p.epoch, IssuedAt: issuedAt, PeriodS: periodS,
		NextAt: min(issuedAt+periodS, wire.MaxTime)}
	infoBytes, err := info.Marshal()
	if err != nil {
		return nil, 0, 0, fmt.Errorf("issuer: epoch %d: %w", p.epoch, err)
	}
	recs := make([]*record, len(ep.Tickets))
	for n, t := range ep.Tickets {
		r := p.records[t.DeviceID]
		k := p.keys[t.DeviceID]
		r.Epoch, r.Ticket, r.TicketHash = p.epoch, t.Ticket, t.TicketHash
		r.KeyAlg, r.Key = k.alg, k.raw
		r.setTicketSecrets(t.Secrets)
		r.NextAlg, r.NextKey = 0, nil
		recs[n] = r
	}
	cleared, err := i.store.CommitEpoch(&EpochCommit{Prev: p.epoch - 1, Epoch: p.epoch, Records: recs,
		Root: ep.Root, Info: infoBytes, KeepRoots: i.cfg.KeepRoots, Token: i.leaseToken()})
	if err != nil {
		i.count("store_failures", 1)
		return nil, 0, 0, fmt.Errorf("issuer: persist epoch %d (nothing was published): %w", p.epoch, err)
	}
	i.committed.Store(p.epoch)
	msgs := make([]pubMsg, 0, len(ep.Tickets)+2+len(cleared))
	msgs = append(msgs, pubMsg{topic: i.topics.Root(p.epoch), payload: ep.Root})
	for _, t := range ep.Tickets {
		msgs = append(msgs, pubMsg{topic: i.topics.Ticket(t.DeviceID), payload: t.Ticket})
	}
	msgs = append(msgs, pubMsg{topic: i.topics.Epoch(), payload: infoBytes})
	if i.lease.Load() != nil {
		// An instance of a cluster: a deposed leader's MQTT will (Online
		// false) can arrive after this leader announced itself; each
		// epoch says again that the issuer is online.
		if b, err := i.online(true); err == nil {
			msgs = append(msgs, pubMsg{topic: i.topics.Online(), payload: b})
		}
	}
	for _, e := range cleared {
		msgs = append(msgs, pubMsg{topic: i.topics.Root(e)}) // empty retained: clears the topic
	}
	return msgs, p.epoch, len(ep.Tickets), nil
}

// plan reads the next epoch number, picks the key that signs it (an
// error wrapping ErrSigningKey if it is not configured), and reads every
// device to issue to. The keys are parsed (and so validated, FIPS 203
// §7.2) once per epoch, in parallel on every CPU and outside the store
// transaction; parsing is about as costly as the encapsulation itself.
func (i *Issuer) plan() (*plan, error) {
	p := &plan{keys: map[string]chosenKey{}, records: map[string]*record{}}
	var recs []*record
	err := i.store.View(func(tx ReadTx) error {
		last, err := tx.LastEpoch()
		if err != nil {
			return err
		}
		if last >= wire.MaxEpoch {
			return fmt.Errorf("issuer: epoch space exhausted at %d", last)
		}
		if hw := i.committed.Load(); last < hw {
			// The store went back under the running issuer (a database
			// restored in place): issuing would reuse an epoch number.
			i.count("store_behind", 1)
			return fmt.Errorf("%w: the store %s ends at epoch %d, but this issuer committed epoch %d: it was restored or replaced while the issuer ran "+
				"(hint: stop every issuer, then run 'ekem-issuer recover'; README \"Backups and recovery\")", ErrStoreBehind, i.store.Name(), last, hw)
		}
		p.epoch = last + 1
		var kid []byte
		if p.signer, kid, err = signerFor(i.cfg, i.chain, p.epoch); err != nil {
			// Never a fallback to another key: devices trust exactly the
			// key the announcements name for this epoch.
			i.count("signing_key_missing", 1)
			i.log.Error("epoch refused: its signing key is not configured", "reason", "signing_key_missing",
				"epoch", p.epoch, "kid", fmt.Sprintf("%x", kid))
			return err
		}
		return tx.Devices(func(r *record) error {
			if k, ok := selectKey(r); ok {
				recs = append(recs, r)
				p.keys[r.ID] = k
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	parsed, errs := i.parseKeys(recs, p.keys)
	p.devices = make([]batch.Device, 0, len(recs))
	for n, r := range recs {
		if errs[n] != nil {
			i.count("store_bad_key", 1)
			i.log.Error("stored device key is invalid; device skipped", "reason", "store_bad_key", "device", r.ID, "err", errs[n])
			delete(p.keys, r.ID)
			continue
		}
		p.devices = append(p.devices, batch.Device{ID: r.ID, Key: parsed[n], Prev: r.TicketHash,
			Purpose: i.cfg.Purpose, Group: i.cfg.Group, Cohort: r.Cohort})
		p.records[r.ID] = r
	}
	if len(p.devices) == 0 {
		return nil, ErrNoDevices
	}
	if err := withGroupSeeds(p.devices); err != nil {
		return nil, err
	}
	return p, nil
}

// parallel calls fn(0..n-1), spreading the calls over GOMAXPROCS
// goroutines, and returns when all are done.
func parallel(n int, fn func(int)) {
	workers := min(runtime.GOMAXPROCS(0), n)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for k := w; k < n; k += workers {
				fn(k)
			}
		})
	}
	wg.Wait()
}

// parseKeys parses each record's chosen key, spreading the records over
// the CPUs. errs[n] is set for a key that does not parse.
func (i *Issuer) parseKeys(recs []*record, keys map[string]chosenKey) ([]kem.PublicKey, []error) {
	parsed := make([]kem.PublicKey, len(recs))
	errs := make([]error, len(recs))
	chosen := make([]chosenKey, len(recs))
	for n, r := range recs {
		chosen[n] = keys[r.ID]
	}
	parallel(len(recs), func(n int) {
		sch, err := kem.Lookup(chosen[n].alg)
		if err == nil {
			parsed[n], err = sch.ParsePublicKey(chosen[n].raw)
		}
		errs[n] = err
	})
	return parsed, errs
}

// Run starts the issuer and issues an epoch every Period until ctx ends;
// it then returns nil (Close is the caller's). The first epoch after a
// restart is due one Period after the last one's issued_at (at once if that
// is past; never later than one Period, even if the clock went backwards).
// When an epoch finds no device, the next attempt comes after at most 10 s,
// so the first devices of a new fleet do not wait a whole Period.
func (i *Issuer) Run(ctx context.Context) error {
	if err := i.Start(ctx); err != nil {
		return err
	}
	var info *wire.EpochInfo
	err := i.store.View(func(tx ReadTx) (err error) {
		_, info, err = lastEpochInfo(tx)
		return err
	})
	if err != nil {
		return err
	}
	var wait time.Duration // a new store: the first epoch at once
	if info != nil {
		due := time.Unix(int64(info.IssuedAt), 0).Add(i.cfg.Period)
		wait = min(max(due.Sub(i.cfg.Now()), 0), i.cfg.Period)
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-i.ctx.Done():
			return ErrClosed
		case <-t.C:
		}
		next := i.cfg.Period
		e, err := i.IssueEpoch(ctx)
		switch {
		case err == nil:
		case errors.Is(err, ErrNoDevices):
			i.log.Info("no device to issue to yet", "epoch_skipped", true)
			next = min(next, 10*time.Second)
		case e > 0:
			i.log.Warn("epoch issued but not fully published", "epoch", e, "err", err)
		case errors.Is(err, ErrSigningKey):
			i.count("issue_failures", 1) // logged with its reason by plan
		default:
			i.log.Error("epoch issuance failed", "reason", "issue_failed", "err", err)
			i.count("issue_failures", 1)
		}
		t.Reset(next)
	}
}

// Period is the configured epoch period.
func (i *Issuer) Period() time.Duration { return i.cfg.Period }
