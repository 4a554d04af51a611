package signature

import (
	"bytes"
	"fmt"
	"slices"
)

// KeySet is the immutable set of pinned issuer public keys, looked up by kid.
// The zero value and a nil *KeySet are empty sets.
type KeySet struct {
	byKID map[[KIDSize]byte]*PublicKey
}

// NewKeySet returns the set of keys. A nil key or two keys with the same
// kid (the same key twice, or a kid collision) is an error.
func NewKeySet(keys ...*PublicKey) (*KeySet, error) {
	s := &KeySet{byKID: make(map[[KIDSize]byte]*PublicKey, len(keys))}
	for i, k := range keys {
		if k == nil {
			return nil, fmt.Errorf("%w: key %d is nil", ErrInvalidKey, i)
		}
		if _, dup := s.byKID[k.kid]; dup {
			return nil, fmt.Errorf("%w: key %d: duplicate kid %x", ErrInvalidKey, i, k.kid)
		}
		s.byKID[k.kid] = k
	}
	return s, nil
}

// Lookup returns the pinned key whose kid is kid.
func (s *KeySet) Lookup(kid []byte) (*PublicKey, bool) {
	if s == nil || len(kid) != KIDSize {
		return nil, false
	}
	k, ok := s.byKID[[KIDSize]byte(kid)]
	return k, ok
}

// Len returns the number of keys in the set.
func (s *KeySet) Len() int {
	if s == nil {
		return 0
	}
	return len(s.byKID)
}

// Keys returns the keys of the set, ordered by kid.
func (s *KeySet) Keys() []*PublicKey {
	if s == nil {
		return nil
	}
	out := make([]*PublicKey, 0, len(s.byKID))
	for _, k := range s.byKID {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b *PublicKey) int { return bytes.Compare(a.kid[:], b.kid[:]) })
	return out
}
