package issuer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime/debug"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/keyschedule"
)

// The bbolt engine: one file, the embedded default. Its layout:
//
//	meta       version (u64be), last_epoch (u64be), epoch_info (EpochInfo bytes)
//	devices    device id → record (CBOR)
//	roots      u64be epoch → COSE_Sign1 root
//	rotations  u64be sequence → COSE_Sign1 key rotation (optional)
//	audit      u64be sequence → AuditEntry (CBOR) (optional)
//
// bbolt allows one writer process: a running issuer holds the file locked,
// so operator commands reach it through its admin socket instead.

// Store layout versions, written to the meta bucket. Version 2 adds the
// rotations bucket (rotation.go). A store is raised from 1 to 2 by the
// transaction that stores its first key rotation, so that an ekem-issuer
// too old to know about key rotations refuses it (ErrStoreCorrupt) rather
// than signing with the key the rotation retired. A store without a
// rotation stays at version 1, readable by older versions. The audit
// bucket needs no new version: older versions ignore it.
const (
	storeVersion1 = 1
	storeVersion  = 2 // the newest this version reads
)

var (
	bucketMeta      = []byte("meta")
	bucketDevices   = []byte("devices")
	bucketRoots     = []byte("roots")
	bucketRotations = []byte("rotations")
	bucketAudit     = []byte("audit")

	keyVersion   = []byte("version")
	keyLastEpoch = []byte("last_epoch")
	keyEpochInfo = []byte("epoch_info")
)

// boltStore is the bbolt engine of Store.
type boltStore struct {
	db   *bolt.DB
	path string
}

// corruptHint tells an operator what to do with a damaged store file.
const corruptHint = "move the file aside, then restore the latest backup or start an empty store and run 'ekem-issuer recover' (README: \"Backups and recovery\")"

// corrupt wraps ErrStoreCorrupt with the file and what to do.
func (s *boltStore) corrupt(cause any) error {
	return corruptFile(s.path, cause)
}

func corruptFile(path string, cause any) error {
	return fmt.Errorf("%w: %s: %v (hint: %s)", ErrStoreCorrupt, path, cause, corruptHint)
}

// guard turns a bbolt panic or a memory fault on the mapped file (a
// truncated or garbled store) into ErrStoreCorrupt. It must be deferred
// by the goroutine that touches the mapping.
func (s *boltStore) guard(err *error) {
	if r := recover(); r != nil {
		*err = s.corrupt(fmt.Sprintf("unreadable page (%v)", r))
	}
}

// faults makes a memory fault on this goroutine a recoverable panic, and
// returns the function that restores the previous setting.
func faults() func() {
	old := debug.SetPanicOnFault(true)
	return func() { debug.SetPanicOnFault(old) }
}

func openBolt(path string, readOnly bool) (Store, error) {
	if path == "" {
		return nil, fmt.Errorf("issuer: no store path")
	}
	fi, err := os.Stat(path)
	switch {
	case err == nil && fi.Size() > 0:
		// An existing store is checked whole, read-only, first: bbolt can
		// panic inside a read-write Open on a damaged file (its free
		// list), and the mapping it leaves would keep the file locked.
		db, err := openBoltDB(path, true)
		if err != nil {
			return nil, err
		}
		err = (&boltStore{db: db, path: path}).check()
		db.Close()
		if err != nil {
			return nil, err
		}
	case readOnly && err != nil:
		return nil, fmt.Errorf("issuer: store %s: %w", path, err)
	}
	db, err := openBoltDB(path, readOnly)
	if err != nil {
		return nil, err
	}
	s := &boltStore{db: db, path: path}
	if err := s.init(readOnly); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// openBoltDB opens the file with bbolt, its failures as store errors.
func openBoltDB(path string, readOnly bool) (db *bolt.DB, err error) {
	s := &boltStore{path: path}
	defer faults()()
	defer s.guard(&err)
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: readOnly})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("%w: %s (hint: the running ekem-issuer answers operator commands on its admin socket; to open the file itself, stop it first)", ErrStoreLocked, path)
	case isBoltCorrupt(err):
		return nil, s.corrupt(err)
	case err != nil:
		return nil, fmt.Errorf("issuer: open store %s: %w", path, err)
	}
	return db, nil
}

