package wire

// EpochInfo is the retained, unsigned announcement on ekem/v1/epoch
// (schema/entropykem.cddl: epoch-announcement). It only tells devices and
// monitors what to expect; nothing is trusted from it.
type EpochInfo struct {
	Version  uint64 `cbor:"0,keyasint"`
	Epoch    uint64 `cbor:"1,keyasint"`
	IssuedAt uint64 `cbor:"2,keyasint"`
	PeriodS  uint64 `cbor:"3,keyasint"`
	NextAt   uint64 `cbor:"4,keyasint"`
}

// MaxEpochInfo bounds an encoded EpochInfo or Online.
const MaxEpochInfo = 128

// ParseEpochInfo strictly decodes and validates an EpochInfo.
func ParseEpochInfo(b []byte) (*EpochInfo, error) {
	var e EpochInfo
	if err := decode("epoch info", b, MaxEpochInfo, &e); err != nil {
		return nil, err
	}
	if err := e.validate(); err != nil {
		return nil, err
	}
	return &e, nil
}

// Marshal validates e and returns its deterministic encoding.
func (e *EpochInfo) Marshal() ([]byte, error) { return encode("epoch info", e) }

func (e *EpochInfo) validate() error {
	const what = "epoch info"
	if err := checkVersion(what, e.Version); err != nil {
		return err
	}
	if err := checkEpoch(what, e.Epoch); err != nil {
		return err
	}
	if err := checkTime(what, "issued_at", e.IssuedAt); err != nil {
		return err
	}
	if e.PeriodS < 1 || e.PeriodS > MaxTTL {
		return bad(what, "period_s %d out of range 1..%d", e.PeriodS, MaxTTL)
	}
	return checkTime(what, "next_at", e.NextAt)
}

// Online is the issuer's retained liveness message on
// ekem/v1/issuer/online; its MQTT will message says Online false.
type Online struct {
	Version uint64 `cbor:"0,keyasint"`
	Online  bool   `cbor:"1,keyasint"`
	Since   uint64 `cbor:"2,keyasint"`
}

// ParseOnline strictly decodes and validates an Online message.
func ParseOnline(b []byte) (*Online, error) {
	var o Online
	if err := decode("online", b, MaxEpochInfo, &o); err != nil {
		return nil, err
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	return &o, nil
}

// Marshal validates o and returns its deterministic encoding.
func (o *Online) Marshal() ([]byte, error) { return encode("online", o) }

func (o *Online) validate() error {
	if err := checkVersion("online", o.Version); err != nil {
		return err
	}
	return checkTime("online", "since", o.Since)
}
