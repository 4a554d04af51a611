package wire

import (
	"github.com/entropykem/entropykem/pkg/cbor"
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
	// Cohort and SealedGroupSeed are present together or not at all
	// (schema/PROTOCOL.md §7.7): the cohort id the device is a member of,
	// and that cohort's group seed for this epoch sealed under a key only
	// this ticket's ss gives.
	Cohort          string `cbor:"11,keyasint,omitempty"`
	SealedGroupSeed []byte `cbor:"12,keyasint,omitempty"`
}

// SealedGroupSeedSize is the size of a ticket body's field 12: a 32-byte
// group seed and its 16-byte ChaCha20-Poly1305 tag.
const SealedGroupSeedSize = 48

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
//
// The issuer encodes one body per device per epoch, so it is written with
// cbor's Append functions instead of by reflection; the keys are appended
// in ascending order, the core deterministic order for 0..12, and
// TestFastEncodersMatchMarshal holds the result to cbor.Marshal's.
func (t *TicketBody) Marshal() ([]byte, error) {
	if err := t.validate(); err != nil {
		return nil, err
	}
	b, _ := t.appendTo(make([]byte, 0, t.encodedSize()))
	return b, nil
}

// encodedSize returns the length of t's encoding.
func (t *TicketBody) encodedSize() int {
	n := 1 + 11 // the map head and eleven one-byte keys
	for _, v := range []uint64{t.Version, t.Epoch, t.IssuedAt, t.TTL, uint64(t.KEMAlg)} {
		n += cbor.HeadSize(v)
	}
	for _, l := range []int{len(t.Aud), len(t.Ciphertext), len(t.Prev), len(t.PKHash), len(t.Purpose), len(t.Group)} {
		n += cbor.HeadSize(uint64(l)) + l
	}
	if t.hasGroup() {
		n += 2
		for _, l := range []int{len(t.Cohort), len(t.SealedGroupSeed)} {
			n += cbor.HeadSize(uint64(l)) + l
		}
	}
	return n
}

// appendTo appends t's encoding to b, and says where in the result the
// ciphertext's bytes start.
func (t *TicketBody) appendTo(b []byte) (out []byte, ctAt int) {
	pairs := 11
	if t.hasGroup() {
		pairs = 13
	}
	b = cbor.AppendMapHead(b, pairs)
	b = cbor.AppendUint(cbor.AppendUint(b, 0), t.Version)
	b = cbor.AppendText(cbor.AppendUint(b, 1), t.Aud)
	b = cbor.AppendUint(cbor.AppendUint(b, 2), t.Epoch)
	b = cbor.AppendUint(cbor.AppendUint(b, 3), t.IssuedAt)
	b = cbor.AppendUint(cbor.AppendUint(b, 4), t.TTL)
	b = cbor.AppendUint(cbor.AppendUint(b, 5), uint64(t.KEMAlg))
	b = cbor.AppendBytesHead(cbor.AppendUint(b, 6), len(t.Ciphertext))
	ctAt = len(b)
	b = append(b, t.Ciphertext...)
	b = cbor.AppendBytes(cbor.AppendUint(b, 7), t.Prev)
	b = cbor.AppendBytes(cbor.AppendUint(b, 8), t.PKHash)
	b = cbor.AppendText(cbor.AppendUint(b, 9), t.Purpose)
	b = cbor.AppendText(cbor.AppendUint(b, 10), t.Group)
	if t.hasGroup() {
		b = cbor.AppendText(cbor.AppendUint(b, 11), t.Cohort)
		b = cbor.AppendBytes(cbor.AppendUint(b, 12), t.SealedGroupSeed)
	}
	return b, ctAt
}

// hasGroup reports whether t carries a cohort group seed (fields 11, 12).
func (t *TicketBody) hasGroup() bool { return t.Cohort != "" || t.SealedGroupSeed != nil }

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
	if err := checkLabel(what, "group", t.Group); err != nil {
		return err
	}
	if !t.hasGroup() {
		return nil
	}
	if err := checkLabel(what, "cohort", t.Cohort); err != nil {
		return err
	}
	if len(t.SealedGroupSeed) != SealedGroupSeedSize {
		return bad(what, "sealed group seed is %d bytes, not %d", len(t.SealedGroupSeed), SealedGroupSeedSize)
	}
	return nil
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
// Like TicketBody's, it is written with cbor's Append functions.
func (t *Ticket) Marshal() ([]byte, error) {
	if err := t.validate(); err != nil {
		return nil, err
	}
	b := appendTicketHead(make([]byte, 0, ticketSize(len(t.Body), len(t.Path))), t.Version, len(t.Body))
	return t.appendTail(append(b, t.Body...)), nil
}