// check reads every page of the store once, so that a truncated or
// garbled file is refused at open, with its name, rather than failing in
// the middle of an epoch: the file must hold every page up to the
// high-water mark, every bucket is walked (with memory faults turned into
// errors), then bbolt's own consistency check runs (free list, page
// reachability, key order).
func (s *boltStore) check() error {
	return s.view(func(tx *bolt.Tx) error {
		fi, err := os.Stat(s.path)
		if err != nil {
			return fmt.Errorf("issuer: store %s: %w", s.path, err)
		}
		if fi.Size() < tx.Size() {
			return s.corrupt(fmt.Sprintf("truncated: %d bytes, its pages need %d", fi.Size(), tx.Size()))
		}
		if err := tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error { return nil })
		}); err != nil {
			return s.corrupt(err)
		}
		var errs []error
		for err := range tx.Check() {
			if len(errs) < 3 {
				errs = append(errs, err)
			}
		}
		if len(errs) > 0 {
			return s.corrupt(errors.Join(errs...))
		}
		return nil
	})
}

// isBoltCorrupt reports whether bolt.Open failed on the file's content
// rather than on the file system.
func isBoltCorrupt(err error) bool {
	if err == nil {
		return false
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return false
	}
	return errors.Is(err, berrors.ErrInvalid) || errors.Is(err, berrors.ErrVersionMismatch) ||
		errors.Is(err, berrors.ErrChecksum) || strings.Contains(err.Error(), "file size too small") ||
		strings.Contains(err.Error(), "invalid")
}

// init checks the store's layout and, unless readOnly,
// creates the buckets of a new store. An existing store is only read: a
// bbolt commit rewrites a meta page even when nothing changed, and opening
// a store must not change its file (operator commands that refuse leave it
// byte-identical).
func (s *boltStore) init(readOnly bool) error {
	check := func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		if m == nil || tx.Bucket(bucketDevices) == nil || tx.Bucket(bucketRoots) == nil {
			return s.corrupt("missing buckets")
		}
		v := m.Get(keyVersion)
		if len(v) != 8 {
			return s.corrupt("no layout version")
		}
		if n := binary.BigEndian.Uint64(v); n != storeVersion1 && n != storeVersion {
			return fmt.Errorf("%w: %s: layout version %d (hint: written by a newer ekem-issuer; run that version)", ErrStoreCorrupt, s.path, n)
		}
		return nil
	}
	if err := s.view(check); err == nil || readOnly || !s.isNew() {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketDevices, bucketRoots} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("issuer: store %s: %w", s.path, err)
			}
		}
		m := tx.Bucket(bucketMeta)
		if m.Get(keyVersion) == nil {
			if err := m.Put(keyVersion, keyschedule.U64(storeVersion1)); err != nil {
				return fmt.Errorf("issuer: store %s: %w", s.path, err)
			}
		}
		return check(tx)
	})
}

// isNew reports whether the file holds no bucket at all: a store bbolt
// has just created. Anything else missing its buckets is damaged, and is
// refused rather than silently completed.
func (s *boltStore) isNew() bool {
	empty := false
	_ = s.view(func(tx *bolt.Tx) error {
		k, _ := tx.Cursor().First()
		empty = k == nil
		return nil
	})
	return empty
}

// view and update run a bbolt transaction with faults turned into errors.
func (s *boltStore) view(fn func(*bolt.Tx) error) (err error) {
	defer faults()()
	defer s.guard(&err)
	return s.db.View(fn)
}

func (s *boltStore) update(fn func(*bolt.Tx) error) (err error) {
	defer faults()()
	defer s.guard(&err)
	return s.db.Update(fn)
}

func (s *boltStore) Name() string { return s.path }

// Backup writes a consistent copy of the file (one read transaction:
// writers go on meanwhile).
func (s *boltStore) Backup(w io.Writer) (n int64, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}

func (s *boltStore) Close() error { return s.db.Close() }

func (s *boltStore) View(fn func(ReadTx) error) error {
	return s.view(func(tx *bolt.Tx) error { return fn(boltTx{tx: tx, s: s}) })
}

// Update commits only a transaction that wrote something: a bbolt commit
// rewrites a meta page even when empty, and rejected input must leave the
// file byte-identical.
func (s *boltStore) Update(fn func(Tx) error) (err error) {
	if s.db.IsReadOnly() {
		return fmt.Errorf("%w: %s", ErrReadOnly, s.path)
	}
	defer faults()()
	defer s.guard(&err)
	tx, err := s.db.Begin(true)
	if err != nil {
		return fmt.Errorf("issuer: store %s: %w", s.path, err)
	}
	w := &writes{}
	if err := fn(boltTx{tx: tx, s: s, w: w}); err != nil || !w.any {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("issuer: store %s: commit: %w", s.path, err)
	}
	return nil
}

