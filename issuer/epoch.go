package issuer

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"slices"
	"strings"
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

// ErrEpochAbandoned is wrapped by IssueEpoch's error for an epoch begun
// (its number persisted as used, some tickets perhaps published) but not
// finished: its root was never persisted nor signed, so it is never
// completed; the next epoch is a higher number (schema/PROTOCOL.md §6).
var ErrEpochAbandoned = errors.New("issuer: epoch abandoned before its root")

// planned is one device an epoch issues to, as the plan read it.
type planned struct {
	id  string
	rev uint64 // the record's revision in a shared store (record.rev), else 0
}

// plan is what one epoch issues, read from the store: the devices in leaf
// order (ids ascending), without their records, which each chunk reads
// again when it is built, so that an epoch never holds every record.
type plan struct {
	epoch   uint64
	signer  *signature.PrivateKey // the key the stored rotations require for epoch
	devices []planned
}

// builtChunk is one chunk of a streamed epoch on its way to the store and
// the broker: its tickets and the device records that hold them.
type builtChunk struct {
	chunk *batch.Chunk
	recs  []*record
}

// IssueEpoch issues one epoch now: epoch = last issued + 1 (persisted, so
// it never repeats across restarts or clock changes; the wall clock only
// sets issued_at). Tickets go to every active device with a pinned key.
//
// The epoch is streamed (schema/PROTOCOL.md §5.5, §6): its number is
// persisted as used first; then chunk by chunk the keys are parsed and
// encapsulated to, the chunk's records persisted and its tickets
// published, with the next chunk built meanwhile; after the last chunk
// the root is signed, persisted and published, then the EpochInfo, all
// retained at QoS 1. An epoch of at most Config.ChunkLeaves devices is one
// chunk. Crypto, persistence and publishing overlap, and the epoch holds
// no more than a few chunks of tickets and parsed keys at a time.
//
// With no device to issue to, it returns 0 and ErrNoDevices and uses no
// epoch number. A failure after the number was persisted abandons the
// epoch (0 and an error wrapping ErrEpochAbandoned): it is never finished
// and the next one is higher. Before Start nothing is published (Start
// republishes from the store). If some publishes fail, it returns the
// epoch and an error wrapping ErrPublish: the epoch stands and is
// republished after the next reconnection.
func (i *Issuer) IssueEpoch(ctx context.Context) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("issuer: issue epoch: %w", err)
	}
	if i.isClosed() {
		return 0, ErrClosed
	}
	start := time.Now()
	i.mu.Lock()
	e, n, msgs, failed, err := i.streamEpoch(ctx)
	i.mu.Unlock()
	if e == 0 {
		return 0, err
	}
	i.count(cEpochs, 1)
	i.count(cTicketsIssued, uint64(n))
	i.setEpochDuration(time.Since(start))
	i.notify()
	if failed > 0 {
		return e, fmt.Errorf("%w: %d of %d messages of epoch %d (it is persisted and will be republished)", ErrPublish, failed, msgs, e)
	}
	return e, err
}

