package issuer

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Store errors.
var (
	// ErrStoreLocked: another process (a running ekem-issuer) holds the
	// store open.
	ErrStoreLocked = errors.New("issuer: store is in use by another process")
	// ErrStoreCorrupt: the store holds something this version cannot read.
	ErrStoreCorrupt = errors.New("issuer: store is corrupt or of an unknown version")
	// ErrUnknownDevice: no device with that id is in the store.
	ErrUnknownDevice = errors.New("issuer: unknown device")
)

// Store layout versions, written to the meta bucket. Version 2 adds the
// rotations bucket (rotation.go). A store is raised from 1 to 2 by the
// transaction that stores its first key rotation, so that an ekem-issuer
// too old to know about key rotations refuses it (ErrStoreCorrupt) rather
// than signing with the key the rotation retired. A store without a
// rotation stays at version 1, readable by older versions.
const (
	storeVersion1 = 1
	storeVersion  = 2 // the newest this version reads
)

// maxRecord bounds a stored device record: a ticket, three keys and tags.
const maxRecord = wire.MaxTicket + 4*1568 + 1024

var (
	bucketMeta    = []byte("meta")
	bucketDevices = []byte("devices")
	bucketRoots   = []byte("roots")
	// bucketRotations holds the issuer key rotation announcements, in
	// order, by a big-endian u64 sequence. It is optional: a store
	// without it has no rotation.
	bucketRotations = []byte("rotations")

	keyVersion   = []byte("version")
	keyLastEpoch = []byte("last_epoch")
	keyEpochInfo = []byte("epoch_info")
)

// Device states as stored.
const (
	stateActive      = 0
	stateQuarantined = 1
	stateRevoked     = 2
)

// DeviceState is a device's standing at the issuer.
type DeviceState string

// Device states: only active devices receive tickets.
const (
	StateActive      DeviceState = "active"
	StateQuarantined DeviceState = "quarantined" // clone detected; an operator must act
	StateRevoked     DeviceState = "revoked"     // by an operator
)

// record is one device's durable record. It holds the MAC keys derived from
// the latest ticket's ss (never ss itself): they are secret.
type record struct {
	ID    string `cbor:"0,keyasint"`
	State uint64 `cbor:"1,keyasint"`
	// The pinned registration key; nil after an operator reset.
	RegAlg   kem.ID `cbor:"2,keyasint,omitempty"`
	RegKey   []byte `cbor:"3,keyasint,omitempty"`
	PinnedAt uint64 `cbor:"4,keyasint,omitempty"`
	// The latest ticket (the chain head) and the key it was encapsulated to.
	Epoch      uint64 `cbor:"5,keyasint,omitempty"`
	Ticket     []byte `cbor:"6,keyasint,omitempty"`
	TicketHash []byte `cbor:"7,keyasint,omitempty"`
	KeyAlg     kem.ID `cbor:"8,keyasint,omitempty"`
	Key        []byte `cbor:"9,keyasint,omitempty"`
	// TicketPRK is the latest ticket's HKDF-Extract(ticket_hash, ss), the
	// storage form of keyschedule.TicketSecrets.
	TicketPRK []byte `cbor:"22,keyasint,omitempty"`
	// Records written before TicketPRK held the expanded confirm tag and
	// MAC keys instead. They are still read, and replaced at the device's
	// next ticket; nothing writes them any more.
	LegacyConfirm    []byte `cbor:"10,keyasint,omitempty"`
	LegacyNextKeyMAC []byte `cbor:"11,keyasint,omitempty"`
	LegacyRekeyMAC   []byte `cbor:"12,keyasint,omitempty"`
	// The next key, verified by a Status for the latest ticket.
	NextAlg        kem.ID `cbor:"13,keyasint,omitempty"`
	NextKey        []byte `cbor:"14,keyasint,omitempty"`
	ConfirmedEpoch uint64 `cbor:"15,keyasint,omitempty"`
	// The last Status accepted from the device.
	HasStatus    bool   `cbor:"16,keyasint,omitempty"`
	StatusSeq    uint64 `cbor:"17,keyasint,omitempty"`
	StatusHash   []byte `cbor:"18,keyasint,omitempty"`
	StatusState  uint64 `cbor:"19,keyasint,omitempty"`
	StatusReason uint64 `cbor:"20,keyasint,omitempty"`
	StatusEpoch  uint64 `cbor:"21,keyasint,omitempty"`
}

