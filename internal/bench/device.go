package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
)

// acceptSamples is how many tickets the device measurement accepts.
const acceptSamples = 1000

// benchDevice times accept.Accept on one device's ticket in an epoch of
// CryptoDevices tickets (so the proof has its real length): with the root
// already verified (cached, the per-ticket cost once per epoch's root
// check is paid) and without the cache (root signature verified each time).
// Accept is a pure function of (state, input), so the same ticket is
// accepted from the same state each time.
func benchDevice(ctx context.Context, c Config, keys *keyPool, rep *Report, logf func(string, ...any)) error {
	logf("device: accept.Accept, %d samples", acceptSamples)
	s, _ := kem.Lookup(kem.MLKEM1024)
	dk, err := s.GenerateKey()
	if err != nil {
		return err
	}
	const self = "bench-device"
	st, err := accept.NewState(self, dk)
	if err != nil {
		return err
	}
	key, err := signature.GenerateKey(signature.MLDSA87)
	if err != nil {
		return err
	}
	pins, err := signature.NewKeySet(key.Public())
	if err != nil {
		return err
	}
	secret := make([]byte, cohort.SecretSize)
	rand.Read(secret)
	co, err := cohort.NewSoftware(secret)
	if err != nil {
		return err
	}
	devs, err := keys.devices(c.CryptoDevices - 1)
	if err != nil {
		return err
	}
	devs = append(devs, batch.Device{ID: self, Key: dk.PublicKey(), Purpose: "default", Group: "default"})
	now := time.Now()
	ep, err := batch.Issue(key, batch.Params{Epoch: 1, IssuedAt: uint64(now.Unix()), TTL: 3600}, devs)
	if err != nil {
		return err
	}
	var ticket []byte
	for _, t := range ep.Tickets {
		if t.DeviceID == self {
			ticket = t.Ticket
		}
	}
	in := accept.Input{Ticket: ticket, Root: ep.Root, Pins: pins, Now: now, Cohort: co, Roots: accept.NewRootCache(4)}
	if _, err := accept.Accept(st, in); err != nil { // verifies and caches the root
		return fmt.Errorf("bench: device accept: %w", err)
	}
	cached, err := timeAccept(ctx, st, in, acceptSamples)
	if err != nil {
		return err
	}
	in.Roots = nil
	uncached, err := timeAccept(ctx, st, in, acceptSamples/5)
	if err != nil {
		return err
	}
	med := median(cached)
	rep.add(Row{Key: "device.accept_median", Label: "device accept.Accept, cached root (median)", Value: med, Unit: "µs/ticket",
		Note: fmt.Sprintf("%d samples, tree of %d", len(cached), c.CryptoDevices)})
	rep.add(Row{Key: "device.accept_p99", Label: "device accept.Accept, cached root (p99)", Value: percentile(cached, 99), Unit: "µs/ticket",
		Ratio: percentile(cached, 99) / med, RatioTo: "device.accept_median"})
	rep.add(Row{Key: "device.accept_uncached", Label: "device accept.Accept + root signature verify (median)", Value: median(uncached), Unit: "µs/ticket",
		Ratio: median(uncached) / med, RatioTo: "device.accept_median", Note: "paid once per epoch"})
	return nil
}

func timeAccept(ctx context.Context, st *accept.State, in accept.Input, n int) ([]float64, error) {
	out := make([]float64, 0, n)
	for range n {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		t := time.Now()
		_, err := accept.Accept(st, in)
		d := time.Since(t)
		if err != nil {
			return nil, fmt.Errorf("bench: device accept: %w", err)
		}
		out = append(out, micros(d))
	}
	return out, nil
}
