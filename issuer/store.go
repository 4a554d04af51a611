package issuer

import (
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/entropykem/entropykem/pkg/wire"
)

// The issuer's durable state lives behind one small transactional
// interface, Store, in the spirit of tailscale tka's Chonk: the issuer's
// logic never opens an engine's transaction itself, so a second engine is a
// new file, not an edit across the package. store_bolt.go is the embedded
// engine (one bbolt file). Every engine passes the same conformance suite
// (store_conformance_test.go).
//
// What is stored: every device's record (pinned key, latest ticket and chain
// head, the MAC keys derived from its ss, never ss itself, its last Status),
// the last issued epoch and its EpochInfo, the last few signed epoch roots,
// the issuer key rotation announcements, and the audit log of operator
// actions. The broker is only a cache of it (schema/PROTOCOL.md §6).

// Store errors callers tell apart.
var (
	// ErrStoreLocked: another process (a running ekem-issuer) holds the
	// store open.
	ErrStoreLocked = errors.New("issuer: store is in use by another process")
	// ErrStoreCorrupt: the store is damaged (truncated, garbled) or holds
	// something this version cannot read. Nothing was changed.
	ErrStoreCorrupt = errors.New("issuer: store is corrupt or of an unknown version")
	// ErrUnknownDevice: no device with that id is in the store.
	ErrUnknownDevice = errors.New("issuer: unknown device")
	// ErrEpochFence: an epoch commit found another last epoch than the one
	// its plan read (another writer issued meanwhile, or recovery raised
	// the floor). Nothing was committed.
	ErrEpochFence = errors.New("issuer: epoch commit fenced: the stored last epoch changed")
	// ErrReadOnly: a write was attempted on a store opened read-only.
	ErrReadOnly = errors.New("issuer: store is open read-only")
	// ErrEpochConflict: an epoch commit found a device record changed
	// since its plan read it (an operator action on a shared store).
	// Nothing was committed; planning the epoch again is safe.
	ErrEpochConflict = errors.New("issuer: epoch commit refused: a device record changed since the epoch was planned")
	// ErrNotLeader: an epoch commit's fencing token is not the current
	// leader lease's (the lease was lost, expired or taken over), or a
	// commit without a token met a live lease. Nothing was committed.
	ErrNotLeader = errors.New("issuer: not the leader: the lease is held by another instance, or was lost")
)

// maxRecord bounds a stored device record: a ticket, three keys and tags.
const maxRecord = wire.MaxTicket + 4*1568 + 1024

// maxAuditEntry bounds one stored audit entry.
const maxAuditEntry = 4096

// Store is the issuer's durable state. Its methods are safe for concurrent
// use; a write transaction excludes every other one.
type Store interface {
	// View runs fn on a consistent, read-only snapshot of the store.
	View(fn func(ReadTx) error) error
	// Update runs fn in one read-write transaction: everything fn wrote is
	// committed if fn returns nil, nothing otherwise. A transaction that
	// wrote nothing leaves the store unchanged (its file byte-identical).
	Update(fn func(Tx) error) error
	// CommitEpoch persists one issued epoch atomically (c.Stage
	// StageWhole): its device records, its root, the new last epoch and its
	// EpochInfo; or one stage of a streamed epoch (EpochStage). It is
	// fenced: it commits only if the stored last epoch is still c.Prev,
	// else it returns an error wrapping ErrEpochFence and changes nothing.
	// It returns the epochs whose roots it dropped (outside the last
	// c.KeepRoots), whose retained topics are to be cleared.
	CommitEpoch(c *EpochCommit) (cleared []uint64, err error)
	// Name names the store in messages: a file path, or a database
	// address without its credentials.
	Name() string
	// Close releases the store.
	Close() error
}

