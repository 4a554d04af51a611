package issuer

import (
	"bytes"
	"crypto/hmac"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Enrollment policy (DESIGN.md "Identity on the broker"). Under
// EnrollmentOpen (trust on first use) a device id's first registration is
// pinned. Under EnrollmentAllowlist only the ids an operator imported
// (Admin.Enroll, "ekem-issuer enroll", from the list made at manufacturing)
// are pinned on first use; any other id's first registration is refused
// (registrations_rejected:not_enrolled) and held for an operator, who
// approves (Admin.Approve: pinned) or denies it (Admin.Deny: dropped, the
// id revoked), online and audited. Whatever the policy, an id imported with
// a key hash is pinned only to that key (enrolled_key_mismatch otherwise,
// held for the operator too), so stolen broker credentials used before the
// device's first boot cannot pin the attacker's key.
const (
	EnrollmentOpen      = "open"
	EnrollmentAllowlist = "allowlist"
)

// ErrBadEnrollment: an enrollment list is malformed or contradicts the
// store. Nothing was imported.
var ErrBadEnrollment = errors.New("issuer: bad enrollment list")

// Bounds on an enrollment list.
const (
	// MaxEnrollCSV is the largest enrollment CSV file read.
	MaxEnrollCSV = 128 << 20
	// MaxEnrollments is the most devices one import holds.
	MaxEnrollments = 1 << 20
)

// Enrollment is one device an operator imports: its id and, optionally,
// the SHA-256 hash of the KEM public key it registers (kem.PublicKeyHash).
type Enrollment struct {
	ID      string `json:"id"`
	KeyHash []byte `json:"key_hash,omitempty"`
}

// EnrollResult says what an import did.
type EnrollResult struct {
	Added   int `json:"added"`   // ids new to the store
	Updated int `json:"updated"` // ids already in the store, now enrolled
	// Pinned counts held registrations of newly listed ids that the
	// running issuer pinned at once.
	Pinned int `json:"pinned"`
}

// ParseEnrollmentCSV reads an enrollment list: one device per line,
// "device_id" or "device_id,key_sha256_hex" (64 hex digits), with an
// optional header line starting "device_id", '#' comment lines and blank
// lines. Every id must be a valid, unreserved device id and appear once.
// Errors name the line; a list with any error yields nothing.
func ParseEnrollmentCSV(r io.Reader) ([]Enrollment, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxEnrollCSV+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadEnrollment, err)
	}
	if len(data) > MaxEnrollCSV {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrBadEnrollment, MaxEnrollCSV)
	}
	cr := csv.NewReader(bytes.NewReader(data))
	cr.Comment, cr.FieldsPerRecord, cr.TrimLeadingSpace, cr.ReuseRecord = '#', -1, true, true
	var out []Enrollment
	seen := map[string]int{}
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil { // a *csv.ParseError names its line
			return nil, fmt.Errorf("%w: %w", ErrBadEnrollment, err)
		}
		line, _ := cr.FieldPos(0)
		if len(out) == 0 && len(seen) == 0 && strings.EqualFold(strings.TrimSpace(rec[0]), "device_id") {
			seen[""] = line // the header
			continue
		}
		if len(rec) > 2 {
			return nil, fmt.Errorf("%w: line %d: %d fields, want device_id[,key_sha256]", ErrBadEnrollment, line, len(rec))
		}
		e := Enrollment{ID: strings.TrimSpace(rec[0])}
		if err := validateEnrollID(e.ID); err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", ErrBadEnrollment, line, err)
		}
		if first, dup := seen[e.ID]; dup {
			return nil, fmt.Errorf("%w: line %d: device %q already on line %d", ErrBadEnrollment, line, e.ID, first)
		}
		seen[e.ID] = line
		if len(rec) == 2 && strings.TrimSpace(rec[1]) != "" {
			h, err := hex.DecodeString(strings.TrimSpace(rec[1]))
			if err != nil || len(h) != 32 {
				return nil, fmt.Errorf("%w: line %d: key hash of %q is not 64 hex digits (SHA-256 of the KEM public key)", ErrBadEnrollment, line, e.ID)
			}
			e.KeyHash = h
		}
		if len(out) == MaxEnrollments {
			return nil, fmt.Errorf("%w: more than %d devices", ErrBadEnrollment, MaxEnrollments)
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no device ids", ErrBadEnrollment)
	}
	return out, nil
}

