package issuer

import (
	"bytes"
	"context"
	"log/slog"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/internal/mqttc"
	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/wire"
)

// maxBatch bounds how many queued messages one store transaction handles.
const maxBatch = 256

// outcome is what handling one message did.
type outcome struct {
	changed bool // the record was written
	rec     *record
	// pendingReg, if set, is a refused registration kept for Reset.
	pendingReg []byte
	// audit, if set, is appended to the audit log with the record (an
	// action taken by policy, such as an automatic re-enrollment).
	audit *AuditEntry
}

// processInbox drains the client's inbox on its own goroutine until the
// issuer is closed, handling up to maxBatch queued messages per store
// transaction.
func (i *Issuer) processInbox(in *mqttc.Inbox) {
	defer i.wg.Done()
	for {
		m, ok := in.Next(context.Background()) // Close closes the inbox
		if !ok {
			return
		}
		i.active.Add(1)
		batch := []mqttc.Message{m}
		for len(batch) < maxBatch && in.Len() > 0 {
			m, ok := in.Next(context.Background()) // Close closes the inbox
			if !ok {
				break
			}
			batch = append(batch, m)
		}
		i.handleBatch(batch)
		i.active.Add(-1)
	}
}

// handle processes one message as if it came from the broker.
func (i *Issuer) handle(topic string, payload []byte) {
	i.handleBatch([]mqttc.Message{{Topic: topic, Payload: payload}})
}

func (i *Issuer) handleBatch(msgs []mqttc.Message) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.handleLocked(msgs)
}

// handleLocked handles msgs in one store transaction; i.mu is held. Every
// handler validates completely before it writes, and a transaction that
// wrote no record is rolled back rather than committed (a bbolt commit
// rewrites the meta page even when empty), so rejected messages leave the
// store file byte-identical.
func (i *Issuer) handleLocked(msgs []mqttc.Message) {
	pending := map[string][]byte{}
	changed, err := i.handleInTx(msgs, pending)
	if err != nil {
		i.count(cStoreFailures, 1)
		i.log.Error("store update failed; messages of this batch are dropped", "reason", "store_failure", "err", err, "messages", len(msgs))
		return
	}
	for id, p := range pending {
		i.pending[id] = p
	}
	if changed {
		i.notify()
	}
}

// handleInTx runs the handlers for msgs in one write transaction, which
// the store commits only if a record was written.
func (i *Issuer) handleInTx(msgs []mqttc.Message, pending map[string][]byte) (changed bool, err error) {
	err = i.store.Update(func(tx Tx) error {
		for _, m := range msgs {
			var o outcome
			var err error
			// The handlers report an invalid {device_id} level for their kind.
			switch tp, _ := i.topics.Parse(m.Topic); tp.Kind {
			case wire.TopicRegistration:
				o, err = i.onRegistration(tx, m.Topic, m.Payload, m.Retained)
			case wire.TopicStatus:
				o, err = i.onStatus(tx, m.Topic, m.Payload)
			default:
				i.reject(rejectMessage, "unexpected_topic", m.Topic, "")
				continue
			}
			if err != nil {
				return err
			}
			if o.pendingReg != nil {
				pending[o.rec.ID] = o.pendingReg
			}
			if o.changed {
				if err := tx.PutDevice(o.rec); err != nil {
					return err
				}
				if o.audit != nil {
					if err := tx.AppendAudit(*o.audit); err != nil {
						return err
					}
				}
				changed = true
			}
		}
		return nil
	})
	return changed && err == nil, err
}

// reject counts and logs a refused message of kind for reason (one of the
// issuer's own reason words).
func (i *Issuer) reject(kind rejectKind, reason, topic, device string, attrs ...any) {
	a := append([]any{"reason", reason, "topic", clip(topic)}, attrs...)
	if device != "" {
		a = append(a, "device", device)
	}
	level := slog.LevelWarn
	if reason == "stale_status" {
		level = slog.LevelInfo // a late Status after the next epoch: normal
	}
	i.logLimited(level, device, reason, kind.String()+" rejected", a...)
	// Counted after the log line is written: whoever sees the counter
	// move finds the record with its reason.
	i.cnt.reject(kind, reason)
}

