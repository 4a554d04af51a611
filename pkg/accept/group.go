package accept

import (
	"bytes"
	"fmt"

	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/wire"
)

// GroupKeepEpochs is how many epochs' group keys a device keeps: the
// newest, to seal and open, and the one before, to open envelopes a member
// sealed before it accepted the newer ticket.
const GroupKeepEpochs = 2

// GroupKey is a cohort's group key of one epoch (secret).
type GroupKey struct {
	Epoch uint64
	Key   []byte
}

// Group is a device's cohort group state (schema/PROTOCOL.md §7.7): the
// cohort it is a member of, the group keys of its newest epochs (oldest
// first, the last one the newest) and the next counter it seals with under
// the newest key. Nil in a State that never received a group seed, and
// again after a ticket without one (the device left the cohort).
type Group struct {
	Cohort  string
	Keys    []GroupKey
	NextCtr uint64
}

// Latest is the newest group key.
func (g *Group) Latest() GroupKey { return g.Keys[len(g.Keys)-1] }

// KeyOf returns the group key of epoch, if held.
func (g *Group) KeyOf(epoch uint64) ([]byte, bool) {
	for _, k := range g.Keys {
		if k.Epoch == epoch {
			return k.Key, true
		}
	}
	return nil, false
}

func (g *Group) clone() *Group {
	if g == nil {
		return nil
	}
	c := &Group{Cohort: g.Cohort, NextCtr: g.NextCtr, Keys: make([]GroupKey, len(g.Keys))}
	for i, k := range g.Keys {
		c.Keys[i] = GroupKey{Epoch: k.Epoch, Key: bytes.Clone(k.Key)}
	}
	return c
}

// Wipe clears the group keys.
func (g *Group) Wipe() {
	if g == nil {
		return
	}
	for _, k := range g.Keys {
		clear(k.Key)
	}
}

// deriveGroup opens body's sealed group seed with the ticket's ss and
// derives the cohort's group key of the ticket's epoch with the cohort
// secret. It returns the device's next group state: nil for a ticket
// without a seed (not, or no longer, a member).
func deriveGroup(prev *Group, ss []byte, body *wire.TicketBody, c cohort.Secret) (*Group, error) {
	if body.Cohort == "" {
		return nil, nil
	}
	g, err := keyschedule.OpenGroupSeed(ss, body.Epoch, body.Cohort, body.Aud, body.SealedGroupSeed)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	defer clear(g)
	k, err := keyschedule.GroupKey(c, g, body.Epoch, body.Cohort)
	if err != nil {
		return nil, err
	}
	next := &Group{Cohort: body.Cohort}
	if prev != nil && prev.Cohort == body.Cohort {
		old := prev.Latest()
		next.Keys = append(next.Keys, GroupKey{Epoch: old.Epoch, Key: bytes.Clone(old.Key)})
	}
	next.Keys = append(next.Keys, GroupKey{Epoch: body.Epoch, Key: k})
	return next, nil
}

// groupWire is device-state field 9.
type groupWire struct {
	Cohort  string   `cbor:"0,keyasint"`
	Epochs  []uint64 `cbor:"1,keyasint"`
	Keys    [][]byte `cbor:"2,keyasint"`
	NextCtr uint64   `cbor:"3,keyasint"`
}

func (g *Group) toWire() *groupWire {
	if g == nil {
		return nil
	}
	w := &groupWire{Cohort: g.Cohort, NextCtr: g.NextCtr}
	for _, k := range g.Keys {
		w.Epochs, w.Keys = append(w.Epochs, k.Epoch), append(w.Keys, k.Key)
	}
	return w
}

func (w *groupWire) group() (*Group, error) {
	if err := wire.ValidateLabel(w.Cohort); err != nil {
		return nil, fmt.Errorf("%w: group cohort: %w", ErrBadState, err)
	}
	if len(w.Epochs) < 1 || len(w.Epochs) > GroupKeepEpochs || len(w.Epochs) != len(w.Keys) {
		return nil, fmt.Errorf("%w: group keys", ErrBadState)
	}
	if w.NextCtr > 1<<63 {
		return nil, fmt.Errorf("%w: group counter out of range", ErrBadState)
	}
	g := &Group{Cohort: w.Cohort, NextCtr: w.NextCtr}
	for i, e := range w.Epochs {
		if e < 1 || e > wire.MaxEpoch || len(w.Keys[i]) != keyschedule.Size || (i > 0 && e <= w.Epochs[i-1]) {
			return nil, fmt.Errorf("%w: group key %d", ErrBadState, i)
		}
		g.Keys = append(g.Keys, GroupKey{Epoch: e, Key: w.Keys[i]})
	}
	return g, nil
}
