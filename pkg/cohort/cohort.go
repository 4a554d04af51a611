// Package cohort defines where the cohort secret lives and the one operation
// the protocol needs from it: HMAC-SHA256 (RFC 2104, FIPS 198-1) keyed with
// the secret. A TPM computes it without the secret ever leaving the chip; a
// software implementation exists for development.
package cohort

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
)

// SecretSize is the size of a cohort secret in bytes. A TPM keyed-hash key
// takes at most 64 bytes; 32 bytes is a full-strength HMAC-SHA256 key.
const SecretSize = 32

// ErrBadSecret is returned for a cohort secret of the wrong size.
var ErrBadSecret = errors.New("cohort: secret must be 32 bytes")

// Secret computes HMAC-SHA256(cohort_secret, msg). Implementations must not
// reveal the secret, and errors must not contain it. msg is at most 1024
// bytes (the TPM's input buffer); the protocol's messages are far shorter.
type Secret interface {
	MAC(msg []byte) ([]byte, error)
}

// MaxMessage is the largest msg a Secret must accept (TPM_PT_INPUT_BUFFER).
const MaxMessage = 1024

// Software holds the cohort secret in process memory. It is for
// development and tests only: the secret is as safe as the process.
type Software struct {
	key []byte
}

// NewSoftware returns a Secret that keeps secret in memory. secret must be
// SecretSize bytes; it is copied.
func NewSoftware(secret []byte) (*Software, error) {
	if len(secret) != SecretSize {
		return nil, fmt.Errorf("%w: got %d", ErrBadSecret, len(secret))
	}
	return &Software{key: append([]byte(nil), secret...)}, nil
}

// MAC implements Secret.
func (s *Software) MAC(msg []byte) ([]byte, error) {
	if len(msg) > MaxMessage {
		return nil, fmt.Errorf("cohort: message of %d bytes exceeds %d", len(msg), MaxMessage)
	}
	m := hmac.New(sha256.New, s.key)
	m.Write(msg)
	return m.Sum(nil), nil
}
