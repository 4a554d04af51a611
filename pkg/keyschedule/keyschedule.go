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
// next_tag and rekey_tag but cannot compute key_epoch.
package keyschedule

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
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

// TicketSecrets are the values both sides derive from one ticket's ss.
// The issuer keeps them (not ss) to check the device's Status and a later
// re-key; the device uses them to compute the same tags.
type TicketSecrets struct {
	// Confirm is the confirm tag the device publishes for this ticket.
	Confirm []byte
	// NextKeyMAC keys the tag over the next encapsulation key's hash.
	NextKeyMAC []byte
	// RekeyMAC keys the tag of a re-registration with a new key.
	RekeyMAC []byte
}

// DeriveTicketSecrets derives a ticket's confirm tag and MAC keys from its
// ss and ticket_hash.
func DeriveTicketSecrets(ss, ticketHash []byte) (TicketSecrets, error) {
	if len(ss) != Size || len(ticketHash) != Size {
		return TicketSecrets{}, fmt.Errorf("%w: ss and ticket hash must be %d bytes", ErrInput, Size)
	}
	confirmKey, err := hkdf.Key(sha256.New, ss, ticketHash, LabelConfirm, Size)
	if err != nil {
		return TicketSecrets{}, err
	}
	next, err := hkdf.Key(sha256.New, ss, ticketHash, LabelNextKey, Size)
	if err != nil {
		return TicketSecrets{}, err
	}
	rekey, err := hkdf.Key(sha256.New, ss, ticketHash, LabelRekey, Size)
	if err != nil {
		return TicketSecrets{}, err
	}
	return TicketSecrets{Confirm: mac(confirmKey, ticketHash), NextKeyMAC: next, RekeyMAC: rekey}, nil
}

// NextKeyTag returns HMAC(next-key MAC key, next_pk_hash).
func (s TicketSecrets) NextKeyTag(nextPKHash []byte) []byte { return mac(s.NextKeyMAC, nextPKHash) }

// RekeyTag returns HMAC(re-key MAC key, new_pk_hash).
func (s TicketSecrets) RekeyTag(newPKHash []byte) []byte { return mac(s.RekeyMAC, newPKHash) }

// CheckConfirm reports in constant time whether tag is the confirm tag.
func (s TicketSecrets) CheckConfirm(tag []byte) bool { return hmac.Equal(tag, s.Confirm) }

// CheckNextKey reports in constant time whether tag authenticates
// nextPKHash.
func (s TicketSecrets) CheckNextKey(nextPKHash, tag []byte) bool {
	return hmac.Equal(tag, s.NextKeyTag(nextPKHash))
}

// CheckRekey reports in constant time whether tag authenticates newPKHash.
func (s TicketSecrets) CheckRekey(newPKHash, tag []byte) bool {
	return hmac.Equal(tag, s.RekeyTag(newPKHash))
}

func mac(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}
