package bench

import (
	"context"
	"fmt"
	"math/bits"
	"runtime"
	"sync"
	"time"

	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/merkle"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// keyPool holds the encoded ML-KEM-1024 encapsulation keys of the
// benchmark's devices (the private halves are not kept).
type keyPool struct {
	raw [][]byte
}

func newKeyPool(ctx context.Context, n int, logf func(string, ...any)) (*keyPool, error) {
	logf("generating %d ML-KEM-1024 device keys", n)
	s, err := kem.Lookup(kem.MLKEM1024)
	if err != nil {
		return nil, err
	}
	p := &keyPool{raw: make([][]byte, n)}
	workers := runtime.GOMAXPROCS(0)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n && ctx.Err() == nil; i += workers {
				k, err := s.GenerateKey()
				if err != nil {
					errs[w] = err
					return
				}
				p.raw[i] = k.PublicKey().Bytes()
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("bench: device keys: %w", err)
		}
	}
	return p, nil
}

func deviceID(i int) string { return fmt.Sprintf("bench-%07d", i) }

// devices parses the first n keys into batch devices.
func (p *keyPool) devices(n int) ([]batch.Device, error) {
	s, _ := kem.Lookup(kem.MLKEM1024)
	devs := make([]batch.Device, n)
	for i := range devs {
		pk, err := s.ParsePublicKey(p.raw[i])
		if err != nil {
			return nil, err
		}
		devs[i] = batch.Device{ID: deviceID(i), Key: pk, Purpose: "default", Group: "default"}
	}
	return devs, nil
}

// avxScratch is copied by cleanAVX.
var avxScratch = make([]byte, 8192)

// cleanAVX leaves the CPU's upper vector state clean before SHA-256 runs:
// circl's AVX2 assembly returns without VZEROUPPER, after which Go's
// SSE-encoded SHA-NI code runs ~80 times slower on this project's AMD EPYC
// VMs (see pkg/batch/avx_amd64.go). The runtime's memmove of more than
// 256 bytes uses AVX and ends with VZEROUPPER, so a copy is a portable way
// to clean the state; it costs ~0.1 µs, which the floor then includes.
func cleanAVX() { copy(avxScratch[4096:], avxScratch[:4096]) }

type cryptoResult struct {
	rows    []Row
	bodyLen int
}

