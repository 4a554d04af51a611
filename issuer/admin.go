package issuer

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"time"

	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Operator actions (reset, revoke, release, approve) and the audit log.
//
// They run the same code whether the issuer is running (Issuer.Admin,
// reached by operators through its admin socket, package adminsock) or
// stopped (StoreAdmin, on the store itself): one transaction changes the
// device's record and appends the audit entry, so no action is ever
// applied without its entry, nor recorded without being applied.

// Admin errors callers tell apart.
var (
	// ErrNothingToApprove: the device has no registration awaiting
	// approval.
	ErrNothingToApprove = errors.New("issuer: no registration awaits approval")
	// ErrNeedsIssuer: the action needs the running issuer (it holds what
	// the action works on), but the store was opened directly.
	ErrNeedsIssuer = errors.New("issuer: this action needs the running issuer")
	// ErrNoBackup: the store engine makes no file copy of itself (a
	// database engine is backed up with the database's own tools).
	ErrNoBackup = errors.New("issuer: this store engine has no file backup")
)

// Operator says who asks for an admin action and why; the audit log
// records both.
type Operator struct {
	// Actor is who asks, e.g. "uid=1000(alice) pid=4242 via admin socket".
	Actor string
	// Reason is the operator's reason, free text (may be empty).
	Reason string
}

// maxReason bounds an operator's reason.
const maxReason = 1024

func (op Operator) check() error {
	if op.Actor == "" {
		return errors.New("issuer: admin action without an actor")
	}
	if len(op.Reason) > maxReason {
		return fmt.Errorf("issuer: reason of %d bytes is too long (at most %d)", len(op.Reason), maxReason)
	}
	return nil
}

// LocalActor names the current OS user and process, for actions taken on
// this machine: "uid=1000(alice) pid=4242".
func LocalActor() string { return ActorOf(os.Getuid(), os.Getpid()) }

// ActorOf names OS user uid and process pid: "uid=1000(alice) pid=4242".
func ActorOf(uid, pid int) string {
	name := strconv.Itoa(uid)
	if u, err := user.LookupId(name); err == nil {
		name = u.Username
	}
	return fmt.Sprintf("uid=%d(%s) pid=%d", uid, name, pid)
}

// Admin is what an operator can see and do. The running issuer
// (Issuer.Admin), a stopped store (StoreAdmin) and the admin socket's
// client implement it alike.
type Admin interface {
	// Devices lists every device, sorted by id.
	Devices() ([]DeviceInfo, error)
	// Device shows one device; ErrUnknownDevice if there is none.
	Device(id string) (DeviceInfo, error)
	// LastEpoch is the last issued epoch.
	LastEpoch() (uint64, error)
	// Reset forgets the device's pinned key (see resetRecord).
	Reset(id string, op Operator) error
	// Revoke stops issuing tickets to the device.
	Revoke(id string, op Operator) error
	// Release makes a quarantined or revoked device active again.
	Release(id string, op Operator) error
	// Approve pins the registration the device holds for approval.
	Approve(id string, op Operator) error
	// Audit returns the audit log, oldest first.
	Audit() ([]AuditEntry, error)
	// Backup writes a consistent copy of the store to w (a bbolt file;
	// ErrNoBackup for an engine without one).
	Backup(w io.Writer) error
	// Enroll imports devices for the enrollment policy (enroll.go).
	Enroll(entries []Enrollment, op Operator) (EnrollResult, error)
	// Deny drops the registration the device holds for approval
	// (enroll.go).
	Deny(id string, op Operator) error
}

// backuper is a store engine that copies itself consistently.
type backuper interface {
	Backup(w io.Writer) (int64, error)
}

func backupStore(st Store, w io.Writer) error {
	b, ok := st.(backuper)
	if !ok {
		return fmt.Errorf("%w: %s", ErrNoBackup, st.Name())
	}
	_, err := b.Backup(w)
	return err
}

// resetRecord forgets the device's pinned key, the keys and secrets of its
// latest ticket and its Status history, and makes it active: its next
// Registration is pinned as if it were the first (trust on first use
// again). The chain head (latest epoch and ticket_hash) is kept, so the
// next ticket's prev still links to it. The latest ticket is no longer
// republished.
func resetRecord(r *record) {
	r.State = stateActive
	r.RegAlg, r.RegKey, r.PinnedAt = 0, nil, 0
	r.Ticket, r.KeyAlg, r.Key = nil, 0, nil
	r.clearTicketSecrets()
	r.clearStatus()
}

// releaseRecord makes a quarantined or revoked device active again and
// forgets its Status history (the next Status is the new baseline for
// clone detection). Its pinned key and chain are kept.
func releaseRecord(r *record) {
	r.State = stateActive
	r.clearStatus()
}

// revokeChange and releaseChange are the audited changes of revoke and
// release, the same for both admins.
func revokeChange(r *record) (string, error) {
	before := r.State
	r.State = stateRevoked
	return stateChange(before, r), nil
}