func (s *boltStore) CommitEpoch(c *EpochCommit) (cleared []uint64, err error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	encoded, err := encodeRecords(c.Records)
	if err != nil {
		return nil, err
	}
	err = s.Update(func(t Tx) error {
		btx := t.(boltTx)
		last, err := btx.LastEpoch()
		if err != nil {
			return err
		}
		if last != c.Prev {
			return fmt.Errorf("%w: epoch %d was planned after %d, but the store's last epoch is now %d", ErrEpochFence, c.Epoch, c.Prev, last)
		}
		b := btx.tx.Bucket(bucketDevices)
		for n, r := range c.Records {
			if err := b.Put([]byte(r.ID), encoded[n]); err != nil {
				return fmt.Errorf("issuer: store device record: %w", err)
			}
		}
		btx.w.any = true
		if c.storesRoot() {
			if cleared, err = btx.putRoot(c.Epoch, c.Root, c.KeepRoots); err != nil {
				return err
			}
		}
		m := btx.tx.Bucket(bucketMeta)
		if err := m.Put(keyLastEpoch, keyschedule.U64(c.Epoch)); err != nil {
			return err
		}
		if !c.storesRoot() {
			return nil
		}
		return m.Put(keyEpochInfo, c.Info)
	})
	if err != nil {
		return nil, err
	}
	return cleared, nil
}

// writes records whether a transaction wrote anything.
type writes struct{ any bool }

// boltTx is a bbolt transaction seen as a ReadTx or Tx; w is nil for a
// read-only one.
type boltTx struct {
	tx *bolt.Tx
	s  *boltStore
	w  *writes
}

func (t boltTx) LastEpoch() (uint64, error) {
	v := t.tx.Bucket(bucketMeta).Get(keyLastEpoch)
	if v == nil {
		return 0, nil
	}
	if len(v) != 8 {
		return 0, t.s.corrupt("last epoch")
	}
	return binary.BigEndian.Uint64(v), nil
}

func (t boltTx) EpochInfo() ([]byte, error) {
	return bytes.Clone(t.tx.Bucket(bucketMeta).Get(keyEpochInfo)), nil
}

func (t boltTx) Device(id string) (*record, error) {
	b := t.tx.Bucket(bucketDevices).Get([]byte(id))
	if b == nil {
		return nil, nil
	}
	r, err := decodeRecord(b)
	if err != nil {
		return nil, t.s.corrupt(err)
	}
	return r, nil
}

// devicesChunk is how many records Devices decodes at once, in parallel.
const devicesChunk = 4096

// Devices decodes the records in chunks spread over the CPUs (strict CBOR
// decoding costs ~10 µs a record: seconds at a million), so memory stays
// bounded by a chunk beyond what fn keeps.
func (t boltTx) Devices(fn func(*record) error) error {
	return t.devices(nil, nil, decodeRecords, fn)
}

func (t boltTx) DeviceHeads(fn func(*record) error) error {
	return t.devices(nil, nil, decodeHeads, fn)
}

func (t boltTx) DeviceRange(from, to string, fn func(*record) error) error {
	if from > to {
		return nil
	}
	return t.devices([]byte(from), []byte(to), decodeRecords, fn)
}

