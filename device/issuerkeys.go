package device

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/trust"
)

// issuerKeysFileName holds the issuer key rotations the device learned
// (schema/PROTOCOL.md §8.6), in the order learned. The announcements are
// signed, so the file needs no encryption: it is verified again, from the
// pinned keys, every time it is loaded, and a file that does not verify is
// an error (ErrStateCorrupt), never ignored.
const issuerKeysFileName = "issuer-keys.cbor"

// maxIssuerKeysFile bounds issuer-keys.cbor before it is decoded.
const maxIssuerKeysFile = trust.MaxRotations*(signature.MaxSign1Size+4) + 16

type issuerKeysFile struct {
	Version   uint64   `cbor:"0,keyasint"`
	Rotations [][]byte `cbor:"1,keyasint,omitempty"`
}

// loadTrust builds the device's issuer key trust from its pinned keys and
// issuer-keys.cbor, if there is one.
func (a *Agent) loadTrust() (*trust.Trust, error) {
	path := filepath.Join(a.cfg.StateDir, issuerKeysFileName)
	b, err := readOptional(path, maxIssuerKeysFile)
	if err != nil {
		return nil, err
	}
	t, err := decodeIssuerKeys(a.cfg.IssuerKeys, b)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrStateCorrupt, path, err)
	}
	return t, nil
}

// decodeIssuerKeys verifies the contents of issuer-keys.cbor (nil: no
// file) against the pinned keys.
func decodeIssuerKeys(pins *signature.KeySet, b []byte) (*trust.Trust, error) {
	var f issuerKeysFile
	if b != nil {
		if err := cbor.Unmarshal(b, maxIssuerKeysFile, &f); err != nil {
			return nil, err
		}
		if f.Version != 1 {
			return nil, fmt.Errorf("version %d, want 1", f.Version)
		}
	}
	return trust.Load(pins, f.Rotations)
}

// onIssuerKey handles a message on {prefix}/issuer/key/+: a KeyRotation
// signed by the key it retires. It is held with those not verified yet and
// all are tried (trust.LearnAll: a chain may arrive out of order). What is
// learned is made durable before it is trusted; then the latest ticket is
// evaluated again if it is not accepted yet (its root may be signed by a
// key just learned). A held announcement is reported once, when it arrives.
func (a *Agent) onIssuerKey(pub publisher, topic string, payload []byte) {
	if len(payload) == 0 {
		delete(a.heldKeys, topic) // a cleared retained message; what was learned stays
		return
	}
	a.heldKeys[topic] = bounded(payload, signature.MaxSign1Size)
	next, outcomes := a.trust.LearnAll(a.heldKeys)
	learned := next != a.trust
	if learned {
		enc, err := cbor.Marshal(&issuerKeysFile{Version: 1, Rotations: next.Signed()})
		if err == nil {
			err = writeAtomic(a.cfg.StateDir, issuerKeysFileName, enc)
		}
		if err != nil { // nothing adopted; all stays held for the next try
			a.count(cIssuerKeyStoreFailed)
			a.log.Error("issuer key not stored; not trusted", "reason", "store_failed", "err", err)
			return
		}
		a.trust = next
	}
	for _, o := range outcomes {
		a.reportIssuerKey(o, o.Key == topic)
		if !o.Retry() {
			delete(a.heldKeys, o.Key)
		}
	}
	for tp := range a.heldKeys {
		if len(a.heldKeys) <= trust.MaxHeld {
			break
		}
		delete(a.heldKeys, tp)
	}
	if learned && a.ticket != nil && a.ticketEpoch > a.Epoch() {
		a.processTicket(pub)
	}
}

// reportIssuerKey counts and logs one announcement's outcome; one held
// for a retry (fresh false) was reported when it arrived.
func (a *Agent) reportIssuerKey(o trust.Outcome, fresh bool) {
	switch {
	case o.Err == nil:
		r := o.Rotation
		a.count(cIssuerKeyLearned)
		a.log.Info("learned issuer key", "kid", fmt.Sprintf("%x", r.New.KID()), "alg", r.New.Alg().String(),
			"from_epoch", r.From, "retires", fmt.Sprintf("%x", r.Old))
	case errors.Is(o.Err, trust.ErrKnown):
	case errors.Is(o.Err, trust.ErrConflict):
		a.count(cIssuerKeyConflict)
		a.log.Error("issuer key announces two different successors", "reason", "issuer_key_conflict", "topic", o.Key, "err", o.Err)
	case fresh:
		a.count(cIssuerKeyRejected)
		a.log.Warn("issuer key announcement not verified (yet)", "reason", "issuer_key_unverified", "topic", o.Key, "err", o.Err)
	}
}