// tagChecker checks a device's tags against its latest ticket's secrets.
type tagChecker interface {
	CheckConfirm(tag []byte) bool
	CheckNextKey(nextPKHash, tag []byte) bool
	CheckRekey(newPKHash, tag []byte) bool
}

// secrets returns the checker for the latest ticket, or nil when the record
// holds none (no ticket yet, or forgotten by clearTicketSecrets).
func (r *record) secrets() tagChecker {
	if len(r.TicketPRK) == keyschedule.Size {
		if s, err := keyschedule.TicketSecretsFromPRK(r.TicketPRK, r.TicketHash); err == nil {
			return s
		}
		return nil
	}
	if len(r.LegacyConfirm) == keyschedule.Size && len(r.LegacyNextKeyMAC) == keyschedule.Size &&
		len(r.LegacyRekeyMAC) == keyschedule.Size {
		return legacySecrets{confirm: r.LegacyConfirm, next: r.LegacyNextKeyMAC, rekey: r.LegacyRekeyMAC}
	}
	return nil
}

// setTicketSecrets stores the latest ticket's secrets, replacing any.
func (r *record) setTicketSecrets(s keyschedule.TicketSecrets) {
	r.TicketPRK = s.PRK()
	r.LegacyConfirm, r.LegacyNextKeyMAC, r.LegacyRekeyMAC = nil, nil, nil
}

// legacySecrets checks tags with the expanded keys older records hold.
type legacySecrets struct{ confirm, next, rekey []byte }

func (l legacySecrets) CheckConfirm(tag []byte) bool { return hmac.Equal(tag, l.confirm) }
func (l legacySecrets) CheckNextKey(h, tag []byte) bool {
	return hmac.Equal(tag, hmacSHA256(l.next, h))
}
func (l legacySecrets) CheckRekey(h, tag []byte) bool {
	return hmac.Equal(tag, hmacSHA256(l.rekey, h))
}

func hmacSHA256(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

// clearTicketSecrets forgets everything derived from the latest ticket's ss.
func (r *record) clearTicketSecrets() {
	r.TicketPRK = nil
	r.LegacyConfirm, r.LegacyNextKeyMAC, r.LegacyRekeyMAC = nil, nil, nil
	r.NextAlg, r.NextKey = 0, nil
}

// clearStatus forgets the last Status, so the next one is a new baseline.
func (r *record) clearStatus() {
	r.HasStatus, r.StatusSeq, r.StatusHash = false, 0, nil
	r.StatusState, r.StatusReason, r.StatusEpoch = 0, 0, 0
}

func decodeRecord(b []byte) (*record, error) {
	var r record
	if err := cbor.Unmarshal(b, maxRecord, &r); err != nil {
		return nil, fmt.Errorf("%w: device record: %w", ErrStoreCorrupt, err)
	}
	if err := wire.ValidateDeviceID(r.ID); err != nil || r.State > stateRevoked {
		return nil, fmt.Errorf("%w: device record %q", ErrStoreCorrupt, r.ID)
	}
	return &r, nil
}

// DeviceInfo is a snapshot of one device as the issuer knows it.
type DeviceInfo struct {
	ID string
	// KEMAlg and PinnedKeyHash describe the pinned registration key;
	// PinnedKeyHash is nil after an operator reset, until a new
	// registration is pinned.
	KEMAlg        kem.ID
	PinnedKeyHash []byte
	PinnedAt      time.Time
	State         DeviceState
	// LastEpoch is the epoch of the device's latest ticket (0: none yet)
	// and TicketHash its hash (the chain head).
	LastEpoch  uint64
	TicketHash []byte
	// KeyHash is the hash of the key the latest ticket was encapsulated to.
	KeyHash []byte
	// ConfirmedEpoch is the latest epoch whose ticket the device confirmed
	// in a verified Status.
	ConfirmedEpoch uint64
	// NextKeyReady: a verified next key for the latest ticket is stored and
	// will be used for the next epoch.
	NextKeyReady bool
	// HasStatus says whether the fields below describe a Status.
	HasStatus    bool
	StatusState  wire.State
	StatusReason uint64
	StatusEpoch  uint64
	StatusSeq    uint64
}

// Confirmed reports whether the device confirmed its latest ticket.
func (d DeviceInfo) Confirmed() bool { return d.LastEpoch > 0 && d.ConfirmedEpoch == d.LastEpoch }

func (r *record) info() DeviceInfo {
	d := DeviceInfo{
		ID: r.ID, KEMAlg: r.RegAlg, State: stateName(r.State), LastEpoch: r.Epoch,
		TicketHash: bytes.Clone(r.TicketHash), ConfirmedEpoch: r.ConfirmedEpoch,
		NextKeyReady: r.NextKey != nil, HasStatus: r.HasStatus, StatusState: wire.State(r.StatusState),
		StatusReason: r.StatusReason, StatusEpoch: r.StatusEpoch, StatusSeq: r.StatusSeq,
	}
	if r.RegKey != nil {
		d.PinnedKeyHash = kem.PublicKeyHash(r.RegKey)
		d.PinnedAt = time.Unix(int64(r.PinnedAt), 0).UTC()
	}
	if r.Key != nil {
		d.KeyHash = kem.PublicKeyHash(r.Key)
	}
	return d
}

func stateName(s uint64) DeviceState {
	switch s {
	case stateQuarantined:
		return StateQuarantined
	case stateRevoked:
		return StateRevoked
	}
	return StateActive
}

// Store is the issuer's durable record (a bbolt file): every device's
// pinned key and latest ticket, the last issued epoch and the last few
// epoch roots. The broker is only a cache of it.
type Store struct {
	db *bolt.DB
}

// OpenStore opens (or, unless readOnly, creates) the store at path. A store
// held open by a running issuer gives ErrStoreLocked after a second.
func OpenStore(path string, readOnly bool) (*Store, error) {
	if readOnly {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("issuer: store %s: %w", path, err)
		}
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: readOnly})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s (stop the running ekem-issuer first)", ErrStoreLocked, path)
	}
	if err != nil {
		return nil, fmt.Errorf("issuer: open store %s: %w", path, err)
	}
	s := &Store{db: db}
	if err := s.init(readOnly); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// init checks the store's layout and, unless readOnly, creates the