// devices calls fn for the records from from (nil: the first) to to (nil:
// the last), in id order, decoding them a batch at a time on every CPU.
func (t boltTx) devices(from, to []byte, decode func([][]byte) ([]*record, error), fn func(*record) error) error {
	c := t.tx.Bucket(bucketDevices).Cursor()
	vals := make([][]byte, 0, devicesChunk)
	flush := func() error {
		recs, err := decode(vals)
		if err != nil {
			return t.s.corrupt(err)
		}
		vals = vals[:0]
		for _, r := range recs {
			if err := fn(r); err != nil {
				return err
			}
		}
		return nil
	}
	k, v := c.First()
	if from != nil {
		k, v = c.Seek(from)
	}
	for ; k != nil && (to == nil || bytes.Compare(k, to) <= 0); k, v = c.Next() {
		vals = append(vals, v)
		if len(vals) == devicesChunk {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

func (t boltTx) Roots() ([]StoredRoot, error) {
	var out []StoredRoot
	err := t.tx.Bucket(bucketRoots).ForEach(func(k, v []byte) error {
		if len(k) != 8 {
			return t.s.corrupt("root key")
		}
		out = append(out, StoredRoot{Epoch: binary.BigEndian.Uint64(k), Root: bytes.Clone(v)})
		return nil
	})
	return out, err
}

func (t boltTx) Root(epoch uint64) ([]byte, error) {
	return bytes.Clone(t.tx.Bucket(bucketRoots).Get(keyschedule.U64(epoch))), nil
}

func (t boltTx) Rotations() ([][]byte, error) {
	b := t.tx.Bucket(bucketRotations)
	if b == nil {
		return nil, nil
	}
	var out [][]byte
	err := b.ForEach(func(k, v []byte) error {
		if len(k) != 8 {
			return t.s.corrupt("key rotation key")
		}
		out = append(out, bytes.Clone(v))
		return nil
	})
	return out, err
}

func (t boltTx) Audit(fn func(AuditEntry) error) error {
	b := t.tx.Bucket(bucketAudit)
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, v []byte) error {
		var e AuditEntry
		if len(k) != 8 {
			return t.s.corrupt("audit key")
		}
		if err := cbor.Unmarshal(v, maxAuditEntry, &e); err != nil {
			return t.s.corrupt(fmt.Sprintf("audit entry %d: %v", binary.BigEndian.Uint64(k), err))
		}
		return fn(e)
	})
}

func (t boltTx) writable() error {
	if t.w == nil {
		return fmt.Errorf("%w: %s", ErrReadOnly, t.s.path)
	}
	t.w.any = true
	return nil
}

func (t boltTx) PutDevice(r *record) error {
	if err := t.writable(); err != nil {
		return err
	}
	b, err := cbor.Marshal(r)
	if err != nil {
		return fmt.Errorf("issuer: encode device record: %w", err)
	}
	if err := t.tx.Bucket(bucketDevices).Put([]byte(r.ID), b); err != nil {
		return fmt.Errorf("issuer: store device record: %w", err)
	}
	return nil
}

func (t boltTx) AddRotation(signed []byte) error {
	if err := t.writable(); err != nil {
		return err
	}
	b, err := t.tx.CreateBucketIfNotExists(bucketRotations)
	if err != nil {
		return fmt.Errorf("issuer: store: %w", err)
	}
	seq, err := b.NextSequence()
	if err != nil {
		return fmt.Errorf("issuer: store: %w", err)
	}
	if err := b.Put(keyschedule.U64(seq), signed); err != nil {
		return fmt.Errorf("issuer: store key rotation: %w", err)
	}
	// Raise the layout version (see storeVersion).
	return t.tx.Bucket(bucketMeta).Put(keyVersion, keyschedule.U64(storeVersion))
}

func (t boltTx) AppendAudit(e AuditEntry) error {
	if err := e.validate(); err != nil {
		return err
	}
	if err := t.writable(); err != nil {
		return err
	}
	b, err := t.tx.CreateBucketIfNotExists(bucketAudit)
	if err != nil {
		return fmt.Errorf("issuer: store: %w", err)
	}
	if e.Seq, err = b.NextSequence(); err != nil {
		return fmt.Errorf("issuer: store: %w", err)
	}
	v, err := cbor.Marshal(e)
	if err != nil {
		return fmt.Errorf("issuer: encode audit entry: %w", err)
	}
	return b.Put(keyschedule.U64(e.Seq), v)
}

func (t boltTx) Recover(floor uint64, roots []StoredRoot, info []byte) error {
	last, err := t.LastEpoch()
	if err != nil {
		return err
	}
	if floor <= last {
		return fmt.Errorf("issuer: recovery floor %d is not above the last epoch %d", floor, last)
	}
	if err := t.writable(); err != nil {
		return err
	}
	if err := t.tx.DeleteBucket(bucketRoots); err != nil {
		return fmt.Errorf("issuer: store: %w", err)
	}
	rb, err := t.tx.CreateBucket(bucketRoots)
	if err != nil {
		return fmt.Errorf("issuer: store: %w", err)
	}
	for _, r := range roots {
		if err := rb.Put(keyschedule.U64(r.Epoch), r.Root); err != nil {
			return fmt.Errorf("issuer: store: %w", err)
		}
	}
	m := t.tx.Bucket(bucketMeta)
	if err := m.Put(keyLastEpoch, keyschedule.U64(floor)); err != nil {
		return fmt.Errorf("issuer: store: %w", err)
	}
	if info == nil {
		return m.Delete(keyEpochInfo)
	}
	return m.Put(keyEpochInfo, info)
}

// putRoot stores epoch's root and deletes stored roots that fall out of the
// last keep epochs, returning their epochs (whose topics are to be cleared).
func (t boltTx) putRoot(epoch uint64, root []byte, keep int) ([]uint64, error) {
	b := t.tx.Bucket(bucketRoots)
	if err := b.Put(keyschedule.U64(epoch), root); err != nil {
		return nil, err
	}
	var old []uint64
	c := b.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		e := binary.BigEndian.Uint64(k)
		if e+uint64(keep) > epoch {
			break
		}
		old = append(old, e)
	}
	for _, e := range old {
		if err := b.Delete(keyschedule.U64(e)); err != nil {
			return nil, err
		}
	}
	return old, nil
}
