package wire

import (
	"fmt"

	"github.com/entropykem/entropykem/pkg/kem"
)

// Registration announces a device's first ML-KEM encapsulation key on
// ekem/v1/reg/{device_id} (schema/entropykem.cddl: registration).
type Registration struct {
	Version   uint64      `cbor:"0,keyasint"`
	DeviceID  string      `cbor:"1,keyasint"`
	KEMAlg    kem.ID      `cbor:"2,keyasint"`
	PublicKey []byte      `cbor:"3,keyasint"`
	CreatedAt uint64      `cbor:"4,keyasint"`
	Rekey     *RekeyProof `cbor:"5,keyasint,omitempty"`
	// Reenroll marks a re-enrollment (schema/PROTOCOL.md §7.6): a new key
	// for a device whose earlier key is lost, with no re-key proof. The
	// issuer holds it for an operator's approval, or accepts it under an
	// explicit policy. On the wire it is present (true) or absent, never
	// false.
	Reenroll bool `cbor:"6,keyasint,omitempty"`
}

// RekeyProof lets a device replace its pinned key: Tag is
// HMAC(HKDF(ss, salt = ticket_hash, info = "ekem/v1 rekey"), SHA-256(new
// public key)) under the ss of the ticket whose hash is TicketHash
// (schema/PROTOCOL.md §Re-key). Only the holder of the old key could
// decapsulate that ticket.
type RekeyProof struct {
	Epoch      uint64 `cbor:"0,keyasint"`
	TicketHash []byte `cbor:"1,keyasint"`
	Tag        []byte `cbor:"2,keyasint"`
}

// ParseRegistration strictly decodes and validates a Registration. The
// public key's length is checked; its FIPS 203 validity is checked by
// kem.Scheme.ParsePublicKey, which callers run before using the key.
func ParseRegistration(b []byte) (*Registration, error) {
	var r Registration
	if err := decode("registration", b, MaxRegistration, &r); err != nil {
		return nil, err
	}
	if err := r.validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// Marshal validates r and returns its deterministic encoding.
func (r *Registration) Marshal() ([]byte, error) { return encode("registration", r) }

func (r *Registration) validate() error {
	const what = "registration"
	if err := checkVersion(what, r.Version); err != nil {
		return err
	}
	if err := checkID(what, "device_id", r.DeviceID); err != nil {
		return err
	}
	s, err := checkKEM(what, r.KEMAlg)
	if err != nil {
		return err
	}
	if len(r.PublicKey) != s.PublicKeySize() {
		return bad(what, "public key is %d bytes, %v needs %d", len(r.PublicKey), r.KEMAlg, s.PublicKeySize())
	}
	if err := checkTime(what, "created_at", r.CreatedAt); err != nil {
		return err
	}
	if r.Reenroll && r.Rekey != nil {
		return bad(what, "a re-enrollment carries no re-key proof")
	}
	if r.Rekey != nil {
		if err := r.Rekey.validate(); err != nil {
			return fmt.Errorf("%w (re-key proof)", err)
		}
	}
	return nil
}

func (p *RekeyProof) validate() error {
	const what = "registration"
	if err := checkEpoch(what, p.Epoch); err != nil {
		return err
	}
	if err := checkHash(what, "rekey ticket_hash", p.TicketHash); err != nil {
		return err
	}
	return checkHash(what, "rekey tag", p.Tag)
}
