// Package batch issues one epoch: a ticket per device, the RFC 9162 Merkle
// tree over the ticket bodies, one ML-DSA-signed EpochRoot, and each
// device's inclusion proof (schema/PROTOCOL.md §Epoch issuance). One
// signature covers the whole fleet; a fleet of one is a tree of one.
package batch

import (
	"bytes"
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/merkle"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// ErrInput is returned for an invalid epoch request.
var ErrInput = errors.New("batch: invalid input")

// ErrBadKey is wrapped by the error for a device whose raw key does not
// parse; the error names the device.
var ErrBadKey = errors.New("batch: device key does not parse")

// BadKeyError names the device whose key does not parse.
type BadKeyError struct {
	DeviceID string
	Err      error
}

func (e *BadKeyError) Error() string {
	return fmt.Sprintf("batch: key of device %q does not parse: %v", e.DeviceID, e.Err)
}

// Unwrap returns ErrBadKey and the parser's error.
func (e *BadKeyError) Unwrap() []error { return []error{ErrBadKey, e.Err} }

// Device is one ticket to issue.
type Device struct {
	ID string
	// Key is the device's parsed (and so validated) encapsulation key.
	// If it is nil, RawKey of algorithm Alg is parsed (FIPS 203 §7.2
	// validation) when the ticket is built, and dropped after: a parsed
	// ML-KEM-1024 key holds ~11 KB, so a large epoch never holds them all.
	Key    kem.PublicKey
	Alg    kem.ID
	RawKey []byte
	// Prev is the ticket_hash of the device's previous ticket, nil for its
	// first (encoded as 32 zero bytes).
	Prev    []byte
	Purpose string
	Group   string
	// Cohort, if not empty, names the cohort the device is a member of,
	// and GroupSeed is that cohort's group seed g for this epoch
	// (keyschedule.GroupSeedSize bytes, the same for every member): it is
	// sealed into the ticket body under a key from the ticket's ss
	// (schema/PROTOCOL.md §7.7).
	Cohort    string
	GroupSeed []byte
}

// Params are the epoch-wide fields.
type Params struct {
	Epoch    uint64
	IssuedAt uint64 // Unix seconds
	TTL      uint64 // seconds
}

// Issued is one device's ticket and what the issuer must remember of it.
type Issued struct {
	DeviceID   string
	Ticket     []byte // the Ticket message for ekem/v1/ticket/{id}
	TicketHash []byte
	PKHash     []byte
	// Secrets are derived from the ticket's ss; ss itself is not kept.
	Secrets keyschedule.TicketSecrets
}

// Epoch is one issued epoch.
type Epoch struct {
	Root    []byte // COSE_Sign1 for ekem/v1/root/{epoch}
	Payload *wire.EpochRoot
	// Tickets are in leaf order: devices sorted by id.
	Tickets []Issued
}

// leaf is one device's work before the tree exists.
type leaf struct {
	draft *wire.TicketDraft // the Ticket message, up to the end of the body
	hash  []byte
	Issued
}

// Issue builds and signs an epoch for devices (at least one, ids
// distinct) as one chunk: every ticket proves inclusion in the whole tree.
// Encapsulation runs in parallel on every CPU.
func Issue(key *signature.PrivateKey, p Params, devices []Device) (*Epoch, error) {
	devs, err := sorted(devices)
	if err != nil {
		return nil, err
	}
	size := uint64(len(devs))
	c, err := IssueChunk(p, size, OneChunk, 0, devs)
	if err != nil {
		return nil, err
	}
	signed, root, err := SignRoot(key, p, size, OneChunk, [][]byte{c.Root})
	if err != nil {
		return nil, err
	}
	return &Epoch{Root: signed, Payload: root, Tickets: c.Tickets}, nil
}

// OneChunk is the chunk height of an epoch that is not cut into chunks.
const OneChunk = 64

// ChunkHeight returns the chunk height for an epoch of size tickets: the
// smallest h >= max(minHeight, 1) whose chunks of 2^h leaves number at most
// wire.MaxChunks (schema/PROTOCOL.md §5.4, §5.5: chunk_height is 1..63), or
// OneChunk if that is a single chunk.
func ChunkHeight(size, minHeight uint64) uint64 {
	h := min(max(minHeight, 1), wire.MaxChunkHeight)
	for h < wire.MaxChunkHeight && wire.ChunkCount(size, h) > wire.MaxChunks {
		h++
	}
	if wire.ChunkCount(size, h) <= 1 {
		return OneChunk
	}
	return h
}

// Chunk is one issued chunk of an epoch: its tickets, in leaf order, and
// the RFC 9162 root of its leaves.
type Chunk struct {
	Index   uint64
	Root    []byte
	Tickets []Issued
}

// IssueChunk issues chunk c of an epoch of size tickets cut into chunks of
// 2^height leaves (OneChunk: the epoch is one chunk, c is 0): devs are
// exactly that chunk's devices, ids ascending and above every earlier
// chunk's. Each ticket carries its leaf index in the whole tree, the tree's
// size and its RFC 9162 inclusion path in the chunk (in the whole tree for
// one chunk). Encapsulation runs in parallel on every CPU; a device given
// only its raw key has it parsed there and dropped after use (an error
// wrapping ErrBadKey names a key that does not parse).
func IssueChunk(p Params, size, height, c uint64, devs []Device) (*Chunk, error) {
	if size == 0 || len(devs) == 0 {
		return nil, fmt.Errorf("%w: no devices", ErrInput)
	}
	if height == OneChunk || wire.ChunkCount(size, height) == 1 {
		height = OneChunk
	} else if height < 1 || height > wire.MaxChunkHeight || wire.ChunkCount(size, height) > wire.MaxChunks {
		return nil, fmt.Errorf("%w: %d tickets in chunks of 2^%d leaves: the height is not 1..%d or the chunks exceed %d",
			ErrInput, size, height, wire.MaxChunkHeight, wire.MaxChunks)
	}
	first, n := uint64(0), size
	if height != OneChunk {
		if c >= wire.ChunkCount(size, height) {
			return nil, fmt.Errorf("%w: chunk %d of %d", ErrInput, c, wire.ChunkCount(size, height))
		}
		first = c << height
		n = min(uint64(1)<<height, size-first)
	} else if c != 0 {
		return nil, fmt.Errorf("%w: chunk %d of one", ErrInput, c)
	}
	if uint64(len(devs)) != n {
		return nil, fmt.Errorf("%w: chunk %d holds %d tickets, %d devices given", ErrInput, c, n, len(devs))
	}
	for i := 1; i < len(devs); i++ {
		if devs[i].ID <= devs[i-1].ID {
			return nil, fmt.Errorf("%w: devices not in ascending id order at %q", ErrInput, devs[i].ID)
		}
	}
	leaves, err := encapsulateAll(p, devs)
	if err != nil {
		return nil, err
	}
	hashes := make([][]byte, len(leaves))
	for i := range leaves {
		hashes[i] = leaves[i].hash
	}
	tree, err := merkle.New(hashes)
	if err != nil {
		return nil, fmt.Errorf("batch: tree: %w", err)
	}
	tickets, err := withProofs(tree, leaves, first, size)
	if err != nil {
		return nil, err
	}
	return &Chunk{Index: c, Root: tree.Root(), Tickets: tickets}, nil
}

// SignRoot builds and signs the EpochRoot of an epoch of size tickets
// whose chunks of 2^height leaves have the roots chunkRoots, in order (one
// root for an epoch of one chunk, OneChunk). The root is the RFC 9162
// Merkle Tree Hash over the chunk roots taken as nodes, which is the MTH
// over every leaf (pkg/merkle, RootOfChunks).
func SignRoot(key *signature.PrivateKey, p Params, size, height uint64, chunkRoots [][]byte) ([]byte, *wire.EpochRoot, error) {
	root := &wire.EpochRoot{Version: wire.Version, Epoch: p.Epoch, IssuedAt: p.IssuedAt, TreeSize: size}
	switch {
	case height == OneChunk || wire.ChunkCount(size, height) == 1:
		if len(chunkRoots) != 1 {
			return nil, nil, fmt.Errorf("%w: %d chunk roots for one chunk", ErrInput, len(chunkRoots))
		}
		root.Root = bytes.Clone(chunkRoots[0])
	case uint64(len(chunkRoots)) != wire.ChunkCount(size, height):
		return nil, nil, fmt.Errorf("%w: %d chunk roots for %d chunks", ErrInput, len(chunkRoots), wire.ChunkCount(size, height))
	default:
		all, err := merkle.RootOfChunks(chunkRoots)
		if err != nil {
			return nil, nil, fmt.Errorf("batch: root: %w", err)
		}
		root.Root, root.ChunkHeight = all, height
		root.ChunkRoots = make([][]byte, len(chunkRoots))
		for i, r := range chunkRoots {
			root.ChunkRoots[i] = bytes.Clone(r)
		}
	}
	payload, err := root.Marshal()
	if err != nil {
		return nil, nil, err
	}
	signed, err := signature.Sign1(key, payload)
	if err != nil {
		return nil, nil, fmt.Errorf("batch: sign root: %w", err)
	}
	return signed, root, nil
}

func sorted(devices []Device) ([]Device, error) {
	if len(devices) == 0 {
		return nil, fmt.Errorf("%w: no devices", ErrInput)
	}
	devs := slices.Clone(devices)
	slices.SortFunc(devs, func(a, b Device) int { return strings.Compare(a.ID, b.ID) })
	for i := 1; i < len(devs); i++ {
		if devs[i].ID == devs[i-1].ID {
			return nil, fmt.Errorf("%w: device %q twice", ErrInput, devs[i].ID)
		}
	}
	return devs, nil
}

// encapsulateAll builds every leaf, spreading devices over the CPUs.
func encapsulateAll(p Params, devs []Device) ([]leaf, error) {
	leaves := make([]leaf, len(devs))
	pathLen := bits.Len64(uint64(len(devs) - 1)) // RFC 9162: at most ceil(log2(n)) hashes
	workers := min(runtime.GOMAXPROCS(0), len(devs))
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(devs); i += workers {
				if errs[w] = buildLeaf(p, devs[i], pathLen, &leaves[i]); errs[w] != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return leaves, nil
}

var zeroHash = make([]byte, wire.HashSize)

// placeholder is the ciphertext a body is drafted with before the
// encapsulation fills its place in the draft (never written: read-only).
var placeholder = make([]byte, maxCiphertext)

const maxCiphertext = 1568 // ML-KEM-1024, the largest of kem.IDs()

// buildLeaf writes one device's ticket body inside a draft of its Ticket
// message and encapsulates straight into the body's ciphertext, so the
// body's bytes are written once.
func buildLeaf(p Params, d Device, pathLen int, l *leaf) error {
	if d.Key == nil {
		s, err := kem.Lookup(d.Alg)
		if err == nil {
			d.Key, err = s.ParsePublicKey(d.RawKey)
		}
		if err != nil {
			return &BadKeyError{DeviceID: d.ID, Err: err}
		}
	}
	sch := d.Key.Scheme()
	if sch.CiphertextSize() > len(placeholder) {
		return fmt.Errorf("batch: %v ciphertexts exceed %d bytes", sch.ID(), len(placeholder))
	}
	prev := d.Prev
	if prev == nil {
		prev = zeroHash
	}
	pkh := d.Key.Hash()
	body := &wire.TicketBody{
		Version: wire.Version, Aud: d.ID, Epoch: p.Epoch, IssuedAt: p.IssuedAt, TTL: p.TTL,
		KEMAlg: sch.ID(), Ciphertext: placeholder[:sch.CiphertextSize()], Prev: prev, PKHash: pkh,
		Purpose: d.Purpose, Group: d.Group,
	}
	if d.Cohort != "" {
		if len(d.GroupSeed) != keyschedule.GroupSeedSize {
			return fmt.Errorf("%w: group seed of %d bytes for %q", ErrInput, len(d.GroupSeed), d.ID)
		}
		body.Cohort, body.SealedGroupSeed = d.Cohort, placeholder[:wire.SealedGroupSeedSize]
	}
	draft, err := wire.DraftTicket(body, pathLen)
	if err != nil {
		return fmt.Errorf("batch: ticket for %q: %w", d.ID, err)
	}
	ss := make([]byte, kem.SharedKeySize)
	if err := d.Key.EncapsulateTo(draft.Ciphertext(), ss); err != nil { // pkg/kem cleans circl's AVX state
		return fmt.Errorf("batch: encapsulate for %q: %w", d.ID, err)
	}
	if d.Cohort != "" {
		if err := keyschedule.SealGroupSeedTo(draft.SealedGroupSeed(), ss, p.Epoch, d.Cohort, d.ID, d.GroupSeed); err != nil {
			clear(ss)
			return fmt.Errorf("batch: group seed for %q: %w", d.ID, err)
		}
	}
	b := draft.Body()
	th := keyschedule.TicketHash(b)
	sec, err := keyschedule.DeriveTicketSecrets(ss, th)
	clear(ss)
	if err != nil {
		return err
	}
	*l = leaf{draft: draft, hash: merkle.LeafHash(b), Issued: Issued{DeviceID: d.ID, TicketHash: th, PKHash: pkh, Secrets: sec}}
	return nil
}

// withProofs finishes the tickets of one chunk whose first leaf is at
// index first of a tree of size leaves: tree is the chunk's tree.
func withProofs(tree *merkle.Tree, leaves []leaf, first, size uint64) ([]Issued, error) {
	out := make([]Issued, len(leaves))
	for i := range leaves {
		path, err := tree.Proof(uint64(i))
		if err != nil {
			return nil, fmt.Errorf("batch: proof %d: %w", i, err)
		}
		out[i] = leaves[i].Issued
		if out[i].Ticket, err = leaves[i].draft.Finish(first+uint64(i), size, path); err != nil {
			return nil, fmt.Errorf("batch: ticket %d: %w", first+uint64(i), err)
		}
		leaves[i].draft = nil
	}
	return out, nil
}
