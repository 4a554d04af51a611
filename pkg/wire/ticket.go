package wire

import (
	"github.com/entropykem/entropykem/pkg/kem"
)

// TicketBody is what the issuer encapsulates for one device in one epoch
// (schema/entropykem.cddl: ticket-body). Its exact bytes are hashed into
// ticket_hash and into the epoch's Merkle tree, so it travels inside the
// Ticket as a byte string.
type TicketBody struct {
	Version    uint64 `cbor:"0,keyasint"`
	Aud        string `cbor:"1,keyasint"`
	Epoch      uint64 `cbor:"2,keyasint"`
	IssuedAt   uint64 `cbor:"3,keyasint"`
	TTL        uint64 `cbor:"4,keyasint"`
	KEMAlg     kem.ID `cbor:"5,keyasint"`
	Ciphertext []byte `cbor:"6,keyasint"`
	Prev       []byte `cbor:"7,keyasint"`
	PKHash     []byte `cbor:"8,keyasint"`
	Purpose    string `cbor:"9,keyasint"`
	Group      string `cbor:"10,keyasint"`
}

// ParseTicketBody strictly decodes and validates a ticket body.
func ParseTicketBody(b []byte) (*TicketBody, error) {
	var t TicketBody
	if err := decode("ticket body", b, MaxTicketBody, &t); err != nil {
		return nil, err
	}
	if err := t.validate(); err != nil {
		return nil, err
	}
	return &t, nil
}

// Marshal validates t and returns its deterministic encoding.
func (t *TicketBody) Marshal() ([]byte, error) { return encode("ticket body", t) }

func (t *TicketBody) validate() error {
	const what = "ticket body"
	if err := checkVersion(what, t.Version); err != nil {
		return err
	}
	if err := checkID(what, "aud", t.Aud); err != nil {
		return err
	}
	if err := checkEpoch(what, t.Epoch); err != nil {
		return err
	}
	if err := checkTime(what, "issued_at", t.IssuedAt); err != nil {
		return err
	}
	if t.TTL < 1 || t.TTL > MaxTTL {
		return bad(what, "ttl_s %d out of range 1..%d", t.TTL, MaxTTL)
	}
	s, err := checkKEM(what, t.KEMAlg)
	if err != nil {
		return err
	}
	if len(t.Ciphertext) != s.CiphertextSize() {
		return bad(what, "ct is %d bytes, %v needs %d", len(t.Ciphertext), t.KEMAlg, s.CiphertextSize())
	}
	if err := checkHash(what, "prev", t.Prev); err != nil {
		return err
	}
	if err := checkHash(what, "pk_hash", t.PKHash); err != nil {
		return err
	}
	if err := checkLabel(what, "purpose", t.Purpose); err != nil {
		return err
	}
	return checkLabel(what, "group", t.Group)
}

// Ticket is the message on ekem/v1/ticket/{device_id}: the body's exact
// bytes and its RFC 9162 inclusion proof in the epoch's Merkle tree
// (schema/entropykem.cddl: ticket).
type Ticket struct {
	Version   uint64   `cbor:"0,keyasint"`
	Body      []byte   `cbor:"1,keyasint"`
	LeafIndex uint64   `cbor:"2,keyasint"`
	TreeSize  uint64   `cbor:"3,keyasint"`
	Path      [][]byte `cbor:"4,keyasint"`
}

// ParseTicket strictly decodes a Ticket and its body. It checks the
// proof's shape (sizes, index < tree size), not its validity: that needs
// the epoch's root.
func ParseTicket(b []byte) (*Ticket, *TicketBody, error) {
	var t Ticket
	if err := decode("ticket", b, MaxTicket, &t); err != nil {
		return nil, nil, err
	}
	if err := t.validate(); err != nil {
		return nil, nil, err
	}
	body, err := ParseTicketBody(t.Body)
	if err != nil {
		return nil, nil, err
	}
	return &t, body, nil
}

// Marshal validates t and returns its deterministic encoding.
func (t *Ticket) Marshal() ([]byte, error) { return encode("ticket", t) }

func (t *Ticket) validate() error {
	const what = "ticket"
	if err := checkVersion(what, t.Version); err != nil {
		return err
	}
	if len(t.Body) == 0 || len(t.Body) > MaxTicketBody {
		return bad(what, "body is %d bytes, want 1..%d", len(t.Body), MaxTicketBody)
	}
	if t.TreeSize < 1 || t.LeafIndex >= t.TreeSize {
		return bad(what, "leaf index %d not below tree size %d", t.LeafIndex, t.TreeSize)
	}
	if t.Path == nil {
		return bad(what, "path missing")
	}
	if len(t.Path) > MaxProofLen {
		return bad(what, "path of %d hashes exceeds %d", len(t.Path), MaxProofLen)
	}
	for _, h := range t.Path {
		if err := checkHash(what, "path element", h); err != nil {
			return err
		}
	}
	return nil
}
