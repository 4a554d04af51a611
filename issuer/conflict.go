package issuer

import (
	"bytes"
	"log/slog"

	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/wire"
)

// onConflict decides a Status whose seq equals the recorded Status's but
// whose bytes differ (schema/PROTOCOL.md §10 Status; DESIGN.md "Issuer
// rules": two different authenticated Status chains quarantine a device; a
// message the issuer cannot authenticate never changes a device's
// standing).
//
// A Status is authenticated when it is an acceptance (ok or gap) whose
// confirm tag and next-key tag verify under the latest ticket's secrets:
// only a holder of the device's decapsulation key computes them. A
// recorded acceptance was verified before it was recorded; a recorded
// rejected, stale or equivocation Status carries no tag, so anyone holding
// the device's broker password could have sent it.
//
//   - both authenticated: two devices decapsulate this device's tickets (a
//     clone); the device is quarantined until an operator acts;
//   - only the new one: it is verified and recorded in place of the
//     unauthenticated one, and the conflict is counted;
//   - the new one is not authenticated: it is counted
//     (status_conflict_unauthenticated) and logged, and nothing changes.
func (i *Issuer) onConflict(rec *record, topic string, st *wire.Status, h []byte) outcome {
	id := rec.ID
	recordedAuth := wire.State(rec.StatusState).Accepted()
	newAuth := st.State.Accepted() && i.authenticates(rec, st)
	switch {
	case newAuth && recordedAuth:
		rec.State = stateQuarantined
		i.count(cCloneDetected, 1)
		i.log.Error("two different authenticated Status messages with one seq for one device: possible clone; device quarantined",
			"reason", "clone_detected", "device", id, "seq", st.Seq)
		return outcome{changed: true, rec: rec}
	case newAuth:
		i.count(cStatusConflictUnauthenticated, 1)
		i.logLimited(slog.LevelWarn, id, "status_conflict_unauthenticated",
			"an unauthenticated Status recorded with this seq is replaced by an authenticated one",
			"reason", "status_conflict_unauthenticated", "device", id, "seq", st.Seq,
			"recorded_state", wire.State(rec.StatusState).String(), "state", st.State.String())
		if !i.verifyAccepted(rec, topic, st) {
			return outcome{} // tags verify, but the next key is refused (rejected and counted there)
		}
		rec.StatusHash = h
		rec.StatusState, rec.StatusReason, rec.StatusEpoch = uint64(st.State), st.Reason, st.Epoch
		return outcome{changed: true, rec: rec}
	}
	i.count(cStatusConflictUnauthenticated, 1)
	i.logLimited(slog.LevelWarn, id, "status_conflict_unauthenticated",
		"a Status the issuer cannot authenticate conflicts with the recorded one (same seq): ignored, the device's standing is unchanged",
		"reason", "status_conflict_unauthenticated", "device", id, "seq", st.Seq,
		"state", st.State.String(), "recorded_state", wire.State(rec.StatusState).String(), "topic", clip(topic))
	return outcome{}
}

// authenticates reports, without changing rec, whether st is an acceptance
// of rec's latest ticket whose confirm and next-key tags verify.
func (i *Issuer) authenticates(rec *record, st *wire.Status) bool {
	if rec.TicketHash == nil || st.Epoch != rec.Epoch || !bytes.Equal(st.TicketHash, rec.TicketHash) {
		return false
	}
	sec := rec.secrets()
	if sec == nil {
		return false
	}
	confirmOK := sec.CheckConfirm(st.Confirm)
	nextOK := sec.CheckNextKey(kem.PublicKeyHash(st.NextPK), st.NextTag)
	return confirmOK && nextOK
}
