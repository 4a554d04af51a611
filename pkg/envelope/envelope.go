// Package envelope seals application payloads with one-time ratchet keys
// (design brief §Ratchet: "an envelope for application data carries both
// [epoch and ctr], and a receiver keeps a bounded replay window").
//
// # Wire format
//
// An envelope is a deterministic CBOR map (RFC 8949 §4.2.1):
//
//	envelope = { 0: 1, 1: device_id (tstr), 2: epoch (uint), 3: ctr (uint), 4: ciphertext (bstr) }
//
// The ciphertext is ChaCha20-Poly1305 (RFC 8439) under the message key
// (epoch, ctr) with a nonce of 12 zero bytes, and includes the 16-byte tag.
// The additional authenticated data is the deterministic CBOR encoding of
// the header alone, {0: 1, 1: device_id, 2: epoch, 3: ctr}, so no header
// field can be changed without failing authentication. Envelopes are at most
// MaxEnvelopeSize bytes, checked before decoding.
package envelope

import (
	"errors"
	"fmt"
	"github.com/entropykem/entropykem/pkg/wire"
	"strconv"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/ratchet"
)

const (
	// Version is the envelope format version (field 0).
	Version = 1
	// MaxEnvelopeSize bounds an envelope on the wire, checked before any
	// decoding.
	MaxEnvelopeSize = 64 * 1024
	// headerOverhead bounds everything in an envelope except the
	// plaintext: map head 1, version 2, device id 1+2+64, epoch 1+9,
	// ctr 1+9, ciphertext key and head 1+3, tag 16 = 110 bytes.
	headerOverhead = 128
	// MaxPlaintext is the largest payload Seal accepts; any sealed payload
	// of at most this size yields an envelope within MaxEnvelopeSize.
	MaxPlaintext = MaxEnvelopeSize - headerOverhead
	// TagSize is the size of the Poly1305 tag at the end of the ciphertext.
	TagSize = chacha20poly1305.Overhead
)

var (
	// ErrMalformed is returned (wrapped) for an envelope that is too large,
	// not strict deterministic CBOR, of another version, or with a field
	// out of range.
	ErrMalformed = errors.New("envelope: malformed")
	// ErrAuth is returned when the ciphertext does not authenticate under
	// the key its header names.
	ErrAuth = errors.New("envelope: authentication failed")
	// ErrReplay is returned for an envelope the receiver has already
	// opened (within its replay history).
	ErrReplay = errors.New("envelope: replayed")
	// ErrTooOld is returned for an envelope whose key the receiver no
	// longer has: dropped from the bounded store, never stored, or opened
	// so long ago that it left the replay history.
	ErrTooOld = errors.New("envelope: too old")
	// ErrTooFarAhead is returned for an envelope more than maxSkip keys
	// ahead of the receiver, or of an epoch the receiver has not mixed yet.
	ErrTooFarAhead = errors.New("envelope: too far ahead")
	// ErrWrongDevice is returned for an envelope from another device than
	// the receiver follows.
	ErrWrongDevice = errors.New("envelope: wrong device")
	// ErrBadInput is returned (wrapped) for invalid arguments to Seal or
	// NewReceiver.
	ErrBadInput = errors.New("envelope: invalid argument")
)

// zeroNonce is the fixed nonce. Reusing one nonce is safe here because a
// nonce only has to be unique per key, and every message key is used for
// exactly one envelope: the ratchet hands each (epoch, ctr) key out once
// (State.Next advances and overwrites the chain), and a receiver uses each
// key to open at most one envelope successfully.
var zeroNonce [chacha20poly1305.NonceSize]byte

// Header is the authenticated, unencrypted part of an envelope.
type Header struct {
	DeviceID   string
	Epoch, Ctr uint64
}

// String describes the header.
func (h Header) String() string {
	return "envelope.Header{device=" + strconv.Quote(h.DeviceID) +
		", epoch=" + strconv.FormatUint(h.Epoch, 10) +
		", ctr=" + strconv.FormatUint(h.Ctr, 10) + "}"
}

// headerWire is the AAD: the header fields of the envelope map.
type headerWire struct {
	Version  uint64 `cbor:"0,keyasint"`
	DeviceID string `cbor:"1,keyasint"`
	Epoch    uint64 `cbor:"2,keyasint"`
	Ctr      uint64 `cbor:"3,keyasint"`
}

// envelopeWire is the whole envelope.
type envelopeWire struct {
	Version    uint64 `cbor:"0,keyasint"`
	DeviceID   string `cbor:"1,keyasint"`
	Epoch      uint64 `cbor:"2,keyasint"`
	Ctr        uint64 `cbor:"3,keyasint"`
	Ciphertext []byte `cbor:"4,keyasint"`
}

