// Package batch issues one epoch: a ticket per device, the RFC 9162 Merkle
// tree over the ticket bodies, one ML-DSA-signed EpochRoot, and each
// device's inclusion proof (schema/PROTOCOL.md §Epoch issuance). One
// signature covers the whole fleet; a fleet of one is a tree of one.
package batch

import (
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

// Device is one ticket to issue.
type Device struct {
	ID string
	// Key is the device's parsed (and so validated) encapsulation key.
	Key kem.PublicKey
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
// distinct). Encapsulation runs in parallel on every CPU.
func Issue(key *signature.PrivateKey, p Params, devices []Device) (*Epoch, error) {
	devs, err := sorted(devices)
	if err != nil {
		return nil, err
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
	root := &wire.EpochRoot{Version: wire.Version, Epoch: p.Epoch, IssuedAt: p.IssuedAt, TreeSize: tree.Size(), Root: tree.Root()}
	payload, err := root.Marshal()
	if err != nil {
		return nil, err
	}
	signed, err := signature.Sign1(key, payload)
	if err != nil {
		return nil, fmt.Errorf("batch: sign root: %w", err)
	}
	tickets, err := withProofs(tree, leaves)
	if err != nil {
		return nil, err
	}
	return &Epoch{Root: signed, Payload: root, Tickets: tickets}, nil
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

func withProofs(tree *merkle.Tree, leaves []leaf) ([]Issued, error) {
	out := make([]Issued, len(leaves))
	for i := range leaves {
		path, err := tree.Proof(uint64(i))
		if err != nil {
			return nil, fmt.Errorf("batch: proof %d: %w", i, err)
		}
		out[i] = leaves[i].Issued
		if out[i].Ticket, err = leaves[i].draft.Finish(uint64(i), tree.Size(), path); err != nil {
			return nil, fmt.Errorf("batch: ticket %d: %w", i, err)
		}
	}
	return out, nil
}