// ReadTx reads a consistent snapshot. Records it returns are the caller's.
type ReadTx interface {
	// LastEpoch is the last issued epoch (or the floor set by recovery),
	// 0 for a new store.
	LastEpoch() (uint64, error)
	// EpochInfo is the encoded EpochInfo of the last issued epoch, nil if
	// none.
	EpochInfo() ([]byte, error)
	// Device returns one device's record, nil if there is none.
	Device(id string) (*record, error)
	// Devices calls fn for every device record, in id order, stopping at
	// fn's first error.
	Devices(fn func(*record) error) error
	// DeviceRange calls fn for every device record whose id is in
	// [from, to] (bytewise), in id order, stopping at fn's first error: one
	// chunk of a streamed epoch is one range read.
	DeviceRange(from, to string, fn func(*record) error) error
	// DeviceHeads calls fn, in id order, with a head of every device
	// record: only ID, State and (non-nil, empty, if a key is pinned)
	// RegKey are set, and the revision; nothing else is decoded, and the
	// head is only for selecting devices (an epoch's plan), whose records
	// are then read in full.
	DeviceHeads(fn func(*record) error) error
	// Roots returns the stored epoch roots, oldest first.
	Roots() ([]StoredRoot, error)
	// Root returns the stored root of epoch, nil if none.
	Root(epoch uint64) ([]byte, error)
	// Rotations returns the stored issuer key rotation announcements
	// (COSE_Sign1 over a wire.KeyRotation), oldest first.
	Rotations() ([][]byte, error)
	// Audit calls fn for every audit entry, oldest first.
	Audit(fn func(AuditEntry) error) error
}

// Tx is a read-write transaction.
type Tx interface {
	ReadTx
	// PutDevice writes one device record, replacing any.
	PutDevice(r *record) error
	// AddRotation appends a key rotation announcement.
	AddRotation(signed []byte) error
	// AppendAudit appends an entry to the audit log; the store sets its
	// Seq.
	AppendAudit(e AuditEntry) error
	// Recover sets the epoch floor after a store loss: the last epoch
	// becomes floor, which must be above the stored one, the stored roots
	// are replaced by roots and the EpochInfo by info (nil: none).
	Recover(floor uint64, roots []StoredRoot, info []byte) error
}

// StoredRoot is one epoch's signed root (a COSE_Sign1).
type StoredRoot struct {
	Epoch uint64
	Root  []byte
}

// EpochStage is what one Store.CommitEpoch of an epoch commits. A
// streamed epoch (schema/PROTOCOL.md §6) is one StageBegin, then one
// StageChunk per chunk of tickets, then one StageFinish: the epoch number
// is durable before its first ticket is published, each chunk's records
// before its tickets, the root before it is published. An epoch begun but
// never finished is abandoned: its number stays used (the next epoch is
// above it) and its root is never stored.
type EpochStage uint8

const (
	// StageWhole commits a whole epoch at once: records, root, EpochInfo
	// and the last epoch (Prev < Epoch).
	StageWhole EpochStage = iota
	// StageBegin takes the epoch number: the last epoch becomes Epoch
	// (Prev < Epoch). No records, root or EpochInfo.
	StageBegin
	// StageChunk writes records of the begun epoch Epoch (Prev = Epoch).
	StageChunk
	// StageFinish writes the begun epoch's root and EpochInfo, and any
	// records (Prev = Epoch).
	StageFinish
)

// EpochCommit is one issued epoch, or a stage of one, for
// Store.CommitEpoch.
type EpochCommit struct {
	// Stage is what this commit holds (StageWhole: a whole epoch).
	Stage EpochStage
	// Prev is the last epoch the plan read: the commit is fenced on it. For
	// StageChunk and StageFinish it is Epoch, taken by StageBegin.
	Prev uint64
	// Epoch is the issued epoch, above Prev (equal to it for StageChunk
	// and StageFinish).
	Epoch uint64
	// Records are the device records of the epoch's tickets.
	Records []*record
	// Root is the epoch's signed root; Info its encoded EpochInfo.
	Root, Info []byte
	// KeepRoots is how many roots stay stored, this one included.
	KeepRoots int
	// Token is the fencing token of the committing instance's leader
	// lease (lease.go), 0 for an instance without one. An engine with
	// leases commits only if Token is still the current lease's token and
	// the lease has not expired (or, for 0, if no lease is live), in the
	// same transaction as the records: a deposed or paused leader can
	// never commit an epoch (ErrNotLeader).
	Token uint64
}

