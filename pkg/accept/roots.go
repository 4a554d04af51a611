package accept

import (
	"fmt"
	"sync"

	"github.com/entropykem/entropykem/pkg/merkle"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// RootCache remembers the SHA-256 of EpochRoot messages whose signature
// was verified, for the last few epochs. A nil *RootCache caches nothing.
// It is safe for concurrent use (one cache can serve a fleet of simulated
// devices).
type RootCache struct {
	mu   sync.Mutex
	max  int
	seen map[[32]byte]uint64
}

// NewRootCache returns a cache of at most max verified roots.
func NewRootCache(max int) *RootCache {
	return &RootCache{max: max, seen: make(map[[32]byte]uint64)}
}

func (c *RootCache) verified(epoch uint64, id [32]byte) bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.seen[id]
	return ok && e == epoch
}

func (c *RootCache) add(epoch uint64, id [32]byte) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.seen) >= c.max {
		c.evictOldest()
	}
	c.seen[id] = epoch
}

func (c *RootCache) evictOldest() {
	var oldest [32]byte
	min := uint64(1<<64 - 1)
	for id, e := range c.seen {
		if e < min {
			oldest, min = id, e
		}
	}
	delete(c.seen, oldest)
}

// VerifyRoot checks a COSE_Sign1 EpochRoot against the pinned keys and
// returns its payload: structure, pinned kid, signature, then the payload's
// strict decoding, then, for a streamed epoch, that its chunk roots hash to
// its root (an error wrapping ErrBadProof otherwise). Monitors use it to
// check what the issuer published.
func VerifyRoot(msg []byte, pins *signature.KeySet) (*wire.EpochRoot, *signature.PublicKey, error) {
	parsed, err := signature.ParseSign1(msg)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if _, ok := pins.Lookup(parsed.KID); !ok {
		return nil, nil, fmt.Errorf("%w: kid %x", ErrUnknownIssuerKey, parsed.KID)
	}
	key, err := parsed.Verify(pins)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	root, err := wire.ParseEpochRoot(parsed.Payload)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if root.Chunked() {
		if err := merkle.CheckChunkRoots(root.ChunkRoots, root.Root); err != nil {
			return nil, nil, fmt.Errorf("%w: %w", ErrBadProof, err)
		}
	}
	return root, key, nil
}
