package accept

import (
	"errors"

	"github.com/entropykem/entropykem/pkg/wire"
)

// Rejections, one per device acceptance rule (schema/PROTOCOL.md §Device
// acceptance), in the order the rules are checked. Each maps to one Reason.
var (
	ErrMalformed        = errors.New("accept: malformed ticket or root")
	ErrUnknownIssuerKey = errors.New("accept: root signed by a key that is not pinned")
	ErrBadProof         = errors.New("accept: inclusion proof does not match the epoch root")
	ErrBadSignature     = errors.New("accept: bad epoch root signature")
	ErrWrongAudience    = errors.New("accept: ticket is for another device")
	ErrWrongDeviceKey   = errors.New("accept: ticket is not encapsulated to a live device key")
	ErrRollback         = errors.New("accept: ticket epoch is older than the last accepted")
	ErrDuplicate        = errors.New("accept: ticket already accepted")
	ErrEquivocation     = errors.New("accept: two different tickets for one epoch")
	ErrNotYetValid      = errors.New("accept: ticket not yet valid")
	ErrExpired          = errors.New("accept: ticket expired")
	ErrFastForward      = errors.New("accept: ticket epoch jumps too far ahead")
)

// ErrBadState is returned for an invalid or undecodable device State.
var ErrBadState = errors.New("accept: invalid device state")

// Reason is the reason code carried in a Status (schema/PROTOCOL.md
// §Reason codes). Never renumber.
type Reason uint64

// Reason codes.
const (
	ReasonNone             Reason = 0
	ReasonMalformed        Reason = 1
	ReasonUnknownIssuerKey Reason = 2
	ReasonBadProof         Reason = 3
	ReasonBadSignature     Reason = 4
	ReasonWrongAudience    Reason = 5
	ReasonWrongDeviceKey   Reason = 6
	ReasonRollback         Reason = 7
	ReasonEquivocation     Reason = 8
	ReasonNotYetValid      Reason = 9
	ReasonExpired          Reason = 10
	ReasonFastForward      Reason = 11
	// ReasonStale: the latest accepted ticket expired and no newer one came.
	ReasonStale Reason = 12
	// ReasonInternal: the device failed on its own side (TPM, storage).
	ReasonInternal Reason = 13
)

var reasons = []struct {
	err    error
	reason Reason
	name   string
}{
	{ErrMalformed, ReasonMalformed, "malformed"},
	{ErrUnknownIssuerKey, ReasonUnknownIssuerKey, "unknown_issuer_key"},
	{ErrBadProof, ReasonBadProof, "bad_proof"},
	{ErrBadSignature, ReasonBadSignature, "bad_signature"},
	{ErrWrongAudience, ReasonWrongAudience, "wrong_audience"},
	{ErrWrongDeviceKey, ReasonWrongDeviceKey, "wrong_device_key"},
	{ErrRollback, ReasonRollback, "rollback"},
	{ErrEquivocation, ReasonEquivocation, "equivocation"},
	{ErrNotYetValid, ReasonNotYetValid, "not_yet_valid"},
	{ErrExpired, ReasonExpired, "expired"},
	{ErrFastForward, ReasonFastForward, "fast_forward"},
}

// ReasonOf maps a rejection to its reason code, ReasonNone for nil and
// ErrDuplicate (which is harmless), and ReasonInternal for anything else.
func ReasonOf(err error) Reason {
	if err == nil || errors.Is(err, ErrDuplicate) {
		return ReasonNone
	}
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return ReasonInternal
}

// StateOf is the Status state a device reports after err.
func StateOf(err error) wire.State {
	if errors.Is(err, ErrEquivocation) {
		return wire.StateEquivocation
	}
	return wire.StateRejected
}

// String returns the reason's stable snake_case name, used in logs and
// metric labels.
func (r Reason) String() string {
	switch r {
	case ReasonNone:
		return "none"
	case ReasonStale:
		return "stale"
	case ReasonInternal:
		return "internal"
	}
	for _, x := range reasons {
		if x.reason == r {
			return x.name
		}
	}
	return "unknown"
}