// benchCrypto measures batch.Issue per ticket against the primitive floor
// (ML-KEM-1024 encapsulation + SHA-256 leaf hash, with and without parsing
// the key), all on one core (GOMAXPROCS 1) so the ratio compares CPU cost,
// interleaving the repetitions so machine load hits both alike; then
// batch.Issue on every core, and the seed-style baseline: one ML-DSA-87
// signature per ticket (an epoch of one device, issued per device).
func benchCrypto(ctx context.Context, c Config, keys *keyPool, logf func(string, ...any)) (*cryptoResult, error) {
	n := c.CryptoDevices
	logf("crypto: batch.Issue of %d tickets vs primitive floor, %d reps, GOMAXPROCS 1", n, c.Reps)
	key, err := signature.GenerateKey(signature.MLDSA87)
	if err != nil {
		return nil, err
	}
	devs, err := keys.devices(n)
	if err != nil {
		return nil, err
	}
	s, _ := kem.Lookup(kem.MLKEM1024)
	params := batch.Params{Epoch: 1, IssuedAt: uint64(time.Now().Unix()), TTL: 3600}
	var fParsed, fParse, iParsed, iParse, iPar []float64
	floorIters := min(n, 2000)
	body := make([]byte, 1700)
	var bodyLen int
	prev := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(prev)
	for range c.Reps {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		t := time.Now()
		for i := range floorIters {
			if _, _, err := devs[i].Key.Encapsulate(); err != nil {
				return nil, err
			}
			cleanAVX()
			merkle.LeafHash(body)
		}
		fParsed = append(fParsed, micros(time.Since(t))/float64(floorIters))
		t = time.Now()
		for i := range floorIters {
			pk, err := s.ParsePublicKey(keys.raw[i])
			if err != nil {
				return nil, err
			}
			if _, _, err := pk.Encapsulate(); err != nil {
				return nil, err
			}
			cleanAVX()
			merkle.LeafHash(body)
		}
		fParse = append(fParse, micros(time.Since(t))/float64(floorIters))
		t = time.Now()
		ep, err := batch.Issue(key, params, devs)
		if err != nil {
			return nil, err
		}
		iParsed = append(iParsed, micros(time.Since(t))/float64(n))
		bodyLen = ticketBodyLen(ep)
		ep = nil
		t = time.Now()
		if _, err := issueParsing(key, params, keys, n); err != nil {
			return nil, err
		}
		iParse = append(iParse, micros(time.Since(t))/float64(n))
	}
	runtime.GOMAXPROCS(prev)
	logf("crypto: batch.Issue with parse on %d cores", prev)
	for range c.Reps {
		t := time.Now()
		if _, err := issueParsing(key, params, keys, n); err != nil {
			return nil, err
		}
		iPar = append(iPar, micros(time.Since(t))/float64(n))
	}
	seed, err := seedBaseline(key, params, devs[:min(n, 200)])
	if err != nil {
		return nil, err
	}
	fp, fq := median(fParsed), median(fParse)
	rows := []Row{
		{Key: "crypto.floor_parsed", Label: "floor: encaps (parsed key) + leaf hash, 1 core", Value: fp, Unit: "µs/ticket", Samples: fParsed},
		{Key: "crypto.issue_parsed", Label: "batch.Issue, parsed keys, 1 core", Value: median(iParsed), Unit: "µs/ticket",
			Ratio: median(iParsed) / fp, RatioTo: "crypto.floor_parsed", Samples: iParsed},
		{Key: "crypto.floor_parse", Label: "floor: parse key + encaps + leaf hash, 1 core", Value: fq, Unit: "µs/ticket", Samples: fParse},
		{Key: "crypto.issue_parse", Label: "parse keys + batch.Issue, 1 core", Value: median(iParse), Unit: "µs/ticket",
			Ratio: median(iParse) / fq, RatioTo: "crypto.floor_parse", Samples: iParse},
		{Key: "crypto.issue_parallel", Label: fmt.Sprintf("parse keys + batch.Issue, %d cores (wall)", prev), Value: median(iPar), Unit: "µs/ticket",
			Ratio: median(iParse) / median(iPar), RatioTo: "speed-up over 1 core", Samples: iPar},
		{Key: "crypto.seed_per_ticket", Label: "seed-style: one ML-DSA-87 signature per ticket, 1 core", Value: median(seed), Unit: "µs/ticket",
			Ratio: median(seed) / median(iParse), RatioTo: "crypto.issue_parse", Samples: nil,
			Note: fmt.Sprintf("batch.Issue per device, %d devices; p99 %.0f µs", len(seed), percentile(seed, 99))},
	}
	return &cryptoResult{rows: rows, bodyLen: bodyLen}, nil
}

// issueParsing is what an issuer does per epoch: parse every device's key
// (keys rotate every epoch), then batch.Issue.
func issueParsing(key *signature.PrivateKey, p batch.Params, keys *keyPool, n int) (*batch.Epoch, error) {
	devs, err := keys.devices(n)
	if err != nil {
		return nil, err
	}
	return batch.Issue(key, p, devs)
}

// seedBaseline times batch.Issue of one device at a time: a tree of one,
// so one ML-DSA-87 signature per ticket, as the seed prototype's design
// (a signature per ticket) would cost. Single core (the caller's
// GOMAXPROCS is 1).
func seedBaseline(key *signature.PrivateKey, p batch.Params, devs []batch.Device) ([]float64, error) {
	out := make([]float64, 0, len(devs))
	for _, d := range devs {
		t := time.Now()
		if _, err := batch.Issue(key, p, []batch.Device{d}); err != nil {
			return nil, err
		}
		out = append(out, micros(time.Since(t)))
	}
	return out, nil
}

func ticketBodyLen(ep *batch.Epoch) int {
	if len(ep.Tickets) == 0 {
		return 0
	}
	t, _, err := wire.ParseTicket(ep.Tickets[0].Ticket)
	if err != nil {
		return 0
	}
	return len(t.Body)
}

// ticketSize is the size of a Ticket message with a body of bodyLen bytes
// in a tree of n leaves: the payload size of the raw publish floor.
func ticketSize(bodyLen, n int) (int, error) {
	depth := bits.Len(uint(n - 1))
	path := make([][]byte, depth)
	for k := range path {
		path[k] = make([]byte, wire.HashSize)
	}
	t := &wire.Ticket{Version: wire.Version, Body: make([]byte, bodyLen), LeafIndex: uint64(n - 1), TreeSize: uint64(n), Path: path}
	b, err := t.Marshal()
	if err != nil {
		return 0, fmt.Errorf("bench: ticket size: %w", err)
	}
	return len(b), nil
}
