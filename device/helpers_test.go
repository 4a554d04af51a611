package device

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/testclock"
	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

const devID = "dev-0001"

var topics, _ = wire.NewTopics(wire.DefaultPrefix)

// flakyCohort is a software cohort secret whose MAC can be made to fail,
// standing in for a TPM that stops answering.
type flakyCohort struct {
	mu   sync.Mutex
	sw   *cohort.Software
	fail bool
}

func (c *flakyCohort) MAC(msg []byte) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail {
		return nil, errors.New("tpm: device not answering")
	}
	return c.sw.MAC(msg)
}

func (c *flakyCohort) setFail(f bool) {
	c.mu.Lock()
	c.fail = f
	c.mu.Unlock()
}

func newCohort(t testing.TB, b byte) *flakyCohort {
	t.Helper()
	sw, err := cohort.NewSoftware(bytes.Repeat([]byte{b}, cohort.SecretSize))
	if err != nil {
		t.Fatal(err)
	}
	return &flakyCohort{sw: sw}
}

// issuer plays the issuer with pkg/batch directly.
type issuer struct {
	t      testing.TB
	key    *signature.PrivateKey
	pins   *signature.KeySet
	others []batch.Device
}

func newIssuer(t testing.TB) *issuer {
	t.Helper()
	k, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		t.Fatal(err)
	}
	pins, err := signature.NewKeySet(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	is := &issuer{t: t, key: k, pins: pins}
	sch, _ := kem.Lookup(kem.MLKEM768)
	for _, id := range []string{"dev-other", "dev-zz"} {
		dk, err := sch.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		is.others = append(is.others, batch.Device{ID: id, Key: dk.PublicKey(), Purpose: "telemetry", Group: "g"})
	}
	return is
}

// issue makes epoch e for d plus the other devices, signed with key.
func (is *issuer) issueWith(key *signature.PrivateKey, e uint64, at time.Time, ttl uint64, d batch.Device) (batch.Issued, *batch.Epoch) {
	is.t.Helper()
	ep, err := batch.Issue(key, batch.Params{Epoch: e, IssuedAt: uint64(at.Unix()), TTL: ttl}, append([]batch.Device{d}, is.others...))
	if err != nil {
		is.t.Fatal(err)
	}
	for _, tk := range ep.Tickets {
		if tk.DeviceID == d.ID {
			return tk, ep
		}
	}
	is.t.Fatal("device not in epoch")
	return batch.Issued{}, nil
}

func (is *issuer) issue(e uint64, at time.Time, d batch.Device) (batch.Issued, *batch.Epoch) {
	return is.issueWith(is.key, e, at, 600, d)
}

// ticketOf returns id's ticket in ep.
func ticketOf(t testing.TB, ep *batch.Epoch, id string) []byte {
	t.Helper()
	for _, tk := range ep.Tickets {
		if tk.DeviceID == id {
			return tk.Ticket
		}
	}
	t.Fatalf("no ticket for %s", id)
	return nil
}

// regDevice is the batch device for an agent's registered key.
func regDevice(t testing.TB, reg []byte) batch.Device {
	t.Helper()
	r, err := wire.ParseRegistration(reg)
	if err != nil {
		t.Fatal(err)
	}
	sch, err := kem.Lookup(r.KEMAlg)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := sch.ParsePublicKey(r.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return batch.Device{ID: r.DeviceID, Key: pk, Purpose: "telemetry", Group: "g"}
}

// nextDevice is the batch device for the next key a Status announces,
// after checking the Status like an issuer would against iss.
func nextDevice(t testing.TB, s *wire.Status, iss batch.Issued) batch.Device {
	t.Helper()
	if !iss.Secrets.CheckConfirm(s.Confirm) {
		t.Fatal("status confirm tag does not verify with the issuer's secrets")
	}
	if !iss.Secrets.CheckNextKey(kem.PublicKeyHash(s.NextPK), s.NextTag) {
		t.Fatal("status next_tag does not verify with the issuer's secrets")
	}
	if !bytes.Equal(s.TicketHash, iss.TicketHash) {
		t.Fatalf("status ticket_hash %x, issued %x", s.TicketHash, iss.TicketHash)
	}
	sch, err := kem.Lookup(s.NextAlg)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := sch.ParsePublicKey(s.NextPK)
	if err != nil {
		t.Fatal(err)
	}
	return batch.Device{ID: s.DeviceID, Key: pk, Prev: s.TicketHash, Purpose: "telemetry", Group: "g"}
}

// fakePub records publishes.
type fakePub struct {
	mu   sync.Mutex
	msgs []published
	err  error
}

type published struct {
	topic    string
	payload  []byte
	retained bool
}

func (p *fakePub) Publish(topic string, payload []byte, retained bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	p.msgs = append(p.msgs, published{topic, bytes.Clone(payload), retained})
	return nil
}

func (p *fakePub) n() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.msgs)
}