func releaseChange(r *record) (string, error) {
	before := r.State
	releaseRecord(r)
	return stateChange(before, r), nil
}

// applyAdmin changes device id's record with fn and appends the audit
// entry for action, in one transaction of st.
func applyAdmin(st Store, now time.Time, action, id string, op Operator, fn func(*record) (detail string, err error)) error {
	if err := op.check(); err != nil {
		return err
	}
	if err := wire.ValidateDeviceID(id); err != nil {
		return fmt.Errorf("issuer: %s: %w", action, err)
	}
	return st.Update(func(tx Tx) error {
		var detail string
		err := updateDevice(tx, id, func(r *record) (err error) {
			detail, err = fn(r)
			return err
		})
		if err != nil {
			return err
		}
		return tx.AppendAudit(AuditEntry{Time: unixSeconds(now), Actor: op.Actor, Action: action,
			Device: id, Reason: op.Reason, Detail: detail})
	})
}

// stateChange describes a record's state change for the audit log.
func stateChange(before uint64, r *record) string {
	return fmt.Sprintf("state %s -> %s", stateName(before), stateName(r.State))
}

func resetDetail(r *record) string {
	if r.RegKey == nil {
		return "no key was pinned"
	}
	return "forgot pinned key " + shortHash(kem.PublicKeyHash(r.RegKey))
}

// readAudit returns st's audit log.
func readAudit(st Store) ([]AuditEntry, error) {
	var out []AuditEntry
	err := st.View(func(tx ReadTx) error {
		return tx.Audit(func(e AuditEntry) error {
			out = append(out, e)
			return nil
		})
	})
	return out, err
}

// readDevices returns every device of st, sorted by id.
func readDevices(st Store, judge func(*record) string) ([]DeviceInfo, error) {
	var out []DeviceInfo
	err := st.View(func(tx ReadTx) error {
		return tx.Devices(func(r *record) error {
			d := r.info()
			d.Standing = judge(r)
			out = append(out, d)
			return nil
		})
	})
	return out, err
}

// readDevice returns device id of st, or ErrUnknownDevice.
func readDevice(st Store, id string, judge func(*record) string) (DeviceInfo, error) {
	var d DeviceInfo
	err := st.View(func(tx ReadTx) error {
		r, err := tx.Device(id)
		if err != nil {
			return err
		}
		if r == nil {
			return fmt.Errorf("%w: %q", ErrUnknownDevice, id)
		}
		d = r.info()
		d.Standing = judge(r)
		return nil
	})
	return d, err
}

func readLastEpoch(st Store) (uint64, error) {
	var e uint64
	err := st.View(func(tx ReadTx) (err error) {
		e, err = tx.LastEpoch()
		return err
	})
	return e, err
}

// StoreAdmin administers a stopped issuer's store directly. Approve needs
// the running issuer (ErrNeedsIssuer): only it holds the registrations
// awaiting approval.
type StoreAdmin struct {
	Store Store
	// Now is the clock for audit entries (default time.Now).
	Now func() time.Time
}

func (a StoreAdmin) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

func (a StoreAdmin) Devices() ([]DeviceInfo, error) { return readDevices(a.Store, judge(a.now(), nil)) }
func (a StoreAdmin) Device(id string) (DeviceInfo, error) {
	return readDevice(a.Store, id, judge(a.now(), nil))
}
func (a StoreAdmin) LastEpoch() (uint64, error)   { return readLastEpoch(a.Store) }
func (a StoreAdmin) Audit() ([]AuditEntry, error) { return readAudit(a.Store) }
func (a StoreAdmin) Backup(w io.Writer) error     { return backupStore(a.Store, w) }

func (a StoreAdmin) Reset(id string, op Operator) error {
	return applyAdmin(a.Store, a.now(), "reset", id, op, func(r *record) (string, error) {
		d := resetDetail(r)
		resetRecord(r)
		return d, nil
	})
}

func (a StoreAdmin) Revoke(id string, op Operator) error {
	return applyAdmin(a.Store, a.now(), "revoke", id, op, revokeChange)
}

func (a StoreAdmin) Release(id string, op Operator) error {
	return applyAdmin(a.Store, a.now(), "release", id, op, releaseChange)
}

func (a StoreAdmin) Approve(id string, op Operator) error {
	return fmt.Errorf("%w: approving %q pins the registration the running issuer holds; start the issuer and run approve again", ErrNeedsIssuer, id)
}

// OnlineAdmin is the running issuer's operator actions (the Admin
// interface, CohortAdmin, and Recover): every action is serialised with
// message handling and epochs, and audited. The Issuer itself keeps only
// the protocol role and its lifecycle; Issuer.Admin hands out this view.
type OnlineAdmin struct{ i *Issuer }

var (
	_ Admin       = OnlineAdmin{}
	_ CohortAdmin = OnlineAdmin{}
)

// Admin returns the running issuer's operator actions.
func (i *Issuer) Admin() OnlineAdmin { return OnlineAdmin{i} }

