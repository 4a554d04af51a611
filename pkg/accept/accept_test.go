package accept

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/merkle"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

const self = "dev-a"

type fixture struct {
	t      testing.TB
	issuer *signature.PrivateKey
	pins   *signature.KeySet
	cohort cohort.Secret
	now    time.Time
	st     *State
	// others are the other devices in every epoch, so proofs are real paths.
	others []batch.Device
	// the ticket accepted at epoch 5, its root, and the hash before it.
	last5, last5root, prev5 []byte
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	iss, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		t.Fatal(err)
	}
	pins, err := signature.NewKeySet(iss.Public())
	if err != nil {
		t.Fatal(err)
	}
	c, _ := cohort.NewSoftware(bytes.Repeat([]byte{7}, 32))
	f := &fixture{t: t, issuer: iss, pins: pins, cohort: c, now: time.Unix(1_700_000_000, 0)}
	f.st, err = NewState(self, f.newKey())
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"dev-b", "dev-c", "dev-d"} {
		f.others = append(f.others, batch.Device{ID: id, Key: f.newKey().PublicKey(), Purpose: "p", Group: "g"})
	}
	return f
}

func (f *fixture) newKey() kem.PrivateKey {
	s, _ := kem.Lookup(kem.MLKEM768)
	k, err := s.GenerateKey()
	if err != nil {
		f.t.Fatal(err)
	}
	return k
}

// issue makes epoch e with the given issuer key, containing d and the
// other devices, and returns d's ticket and the signed root.
func (f *fixture) issueWith(key *signature.PrivateKey, e uint64, issuedAt time.Time, d batch.Device) (ticket, root []byte, iss batch.Issued) {
	f.t.Helper()
	ep, err := batch.Issue(key, batch.Params{Epoch: e, IssuedAt: uint64(issuedAt.Unix()), TTL: 600}, append([]batch.Device{d}, f.others...))
	if err != nil {
		f.t.Fatal(err)
	}
	for _, tk := range ep.Tickets {
		if tk.DeviceID == d.ID {
			return tk.Ticket, ep.Root, tk
		}
	}
	f.t.Fatal("device not in epoch")
	return nil, nil, batch.Issued{}
}

// self returns a batch device for this device's current key (or next).
func (f *fixture) self(key kem.PrivateKey, prev []byte) batch.Device {
	return batch.Device{ID: self, Key: key.PublicKey(), Prev: prev, Purpose: "telemetry", Group: "plant-7"}
}

func (f *fixture) issue(e uint64) (ticket, root []byte, iss batch.Issued) {
	return f.issueWith(f.issuer, e, f.now, f.self(f.st.Current, f.st.TicketHash))
}

func (f *fixture) input(ticket, root []byte) Input {
	return Input{Ticket: ticket, Root: root, Pins: f.pins, Now: f.now, Policy: Policy{Skew: 30 * time.Second}, Cohort: f.cohort}
}

func (f *fixture) accept(ticket, root []byte) *Result {
	f.t.Helper()
	r, err := Accept(f.st, f.input(ticket, root))
	if err != nil {
		f.t.Fatalf("accept: %v", err)
	}
	f.st = r.State
	return r
}

func sha(b []byte) [32]byte { return sha256.Sum256(b) }