// last returns the last publish, which must be a retained Status of
// devID, decoded.
func (p *fakePub) lastStatus(t testing.TB) (*wire.Status, []byte) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.msgs) == 0 {
		t.Fatal("nothing published")
	}
	m := p.msgs[len(p.msgs)-1]
	if m.topic != topics.Status(devID) || !m.retained {
		t.Fatalf("last publish on %q retained=%v, want retained status", m.topic, m.retained)
	}
	s, err := wire.ParseStatus(m.payload)
	if err != nil {
		t.Fatal(err)
	}
	return s, m.payload
}

// env is one agent under test without a broker.
type env struct {
	t      testing.TB
	dir    string
	cohort *flakyCohort
	clock  *testclock.Clock
	is     *issuer
	pub    *fakePub
	events []Event
	a      *Agent
	mod    func(*Config)
}

func newEnv(t testing.TB, mod func(*Config)) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), cohort: newCohort(t, 7), clock: testclock.New(time.Unix(1_750_000_000, 0)), is: newIssuer(t), pub: &fakePub{}, mod: mod}
	e.open()
	t.Cleanup(func() { e.a.Close() })
	return e
}

func (e *env) config() Config {
	c := Config{
		ID: devID, StateDir: e.dir, Cohort: e.cohort, IssuerKeys: e.is.pins, KEM: kem.MLKEM768,
		Broker: "tcp://127.0.0.1:1", Logger: slog.New(slog.DiscardHandler),
		Now: e.clock.Now, OnEvent: func(ev Event) { e.events = append(e.events, ev) },
	}
	if e.mod != nil {
		e.mod(&c)
	}
	return c
}

func (e *env) open() {
	e.t.Helper()
	a, err := New(e.config())
	if err != nil {
		e.t.Fatal(err)
	}
	e.a = a
}

func (e *env) reopen() {
	e.t.Helper()
	if err := e.a.Close(); err != nil {
		e.t.Fatal(err)
	}
	e.open()
}

func (e *env) root(epoch uint64, root []byte) {
	e.a.handle(e.pub, Message{Topic: topics.Root(epoch), Payload: root})
}

func (e *env) ticket(tk []byte) {
	e.a.handle(e.pub, Message{Topic: topics.Ticket(devID), Payload: tk})
}

// deliver publishes root then ticket of iss's epoch.
func (e *env) deliver(iss batch.Issued, ep *batch.Epoch) {
	e.root(ep.Payload.Epoch, ep.Root)
	e.ticket(iss.Ticket)
}

// first accepts epoch 1 to the registered key and returns its Status.
func (e *env) first() (*wire.Status, batch.Issued) {
	e.t.Helper()
	iss, ep := e.is.issue(1, e.clock.Now(), regDevice(e.t, e.a.Registration()))
	e.deliver(iss, ep)
	s, _ := e.pub.lastStatus(e.t)
	if s.Epoch != 1 || s.State != wire.StateOK {
		e.t.Fatalf("epoch 1: status epoch %d state %v reason %d", s.Epoch, s.State, s.Reason)
	}
	return s, iss
}

func (e *env) stateFile() []byte {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.dir, stateFileName))
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// decrypted opens state.bin like New does.
func (e *env) decrypted() *loaded {
	e.t.Helper()
	key, err := keyschedule.StateKey(e.cohort, devID)
	if err != nil {
		e.t.Fatal(err)
	}
	l, err := openState(key, devID, e.stateFile())
	if err != nil {
		e.t.Fatal(err)
	}
	return l
}
