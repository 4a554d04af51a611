package issuer

// Re-enrollment (schema/PROTOCOL.md §7.6): a Registration marked reenroll
// offers a new key for a device whose earlier key is lost, without a re-key
// proof. The issuer holds it for an operator's approval (Approve, online
// through the admin socket), or, under
// ReenrollAuto, pins it at once.

import (
	"bytes"

	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/wire"
)

// ReenrollPolicy says what the issuer does with a re-enrollment.
type ReenrollPolicy string

// Re-enrollment policies.
const (
	// ReenrollHold (the default) holds a re-enrollment until an operator
	// approves it: the device gets no ticket meanwhile.
	ReenrollHold ReenrollPolicy = "hold"
	// ReenrollAuto pins a re-enrollment of an active device at once, for
	// fleets that trust their broker identities (only the device's own
	// account can publish on its reg topic). It never releases a
	// quarantined or revoked device.
	ReenrollAuto ReenrollPolicy = "auto"
)

func (p ReenrollPolicy) valid() bool { return p == "" || p == ReenrollHold || p == ReenrollAuto }

// reenroll handles a re-enrollment of a pinned device (rec) with another
// key. Called with i.mu held, inside the handling transaction.
func (i *Issuer) reenroll(rec *record, topic string, reg *wire.Registration, payload []byte) outcome {
	const kind = rejectRegistration
	id := rec.ID
	offered := shortHash(kem.PublicKeyHash(reg.PublicKey))
	if rec.State != stateActive || i.cfg.Reenroll != ReenrollAuto {
		reason := "awaiting_approval"
		if rec.State != stateActive {
			reason = "device_not_active"
		}
		i.reject(kind, reason, topic, id, "offered", offered, "hint", "ekem-issuer approve "+id)
		return outcome{rec: rec, pendingReg: bytes.Clone(payload)}
	}
	detail := resetDetail(rec) + "; pinned re-enrollment " + offered
	repin(rec, reg, unixSeconds(i.cfg.Now()))
	i.count(cRegistrationsReenrolled, 1)
	i.log.Warn("device re-enrolled with a new key (policy auto)", "device", id, "kem", reg.KEMAlg.String(), "pk_hash", offered)
	return outcome{changed: true, rec: rec, audit: &AuditEntry{Time: unixSeconds(i.cfg.Now()), Actor: "issuer policy -reenroll auto",
		Action: "reenroll", Device: id, Detail: detail}}
}

// staleAfterReset refuses to pin a registration that the broker kept
// (retained) for a device an operator reset after it had tickets
// (schema/PROTOCOL.md §8.7): its keys rotated every epoch, so the retained
// registration likely names a key it deleted, and pinning it would strand
// it. The issuer clears the device's ticket on every connection
// (republish), and the device answers with a live registration of its
// live key, which is pinned.
func (i *Issuer) staleAfterReset(topic, id string) outcome {
	i.reject(rejectRegistration, "retained_after_reset", topic, id, "hint", "waiting for the device's live registration")
	return outcome{}
}

// repin pins reg's key as if it were the device's first, as an operator
// reset followed by that registration would: the keys and secrets of the
// latest ticket and the Status history are forgotten (the re-enrolled
// device's Status seq starts again), the chain head is kept so the next
// ticket's prev links to it, and the latest ticket is no longer
// republished.
func repin(rec *record, reg *wire.Registration, now uint64) {
	resetRecord(rec)
	rec.RegAlg, rec.RegKey, rec.PinnedAt = reg.KEMAlg, bytes.Clone(reg.PublicKey), now
}

// awaitingApproval returns the ids whose re-enrollment waits for Approve.
func (i *Issuer) awaitingApproval() map[string]bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	out := map[string]bool{}
	for id, p := range i.pending {
		if isReenrollment(p) {
			out[id] = true
		}
	}
	return out
}

func isReenrollment(p []byte) bool {
	if p == nil {
		return false
	}
	r, err := wire.ParseRegistration(p)
	return err == nil && r.Reenroll
}
