package issuer

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/testclock"
	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

type env struct {
	t     testing.TB
	cfg   Config
	clock *testclock.Clock
	pins  *signature.KeySet
	iss   *Issuer
}

var testSeed = bytes.Repeat([]byte{7}, signature.SeedSize)

// quietLogger discards logs unless -v.
func quietLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newEnv(t testing.TB, mods ...func(*Config)) *env {
	t.Helper()
	key, err := signature.NewKeyFromSeed(signature.MLDSA65, testSeed)
	if err != nil {
		t.Fatal(err)
	}
	pins, err := signature.NewKeySet(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	c := testclock.New(time.Unix(1767225600, 0))
	cfg := Config{Key: key, StorePath: filepath.Join(t.TempDir(), "issuer.db"), Period: time.Hour,
		Purpose: "telemetry", Group: "plant-7", Logger: quietLogger(), Now: c.Now, Timeout: 3 * time.Second}
	for _, m := range mods {
		m(&cfg)
	}
	e := &env{t: t, cfg: cfg, clock: c, pins: pins}
	e.open()
	return e
}

func (e *env) open() {
	e.t.Helper()
	iss, err := New(e.cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.iss = iss
	e.t.Cleanup(func() { iss.Close() })
}

func (e *env) reopen() {
	e.t.Helper()
	if err := e.iss.Close(); err != nil {
		e.t.Fatal(err)
	}
	e.open()
}

func (e *env) issue() uint64 {
	e.t.Helper()
	ep, err := e.iss.IssueEpoch(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return ep
}

// dump returns every stored device record's bytes.
func (e *env) dump() map[string][]byte {
	e.t.Helper()
	d := map[string][]byte{}
	err := e.iss.store.View(func(tx ReadTx) error {
		return tx.Devices(func(r *record) error {
			b, err := cbor.Marshal(r)
			d[r.ID] = b
			return err
		})
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

func (e *env) record(id string) *record {
	e.t.Helper()
	var r *record
	if err := e.iss.store.View(func(tx ReadTx) error {
		var err error
		r, err = tx.Device(id)
		return err
	}); err != nil {
		e.t.Fatal(err)
	}
	if r == nil {
		e.t.Fatalf("no record for %s", id)
	}
	return r
}

// latest returns the device's latest ticket and its epoch's root from the
// store.
func (e *env) latest(id string) (ticket, root []byte, body *wire.TicketBody) {
	e.t.Helper()
	r := e.record(id)
	if err := e.iss.store.View(func(tx ReadTx) (err error) {
		root, err = tx.Root(r.Epoch)
		return err
	}); err != nil {
		e.t.Fatal(err)
	}
	_, body, err := wire.ParseTicket(r.Ticket)
	if err != nil {
		e.t.Fatal(err)
	}
	return r.Ticket, root, body
}

func (e *env) counter(name string) uint64 { return e.iss.Counters()[name] }

// device plays the device side with pkg/accept.
type device struct {
	t      testing.TB
	id     string
	st     *accept.State
	seq    uint64
	cohort cohort.Secret
}

func newDevice(t testing.TB, id string) *device {
	t.Helper()
	sch, _ := kem.Lookup(kem.MLKEM768)
	k, err := sch.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	st, err := accept.NewState(id, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := cohort.NewSoftware(bytes.Repeat([]byte{0xc0}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return &device{t: t, id: id, st: st, cohort: c}
}

func (d *device) registration() []byte {
	d.t.Helper()
	pk := d.st.Current.PublicKey()
	r := &wire.Registration{Version: 1, DeviceID: d.id, KEMAlg: pk.Scheme().ID(), PublicKey: pk.Bytes(), CreatedAt: 1767225600}
	b, err := r.Marshal()
	if err != nil {
		d.t.Fatal(err)
	}
	return b
}

// accept accepts ticket under root and moves the device's state forward.
func (d *device) accept(ticket, root []byte, pins *signature.KeySet, now time.Time) *accept.Result {
	d.t.Helper()
	r, err := accept.Accept(d.st, accept.Input{Ticket: ticket, Root: root, Pins: pins, Now: now, Cohort: d.cohort})
	if err != nil {
		d.t.Fatalf("device %s: accept: %v", d.id, err)
	}
	d.st = r.State
	return r
}

// status returns the next Status reporting r, with seq advanced.
func (d *device) status(r *accept.Result, mod ...func(*wire.Status)) []byte {
	d.t.Helper()
	d.seq++
	st := &wire.Status{Version: 1, DeviceID: d.id, Epoch: r.State.Epoch, State: wire.StateOK, Time: 1767225610, Seq: d.seq,
		TicketHash: r.TicketHash, Confirm: r.Secrets.Confirm(), NextAlg: r.State.Next.Scheme().ID(),
		NextPK: r.State.Next.PublicKey().Bytes(), NextTag: r.NextTag}
	if r.Gap {
		p := r.PrevEpoch
		st.State, st.PrevEpoch = wire.StateGap, &p
	}
	for _, m := range mod {
		m(st)
	}
	b, err := st.Marshal()
	if err != nil {
		d.t.Fatal(err)
	}
	return b
}

// deliver accepts the device's latest ticket from the store.
func (e *env) deliver(d *device) *accept.Result {
	e.t.Helper()
	tk, root, _ := e.latest(d.id)
	return d.accept(tk, root, e.pins, e.clock.Now().Add(time.Second))
}

func (e *env) register(d *device) {
	e.t.Helper()
	e.iss.handle(e.iss.topics.Registration(d.id), d.registration())
	if _, ok := e.iss.Device(d.id); !ok {
		e.t.Fatalf("device %s not registered", d.id)
	}
}

// testOp is the operator of tests' admin actions.
var testOp = Operator{Actor: "test", Reason: "test"}

func withStore(path string) func(*Config) { return func(c *Config) { c.StorePath = path } }