// buckets of a new store. An existing store is only read: a bbolt commit
// rewrites a meta page even when nothing changed, and opening a store must
// not change its file (operator commands that refuse leave it
// byte-identical).
func (s *Store) init(readOnly bool) error {
	check := func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		if m == nil || tx.Bucket(bucketDevices) == nil || tx.Bucket(bucketRoots) == nil {
			return fmt.Errorf("%w: missing buckets", ErrStoreCorrupt)
		}
		v := m.Get(keyVersion)
		if len(v) != 8 {
			return fmt.Errorf("%w: layout version", ErrStoreCorrupt)
		}
		if n := binary.BigEndian.Uint64(v); n != storeVersion1 && n != storeVersion {
			return fmt.Errorf("%w: layout version %d", ErrStoreCorrupt, n)
		}
		_, err := loadRotations(tx)
		return err
	}
	if readOnly {
		return s.db.View(check)
	}
	if err := s.db.View(check); err == nil {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketDevices, bucketRoots} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("issuer: store: %w", err)
			}
		}
		m := tx.Bucket(bucketMeta)
		if m.Get(keyVersion) == nil {
			if err := m.Put(keyVersion, keyschedule.U64(storeVersion1)); err != nil {
				return fmt.Errorf("issuer: store: %w", err)
			}
		}
		return check(tx)
	})
}

// Close closes the store.
func (s *Store) Close() error { return s.db.Close() }

func getRecord(tx *bolt.Tx, id string) (*record, error) {
	b := tx.Bucket(bucketDevices).Get([]byte(id))
	if b == nil {
		return nil, nil
	}
	return decodeRecord(b)
}

func putRecord(tx *bolt.Tx, r *record) error {
	b, err := cbor.Marshal(r)
	if err != nil {
		return fmt.Errorf("issuer: encode device record: %w", err)
	}
	if err := tx.Bucket(bucketDevices).Put([]byte(r.ID), b); err != nil {
		return fmt.Errorf("issuer: store device record: %w", err)
	}
	return nil
}

