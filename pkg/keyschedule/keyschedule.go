// Package keyschedule implements entropykem's derivations
// (schema/PROTOCOL.md §Key schedule) with HKDF-SHA256 (RFC 5869) and
// HMAC-SHA256 (RFC 2104):
//
//	ticket_hash = SHA-256(ticket body bytes)
//	cohort_mix  = HMAC(cohort_secret, "ekem/v1 cohort" ‖ ticket_hash)
//	key_epoch   = HKDF(IKM = ss ‖ cohort_mix, salt = u64be(epoch),
//	                   info = purpose ";" group ";" decimal(epoch), L = 32)
//	confirm     = HMAC(HKDF(ss, salt = ticket_hash, info = "ekem/v1 confirm"), ticket_hash)
//	next_tag    = HMAC(HKDF(ss, salt = ticket_hash, info = "ekem/v1 next-key"), next_pk_hash)
//	rekey_tag   = HMAC(HKDF(ss, salt = ticket_hash, info = "ekem/v1 rekey"), new_pk_hash)
//	state_key   = HMAC(cohort_secret, "ekem/v1 state-key" ‖ device_id)
//
// The issuer knows ss but not the cohort secret, so it can check confirm,
// next_tag and rekey_tag but cannot compute key_epoch. Both sides keep a
// ticket's ss only as its HKDF-Extract output (see TicketSecrets).
package keyschedule

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/entropykem/entropykem/pkg/cohort"
)

// Size of every derived key and tag.
const Size = 32

// Labels, exactly as on the wire of the derivations (ASCII, no terminator).
const (
	LabelCohort   = "ekem/v1 cohort"
	LabelConfirm  = "ekem/v1 confirm"
	LabelNextKey  = "ekem/v1 next-key"
	LabelRekey    = "ekem/v1 rekey"
	LabelStateKey = "ekem/v1 state-key"
)

// ErrInput is returned for inputs of the wrong size.
var ErrInput = errors.New("keyschedule: invalid input")

// TicketHash returns SHA-256 of a ticket body's exact bytes.
func TicketHash(body []byte) []byte {
	h := sha256.Sum256(body)
	return h[:]
}

// CohortMix asks the cohort secret's holder (software or TPM) for
// HMAC(cohort_secret, "ekem/v1 cohort" ‖ ticket_hash).
func CohortMix(c cohort.Secret, ticketHash []byte) ([]byte, error) {
	if len(ticketHash) != Size {
		return nil, fmt.Errorf("%w: ticket hash of %d bytes", ErrInput, len(ticketHash))
	}
	msg := append([]byte(LabelCohort), ticketHash...)
	mix, err := c.MAC(msg)
	if err != nil {
		return nil, fmt.Errorf("keyschedule: cohort mix: %w", err)
	}
	if len(mix) != Size {
		return nil, fmt.Errorf("%w: cohort mix of %d bytes", ErrInput, len(mix))
	}
	return mix, nil
}

// StateKey derives the key that encrypts a device's state at rest from
// the cohort secret, so a state file is useless without the device's TPM.
func StateKey(c cohort.Secret, deviceID string) ([]byte, error) {
	k, err := c.MAC(append([]byte(LabelStateKey), deviceID...))
	if err != nil {
		return nil, fmt.Errorf("keyschedule: state key: %w", err)
	}
	return k, nil
}

// EpochKey derives key_epoch from the KEM shared secret and cohort_mix.
// purpose and group must already be valid labels (they never contain ';').
func EpochKey(ss, cohortMix []byte, epoch uint64, purpose, group string) ([]byte, error) {
	if len(ss) != Size || len(cohortMix) != Size {
		return nil, fmt.Errorf("%w: ss and cohort_mix must be %d bytes", ErrInput, Size)
	}
	ikm := make([]byte, 0, 2*Size)
	ikm = append(append(ikm, ss...), cohortMix...)
	info := purpose + ";" + group + ";" + strconv.FormatUint(epoch, 10)
	return hkdf.Key(sha256.New, ikm, U64(epoch), info, Size)
}

// U64 returns the 8-byte big-endian encoding of v (the protocol's u64be).
func U64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// TicketSecrets are what both sides keep of one ticket's ss: the HKDF
// pseudorandom key
//
//	prk = HKDF-Extract(salt = ticket_hash, IKM = ss)   (RFC 5869 §2.2)
//
// and the ticket_hash. Every HKDF(ss, salt = ticket_hash, info = label) of
// schema/PROTOCOL.md is HKDF-Expand(prk, label, 32) (RFC 5869 §2.3), so one
// Extract serves the confirm, next-key and rekey keys, and each is expanded
// only when a tag is computed or checked. The prk gives exactly those three
// keys: not ss, and not key_epoch, whose IKM also holds cohort_mix.
//
// The zero value holds no secret; IsZero reports it.
type TicketSecrets struct {
	prk        [Size]byte
	ticketHash [Size]byte
	set        bool
}

