// Package cbor is the project's single CBOR codec: RFC 8949 §4.2.1 core
// deterministic encoding, and a strict decoder for everything that arrives
// from outside (the network, a disk, a flag).
//
// Strictness (schema/PROTOCOL.md §"Encoding rules"):
//   - the input size is checked against the caller's bound before any work;
//   - duplicate map keys, indefinite lengths, tags, unknown map keys, invalid
//     UTF-8, and more than one top-level item are rejected;
//   - nesting, array and map sizes are bounded;
//   - the input must be exactly the deterministic encoding of what it
//     decodes to: decoding then encoding returns identical bytes, so two
//     parties that agree on a value agree on its bytes (and its hash).
package cbor

import (
	"bytes"
	"errors"
	"fmt"

	fx "github.com/fxamacker/cbor/v2"
)

// ErrTooLarge is returned (wrapped) when an input exceeds its size bound.
var ErrTooLarge = errors.New("cbor: input too large")

// ErrMalformed is returned (wrapped) for every other decoding failure:
// syntax, duplicate keys, unknown fields, tags, indefinite lengths, or a
// non-deterministic encoding.
var ErrMalformed = errors.New("cbor: malformed input")

// Bounds of the decoder itself; message-specific limits are in the packages
// that own the messages.
const (
	MaxNesting       = 4
	MaxArrayElements = 128
	MaxMapPairs      = 32
)

var (
	encMode     fx.EncMode
	decMode     fx.DecMode
	partialMode fx.DecMode
)

func init() {
	var err error
	encMode, err = fx.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(err)
	}
	// UnmarshalFields decodes as strictly, but skips the fields v does
	// not name.
	partialOpts := fx.DecOptions{
		DupMapKey:         fx.DupMapKeyEnforcedAPF,
		IndefLength:       fx.IndefLengthForbidden,
		TagsMd:            fx.TagsForbidden,
		MaxNestedLevels:   MaxNesting,
		MaxArrayElements:  MaxArrayElements,
		MaxMapPairs:       MaxMapPairs,
		UTF8:              fx.UTF8RejectInvalid,
		IntDec:            fx.IntDecConvertNone,
		NaN:               fx.NaNDecodeForbidden,
		Inf:               fx.InfDecodeForbidden,
		BinaryUnmarshaler: fx.BinaryUnmarshalerNone,
	}
	strictOpts := partialOpts
	strictOpts.ExtraReturnErrors = fx.ExtraDecErrorUnknownField
	if decMode, err = strictOpts.DecMode(); err != nil {
		panic(err)
	}
	if partialMode, err = partialOpts.DecMode(); err != nil {
		panic(err)
	}
}

// UnmarshalFields decodes from data, at most maxSize bytes, only the fields
// v names and skips every other key, without the deterministic-encoding
// check of Unmarshal. It is not a message decoder: it is for reading a few
// fields of a record this program wrote itself (a store's scan), whose
// full strict decoding (Unmarshal) happens before anything in it is used
// for more than selection.
func UnmarshalFields(data []byte, maxSize int, v any) error {
	if len(data) > maxSize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(data), maxSize)
	}
	if len(data) == 0 {
		return fmt.Errorf("%w: empty input", ErrMalformed)
	}
	if err := partialMode.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return nil
}

// Marshal returns the core deterministic encoding of v.
func Marshal(v any) ([]byte, error) {
	b, err := encMode.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("cbor: encode: %w", err)
	}
	return b, nil
}

// Unmarshal strictly decodes data, which must be at most maxSize bytes, into
// v (a pointer to a struct with integer keys). It rejects any input that is
// not byte-for-byte the deterministic encoding of the decoded value.
func Unmarshal(data []byte, maxSize int, v any) error {
	if len(data) > maxSize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(data), maxSize)
	}
	if len(data) == 0 {
		return fmt.Errorf("%w: empty input", ErrMalformed)
	}
	if err := decMode.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	again, err := encMode.Marshal(v)
	if err != nil {
		return fmt.Errorf("%w: re-encode: %v", ErrMalformed, err)
	}
	if !bytes.Equal(again, data) {
		return fmt.Errorf("%w: not in deterministic encoding", ErrMalformed)
	}
	return nil
}
