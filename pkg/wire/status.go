package wire

import (
	"fmt"

	"github.com/entropykem/entropykem/pkg/kem"
)

// State is a device's rotation state as reported in a Status.
type State uint64

// Status states (schema/PROTOCOL.md §Status). Never renumber.
const (
	// StateOK: the ticket was accepted and its prev matched the previous
	// accepted ticket.
	StateOK State = 0
	// StateGap: the ticket was accepted, but the device missed epochs
	// (PrevEpoch says since when) or prev did not match.
	StateGap State = 1
	// StateRejected: a ticket or root was rejected; Reason says why.
	StateRejected State = 2
	// StateEquivocation: two different tickets for one epoch were seen.
	StateEquivocation State = 3
	// StateStale: the device's latest ticket has expired and no newer one
	// arrived (a frozen or replayed retained topic).
	StateStale State = 4
)

var stateNames = [...]string{"ok", "gap", "rejected", "equivocation", "stale"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint64(s))
}

// Accepted reports whether the state follows an accepted ticket, in which
// case the Status carries a confirm tag and the next key.
func (s State) Accepted() bool { return s == StateOK || s == StateGap }

// Status is a device's report on ekem/v1/status/{device_id}
// (schema/entropykem.cddl: status).
type Status struct {
	Version  uint64 `cbor:"0,keyasint"`
	DeviceID string `cbor:"1,keyasint"`
	// Epoch is the device's latest accepted epoch, 0 if none yet.
	Epoch  uint64 `cbor:"2,keyasint"`
	State  State  `cbor:"3,keyasint"`
	Reason uint64 `cbor:"4,keyasint"`
	Time   uint64 `cbor:"5,keyasint"`
	// Seq increases by one with every Status the device publishes. Two
	// different Status messages with one Seq mean two devices share an id.
	Seq uint64 `cbor:"6,keyasint"`
	// TicketHash is the latest accepted ticket's hash (absent if none).
	TicketHash []byte `cbor:"7,keyasint,omitempty"`
	// Confirm, NextAlg, NextPK and NextTag are present exactly when State
	// is ok or gap: the confirm tag of the ticket just accepted and the
	// encapsulation key for the next epoch, authenticated under its ss.
	Confirm []byte `cbor:"8,keyasint,omitempty"`
	NextAlg kem.ID `cbor:"9,keyasint,omitempty"`
	NextPK  []byte `cbor:"10,keyasint,omitempty"`
	NextTag []byte `cbor:"11,keyasint,omitempty"`
	// PrevEpoch is the epoch accepted before this one; present exactly
	// when State is gap (0 if the gap is a first ticket with nonzero prev).
	PrevEpoch *uint64 `cbor:"12,keyasint,omitempty"`
}

// ParseStatus strictly decodes and validates a Status.
func ParseStatus(b []byte) (*Status, error) {
	var s Status
	if err := decode("status", b, MaxStatus, &s); err != nil {
		return nil, err
	}
	if err := s.validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// Marshal validates s and returns its deterministic encoding.
func (s *Status) Marshal() ([]byte, error) { return encode("status", s) }

func (s *Status) validate() error {
	const what = "status"
	if err := checkVersion(what, s.Version); err != nil {
		return err
	}
	if err := checkID(what, "device_id", s.DeviceID); err != nil {
		return err
	}
	if s.Epoch > MaxEpoch {
		return bad(what, "epoch %d beyond %d", s.Epoch, uint64(MaxEpoch))
	}
	if s.State > StateStale {
		return bad(what, "unknown state %d", uint64(s.State))
	}
	if err := checkTime(what, "time", s.Time); err != nil {
		return err
	}
	if s.Seq > MaxStatusSeq {
		return bad(what, "seq %d beyond %d", s.Seq, uint64(MaxStatusSeq))
	}
	if s.Reason > 0xffff {
		return bad(what, "reason %d beyond 65535", s.Reason)
	}
	if (s.Epoch == 0) != (s.TicketHash == nil) {
		return bad(what, "ticket_hash must be present exactly when epoch > 0")
	}
	if s.TicketHash != nil {
		if err := checkHash(what, "ticket_hash", s.TicketHash); err != nil {
			return err
		}
	}
	if s.State.Accepted() {
		return s.validateAccepted()
	}
	return s.validateProblem()
}

func (s *Status) validateAccepted() error {
	const what = "status"
	if s.Epoch == 0 {
		return bad(what, "state %v needs an epoch", s.State)
	}
	if s.Reason != 0 {
		return bad(what, "state %v carries reason %d", s.State, s.Reason)
	}
	if err := checkHash(what, "confirm", s.Confirm); err != nil {
		return err
	}
	sch, err := checkKEM(what, s.NextAlg)
	if err != nil {
		return err
	}
	if len(s.NextPK) != sch.PublicKeySize() {
		return bad(what, "next key is %d bytes, %v needs %d", len(s.NextPK), s.NextAlg, sch.PublicKeySize())
	}
	if err := checkHash(what, "next_tag", s.NextTag); err != nil {
		return err
	}
	if (s.State == StateGap) != (s.PrevEpoch != nil) {
		return bad(what, "prev_epoch must be present exactly when state is gap")
	}
	if s.PrevEpoch != nil && *s.PrevEpoch >= s.Epoch {
		return bad(what, "prev_epoch %d not below epoch %d", *s.PrevEpoch, s.Epoch)
	}
	return nil
}

func (s *Status) validateProblem() error {
	const what = "status"
	if s.Confirm != nil || s.NextAlg != 0 || s.NextPK != nil || s.NextTag != nil || s.PrevEpoch != nil {
		return bad(what, "state %v must not carry confirm, next key or prev_epoch", s.State)
	}
	if s.State != StateStale && s.Reason == 0 {
		return bad(what, "state %v needs a reason", s.State)
	}
	if s.State == StateStale && s.Reason != reasonStale {
		return bad(what, "state stale carries reason %d, want %d", s.Reason, reasonStale)
	}
	return nil
}

// reasonStale is the reason code of a stale Status (PROTOCOL.md §5.6, §9).
const reasonStale = 12
