package wire

// EpochRoot is the payload of the epoch's COSE_Sign1 on ekem/v1/root/{epoch}
// (schema/entropykem.cddl: epoch-root). One ML-DSA signature over it covers
// every ticket of the epoch through the Merkle root.
type EpochRoot struct {
	Version  uint64 `cbor:"0,keyasint"`
	Epoch    uint64 `cbor:"1,keyasint"`
	IssuedAt uint64 `cbor:"2,keyasint"`
	TreeSize uint64 `cbor:"3,keyasint"`
	Root     []byte `cbor:"4,keyasint"`
}

// ParseEpochRoot strictly decodes and validates an EpochRoot payload. It
// is only meaningful once the COSE_Sign1 around it has been verified.
func ParseEpochRoot(b []byte) (*EpochRoot, error) {
	var r EpochRoot
	if err := decode("epoch root", b, MaxEpochRoot, &r); err != nil {
		return nil, err
	}
	if err := r.validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// Marshal validates r and returns its deterministic encoding.
func (r *EpochRoot) Marshal() ([]byte, error) { return encode("epoch root", r) }

func (r *EpochRoot) validate() error {
	const what = "epoch root"
	if err := checkVersion(what, r.Version); err != nil {
		return err
	}
	if err := checkEpoch(what, r.Epoch); err != nil {
		return err
	}
	if err := checkTime(what, "issued_at", r.IssuedAt); err != nil {
		return err
	}
	if r.TreeSize < 1 {
		return bad(what, "tree size 0")
	}
	return checkHash(what, "root", r.Root)
}