// streamEpoch plans, begins, streams and finishes one epoch under i.mu. It
// returns the epoch (0 if none was finished), its tickets, how many
// messages it published and how many of them failed.
func (i *Issuer) streamEpoch(ctx context.Context) (e uint64, tickets, msgs, failed int, err error) {
	p, err := i.plan()
	if err != nil {
		return 0, 0, 0, 0, err
	}
	e, size := p.epoch, uint64(len(p.devices))
	height := batch.ChunkHeight(size, uint64(bits.TrailingZeros(uint(i.cfg.ChunkLeaves))))
	chunks := uint64(1)
	if height != batch.OneChunk {
		chunks = wire.ChunkCount(size, height)
	}
	now := i.cfg.Now()
	params := batch.Params{Epoch: e, IssuedAt: unixSeconds(now), TTL: uint64(i.cfg.TTL / time.Second)}
	if _, err := i.store.CommitEpoch(&EpochCommit{Stage: StageBegin, Prev: e - 1, Epoch: e, Token: i.leaseToken()}); err != nil {
		i.count(cStoreFailures, 1)
		return 0, 0, 0, 0, fmt.Errorf("issuer: begin epoch %d (nothing was published): %w", e, err)
	}
	i.committed.Store(e)
	i.log.Info("epoch begun", "epoch", e, "tickets", size, "chunks", chunks)

	// Three stages, each on its own goroutine, linked by channels of one
	// chunk: build (parse keys, encapsulate, prove: every CPU), persist,
	// publish. An error stops the building; what was persisted is still
	// published (the broker then matches the store).
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	built := make(chan builtChunk, 1)
	var buildErr error
	go func() {
		defer close(built)
		seeds := map[string][]byte{} // each cohort's group seed of this epoch, drawn at its first member
		for c := range chunks {
			b, err := i.buildChunk(params, size, height, c, p.devices, seeds)
			if err == nil {
				err = sctx.Err()
			}
			if err != nil {
				buildErr = err
				return
			}
			select {
			case built <- b:
			case <-sctx.Done():
				buildErr = sctx.Err()
				return
			}
		}
	}()
	pub := i.startPublisher()
	var roots [][]byte
	var streamErr error
	for b := range built {
		if streamErr != nil {
			continue // drain: the builder stops at its next chunk
		}
		if _, err := i.store.CommitEpoch(&EpochCommit{Stage: StageChunk, Prev: e, Epoch: e, Records: b.recs, Token: i.leaseToken()}); err != nil {
			i.count(cStoreFailures, 1)
			streamErr = fmt.Errorf("persist chunk %d: %w", b.chunk.Index, err)
			stop()
			continue
		}
		roots = append(roots, b.chunk.Root)
		for _, t := range b.chunk.Tickets {
			pub.add(pubMsg{topic: i.topics.Ticket(t.DeviceID), payload: t.Ticket})
			tickets++
		}
	}
	if streamErr == nil {
		streamErr = buildErr
	}
	var cleared []uint64
	var root, infoBytes []byte
	if streamErr == nil {
		root, infoBytes, cleared, streamErr = i.finishEpoch(params, size, height, roots)
	}
	if streamErr != nil {
		// Tickets of the persisted chunks are published all the same:
		// the broker shows what the store holds.
		msgs, failed = pub.finish()
		i.count(cEpochsAbandoned, 1)
		var bad *batch.BadKeyError
		if errors.As(streamErr, &bad) {
			i.count(cStoreBadKey, 1)
			i.log.Error("stored device key is invalid; device skipped from the next epoch", "reason", "store_bad_key", "device", bad.DeviceID, "err", bad.Err)
			if i.badKeys == nil {
				i.badKeys = map[string]bool{}
			}
			i.badKeys[bad.DeviceID] = true
		}
		i.log.Error("epoch abandoned: its root was not persisted; the next epoch is higher", "reason", "epoch_abandoned",
			"epoch", e, "tickets_published", msgs-failed, "err", streamErr)
		return 0, 0, 0, 0, fmt.Errorf("%w: epoch %d: %w", ErrEpochAbandoned, e, streamErr)
	}
	i.log.Info("epoch issued and persisted", "epoch", e, "tickets", tickets, "chunks", chunks)
	pub.add(pubMsg{topic: i.topics.Root(e), payload: root})
	pub.add(pubMsg{topic: i.topics.Epoch(), payload: infoBytes})
	if i.lease.Load() != nil {
		// An instance of a cluster: a deposed leader's MQTT will (Online
		// false) can arrive after this leader announced itself; each
		// epoch says again that the issuer is online.
		if b, err := i.online(true); err == nil {
			pub.add(pubMsg{topic: i.topics.Online(), payload: b})
		}
	}
	for _, c := range cleared {
		pub.add(pubMsg{topic: i.topics.Root(c)}) // empty retained: clears the topic
	}
	msgs, failed = pub.finish()
	return e, tickets, msgs, failed, nil
}