func stateBytes(t testing.TB, s *State) []byte {
	t.Helper()
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestAcceptDerivesWhatTheIssuerExpects(t *testing.T) {
	f := newFixture(t)
	ticket, root, iss := f.issue(1)
	before := stateBytes(t, f.st)
	first := f.st
	r := f.accept(ticket, root)
	if !bytes.Equal(stateBytes(t, first), before) {
		t.Fatal("Accept changed its input state")
	}
	if r.Gap {
		t.Fatal("first ticket with zero prev reported as a gap")
	}
	if !iss.Secrets.CheckConfirm(r.Secrets.Confirm()) {
		t.Fatal("device confirm tag does not verify at the issuer")
	}
	nextPKH := kem.PublicKeyHash(r.State.Next.PublicKey().Bytes())
	if !iss.Secrets.CheckNextKey(nextPKH, r.NextTag) {
		t.Fatal("next-key tag does not verify at the issuer")
	}
	if r.State.Epoch != 1 || !bytes.Equal(r.State.TicketHash, iss.TicketHash) || r.State.Ratchet == nil || r.State.Ratchet.Epoch() != 1 {
		t.Fatalf("state not advanced: %+v", r.State)
	}
	// key_epoch needs the cohort secret: recompute it independently.
	_, body, _ := wire.ParseTicket(ticket)
	ss, _ := first.Current.Decapsulate(body.Ciphertext)
	mix, _ := keyschedule.CohortMix(f.cohort, iss.TicketHash)
	want, _ := keyschedule.EpochKey(ss, mix, 1, "telemetry", "plant-7")
	if !bytes.Equal(r.EpochKey, want) {
		t.Fatal("key_epoch differs from the key schedule")
	}
	other, _ := cohort.NewSoftware(bytes.Repeat([]byte{8}, 32))
	in := f.input(ticket, root)
	in.Cohort = other
	r2, err := Accept(first, in)
	if err != nil || bytes.Equal(r2.EpochKey, r.EpochKey) {
		t.Fatal("key_epoch does not depend on the cohort secret")
	}
}

func TestKeyRotation(t *testing.T) {
	f := newFixture(t)
	reg := f.st.Current
	tk, root, _ := f.issue(1)
	f.accept(tk, root)
	announced := f.st.Next
	if announced == nil || f.st.Current != reg {
		t.Fatal("first ticket must keep the registered key and announce a next one")
	}
	// PROTOCOL.md §8.1: the issuer did not take the announced key (it
	// refused or never got the Status), so epoch 2 is to the current key
	// again. The device learns it from pk_hash: it keeps current, deletes
	// the announced key and announces a fresh one, so rotation resumes.
	tk, root, _ = f.issue(2)
	f.accept(tk, root)
	if f.st.Current != reg || f.st.Next == nil || f.st.Next == announced {
		t.Fatal("a ticket to the current key must replace the announced next key with a fresh one")
	}
	tk, root, _ = f.issueWith(f.issuer, 3, f.now, f.self(announced, f.st.TicketHash))
	if _, err := Accept(f.st, f.input(tk, root)); !errors.Is(err, ErrWrongDeviceKey) {
		t.Fatalf("ticket to a next key the issuer did not take: %v", err)
	}
	// Epoch 3 uses the key announced after epoch 2: the registered key is
	// retired.
	announced = f.st.Next
	tk, root, _ = f.issueWith(f.issuer, 3, f.now, f.self(announced, f.st.TicketHash))
	f.accept(tk, root)
	if f.st.Current != announced || f.st.Next == nil || f.st.Next == announced {
		t.Fatal("a ticket to the next key must make it current and announce a new one")
	}
	if f.st.Next.Scheme().ID() != announced.Scheme().ID() {
		t.Fatal("the next key must be of the ticket's kem_alg")
	}
	// A ticket to the retired key is now refused.
	tk, root, _ = f.issueWith(f.issuer, 4, f.now, f.self(reg, f.st.TicketHash))
	if _, err := Accept(f.st, f.input(tk, root)); !errors.Is(err, ErrWrongDeviceKey) {
		t.Fatalf("ticket to a retired key: %v", err)
	}
}

// PROTOCOL.md §8.2 rule 6: the first ticket follows directly when its prev
// is zero, whatever its epoch (a device that registered at epoch 40 missed
// nothing); a first ticket whose prev is not zero is a gap since epoch 0.
func TestFirstTicketChain(t *testing.T) {
	f := newFixture(t)
	tk, root, _ := f.issue(40)
	if r := f.accept(tk, root); r.Gap {
		t.Fatal("first ticket at a later epoch with zero prev reported as a gap")
	}
	g := newFixture(t)
	tk, root, _ = g.issueWith(g.issuer, 1, g.now, g.self(g.st.Current, bytes.Repeat([]byte{1}, 32)))
	if r := g.accept(tk, root); !r.Gap || r.PrevEpoch != 0 {
		t.Fatalf("first ticket with a non-zero prev: gap %v prev %d", r.Gap, r.PrevEpoch)
	}
}

func TestGap(t *testing.T) {
	f := newFixture(t)
	tk, root, _ := f.issue(1)
	f.accept(tk, root)
	tk, root, _ = f.issue(4)
	r := f.accept(tk, root)
	if !r.Gap || r.PrevEpoch != 1 {
		t.Fatalf("missed epochs: gap %v prev %d", r.Gap, r.PrevEpoch)
	}
	// Next epoch, but prev does not name the last accepted ticket.
	tk, root, _ = f.issueWith(f.issuer, 5, f.now, f.self(f.st.Current, bytes.Repeat([]byte{1}, 32)))
	if r = f.accept(tk, root); !r.Gap || r.PrevEpoch != 4 {
		t.Fatalf("wrong prev: gap %v prev %d", r.Gap, r.PrevEpoch)
	}
	tk, root, _ = f.issue(6)
	if r = f.accept(tk, root); r.Gap {
		t.Fatal("direct successor reported as a gap")
	}
}

// TestRules crafts, for every acceptance rule, a ticket that breaks exactly
// that rule, and checks the named error and that the state is unchanged.
func TestRules(t *testing.T) {
	cases := []struct {
		name  string
		craft func(f *fixture) (ticket, root []byte, in func(*Input))
		want  error
	}{
		{"malformed ticket", func(f *fixture) ([]byte, []byte, func(*Input)) {
			tk, root, _ := f.issue(6)
			return tk[:len(tk)-1], root, nil
		}, ErrMalformed},
		{"malformed root", func(f *fixture) ([]byte, []byte, func(*Input)) {
			tk, root, _ := f.issue(6)
			return tk, append(root, 0), nil
		}, ErrMalformed},
		{"unknown issuer key", func(f *fixture) ([]byte, []byte, func(*Input)) {
			other, _ := signature.GenerateKey(signature.MLDSA65)
			tk, root, _ := f.issueWith(other, 6, f.now, f.self(f.st.Current, f.st.TicketHash))
			return tk, root, nil
		}, ErrUnknownIssuerKey},
		{"bad proof: flipped path bit", func(f *fixture) ([]byte, []byte, func(*Input)) {
			tk, root, _ := f.issue(6)
			return editTicket(f.t, tk, func(t *wire.Ticket) { t.Path[0][5] ^= 1 }), root, nil
		}, ErrBadProof},
		{"bad proof: other leaf index", func(f *fixture) ([]byte, []byte, func(*Input)) {
			tk, root, _ := f.issue(6)
			return editTicket(f.t, tk, func(t *wire.Ticket) { t.LeafIndex = (t.LeafIndex + 1) % t.TreeSize }), root, nil
		}, ErrBadProof},
		{"bad proof: root of another epoch", func(f *fixture) ([]byte, []byte, func(*Input)) {
			tk, _, _ := f.issue(6)
			_, root, _ := f.issue(7)
			return tk, root, nil
		}, ErrBadProof},
		{"bad proof: leaf of this epoch in a tree signed as another epoch", func(f *fixture) ([]byte, []byte, func(*Input)) {
			tk, _, _ := f.issue(6)
			t, _, _ := wire.ParseTicket(tk)
			tree, _ := merkle.New([][]byte{merkle.LeafHash(t.Body)})
			payload, _ := (&wire.EpochRoot{Version: 1, Epoch: 7, IssuedAt: 1, TreeSize: 1, Root: tree.Root()}).Marshal()
			root, err := signature.Sign1(f.issuer, payload)
			if err != nil {
				f.t.Fatal(err)
			}
			return editTicket(f.t, tk, func(t *wire.Ticket) { t.LeafIndex, t.TreeSize, t.Path = 0, 1, [][]byte{} }), root, nil
		}, ErrBadProof},
		{"bad signature", func(f *fixture) ([]byte, []byte, func(*Input)) {
			tk, root, _ := f.issue(6)
			root = bytes.Clone(root)
			root[len(root)-10] ^= 1
			return tk, root, nil
		}, ErrBadSignature},
		{"wrong audience", func(f *fixture) ([]byte, []byte, func(*Input)) {
			d := f.self(f.st.Current, f.st.TicketHash)
			d.ID = "dev-z"
			tk, root, _ := f.issueWith(f.issuer, 6, f.now, d)
			return tk, root, nil
		}, ErrWrongAudience},
		{"wrong device key", func(f *fixture) ([]byte, []byte, func(*Input)) {
			tk, root, _ := f.issueWith(f.issuer, 6, f.now, f.self(f.newKey(), f.st.TicketHash))
			return tk, root, nil
		}, ErrWrongDeviceKey},
		{"rollback", func(f *fixture) ([]byte, []byte, func(*Input)) {
			tk, root, _ := f.issue(4)
			return tk, root, nil
		}, ErrRollback},
		{"duplicate", func(f *fixture) ([]byte, []byte, func(*Input)) {
			return f.last5, f.last5root, nil
		}, ErrDuplicate},
		{"equivocation", func(f *fixture) ([]byte, []byte, func(*Input)) {
			tk, root, _ := f.issueWith(f.issuer, 5, f.now, f.self(f.st.Current, f.prev5))
			return tk, root, nil
		}, ErrEquivocation},
		{"not yet valid", func(f *fixture) ([]byte, []byte, func(*Input)) {
			tk, root, _ := f.issueWith(f.issuer, 6, f.now.Add(31*time.Second), f.self(f.st.Current, f.st.TicketHash))
			return tk, root, nil
		}, ErrNotYetValid},
		{"expired", func(f *fixture) ([]byte, []byte, func(*Input)) {
			tk, root, _ := f.issueWith(f.issuer, 6, f.now.Add(-631*time.Second), f.self(f.st.Current, f.st.TicketHash))
			return tk, root, nil
		}, ErrExpired},
		{"fast-forward", func(f *fixture) ([]byte, []byte, func(*Input)) {
			tk, root, _ := f.issue(5 + 11)
			return tk, root, func(in *Input) { in.Policy.MaxJump = 10 }
		}, ErrFastForward},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			f.atEpoch5()
			tk, root, edit := c.craft(f)
			in := f.input(tk, root)
			if edit != nil {
				edit(&in)
			}
			before := stateBytes(t, f.st)
			r, err := Accept(f.st, in)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			if r != nil {
				t.Fatal("a rejection returned a result")
			}
			if !bytes.Equal(stateBytes(t, f.st), before) {
				t.Fatal("state changed on rejection")
			}
			if got := ReasonOf(err); c.want != ErrDuplicate && (got == ReasonNone || got == ReasonInternal) {
				t.Fatalf("no reason code for %v", err)
			}
		})
	}
}