func (a OnlineAdmin) Devices() ([]DeviceInfo, error) { return readDevices(a.i.store, a.i.judge()) }
func (a OnlineAdmin) Device(id string) (DeviceInfo, error) {
	return readDevice(a.i.store, id, a.i.judge())
}
func (a OnlineAdmin) LastEpoch() (uint64, error)   { return readLastEpoch(a.i.store) }
func (a OnlineAdmin) Audit() ([]AuditEntry, error) { return readAudit(a.i.store) }
func (a OnlineAdmin) Backup(w io.Writer) error     { return backupStore(a.i.store, w) }

// Reset forgets device id's pinned key (see resetRecord). If a
// registration with a new key was refused since the issuer started, it is
// pinned now, in the same transaction. When connected, it then clears the
// device's retained ticket: a running device takes that as its cue to
// register its live key (its retained registration may name a key it
// rotated away since), which is pinned as a first registration, so a live
// device comes back without touching its files (schema/PROTOCOL.md §7.6).
func (a OnlineAdmin) Reset(id string, op Operator) error {
	if err := a.i.reset(id, op); err != nil {
		return err
	}
	return a.i.clearTicket(id, "reset")
}

// clearTicket clears device id's retained ticket topic when connected.
func (i *Issuer) clearTicket(id, why string) error {
	if i.client.Load() == nil {
		return nil
	}
	i.pubMu.Lock()
	defer i.pubMu.Unlock()
	if failed := i.publishAll([]pubMsg{{topic: i.topics.Ticket(id)}}); failed > 0 {
		return fmt.Errorf("%w: clearing ticket of %s device %q", ErrPublish, why, id)
	}
	return nil
}

func (i *Issuer) reset(id string, op Operator) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	held := i.pending[id]
	err := applyAdmin(i.store, i.cfg.Now(), "reset", id, op, func(r *record) (string, error) {
		d := resetDetail(r)
		resetRecord(r)
		if held != nil {
			reg, err := wire.ParseRegistration(held)
			if err == nil {
				i.pin(r, id, reg)
				d += "; pinned the refused registration " + shortHash(kem.PublicKeyHash(reg.PublicKey))
			}
		}
		return d, nil
	})
	if err != nil {
		return err
	}
	delete(i.pending, id)
	i.log.Warn("operator reset device", "device", id, "actor", op.Actor, "reason", clip(op.Reason))
	i.notify()
	return nil
}

// Approve pins the registration device id holds for approval (one refused
// since the issuer started because its key changed), as Reset would, and
// ErrNothingToApprove if there is none.
func (a OnlineAdmin) Approve(id string, op Operator) error {
	a.i.mu.Lock()
	defer a.i.mu.Unlock()
	held := a.i.pending[id]
	if held == nil {
		return fmt.Errorf("%w: device %q", ErrNothingToApprove, id)
	}
	reg, err := wire.ParseRegistration(held)
	if err != nil {
		return fmt.Errorf("issuer: held registration of %q: %w", id, err)
	}
	err = op.check()
	if err == nil {
		err = a.i.store.Update(func(tx Tx) error {
			r, err := tx.Device(id)
			if err != nil {
				return err
			}
			detail := "pinned key " + shortHash(kem.PublicKeyHash(reg.PublicKey))
			if r != nil {
				detail = resetDetail(r) + "; " + detail
				resetRecord(r)
			}
			if err := tx.PutDevice(a.i.pin(r, id, reg).rec); err != nil {
				return err
			}
			return tx.AppendAudit(AuditEntry{Time: unixSeconds(a.i.cfg.Now()), Actor: op.Actor, Action: "approve",
				Device: id, Reason: op.Reason, Detail: detail})
		})
	}
	if err != nil {
		return err
	}
	delete(a.i.pending, id)
	a.i.log.Warn("operator approved device registration", "device", id, "actor", op.Actor, "reason", clip(op.Reason),
		"pk_hash", shortHash(kem.PublicKeyHash(reg.PublicKey)))
	a.i.notify()
	return nil
}

// Revoke stops issuing tickets to device id, and clears its retained
// ticket topic when connected.
func (a OnlineAdmin) Revoke(id string, op Operator) error {
	if err := a.apply("revoke", id, op, revokeChange, "operator revoked device"); err != nil {
		return err
	}
	return a.i.clearTicket(id, "revoked")
}

// Release makes a quarantined or revoked device active again (see
// releaseRecord).
func (a OnlineAdmin) Release(id string, op Operator) error {
	return a.apply("release", id, op, releaseChange, "operator released device")
}

// apply makes the audited change fn of action to device id under the
// issuer's lock, then logs msg and wakes the waiters.
func (a OnlineAdmin) apply(action, id string, op Operator, fn func(*record) (string, error), msg string) error {
	a.i.mu.Lock()
	err := applyAdmin(a.i.store, a.i.cfg.Now(), action, id, op, fn)
	a.i.mu.Unlock()
	if err != nil {
		return err
	}
	a.i.log.Warn(msg, "device", id, "actor", op.Actor, "reason", clip(op.Reason))
	a.i.notify()
	return nil
}