// finishEpoch signs the root over the chunk roots, and persists it with
// the EpochInfo; it returns them and the epochs whose roots were dropped.
func (i *Issuer) finishEpoch(params batch.Params, size, height uint64, roots [][]byte) (root, info []byte, cleared []uint64, err error) {
	e := params.Epoch
	p, err := i.signerFor(e)
	if err != nil {
		return nil, nil, nil, err
	}
	root, _, err = batch.SignRoot(p, params, size, height, roots)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("sign root: %w", err)
	}
	periodS := max(uint64(i.cfg.Period/time.Second), 1)
	ei := &wire.EpochInfo{Version: wire.Version, Epoch: e, IssuedAt: params.IssuedAt, PeriodS: periodS,
		NextAt: min(params.IssuedAt+periodS, wire.MaxTime)}
	if info, err = ei.Marshal(); err != nil {
		return nil, nil, nil, err
	}
	cleared, err = i.store.CommitEpoch(&EpochCommit{Stage: StageFinish, Prev: e, Epoch: e, Root: root, Info: info,
		KeepRoots: i.cfg.KeepRoots, Token: i.leaseToken()})
	if err != nil {
		i.count(cStoreFailures, 1)
		return nil, nil, nil, fmt.Errorf("persist root: %w", err)
	}
	return root, info, cleared, nil
}

// signerFor is the key that signs epoch e (plan checked it exists).
func (i *Issuer) signerFor(e uint64) (*signature.PrivateKey, error) {
	k, _, err := signerFor(i.cfg, i.chain, e)
	return k, err
}

// buildChunk reads the records of chunk c of the plan, checks that none
// changed since the plan (a shared store: ErrEpochConflict), encapsulates
// to each device's chosen key (parsed here, dropped after) and returns the
// chunk with the records updated to hold its tickets. A cohort member gets
// its cohort's group seed of the epoch from seeds, which draws one fresh
// seed per cohort at its first member (one seed per cohort per epoch).
func (i *Issuer) buildChunk(params batch.Params, size, height, c uint64, all []planned, seeds map[string][]byte) (builtChunk, error) {
	lo, hi := uint64(0), size
	if height != batch.OneChunk {
		lo, hi = c<<height, min(size, (c+1)<<height)
	}
	ids := all[lo:hi]
	recs := make([]*record, len(ids))
	err := i.store.View(func(tx ReadTx) error {
		// One range read: the chunk's planned devices and, between them,
		// any that get no ticket (skipped).
		n := 0
		err := tx.DeviceRange(ids[0].id, ids[len(ids)-1].id, func(r *record) error {
			if n == len(ids) || r.ID != ids[n].id {
				return nil
			}
			if r.rev != ids[n].rev {
				return fmt.Errorf("%w: device %q", ErrEpochConflict, r.ID)
			}
			recs[n] = r
			n++
			return nil
		})
		if err == nil && n != len(ids) {
			err = fmt.Errorf("%w: device %q", ErrEpochConflict, ids[n].id)
		}
		return err
	})
	if err != nil {
		return builtChunk{}, err
	}
	devs := make([]batch.Device, len(recs))
	keys := make([]chosenKey, len(recs))
	for n, r := range recs {
		k, ok := selectKey(r)
		if !ok {
			return builtChunk{}, fmt.Errorf("%w: device %q no longer gets a ticket", ErrEpochConflict, r.ID)
		}
		keys[n] = k
		devs[n] = batch.Device{ID: r.ID, Alg: k.alg, RawKey: k.raw, Prev: r.TicketHash, Purpose: i.cfg.Purpose, Group: i.cfg.Group,
			Cohort: r.Cohort}
		if r.Cohort != "" {
			if seeds[r.Cohort] == nil {
				g, err := groupSeeds(map[string]bool{r.Cohort: true})
				if err != nil {
					return builtChunk{}, err
				}
				seeds[r.Cohort] = g[r.Cohort]
			}
			devs[n].GroupSeed = seeds[r.Cohort]
		}
	}
	ch, err := batch.IssueChunk(params, size, height, c, devs)
	if err != nil {
		return builtChunk{}, fmt.Errorf("chunk %d: %w", c, err)
	}
	for n, t := range ch.Tickets {
		r := recs[n]
		r.Epoch, r.Ticket, r.TicketHash = params.Epoch, t.Ticket, t.TicketHash
		r.KeyAlg, r.Key = keys[n].alg, keys[n].raw
		r.setTicketSecrets(t.Secrets)
		r.NextAlg, r.NextKey = 0, nil
	}
	return builtChunk{chunk: ch, recs: recs}, nil
}