func forEachRecord(tx *bolt.Tx, fn func(*record) error) error {
	return tx.Bucket(bucketDevices).ForEach(func(_, v []byte) error {
		r, err := decodeRecord(v)
		if err != nil {
			return err
		}
		return fn(r)
	})
}

func lastEpoch(tx *bolt.Tx) (uint64, error) {
	v := tx.Bucket(bucketMeta).Get(keyLastEpoch)
	if v == nil {
		return 0, nil
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: last epoch", ErrStoreCorrupt)
	}
	return binary.BigEndian.Uint64(v), nil
}

// roots returns the stored epoch roots, oldest first.
func storedRoots(tx *bolt.Tx) (epochs []uint64, msgs [][]byte, err error) {
	err = tx.Bucket(bucketRoots).ForEach(func(k, v []byte) error {
		if len(k) != 8 {
			return fmt.Errorf("%w: root key", ErrStoreCorrupt)
		}
		epochs = append(epochs, binary.BigEndian.Uint64(k))
		msgs = append(msgs, bytes.Clone(v))
		return nil
	})
	return epochs, msgs, err
}

// Devices lists every device in the store, sorted by id.
func (s *Store) Devices() ([]DeviceInfo, error) {
	var out []DeviceInfo
	err := s.db.View(func(tx *bolt.Tx) error {
		return forEachRecord(tx, func(r *record) error {
			out = append(out, r.info())
			return nil
		})
	})
	return out, err
}

// Device returns one device from the store.
func (s *Store) Device(id string) (DeviceInfo, bool, error) {
	var d DeviceInfo
	var ok bool
	err := s.db.View(func(tx *bolt.Tx) error {
		r, err := getRecord(tx, id)
		if r != nil {
			d, ok = r.info(), true
		}
		return err
	})
	return d, ok, err
}

// LastEpoch returns the last issued epoch (0 if none) and its EpochInfo
// (nil if none).
func (s *Store) LastEpoch() (uint64, *wire.EpochInfo, error) {
	var e uint64
	var info *wire.EpochInfo
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		if e, err = lastEpoch(tx); err != nil {
			return err
		}
		if b := tx.Bucket(bucketMeta).Get(keyEpochInfo); b != nil {
			if info, err = wire.ParseEpochInfo(b); err != nil {
				return fmt.Errorf("%w: epoch info: %w", ErrStoreCorrupt, err)
			}
		}
		return nil
	})
	return e, info, err
}

// update applies fn to the record of id in one transaction.
func (s *Store) update(id string, fn func(*record) error) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		r, err := getRecord(tx, id)
		if err != nil {
			return err
		}
		if r == nil {
			return fmt.Errorf("%w: %q", ErrUnknownDevice, id)
		}
		if err := fn(r); err != nil {
			return err
		}
		return putRecord(tx, r)
	})
}

// Reset forgets the device's pinned key, the keys and secrets of its latest
// ticket and its Status history, and makes it active: its next Registration
// is pinned as if it were the first (trust on first use again). The chain
// head (latest epoch and ticket_hash) is kept, so the next ticket's prev
// still links to it. The latest ticket is no longer republished.
func (s *Store) Reset(id string) error {
	return s.update(id, func(r *record) error {
		r.State = stateActive
		r.RegAlg, r.RegKey, r.PinnedAt = 0, nil, 0
		r.Ticket, r.KeyAlg, r.Key = nil, 0, nil
		r.clearTicketSecrets()
		r.clearStatus()
		return nil
	})
}

// Revoke stops issuing tickets to the device until Release or Reset.
func (s *Store) Revoke(id string) error {
	return s.update(id, func(r *record) error {
		r.State = stateRevoked
		return nil
	})
}

// Release makes a quarantined or revoked device active again and forgets
// its Status history (the next Status is the new baseline for clone
// detection). Its pinned key and chain are kept.
func (s *Store) Release(id string) error {
	return s.update(id, func(r *record) error {
		r.State = stateActive
		r.clearStatus()
		return nil
	})
}

// dump returns every device record's bytes by id (tests compare them).
func (s *Store) dump() (map[string][]byte, error) {
	out := map[string][]byte{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			out[string(k)] = bytes.Clone(v)
			return nil
		})
	})
	return out, err
}

func sum256(b []byte) []byte {
	h := sha256.Sum256(b)
	return h[:]
}
