package device

import (
	"fmt"

	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/signature"
)

// Fleet makes the agents of a simulated fleet that runs in one process
// (ekem-device fleet, load tests). They share one cache of verified epoch
// roots, so that a root's signature is verified once per process rather
// than once per agent: sound only because every agent of a Fleet pins the
// same issuer keys, which Fleet.New checks. A device on its own hardware
// has no use for it; it uses New.
type Fleet struct {
	pins  *signature.KeySet
	roots *accept.RootCache
}

// NewFleet returns a Fleet whose agents pin pins.
func NewFleet(pins *signature.KeySet) *Fleet {
	return &Fleet{pins: pins, roots: accept.NewRootCache(2 * DefaultRootEpochs)}
}

// New is New for one agent of the fleet. cfg.IssuerKeys must be the
// fleet's pins (the same *signature.KeySet), else it is ErrConfig.
func (f *Fleet) New(cfg Config) (*Agent, error) {
	if cfg.IssuerKeys != f.pins {
		return nil, fmt.Errorf("%w: IssuerKeys: an agent of a Fleet pins the Fleet's issuer keys", ErrConfig)
	}
	return newAgent(cfg, f.roots)
}