func validateEnrollID(id string) error {
	if err := wire.ValidateDeviceID(id); err != nil {
		return err
	}
	if brokerconfig.IsReservedName(id) {
		return fmt.Errorf("%q is reserved for service accounts", id)
	}
	return nil
}

// enrollTx imports entries in tx and appends one audit entry; pin, if not
// nil, is offered each newly enrolled record with no pinned key (the
// running issuer pins a registration it holds for it). Any error leaves
// the transaction to be rolled back: nothing is imported.
func enrollTx(tx Tx, now time.Time, entries []Enrollment, op Operator, pin func(*record) bool) (EnrollResult, error) {
	var res EnrollResult
	if err := op.check(); err != nil {
		return res, err
	}
	if len(entries) == 0 || len(entries) > MaxEnrollments {
		return res, fmt.Errorf("%w: %d devices, want 1 to %d", ErrBadEnrollment, len(entries), MaxEnrollments)
	}
	hashes := 0
	seen := make(map[string]bool, len(entries))
	for _, e := range entries {
		if err := validateEnrollID(e.ID); err != nil {
			return res, fmt.Errorf("%w: %w", ErrBadEnrollment, err)
		}
		if seen[e.ID] {
			return res, fmt.Errorf("%w: device %q listed twice", ErrBadEnrollment, e.ID)
		}
		seen[e.ID] = true
		if e.KeyHash != nil && len(e.KeyHash) != 32 {
			return res, fmt.Errorf("%w: key hash of %q has %d bytes, want 32", ErrBadEnrollment, e.ID, len(e.KeyHash))
		}
		r, err := tx.Device(e.ID)
		if err != nil {
			return res, err
		}
		if r == nil {
			r = &record{ID: e.ID, State: stateActive}
			res.Added++
		} else {
			res.Updated++
			if r.RegKey != nil && e.KeyHash != nil && !hmac.Equal(kem.PublicKeyHash(r.RegKey), e.KeyHash) {
				return res, fmt.Errorf("%w: device %q is already pinned to key %s, the list says %s", ErrBadEnrollment,
					e.ID, shortHash(kem.PublicKeyHash(r.RegKey)), shortHash(e.KeyHash))
			}
		}
		if e.KeyHash != nil {
			hashes++
		}
		r.Enrolled, r.EnrolledKeyHash = true, bytes.Clone(e.KeyHash)
		if r.RegKey == nil && pin != nil && pin(r) {
			res.Pinned++
		}
		if err := tx.PutDevice(r); err != nil {
			return res, err
		}
	}
	detail := fmt.Sprintf("%d devices (%d new, %d already known, %d with key hashes)", len(entries), res.Added, res.Updated, hashes)
	if res.Pinned > 0 {
		detail += fmt.Sprintf("; pinned %d held registrations", res.Pinned)
	}
	return res, tx.AppendAudit(AuditEntry{Time: unixSeconds(now), Actor: op.Actor, Action: "enroll",
		Reason: op.Reason, Detail: detail})
}

// Enroll imports entries into a stopped issuer's store, audited.
func (a StoreAdmin) Enroll(entries []Enrollment, op Operator) (EnrollResult, error) {
	var res EnrollResult
	err := a.Store.Update(func(tx Tx) (err error) {
		res, err = enrollTx(tx, a.now(), entries, op, nil)
		return err
	})
	if err != nil {
		return EnrollResult{}, err
	}
	return res, nil
}

// Deny needs the running issuer: only it holds the registrations awaiting
// approval.
func (a StoreAdmin) Deny(id string, op Operator) error {
	return fmt.Errorf("%w: denying %q drops the registration the running issuer holds; start the issuer and run deny again", ErrNeedsIssuer, id)
}

// Enroll imports entries while the issuer runs, audited, and pins at once
// every registration it holds for a newly listed id (that matches the
// listed key hash, if any).
func (a OnlineAdmin) Enroll(entries []Enrollment, op Operator) (EnrollResult, error) {
	a.i.mu.Lock()
	defer a.i.mu.Unlock()
	var res EnrollResult
	var pinned []string
	err := a.i.store.Update(func(tx Tx) (err error) {
		pinned = pinned[:0]
		res, err = enrollTx(tx, a.i.cfg.Now(), entries, op, func(r *record) bool {
			held := a.i.pending[r.ID]
			if held == nil {
				return false
			}
			reg, err := wire.ParseRegistration(held)
			if err != nil || (r.EnrolledKeyHash != nil && !hmac.Equal(kem.PublicKeyHash(reg.PublicKey), r.EnrolledKeyHash)) {
				return false
			}
			a.i.pin(r, r.ID, reg)
			pinned = append(pinned, r.ID)
			return true
		})
		return err
	})
	if err != nil {
		return EnrollResult{}, err
	}
	for _, id := range pinned {
		delete(a.i.pending, id)
	}
	a.i.log.Warn("operator enrolled devices", "devices", len(entries), "added", res.Added, "updated", res.Updated,
		"pinned", res.Pinned, "actor", op.Actor, "reason", clip(op.Reason))
	a.i.notify()
	return res, nil
}

