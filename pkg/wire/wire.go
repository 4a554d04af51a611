// Package wire defines entropykem's messages and their exact encodings
// (schema/entropykem.cddl, schema/PROTOCOL.md): Registration, TicketBody,
// Ticket (body plus Merkle inclusion proof), EpochRoot (the payload of the
// epoch's COSE_Sign1) and Status.
//
// Every message is a CBOR map (RFC 8949) with small unsigned integer keys
// in core deterministic encoding (RFC 8949 §4.2.1). Key 0 is the version.
// Parse functions are strict: the size bound is checked first, then the
// pkg/cbor rules (no duplicate keys, indefinite lengths, tags or unknown
// keys; the input must be the deterministic encoding of its value), then
// every field is range-checked. Map keys are part of the wire format:
// never renumber them.
package wire

import (
	"errors"
	"fmt"

	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/kem"
)

// ErrMalformed is wrapped by every parse and validation error of this
// package, alongside a more specific cause.
var ErrMalformed = errors.New("wire: malformed message")

func decode(what string, data []byte, max int, v any) error {
	if err := cbor.Unmarshal(data, max, v); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrMalformed, what, err)
	}
	return nil
}

func encode(what string, v interface{ validate() error }) ([]byte, error) {
	if err := v.validate(); err != nil {
		return nil, err
	}
	b, err := cbor.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("wire: encode %s: %w", what, err)
	}
	return b, nil
}

func bad(what, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrMalformed, what, fmt.Sprintf(format, args...))
}

func checkVersion(what string, v uint64) error {
	if v != Version {
		return bad(what, "version %d, want %d", v, Version)
	}
	return nil
}

func checkHash(what, field string, b []byte) error {
	if len(b) != HashSize {
		return bad(what, "%s is %d bytes, want %d", field, len(b), HashSize)
	}
	return nil
}

func checkEpoch(what string, e uint64) error {
	if e < 1 || e > MaxEpoch {
		return bad(what, "epoch %d out of range 1..%d", e, uint64(MaxEpoch))
	}
	return nil
}

func checkTime(what, field string, t uint64) error {
	if t > MaxTime {
		return bad(what, "%s %d beyond %d", field, t, uint64(MaxTime))
	}
	return nil
}

func checkID(what, field, id string) error {
	if err := ValidateDeviceID(id); err != nil {
		return fmt.Errorf("%w: %s: %s: %w", ErrMalformed, what, field, err)
	}
	return nil
}

func checkLabel(what, field, s string) error {
	if err := ValidateLabel(s); err != nil {
		return fmt.Errorf("%w: %s: %s: %w", ErrMalformed, what, field, err)
	}
	return nil
}

// checkKEM looks the algorithm up in the allow-list and checks that a
// value is exactly the algorithm's size for it.
func checkKEM(what string, id kem.ID) (kem.Scheme, error) {
	s, err := kem.Lookup(id)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrMalformed, what, err)
	}
	return s, nil
}