// Seal encrypts plaintext (at most MaxPlaintext bytes) under the message
// key k for device deviceID and returns the envelope. k must come from
// ratchet.State.Next and must not be used for anything else; Seal does not
// wipe it.
func Seal(deviceID string, k ratchet.Key, plaintext []byte) ([]byte, error) {
	if err := checkDeviceID(deviceID); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadInput, err)
	}
	if len(k.Bytes) != ratchet.KeySize {
		return nil, fmt.Errorf("%w: key must be %d bytes", ErrBadInput, ratchet.KeySize)
	}
	if k.Ctr >= ratchet.MaxCtr {
		return nil, fmt.Errorf("%w: ctr out of range", ErrBadInput)
	}
	if len(plaintext) > MaxPlaintext {
		return nil, fmt.Errorf("%w: plaintext of %d bytes exceeds %d", ErrBadInput, len(plaintext), MaxPlaintext)
	}
	h := Header{DeviceID: deviceID, Epoch: k.Epoch, Ctr: k.Ctr}
	aad, err := encodeAAD(h)
	if err != nil {
		return nil, err
	}
	aead, err := chacha20poly1305.New(k.Bytes)
	if err != nil {
		return nil, fmt.Errorf("envelope: seal: %w", err)
	}
	ct := aead.Seal(make([]byte, 0, len(plaintext)+TagSize), zeroNonce[:], plaintext, aad)
	env, err := cbor.Marshal(envelopeWire{
		Version: Version, DeviceID: deviceID, Epoch: k.Epoch, Ctr: k.Ctr, Ciphertext: ct,
	})
	if err != nil {
		return nil, fmt.Errorf("envelope: seal: %w", err)
	}
	return env, nil
}

// ParseHeader strictly decodes env and returns its header without
// decrypting anything. The header is not authenticated until the envelope
// is opened.
func ParseHeader(env []byte) (Header, error) {
	h, _, err := parse(env)
	return h, err
}

// parse strictly decodes an envelope: size first, then deterministic CBOR
// with exactly the five fields, version 1, a valid device id, ctr below
// ratchet.MaxCtr and a ciphertext at least as long as the tag.
func parse(env []byte) (Header, []byte, error) {
	if len(env) > MaxEnvelopeSize {
		return Header{}, nil, fmt.Errorf("%w: %d bytes exceeds %d", ErrMalformed, len(env), MaxEnvelopeSize)
	}
	var w envelopeWire
	if err := cbor.Unmarshal(env, MaxEnvelopeSize, &w); err != nil {
		return Header{}, nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	switch {
	case w.Version != Version:
		return Header{}, nil, fmt.Errorf("%w: version %d", ErrMalformed, w.Version)
	case w.Ctr >= ratchet.MaxCtr:
		return Header{}, nil, fmt.Errorf("%w: ctr out of range", ErrMalformed)
	case len(w.Ciphertext) < TagSize:
		return Header{}, nil, fmt.Errorf("%w: ciphertext shorter than the tag", ErrMalformed)
	}
	if err := checkDeviceID(w.DeviceID); err != nil {
		return Header{}, nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return Header{DeviceID: w.DeviceID, Epoch: w.Epoch, Ctr: w.Ctr}, w.Ciphertext, nil
}

// encodeAAD returns the deterministic CBOR encoding of the header map
// {0: 1, 1: device_id, 2: epoch, 3: ctr}.
func encodeAAD(h Header) ([]byte, error) {
	aad, err := cbor.Marshal(headerWire{Version: Version, DeviceID: h.DeviceID, Epoch: h.Epoch, Ctr: h.Ctr})
	if err != nil {
		return nil, fmt.Errorf("envelope: header: %w", err)
	}
	return aad, nil
}

// open decrypts ct with key under the AAD of h. Any failure is ErrAuth.
func open(h Header, key, ct []byte) ([]byte, error) {
	aad, err := encodeAAD(h)
	if err != nil {
		return nil, err
	}
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		return nil, fmt.Errorf("envelope: open: %w", err)
	}
	pt, err := aead.Open(nil, zeroNonce[:], ct, aad)
	if err != nil {
		return nil, ErrAuth
	}
	return pt, nil
}

// checkDeviceID applies the protocol's device id rule (wire.ValidateDeviceID).
func checkDeviceID(id string) error {
	if err := wire.ValidateDeviceID(id); err != nil {
		return fmt.Errorf("envelope: %w", err)
	}
	return nil
}

// OpenWithKey opens env with the message key k, which must be the key its
// header names (device deviceID, k.Epoch, k.Ctr): for a holder of that
// one key, such as the device that sealed it. It keeps no replay state.
func OpenWithKey(deviceID string, k ratchet.Key, env []byte) (Header, []byte, error) {
	h, ct, err := parse(env)
	if err != nil {
		return Header{}, nil, err
	}
	if h.DeviceID != deviceID {
		return Header{}, nil, fmt.Errorf("%w: %q", ErrWrongDevice, h.DeviceID)
	}
	if h.Epoch != k.Epoch || h.Ctr != k.Ctr || len(k.Bytes) != ratchet.KeySize {
		return Header{}, nil, fmt.Errorf("%w: the envelope names (epoch %d, ctr %d), the key (%d, %d)", ErrBadInput, h.Epoch, h.Ctr, k.Epoch, k.Ctr)
	}
	pt, err := open(h, k.Bytes, ct)
	if err != nil {
		return Header{}, nil, err
	}
	return h, pt, nil
}