// Deny drops the registration device id holds for approval
// (ErrNothingToApprove if none), audited. An id that is neither enrolled
// nor pinned is also revoked, so its retained registration is not held
// again at the next start; Release lets it register again.
func (a OnlineAdmin) Deny(id string, op Operator) error {
	if err := wire.ValidateDeviceID(id); err != nil {
		return fmt.Errorf("issuer: deny: %w", err)
	}
	if err := op.check(); err != nil {
		return err
	}
	a.i.mu.Lock()
	defer a.i.mu.Unlock()
	held := a.i.pending[id]
	if held == nil {
		return fmt.Errorf("%w: device %q", ErrNothingToApprove, id)
	}
	detail := "dropped the held registration"
	if reg, err := wire.ParseRegistration(held); err == nil {
		detail += " of key " + shortHash(kem.PublicKeyHash(reg.PublicKey))
	}
	err := a.i.store.Update(func(tx Tx) error {
		r, err := tx.Device(id)
		if err != nil {
			return err
		}
		if r == nil || (!r.Enrolled && r.RegKey == nil) {
			if r == nil {
				r = &record{ID: id}
			}
			before := r.State
			r.State = stateRevoked
			detail += "; unlisted id, " + stateChange(before, r)
			if err := tx.PutDevice(r); err != nil {
				return err
			}
		}
		return tx.AppendAudit(AuditEntry{Time: unixSeconds(a.i.cfg.Now()), Actor: op.Actor, Action: "deny",
			Device: id, Reason: op.Reason, Detail: detail})
	})
	if err != nil {
		return err
	}
	delete(a.i.pending, id)
	a.i.log.Warn("operator denied device registration", "device", id, "actor", op.Actor, "reason", clip(op.Reason))
	a.i.notify()
	return nil
}

// firstUse applies the enrollment policy to the first registration of id
// (rec is nil or has no pinned key): pin it, or refuse it and hold it for
// an operator's approve or deny.
func (i *Issuer) firstUse(rec *record, topic, id string, reg *wire.Registration, payload []byte) outcome {
	const kind = rejectRegistration
	if rec != nil && rec.State == stateRevoked {
		i.reject(kind, "device_revoked", topic, id)
		return outcome{}
	}
	h := kem.PublicKeyHash(reg.PublicKey)
	if rec != nil && rec.EnrolledKeyHash != nil && !hmac.Equal(h, rec.EnrolledKeyHash) {
		i.reject(kind, "enrolled_key_mismatch", topic, id, "enrolled", shortHash(rec.EnrolledKeyHash),
			"offered", shortHash(h), "held", "for approve or deny")
		return outcome{rec: rec, pendingReg: bytes.Clone(payload)}
	}
	if i.cfg.Enrollment == EnrollmentAllowlist && (rec == nil || !rec.Enrolled) {
		i.reject(kind, "not_enrolled", topic, id, "offered", shortHash(h), "held", "for approve or deny")
		return outcome{rec: &record{ID: id}, pendingReg: bytes.Clone(payload)}
	}
	return i.pin(rec, id, reg)
}

// Enroll on a cluster instance imports through the leader, which also pins
// the registrations it holds for newly listed ids; a standby refuses it
// (ErrStandby), as every write (-store URL works against the database).
func (a clusterAdmin) Enroll(entries []Enrollment, op Operator) (EnrollResult, error) {
	l, err := a.write("enroll")
	if err != nil {
		return EnrollResult{}, err
	}
	return l.Enroll(entries, op)
}

// Deny on a cluster instance needs the leader: only it holds the
// registrations awaiting approval.
func (a clusterAdmin) Deny(id string, op Operator) error {
	l, err := a.write("deny")
	if err != nil {
		return err
	}
	return l.Deny(id, op)
}