// AuditEntry is one operator action in the audit log.
type AuditEntry struct {
	// Seq numbers the entries from 1, in order; the store sets it.
	Seq uint64 `cbor:"0,keyasint" json:"seq"`
	// Time is when the action was taken, in Unix seconds.
	Time uint64 `cbor:"1,keyasint" json:"time"`
	// Actor is who asked: the OS user (and, through the admin socket, the
	// peer's pid).
	Actor string `cbor:"2,keyasint" json:"actor"`
	// Action is what was done: reset, revoke, release, approve, recover, …
	Action string `cbor:"3,keyasint" json:"action"`
	// Device is the device acted on, empty for fleet-wide actions.
	Device string `cbor:"4,keyasint,omitempty" json:"device,omitempty"`
	// Reason is the operator's reason, as given.
	Reason string `cbor:"5,keyasint,omitempty" json:"reason,omitempty"`
	// Detail is what the action found or changed.
	Detail string `cbor:"6,keyasint,omitempty" json:"detail,omitempty"`
}

// When is the entry's time.
func (e AuditEntry) When() time.Time { return time.Unix(int64(e.Time), 0).UTC() }

// validate bounds an entry before it is stored.
func (e AuditEntry) validate() error {
	if e.Action == "" {
		return fmt.Errorf("issuer: audit entry without an action")
	}
	if n := len(e.Actor) + len(e.Action) + len(e.Device) + len(e.Reason) + len(e.Detail); n > maxAuditEntry-64 {
		return fmt.Errorf("issuer: audit entry of %d bytes is too long (at most %d)", n, maxAuditEntry-64)
	}
	// CBOR text strings are UTF-8, and the strict decoder refuses
	// anything else: one such entry would make the whole log unreadable.
	for _, f := range []string{e.Actor, e.Action, e.Device, e.Reason, e.Detail} {
		if !utf8.ValidString(f) {
			return fmt.Errorf("issuer: audit entry %q: not valid UTF-8 text", e.Action)
		}
	}
	return nil
}

// OpenStore opens the store named by name: a PostgreSQL URL
// (postgres://… or postgresql://…, store_pg.go; its schema migrated
// unless readOnly) or a bbolt file path (created, unless readOnly, if
// missing). A bbolt store held open by a running issuer gives
// ErrStoreLocked; a damaged one ErrStoreCorrupt, naming the file and what
// to do.
func OpenStore(name string, readOnly bool) (Store, error) {
	if IsPostgresStore(name) {
		return openPostgres(name, readOnly)
	}
	return openBolt(name, readOnly)
}

// check refuses a commit whose Prev and Epoch do not fit its stage.
func (c *EpochCommit) check() error {
	switch c.Stage {
	case StageWhole, StageBegin:
		if c.Epoch <= c.Prev {
			return fmt.Errorf("issuer: epoch %d does not follow %d", c.Epoch, c.Prev)
		}
		if c.Stage == StageBegin && (len(c.Records) > 0 || c.Root != nil || c.Info != nil) {
			return fmt.Errorf("issuer: the beginning of epoch %d holds nothing but its number", c.Epoch)
		}
	case StageChunk, StageFinish:
		if c.Epoch != c.Prev {
			return fmt.Errorf("issuer: a chunk or the end of epoch %d fenced on epoch %d", c.Epoch, c.Prev)
		}
		if c.Stage == StageChunk && (c.Root != nil || c.Info != nil) {
			return fmt.Errorf("issuer: a chunk of epoch %d with a root", c.Epoch)
		}
	default:
		return fmt.Errorf("issuer: unknown epoch commit stage %d", c.Stage)
	}
	return nil
}

// storesRoot reports whether the commit stores a root and EpochInfo.
func (c *EpochCommit) storesRoot() bool { return c.Stage == StageWhole || c.Stage == StageFinish }

// lastEpochInfo reads the last epoch and its parsed EpochInfo (nil if none).
func lastEpochInfo(tx ReadTx) (uint64, *wire.EpochInfo, error) {
	e, err := tx.LastEpoch()
	if err != nil {
		return 0, nil, err
	}
	b, err := tx.EpochInfo()
	if err != nil || b == nil {
		return e, nil, err
	}
	info, err := wire.ParseEpochInfo(b)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: epoch info: %w", ErrStoreCorrupt, err)
	}
	return e, info, nil
}

// updateDevice applies fn to the record of id, which must exist, and
// writes it back.
func updateDevice(tx Tx, id string, fn func(*record) error) error {
	r, err := tx.Device(id)
	if err != nil {
		return err
	}
	if r == nil {
		return fmt.Errorf("%w: %q", ErrUnknownDevice, id)
	}
	if err := fn(r); err != nil {
		return err
	}
	return tx.PutDevice(r)
}
