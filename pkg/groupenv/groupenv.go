// Package groupenv seals application payloads under a cohort's group key
// (schema/PROTOCOL.md §7.7, §8.4.1), which every member of the cohort
// derives each epoch and the issuer cannot.
//
// # Wire format
//
// A group envelope is a deterministic CBOR map (RFC 8949 §4.2.1):
//
//	group-envelope = { 0: 1, 1: cohort_id (label), 2: epoch (uint),
//	                   3: sender (device id), 4: ctr (uint < 2^63),
//	                   5: ciphertext (bstr) }
//
// The ciphertext is ChaCha20-Poly1305 (RFC 8439) under the sender's key
//
//	sender_key = HKDF(IKM = group_key, salt absent, info = "ekem/v1 group-sender;" ‖ sender)
//
// with the nonce 4 zero bytes ‖ u64be(ctr), and the deterministic CBOR
// encoding of the header {0: 1, 1: cohort_id, 2: epoch, 3: sender, 4: ctr}
// as associated data. Every sender has its own key and never repeats a
// counter within an epoch, so no two envelopes share a key and nonce.
//
// A group key authenticates membership, not the sender: any member can
// seal an envelope naming any sender. The sender field separates nonces;
// it is not a signature.
package groupenv

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/wire"
)

const (
	// Version is the group envelope format version (field 0).
	Version = 1
	// MaxEnvelopeSize bounds a group envelope, checked before decoding.
	MaxEnvelopeSize = 64 * 1024
	// headerOverhead bounds everything but the plaintext: map head 1,
	// version 2, cohort 2+64, epoch 2+8, sender 2+64, ctr 2+8, ciphertext
	// key and head 1+3, tag 16 = 175 bytes.
	headerOverhead = 192
	// MaxPlaintext is the largest payload Seal accepts.
	MaxPlaintext = MaxEnvelopeSize - headerOverhead
	// MaxCtr bounds counters: ctr < 2^63.
	MaxCtr uint64 = 1 << 63
	// KeySize is the size of a group key.
	KeySize = 32
	// LabelSender is the HKDF info prefix of a sender's key.
	LabelSender = "ekem/v1 group-sender;"
)

var (
	// ErrMalformed (wrapped): too large, not strict deterministic CBOR,
	// another version, or a field out of range.
	ErrMalformed = errors.New("groupenv: malformed")
	// ErrAuth: the ciphertext does not authenticate under the key its
	// header names.
	ErrAuth = errors.New("groupenv: authentication failed")
	// ErrBadInput (wrapped): invalid arguments.
	ErrBadInput = errors.New("groupenv: invalid argument")
)

// Header is the authenticated, unencrypted part of a group envelope.
type Header struct {
	Cohort string
	Epoch  uint64
	Sender string
	Ctr    uint64
}

// String describes the header.
func (h Header) String() string {
	return "groupenv.Header{cohort=" + strconv.Quote(h.Cohort) + ", epoch=" + strconv.FormatUint(h.Epoch, 10) +
		", sender=" + strconv.Quote(h.Sender) + ", ctr=" + strconv.FormatUint(h.Ctr, 10) + "}"
}

type headerWire struct {
	Version uint64 `cbor:"0,keyasint"`
	Cohort  string `cbor:"1,keyasint"`
	Epoch   uint64 `cbor:"2,keyasint"`
	Sender  string `cbor:"3,keyasint"`
	Ctr     uint64 `cbor:"4,keyasint"`
}

type envelopeWire struct {
	Version    uint64 `cbor:"0,keyasint"`
	Cohort     string `cbor:"1,keyasint"`
	Epoch      uint64 `cbor:"2,keyasint"`
	Sender     string `cbor:"3,keyasint"`
	Ctr        uint64 `cbor:"4,keyasint"`
	Ciphertext []byte `cbor:"5,keyasint"`
}

func (h Header) check() error {
	if err := wire.ValidateLabel(h.Cohort); err != nil {
		return fmt.Errorf("cohort: %w", err)
	}
	if err := wire.ValidateDeviceID(h.Sender); err != nil {
		return fmt.Errorf("sender: %w", err)
	}
	if h.Epoch < 1 || h.Epoch > wire.MaxEpoch {
		return fmt.Errorf("epoch %d out of range", h.Epoch)
	}
	if h.Ctr >= MaxCtr {
		return errors.New("ctr out of range")
	}
	return nil
}

// SenderKey is HKDF(group_key, salt absent, info = "ekem/v1 group-sender;"
// ‖ sender).
func SenderKey(groupKey []byte, sender string) ([]byte, error) {
	if len(groupKey) != KeySize {
		return nil, fmt.Errorf("%w: group key of %d bytes", ErrBadInput, len(groupKey))
	}
	k, err := hkdf.Key(sha256.New, groupKey, nil, LabelSender+sender, KeySize)
	if err != nil {
		return nil, fmt.Errorf("groupenv: sender key: %w", err)
	}
	return k, nil
}