// DeriveTicketSecrets extracts a ticket's secrets from its ss and
// ticket_hash.
func DeriveTicketSecrets(ss, ticketHash []byte) (TicketSecrets, error) {
	if len(ss) != Size || len(ticketHash) != Size {
		return TicketSecrets{}, fmt.Errorf("%w: ss and ticket hash must be %d bytes", ErrInput, Size)
	}
	prk, err := hkdf.Extract(sha256.New, ss, ticketHash)
	if err != nil {
		return TicketSecrets{}, err
	}
	return secretsOf(prk, ticketHash), nil
}

// TicketSecretsFromPRK rebuilds secrets stored with PRK and TicketHash.
func TicketSecretsFromPRK(prk, ticketHash []byte) (TicketSecrets, error) {
	if len(prk) != Size || len(ticketHash) != Size {
		return TicketSecrets{}, fmt.Errorf("%w: prk and ticket hash must be %d bytes", ErrInput, Size)
	}
	return secretsOf(prk, ticketHash), nil
}

func secretsOf(prk, ticketHash []byte) TicketSecrets {
	s := TicketSecrets{set: true}
	copy(s.prk[:], prk)
	copy(s.ticketHash[:], ticketHash)
	return s
}

// String, GoString and LogValue redact the secret: a TicketSecrets printed
// or logged by mistake shows only whether it is set.
func (s TicketSecrets) String() string {
	if !s.set {
		return "TicketSecrets(unset)"
	}
	return "TicketSecrets(redacted)"
}

// GoString redacts like String.
func (s TicketSecrets) GoString() string { return s.String() }

// LogValue redacts like String (log/slog).
func (s TicketSecrets) LogValue() slog.Value { return slog.StringValue(s.String()) }

// IsZero reports whether s holds no secret.
func (s TicketSecrets) IsZero() bool { return !s.set }

// PRK returns a copy of the pseudorandom key, the secrets' storage form.
// It is secret.
func (s TicketSecrets) PRK() []byte { return append([]byte(nil), s.prk[:]...) }

// TicketHash returns the ticket_hash the secrets are bound to.
func (s TicketSecrets) TicketHash() []byte { return append([]byte(nil), s.ticketHash[:]...) }

// expand returns HKDF-Expand(prk, label, 32); it cannot fail for 32 bytes.
func (s TicketSecrets) expand(label string) []byte {
	k, err := hkdf.Expand(sha256.New, s.prk[:], label, Size)
	if err != nil {
		panic("keyschedule: HKDF-Expand of 32 bytes failed: " + err.Error())
	}
	return k
}

// Confirm returns the confirm tag:
// HMAC(HKDF(ss, salt = ticket_hash, info = "ekem/v1 confirm"), ticket_hash).
func (s TicketSecrets) Confirm() []byte { return mac(s.expand(LabelConfirm), s.ticketHash[:]) }

// NextKeyTag returns HMAC(HKDF(ss, salt = ticket_hash, info =
// "ekem/v1 next-key"), next_pk_hash).
func (s TicketSecrets) NextKeyTag(nextPKHash []byte) []byte {
	return mac(s.expand(LabelNextKey), nextPKHash)
}

// RekeyTag returns HMAC(HKDF(ss, salt = ticket_hash, info =
// "ekem/v1 rekey"), new_pk_hash).
func (s TicketSecrets) RekeyTag(newPKHash []byte) []byte {
	return mac(s.expand(LabelRekey), newPKHash)
}

// CheckConfirm reports in constant time whether tag is the confirm tag.
// The zero TicketSecrets accepts nothing.
func (s TicketSecrets) CheckConfirm(tag []byte) bool {
	return s.set && hmac.Equal(tag, s.Confirm())
}

// CheckNextKey reports in constant time whether tag authenticates
// nextPKHash. The zero TicketSecrets accepts nothing.
func (s TicketSecrets) CheckNextKey(nextPKHash, tag []byte) bool {
	return s.set && hmac.Equal(tag, s.NextKeyTag(nextPKHash))
}

// CheckRekey reports in constant time whether tag authenticates newPKHash.
// The zero TicketSecrets accepts nothing.
func (s TicketSecrets) CheckRekey(newPKHash, tag []byte) bool {
	return s.set && hmac.Equal(tag, s.RekeyTag(newPKHash))
}

func mac(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}
