package issuer

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/standing"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Device states as stored.
const (
	stateActive      = 0
	stateQuarantined = 1
	stateRevoked     = 2
)

// DeviceState is a device's standing at the issuer.
type DeviceState string

// Device states: only active devices receive tickets. Quarantined and
// revoked are also standings (pkg/standing), with the same words.
const (
	StateActive      DeviceState = "active"
	StateQuarantined             = DeviceState(standing.Quarantined) // clone detected; an operator must act
	StateRevoked                 = DeviceState(standing.Revoked)     // by an operator
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
	// Enrolled: the id was imported by an operator (Admin.Enroll), so its
	// first registration is pinned under the allowlist policy, and
	// EnrolledKeyHash, if set, is the only registration key (SHA-256 of
	// the KEM public key, from manufacturing) that may be pinned for it.
	Enrolled        bool   `cbor:"23,keyasint,omitempty"`
	EnrolledKeyHash []byte `cbor:"24,keyasint,omitempty"`
	// Cohort is the cohort the device is a member of (cohort.go), empty
	// for none: its tickets carry the cohort's group seed.
	Cohort string `cbor:"25,keyasint,omitempty"`

	// rev is the record's revision in an engine that several writers
	// share (the PostgreSQL engine), 0 elsewhere: set when read, it lets
	// CommitEpoch refuse to overwrite a record changed since (ErrEpochConflict).
	// Never encoded.
	rev uint64
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
	if r.Cohort != "" && wire.ValidateLabel(r.Cohort) != nil {
		return nil, fmt.Errorf("%w: device record %q: cohort", ErrStoreCorrupt, r.ID)
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
	// Standing is the device's standing (pkg/standing) as the issuer
	// judges it when the snapshot is taken (see Standings).
	Standing string
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
	// Enrolled: imported by an operator (Admin.Enroll); EnrolledKeyHash is
	// the registration key hash it was imported with, if any.
	Enrolled        bool
	EnrolledKeyHash []byte
	// Cohort is the cohort the device is a member of, empty for none
	// (schema/PROTOCOL.md §7.7).
	Cohort string
}

// Confirmed reports whether the device confirmed its latest ticket.
func (d DeviceInfo) Confirmed() bool { return d.LastEpoch > 0 && d.ConfirmedEpoch == d.LastEpoch }

func (r *record) info() DeviceInfo {
	d := DeviceInfo{
		ID: r.ID, KEMAlg: r.RegAlg, State: stateName(r.State), LastEpoch: r.Epoch,
		TicketHash: bytes.Clone(r.TicketHash), ConfirmedEpoch: r.ConfirmedEpoch,
		NextKeyReady: r.NextKey != nil, HasStatus: r.HasStatus, StatusState: wire.State(r.StatusState),
		StatusReason: r.StatusReason, StatusEpoch: r.StatusEpoch, StatusSeq: r.StatusSeq,
		Enrolled: r.Enrolled, EnrolledKeyHash: bytes.Clone(r.EnrolledKeyHash), Cohort: r.Cohort,
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

func sum256(b []byte) []byte {
	h := sha256.Sum256(b)
	return h[:]
}

// decodeRecords decodes stored device records, spread over the CPUs
// (strict CBOR decoding costs ~10 µs a record: seconds at a million). The
// decoded records share no memory with vals.
func decodeRecords(vals [][]byte) ([]*record, error) {
	recs := make([]*record, len(vals))
	errs := make([]error, len(vals))
	parallel(len(vals), func(n int) { recs[n], errs[n] = decodeRecord(vals[n]) })
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return recs, nil
}

// encodeRecords encodes records as a store engine does, spread over the CPUs.
func encodeRecords(recs []*record) ([][]byte, error) {
	out := make([][]byte, len(recs))
	errs := make([]error, len(recs))
	parallel(len(recs), func(n int) {
		if out[n], errs[n] = cbor.Marshal(recs[n]); errs[n] != nil {
			errs[n] = fmt.Errorf("issuer: encode device record: %w", errs[n])
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// recordHead is the part of a stored record an epoch's plan reads of every
// device (ReadTx.DeviceHeads): what selectKey needs to decide that the
// device gets a ticket. Decoding only it costs a fraction of a strict
// decodeRecord, which the chunk that issues to the device does after.
type recordHead struct {
	ID     string  `cbor:"0,keyasint"`
	State  uint64  `cbor:"1,keyasint"`
	RegKey present `cbor:"3,keyasint"`
}

// present records that a field is in the encoding, without reading it.
type present bool

// UnmarshalCBOR implements cbor.Unmarshaler: the field is there.
func (p *present) UnmarshalCBOR([]byte) error { *p = true; return nil }

var pinnedMarker = []byte{}

// decodeHeads decodes the heads of stored records, spread over the CPUs,
// as records with only ID, State and RegKey (pinnedMarker if one is
// pinned) set.
func decodeHeads(vals [][]byte) ([]*record, error) {
	recs := make([]*record, len(vals))
	errs := make([]error, len(vals))
	parallel(len(vals), func(n int) {
		var h recordHead
		if err := cbor.UnmarshalFields(vals[n], maxRecord, &h); err != nil {
			errs[n] = fmt.Errorf("%w: device record: %w", ErrStoreCorrupt, err)
			return
		}
		if err := wire.ValidateDeviceID(h.ID); err != nil || h.State > stateRevoked {
			errs[n] = fmt.Errorf("%w: device record %q", ErrStoreCorrupt, h.ID)
			return
		}
		r := &record{ID: h.ID, State: h.State}
		if h.RegKey {
			r.RegKey = pinnedMarker
		}
		recs[n] = r
	})
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return recs, nil
}