// Nonce is 4 zero bytes ‖ u64be(ctr).
func Nonce(ctr uint64) []byte {
	n := make([]byte, chacha20poly1305.NonceSize)
	binary.BigEndian.PutUint64(n[4:], ctr)
	return n
}

// Seal encrypts plaintext under groupKey (the group key of h.Epoch for
// h.Cohort) as sender h.Sender with counter h.Ctr. The caller guarantees
// that h.Sender never seals two envelopes with one (epoch, ctr): a device
// persists its advanced counter before sealing.
func Seal(groupKey []byte, h Header, plaintext []byte) ([]byte, error) {
	if err := h.check(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadInput, err)
	}
	if len(plaintext) > MaxPlaintext {
		return nil, fmt.Errorf("%w: plaintext of %d bytes exceeds %d", ErrBadInput, len(plaintext), MaxPlaintext)
	}
	aead, aad, err := cipherFor(groupKey, h)
	if err != nil {
		return nil, err
	}
	ct := aead.Seal(make([]byte, 0, len(plaintext)+chacha20poly1305.Overhead), Nonce(h.Ctr), plaintext, aad)
	env, err := cbor.Marshal(envelopeWire{Version: Version, Cohort: h.Cohort, Epoch: h.Epoch, Sender: h.Sender, Ctr: h.Ctr, Ciphertext: ct})
	if err != nil {
		return nil, fmt.Errorf("groupenv: seal: %w", err)
	}
	return env, nil
}

// ParseHeader strictly decodes env and returns its header, not yet
// authenticated.
func ParseHeader(env []byte) (Header, error) {
	h, _, err := parse(env)
	return h, err
}

func parse(env []byte) (Header, []byte, error) {
	if len(env) > MaxEnvelopeSize {
		return Header{}, nil, fmt.Errorf("%w: %d bytes exceeds %d", ErrMalformed, len(env), MaxEnvelopeSize)
	}
	var w envelopeWire
	if err := cbor.Unmarshal(env, MaxEnvelopeSize, &w); err != nil {
		return Header{}, nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if w.Version != Version {
		return Header{}, nil, fmt.Errorf("%w: version %d", ErrMalformed, w.Version)
	}
	h := Header{Cohort: w.Cohort, Epoch: w.Epoch, Sender: w.Sender, Ctr: w.Ctr}
	if err := h.check(); err != nil {
		return Header{}, nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if len(w.Ciphertext) < chacha20poly1305.Overhead {
		return Header{}, nil, fmt.Errorf("%w: ciphertext shorter than the tag", ErrMalformed)
	}
	return h, w.Ciphertext, nil
}

// Open authenticates and decrypts env with groupKey, which must be the
// group key of the envelope's cohort and epoch. It keeps no replay state:
// a Receiver does.
func Open(groupKey, env []byte) (Header, []byte, error) {
	h, ct, err := parse(env)
	if err != nil {
		return Header{}, nil, err
	}
	pt, err := open(groupKey, h, ct)
	if err != nil {
		return Header{}, nil, err
	}
	return h, pt, nil
}

func open(groupKey []byte, h Header, ct []byte) ([]byte, error) {
	aead, aad, err := cipherFor(groupKey, h)
	if err != nil {
		return nil, err
	}
	pt, err := aead.Open(nil, Nonce(h.Ctr), ct, aad)
	if err != nil {
		return nil, ErrAuth
	}
	return pt, nil
}

func cipherFor(groupKey []byte, h Header) (interface {
	Seal(dst, nonce, plaintext, ad []byte) []byte
	Open(dst, nonce, ciphertext, ad []byte) ([]byte, error)
}, []byte, error) {
	k, err := SenderKey(groupKey, h.Sender)
	if err != nil {
		return nil, nil, err
	}
	defer clear(k)
	aead, err := chacha20poly1305.New(k)
	if err != nil {
		return nil, nil, fmt.Errorf("groupenv: %w", err)
	}
	aad, err := cbor.Marshal(headerWire{Version: Version, Cohort: h.Cohort, Epoch: h.Epoch, Sender: h.Sender, Ctr: h.Ctr})
	if err != nil {
		return nil, nil, fmt.Errorf("groupenv: header: %w", err)
	}
	return aead, aad, nil
}

// marshal encodes an envelope from its parts.
func marshal(h Header, ct []byte) ([]byte, error) {
	return cbor.Marshal(envelopeWire{Version: Version, Cohort: h.Cohort, Epoch: h.Epoch, Sender: h.Sender, Ctr: h.Ctr, Ciphertext: ct})
}