// clip bounds attacker-controlled strings in logs.
func clip(s string) string {
	const n = 160
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// onRegistration applies schema/PROTOCOL.md §10 Registration: pin on first
// use, same key a no-op, another key only with a valid re-key proof (§7.5)
// or as a re-enrollment (§7.6). retained says the broker delivered it from
// its store at subscription rather than as it was published.
func (i *Issuer) onRegistration(tx ReadTx, topic string, payload []byte, retained bool) (outcome, error) {
	const kind = rejectRegistration
	if len(payload) == 0 {
		return outcome{}, nil // a cleared retained topic
	}
	if len(payload) > wire.MaxRegistration {
		i.reject(kind, "oversize", topic, "", "size", len(payload))
		return outcome{}, nil
	}
	id, err := i.topics.DeviceOf("reg", topic)
	if err != nil {
		i.reject(kind, "bad_topic", topic, "", "err", err)
		return outcome{}, nil
	}
	reg, err := wire.ParseRegistration(payload)
	if err != nil {
		i.reject(kind, "malformed", topic, id, "err", err)
		return outcome{}, nil
	}
	if reg.DeviceID != id {
		i.reject(kind, "topic_mismatch", topic, id, "claimed", reg.DeviceID)
		return outcome{}, nil
	}
	if brokerconfig.IsReservedName(id) { // schema/PROTOCOL.md §3: service accounts, never device ids
		i.reject(kind, "reserved_id", topic, id)
		return outcome{}, nil
	}
	if !i.cfg.kemAllowed(reg.KEMAlg) {
		i.reject(kind, "alg_not_allowed", topic, id, "kem", reg.KEMAlg.String())
		return outcome{}, nil
	}
	sch, err := kem.Lookup(reg.KEMAlg)
	if err == nil {
		_, err = sch.ParsePublicKey(reg.PublicKey)
	}
	if err != nil {
		i.reject(kind, "invalid_key", topic, id, "err", err)
		return outcome{}, nil
	}
	rec, err := tx.Device(id)
	if err != nil {
		return outcome{}, err
	}
	if rec != nil && rec.RegKey == nil && rec.Epoch > 0 && retained {
		return i.staleAfterReset(topic, id), nil
	}
	if rec == nil || rec.RegKey == nil {
		return i.firstUse(rec, topic, id, reg, payload), nil // enroll.go: the enrollment policy
	}
	if rec.RegAlg == reg.KEMAlg && bytes.Equal(rec.RegKey, reg.PublicKey) {
		i.count(cRegistrationsSame, 1)
		i.log.Debug("registration unchanged", "device", id)
		return outcome{}, nil
	}
	return i.rekey(rec, topic, reg, payload), nil
}

func (i *Issuer) pin(rec *record, id string, reg *wire.Registration) outcome {
	if rec == nil {
		rec = &record{ID: id, State: stateActive}
	}
	rec.RegAlg, rec.RegKey = reg.KEMAlg, bytes.Clone(reg.PublicKey)
	rec.PinnedAt = unixSeconds(i.cfg.Now())
	i.count(cRegistrationsPinned, 1)
	i.log.Info("device key pinned", "device", id, "kem", reg.KEMAlg.String(), "pk_hash", shortHash(kem.PublicKeyHash(reg.PublicKey)))
	return outcome{changed: true, rec: rec}
}

// rekey replaces a pinned key when the registration proves, under the latest
// ticket's ss, that its sender decapsulated that ticket.
func (i *Issuer) rekey(rec *record, topic string, reg *wire.Registration, payload []byte) outcome {
	const kind = rejectRegistration
	id := rec.ID
	if reg.Reenroll {
		return i.reenroll(rec, topic, reg, payload)
	}
	if rec.State != stateActive {
		i.reject(kind, "device_not_active", topic, id, "state", string(stateName(rec.State)))
		return outcome{}
	}
	p := reg.Rekey
	if p == nil {
		i.reject(kind, "key_changed", topic, id, "pinned", shortHash(kem.PublicKeyHash(rec.RegKey)),
			"offered", shortHash(kem.PublicKeyHash(reg.PublicKey)))
		return outcome{rec: rec, pendingReg: bytes.Clone(payload)}
	}
	sec := rec.secrets()
	if sec == nil || p.Epoch != rec.Epoch || !bytes.Equal(p.TicketHash, rec.TicketHash) {
		i.reject(kind, "rekey_not_latest", topic, id, "proof_epoch", p.Epoch, "latest_epoch", rec.Epoch)
		return outcome{rec: rec, pendingReg: bytes.Clone(payload)}
	}
	if !sec.CheckRekey(kem.PublicKeyHash(reg.PublicKey), p.Tag) {
		i.reject(kind, "bad_rekey_proof", topic, id)
		return outcome{rec: rec, pendingReg: bytes.Clone(payload)}
	}
	rec.RegAlg, rec.RegKey = reg.KEMAlg, bytes.Clone(reg.PublicKey)
	rec.PinnedAt = unixSeconds(i.cfg.Now())
	// §7.5: the re-keyed key is the next epoch's key, whether the Status
	// of the same ticket is handled before or after (verifyAccepted leaves
	// it in place). The key the latest ticket used stays recorded: a
	// Status of that ticket is still checked against its kem_alg.
	rec.NextAlg, rec.NextKey = reg.KEMAlg, bytes.Clone(reg.PublicKey)
	i.count(cRegistrationsRekeyed, 1)
	i.log.Warn("device re-keyed with a valid proof", "device", id, "kem", reg.KEMAlg.String(),
		"pk_hash", shortHash(kem.PublicKeyHash(reg.PublicKey)))
	return outcome{changed: true, rec: rec}
}

// onStatus applies schema/PROTOCOL.md §10 Status.
func (i *Issuer) onStatus(tx ReadTx, topic string, payload []byte) (outcome, error) {
	const kind = rejectStatus
	if len(payload) == 0 {
		return outcome{}, nil
	}
	if len(payload) > wire.MaxStatus {
		i.reject(kind, "oversize", topic, "", "size", len(payload))
		return outcome{}, nil
	}
	id, err := i.topics.DeviceOf("status", topic)
	if err != nil {
		i.reject(kind, "bad_topic", topic, "", "err", err)
		return outcome{}, nil
	}
	st, err := wire.ParseStatus(payload)
	if err != nil {
		i.reject(kind, "malformed", topic, id, "err", err)
		return outcome{}, nil
	}
	if st.DeviceID != id {
		i.reject(kind, "topic_mismatch", topic, id, "claimed", st.DeviceID)
		return outcome{}, nil
	}
	rec, err := tx.Device(id)
	if err != nil {
		return outcome{}, err
	}
	switch {
	case rec == nil || rec.RegKey == nil:
		i.reject(kind, "unknown_device", topic, id)
		return outcome{}, nil
	case rec.State == stateRevoked:
		i.reject(kind, "device_revoked", topic, id)
		return outcome{}, nil
	case rec.State == stateQuarantined:
		i.reject(kind, "device_quarantined", topic, id)
		return outcome{}, nil
	}
	h := sum256(payload)
	older := false
	if rec.HasStatus && st.Seq <= rec.StatusSeq {
		switch {
		case st.Seq == rec.StatusSeq && bytes.Equal(h, rec.StatusHash):
			i.count(cStatusesDuplicate, 1)
			return outcome{}, nil // a retained re-delivery
		case st.Seq == rec.StatusSeq:
			return i.onConflict(rec, topic, st, h), nil // conflict.go: quarantine only on authenticated evidence
		case !st.State.Accepted() || rec.ConfirmedEpoch == rec.Epoch || !bytes.Equal(st.TicketHash, rec.TicketHash):
			// An older Status: a broker restored from an older save
			// re-delivers what it had, or a restarted device republishes
			// its last acceptance of a ticket that newer ones have since
			// replaced (§8.5). It says nothing new, and is not a
			// stale_status.
			i.count(cStatusesOlder, 1)
			i.log.Debug("older Status ignored", "device", id, "seq", st.Seq, "last_seq", rec.StatusSeq)
			return outcome{}, nil
		}
		// An older acceptance of the latest, unconfirmed ticket: a device
		// republishes it after a later Status went out first (its
		// confirm tag authenticates it, whatever its seq). It is verified
		// like any other, but does not move the recorded seq back.
		older = true
	}
	if st.State.Accepted() {
		if ok := i.verifyAccepted(rec, topic, st); !ok {
			return outcome{}, nil
		}
	} else {
		i.reportProblem(id, st)
	}
	if !older {
		rec.HasStatus, rec.StatusSeq, rec.StatusHash = true, st.Seq, h
		rec.StatusState, rec.StatusReason, rec.StatusEpoch = uint64(st.State), st.Reason, st.Epoch
	}
	return outcome{changed: true, rec: rec}, nil
}

// verifyAccepted checks an ok or gap Status against the latest ticket and,
// if every check passes, records the confirmation and the next key in rec.
func (i *Issuer) verifyAccepted(rec *record, topic string, st *wire.Status) bool {
	const kind = rejectStatus
	id := rec.ID
	if rec.TicketHash == nil || !bytes.Equal(st.TicketHash, rec.TicketHash) {
		i.reject(kind, "stale_status", topic, id, "status_epoch", st.Epoch, "latest_epoch", rec.Epoch)
		return false
	}
	if st.Epoch != rec.Epoch {
		i.reject(kind, "epoch_mismatch", topic, id, "status_epoch", st.Epoch, "latest_epoch", rec.Epoch)
		return false
	}
	sec := rec.secrets()
	if sec == nil {
		i.reject(kind, "no_ticket_secrets", topic, id)
		return false
	}
	confirmOK := sec.CheckConfirm(st.Confirm)
	nextOK := sec.CheckNextKey(kem.PublicKeyHash(st.NextPK), st.NextTag)
	if !confirmOK {
		i.reject(kind, "bad_confirm", topic, id, "epoch", st.Epoch)
		return false
	}
	if !nextOK {
		i.reject(kind, "bad_next_tag", topic, id, "epoch", st.Epoch)
		return false
	}
	if st.NextAlg != rec.KeyAlg || !i.cfg.kemAllowed(st.NextAlg) {
		i.reject(kind, "next_alg_changed", topic, id, "kem", st.NextAlg.String(), "ticket_kem", rec.KeyAlg.String())
		return false
	}
	sch, err := kem.Lookup(st.NextAlg)
	if err == nil {
		_, err = sch.ParsePublicKey(st.NextPK)
	}
	if err != nil {
		i.reject(kind, "invalid_next_key", topic, id, "err", err)
		return false
	}
	rec.ConfirmedEpoch = rec.Epoch
	if rekeyedForLatest(rec) {
		// §7.5: a re-key of this ticket already fixed the next key; the
		// Status confirms the ticket and changes nothing else, so the
		// order of the two topics does not decide the outcome.
		i.count(cStatusesVerified, 1)
		i.log.Info("device confirmed ticket; its re-keyed key stays the next key", "device", id, "epoch", rec.Epoch,
			"state", st.State.String())
		return true
	}
	rec.NextAlg, rec.NextKey = st.NextAlg, bytes.Clone(st.NextPK)
	i.count(cStatusesVerified, 1)
	if st.State == wire.StateGap {
		i.count(cStatusesGap, 1)
	}
	i.log.Info("device confirmed ticket", "device", id, "epoch", rec.Epoch, "state", st.State.String(),
		"next_pk_hash", shortHash(kem.PublicKeyHash(st.NextPK)))
	return true
}

// rekeyedForLatest reports whether the next key recorded for the latest
// ticket came from a re-key (§7.5): a re-key stores its key both as the
// pinned key and as the next key, and every issuance clears the next key.
// (A Status announcing the pinned key itself as its next key would match
// too; keeping that key is then the same outcome.)
func rekeyedForLatest(rec *record) bool {
	return rec.NextKey != nil && rec.NextAlg == rec.RegAlg && bytes.Equal(rec.NextKey, rec.RegKey)
}

// reportProblem logs and counts a rejected, equivocation or stale Status.
// Equivocation (two tickets for one epoch seen by a device) is an alarm.
func (i *Issuer) reportProblem(id string, st *wire.Status) {
	reason := "unknown"
	if r := accept.Reason(st.Reason); r <= accept.ReasonInternal {
		reason = r.String() // bounded: counter names stay few
	}
	i.cnt.report(st.State, reason)
	attrs := []any{"device", id, "state", st.State.String(), "device_reason", reason, "epoch", st.Epoch, "seq", st.Seq}
	if st.State == wire.StateEquivocation {
		i.count(cEquivocationReported, 1)
		i.logLimited(slog.LevelError, id, "equivocation_reported", "device reports equivocation: two different tickets for one epoch",
			append([]any{"reason", "equivocation_reported"}, attrs...)...)
		return
	}
	i.logLimited(slog.LevelWarn, id, "device_"+st.State.String(), "device reports a problem",
		append([]any{"reason", "device_" + st.State.String()}, attrs...)...)
}

// shortHash is a log-friendly prefix of a public hash.
func shortHash(h []byte) string {
	const hexdigits = "0123456789abcdef"
	n := min(len(h), 8)
	out := make([]byte, 0, 2*n)
	for _, b := range h[:n] {
		out = append(out, hexdigits[b>>4], hexdigits[b&15])
	}
	return string(out)
}