// ticketSize bounds the encoding of a Ticket with a body of bodyLen bytes
// and a path of pathLen hashes.
func ticketSize(bodyLen, pathLen int) int {
	return 5 + 4*9 + bodyLen + pathLen*(2+HashSize)
}

// appendTicketHead appends what precedes the body's bytes in a Ticket:
// the map head, the version, and the body's key and byte-string head.
func appendTicketHead(b []byte, version uint64, bodyLen int) []byte {
	b = cbor.AppendMapHead(b, 5)
	b = cbor.AppendUint(cbor.AppendUint(b, 0), version)
	return cbor.AppendBytesHead(cbor.AppendUint(b, 1), bodyLen)
}

// appendTail appends what follows the body's bytes: the proof.
func (t *Ticket) appendTail(b []byte) []byte {
	b = cbor.AppendUint(cbor.AppendUint(b, 2), t.LeafIndex)
	b = cbor.AppendUint(cbor.AppendUint(b, 3), t.TreeSize)
	b = cbor.AppendArrayHead(cbor.AppendUint(b, 4), len(t.Path))
	for _, h := range t.Path {
		b = cbor.AppendBytes(b, h)
	}
	return b
}

// TicketDraft is a Ticket message built around its body, so an issuer
// writes each body's bytes once: DraftTicket encodes the body in place,
// Body returns those bytes to hash, and Finish appends the proof once the
// epoch's tree exists.
type TicketDraft struct {
	buf  []byte // the Ticket up to the end of the body
	body []byte // buf's tail: the body's encoding
	ct   []byte // the ciphertext's bytes within body
	seed []byte // the sealed group seed's bytes within body, or nil
}

// DraftTicket validates body and encodes it inside a new Ticket buffer with
// room for a proof of up to pathLen hashes.
func DraftTicket(body *TicketBody, pathLen int) (*TicketDraft, error) {
	if err := body.validate(); err != nil {
		return nil, err
	}
	n := body.encodedSize()
	buf := appendTicketHead(make([]byte, 0, ticketSize(n, pathLen)), Version, n)
	start := len(buf)
	buf, ctAt := body.appendTo(buf)
	ctEnd := ctAt + len(body.Ciphertext)
	d := &TicketDraft{buf: buf, body: buf[start:len(buf):len(buf)], ct: buf[ctAt:ctEnd:ctEnd]}
	if body.hasGroup() { // field 12 is the body's last: its bytes end it
		d.seed = buf[len(buf)-SealedGroupSeedSize : len(buf) : len(buf)]
	}
	return d, nil
}

// SealedGroupSeed returns the sealed group seed's bytes (field 12) inside
// the draft's body, nil for a body without one. Like Ciphertext, an issuer
// drafts the body with a placeholder of the right size and fills this
// slice, once the encapsulation gave the key that seals it, before hashing
// Body().
func (d *TicketDraft) SealedGroupSeed() []byte { return d.seed }

// Ciphertext returns the ciphertext's bytes inside the draft's body, for
// an issuer that encapsulates straight into them: it drafts the body with
// a placeholder ciphertext of the right size, fills this slice, and only
// then hashes Body().
func (d *TicketDraft) Ciphertext() []byte { return d.ct }

// Body returns the body's encoding. It shares memory with the draft and
// the Ticket that Finish returns; callers must not modify it.
func (d *TicketDraft) Body() []byte { return d.body }

// Finish appends the proof and returns the Ticket message: exactly what
// (&Ticket{Version: Version, Body: d.Body(), LeafIndex: leafIndex,
// TreeSize: treeSize, Path: path}).Marshal() returns. The draft must not be
// finished twice.
func (d *TicketDraft) Finish(leafIndex, treeSize uint64, path [][]byte) ([]byte, error) {
	t := Ticket{Version: Version, Body: d.body, LeafIndex: leafIndex, TreeSize: treeSize, Path: path}
	if err := t.validate(); err != nil {
		return nil, err
	}
	out := t.appendTail(d.buf)
	d.buf = nil
	return out, nil
}

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