// epochPublisher publishes an epoch's messages on its own goroutine, in
// the order given, holding i.pubMu until finish.
type epochPublisher struct {
	q    chan pubMsg
	done chan struct{}
	n    int
	bad  int
}

// startPublisher starts publishing; before Start it only counts.
func (i *Issuer) startPublisher() *epochPublisher {
	p := &epochPublisher{q: make(chan pubMsg, 4096), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		i.pubMu.Lock()
		defer i.pubMu.Unlock()
		b := i.bulk()
		for m := range p.q {
			p.n++
			if b != nil {
				b.Publish(m.topic, m.payload)
			}
		}
		if b != nil {
			p.bad = i.finishBulk(b)
		} else {
			p.n = 0
		}
	}()
	return p
}

func (p *epochPublisher) add(m pubMsg) { p.q <- m }

// finish waits for every publish and returns how many messages were
// published and how many of them failed.
func (p *epochPublisher) finish() (msgs, failed int) {
	close(p.q)
	<-p.done
	return p.n, p.bad
}

// plan reads the next epoch number, picks the key that signs it (an
// error wrapping ErrSigningKey if it is not configured), and lists every
// device to issue to, in id order.
func (i *Issuer) plan() (*plan, error) {
	p := &plan{}
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
			i.count(cStoreBehind, 1)
			return fmt.Errorf("%w: the store %s ends at epoch %d, but this issuer committed epoch %d: it was restored or replaced while the issuer ran "+
				"(hint: stop every issuer, then run 'ekem-issuer recover'; README \"Backups and recovery\")", ErrStoreBehind, i.store.Name(), last, hw)
		}
		p.epoch = last + 1
		var kid []byte
		if p.signer, kid, err = signerFor(i.cfg, i.chain, p.epoch); err != nil {
			// Never a fallback to another key: devices trust exactly the
			// key the announcements name for this epoch.
			i.count(cSigningKeyMissing, 1)
			i.log.Error("epoch refused: its signing key is not configured", "reason", "signing_key_missing",
				"epoch", p.epoch, "kid", fmt.Sprintf("%x", kid))
			return err
		}
		// Heads suffice: selectKey's verdict depends only on State and
		// whether a key is pinned.
		return tx.DeviceHeads(func(r *record) error {
			if _, ok := selectKey(r); ok && !i.badKeys[r.ID] {
				p.devices = append(p.devices, planned{id: r.ID, rev: r.rev})
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	if len(p.devices) == 0 {
		return nil, ErrNoDevices
	}
	if !slices.IsSortedFunc(p.devices, func(a, b planned) int { return strings.Compare(a.id, b.id) }) {
		return nil, fmt.Errorf("%w: the store %s lists devices out of id order", ErrStoreCorrupt, i.store.Name())
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
		case <-i.closing:
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
			i.count(cIssueFailures, 1) // logged with its reason by plan
		default:
			i.log.Error("epoch issuance failed", "reason", "issue_failed", "err", err)
			i.count(cIssueFailures, 1)
		}
		t.Reset(next)
	}
}

// Period is the configured epoch period.
func (i *Issuer) Period() time.Duration { return i.cfg.Period }