// Within the freshness window and the jump bound: accepted. This pins the
// boundaries of the rules above from the other side.
func TestRuleBoundaries(t *testing.T) {
	for _, c := range []struct {
		name     string
		issuedAt time.Duration
		epoch    uint64
		maxJump  uint64
	}{
		{"issued at now+skew", 30 * time.Second, 6, 0},
		{"expires at now-skew", -630 * time.Second, 6, 0},
		{"jump at the bound", 0, 15, 10},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			f.atEpoch5()
			tk, root, _ := f.issueWith(f.issuer, c.epoch, f.now.Add(c.issuedAt), f.self(f.st.Current, f.st.TicketHash))
			in := f.input(tk, root)
			in.Policy.MaxJump = c.maxJump
			if _, err := Accept(f.st, in); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// atEpoch5 brings the device to epoch 5 and remembers that ticket.
func (f *fixture) atEpoch5() {
	tk, root, _ := f.issue(5)
	f.prev5 = f.st.TicketHash
	f.accept(tk, root)
	f.last5, f.last5root = tk, root
}

func editTicket(t testing.TB, b []byte, edit func(*wire.Ticket)) []byte {
	t.Helper()
	tk, _, err := wire.ParseTicket(b)
	if err != nil {
		t.Fatal(err)
	}
	for i := range tk.Path {
		tk.Path[i] = bytes.Clone(tk.Path[i])
	}
	edit(tk)
	out, err := tk.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestRootCache(t *testing.T) {
	f := newFixture(t)
	cache := NewRootCache(4)
	tk, root, _ := f.issue(1)
	in := f.input(tk, root)
	in.Roots = cache
	if _, err := Accept(f.st, in); err != nil {
		t.Fatal(err)
	}
	if !cache.verified(1, sha(root)) {
		t.Fatal("verified root not cached")
	}
	// A forged root with the same payload but a broken signature is not
	// the cached message, so it is verified and refused.
	bad := bytes.Clone(root)
	bad[len(bad)-10] ^= 1
	in.Root = bad
	if _, err := Accept(f.st, in); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("forged root with a cached twin: %v", err)
	}
	for e := uint64(2); e < 10; e++ {
		cache.add(e, [32]byte{byte(e)})
	}
	if len(cache.seen) > 4 || cache.verified(1, sha(root)) {
		t.Fatal("cache not bounded, or the oldest epoch not evicted")
	}
}

func TestStale(t *testing.T) {
	f := newFixture(t)
	if f.st.Stale(uint64(f.now.Unix())+1e6, 0) {
		t.Fatal("a device without a ticket is not stale")
	}
	tk, root, _ := f.issue(1)
	f.accept(tk, root)
	now := uint64(f.now.Unix())
	if f.st.Stale(now+600+30, 30) || !f.st.Stale(now+600+31, 30) {
		t.Fatal("stale boundary")
	}
}

func TestStateRoundTrip(t *testing.T) {
	f := newFixture(t)
	b := stateBytes(t, f.st)
	back, err := UnmarshalState(b)
	if err != nil || !bytes.Equal(stateBytes(t, back), b) {
		t.Fatal("fresh state round trip", err)
	}
	tk, root, _ := f.issue(1)
	f.accept(tk, root)
	b = stateBytes(t, f.st)
	back, err = UnmarshalState(b)
	if err != nil || !bytes.Equal(stateBytes(t, back), b) {
		t.Fatal("state round trip", err)
	}
	for _, bad := range [][]byte{nil, b[:len(b)-1], append(bytes.Clone(b), 0)} {
		if _, err := UnmarshalState(bad); !errors.Is(err, ErrBadState) {
			t.Fatalf("bad state accepted: %v", err)
		}
	}
}

func TestReasonCodes(t *testing.T) {
	seen := map[Reason]bool{}
	for _, r := range reasons {
		if seen[r.reason] || r.reason == ReasonNone {
			t.Fatalf("reason %d reused", r.reason)
		}
		seen[r.reason] = true
		if ReasonOf(r.err) != r.reason || r.reason.String() != r.name {
			t.Fatalf("%v does not map to %d", r.err, r.reason)
		}
	}
	if StateOf(ErrEquivocation) != wire.StateEquivocation || StateOf(ErrRollback) != wire.StateRejected {
		t.Fatal("StateOf")
	}
	if ReasonOf(ErrDuplicate) != ReasonNone || IsRejection(ErrDuplicate) || !IsRejection(ErrRollback) {
		t.Fatal("duplicates are harmless")
	}
}
