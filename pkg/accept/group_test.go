package accept_test

import (
	"bytes"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/groupenv"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/signature"
)

// member is one device of the group test, with everything it holds.
type member struct {
	id     string
	secret []byte
	st     *accept.State
}

// issuerView is everything the issuer holds or saw: its signing key, the
// group seeds it drew, every ticket secret it kept, and every message
// (tickets, roots) it published.
type issuerView struct {
	blobs [][]byte
	seeds [][]byte // the group seeds it drew
}

func (v *issuerView) add(b ...[]byte) { v.blobs = append(v.blobs, b...) }

// TestGroupKeyCohort: three devices and one backend of cohort "fleet-a"
// (one cohort secret), a fifth member revoked before epoch 3, and a device
// of another cohort. The three devices and the backend derive the same
// group key at every epoch; the outsider derives none. The member revoked
// before epoch 3 derives no epoch-3 key and cannot open an epoch-3
// envelope. Nothing the issuer can compute from its own state and every
// message it saw equals a group key.
func TestGroupKeyCohort(t *testing.T) {
	iss, err := signature.GenerateKey(signature.MLDSA87)
	if err != nil {
		t.Fatal(err)
	}
	pins, _ := signature.NewKeySet(iss.Public())
	sch, _ := kem.Lookup(kem.MLKEM768)
	fleet := make([]byte, 32)
	rand.Read(fleet)
	other := make([]byte, 32)
	rand.Read(other)
	var ms []*member
	for _, id := range []string{"backend-1", "dev-a", "dev-b", "dev-c", "dev-r", "outsider"} {
		k, err := sch.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		st, _ := accept.NewState(id, k)
		sec := fleet
		if id == "outsider" {
			sec = other
		}
		ms = append(ms, &member{id: id, secret: sec, st: st})
	}
	view := &issuerView{}
	view.add(iss.Seed())
	revoked := map[uint64]string{3: "dev-r"} // not issued from epoch 3 on
	gone := map[string]bool{}
	keys := map[uint64][]byte{}
	derived := map[uint64]int{} // members that derived epoch e's key
	var envelopes = map[uint64][]byte{}
	for e := uint64(1); e <= 4; e++ {
		if id, ok := revoked[e]; ok {
			gone[id] = true
		}
		g := make([]byte, keyschedule.GroupSeedSize)
		rand.Read(g)
		view.add(g)
		view.seeds = append(view.seeds, g)
		var devs []batch.Device
		for _, m := range ms {
			if gone[m.id] {
				continue
			}
			k := m.st.Current
			if m.st.Next != nil {
				k = m.st.Next
			}
			d := batch.Device{ID: m.id, Key: k.PublicKey(), Prev: m.st.TicketHash, Purpose: "p", Group: "g"}
			if m.id != "outsider" {
				d.Cohort, d.GroupSeed = "fleet-a", g
			}
			devs = append(devs, d)
		}
		now := uint64(1767225600) + e*600
		ep, err := batch.Issue(iss, batch.Params{Epoch: e, IssuedAt: now, TTL: 3600}, devs)
		if err != nil {
			t.Fatal(err)
		}
		view.add(ep.Root)
		for _, x := range ep.Tickets {
			view.add(x.Ticket, x.Secrets.PRK(), x.TicketHash)
			for _, m := range ms {
				if m.id != x.DeviceID {
					continue
				}
				c, _ := cohort.NewSoftware(m.secret)
				r, err := accept.Accept(m.st, accept.Input{Ticket: x.Ticket, Root: ep.Root, Pins: pins, Now: time.Unix(int64(now)+1, 0), Cohort: c})
				if err != nil {
					t.Fatalf("epoch %d %s: %v", e, m.id, err)
				}
				m.st = r.State
				if m.id == "outsider" {
					if m.st.Group != nil {
						t.Fatal("the outsider has a group state")
					}
					continue
				}
				k, ok := m.st.Group.KeyOf(e)
				if !ok {
					t.Fatalf("epoch %d: %s has no group key", e, m.id)
				}
				derived[e]++
				if keys[e] == nil {
					keys[e] = k
				} else if !bytes.Equal(keys[e], k) {
					t.Fatalf("epoch %d: %s derived another group key", e, m.id)
				}
			}
		}
		want := 4 // backend-1, dev-a, dev-b, dev-c
		if e < 3 {
			want = 5 // and dev-r, until revoked
		}
		if len(keys[e]) != 32 || derived[e] != want {
			t.Fatalf("epoch %d: %d members derived the key, want %d", e, derived[e], want)
		}
		env, err := groupenv.Seal(keys[e], groupenv.Header{Cohort: "fleet-a", Epoch: e, Sender: "dev-a"}, []byte("t="+strconv.FormatUint(e, 10)))
		if err != nil {
			t.Fatal(err)
		}
		envelopes[e] = env
		view.add(env)
	}
	for e := uint64(2); e <= 4; e++ {
		if bytes.Equal(keys[e], keys[e-1]) {
			t.Fatal("group key did not change with the epoch")
		}
	}
	// The revoked member kept epoch 2's key only: epoch 3's envelope does
	// not open with anything it holds.
	var dc *member
	for _, m := range ms {
		if m.id == "dev-r" {
			dc = m
		}
	}
	if _, ok := dc.st.Group.KeyOf(3); ok {
		t.Fatal("revoked member holds epoch 3's key")
	}
	for _, k := range dc.st.Group.Keys {
		if _, _, err := groupenv.Open(k.Key, envelopes[3]); !errors.Is(err, groupenv.ErrAuth) {
			t.Fatalf("revoked member opened epoch 3 with epoch %d's key: %v", k.Epoch, err)
		}
	}
	// The outsider: its state holds no group key; its own derivation with
	// its cohort secret from a seed it might learn gives another key.
	oc, _ := cohort.NewSoftware(other)
	for e := range keys {
		for _, g := range view.seeds {
			k, err := keyschedule.GroupKey(oc, g, e, "fleet-a")
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := groupenv.Open(k, envelopes[e]); err == nil {
				t.Fatal("outsider opened a group envelope")
			}
		}
	}
	assertIssuerBlind(t, view, keys)
}

// assertIssuerBlind computes what the issuer can: every 32-byte window of
// everything it holds or saw, and for every seed g it drew the group key
// with every such window as the cohort secret (and as the HMAC output), and
// the derivations without any secret. None may equal a group key.
func assertIssuerBlind(t *testing.T, v *issuerView, keys map[uint64][]byte) {
	t.Helper()
	target := map[string]uint64{}
	for e, k := range keys {
		target[string(k)] = e
	}
	var windows [][]byte
	for _, b := range v.blobs {
		for i := 0; i+32 <= len(b); i++ {
			windows = append(windows, b[i:i+32])
		}
	}
	for _, w := range windows {
		if e, ok := target[string(w)]; ok {
			t.Fatalf("epoch %d's group key appears in what the issuer holds", e)
		}
	}
	// The issuer's own 32-byte values: its signing seed, the group seeds,
	// the ticket secrets and hashes.
	var fields [][]byte
	for _, b := range v.blobs {
		if len(b) == 32 {
			fields = append(fields, b)
		}
	}
	check := func(k []byte, how string) {
		if e, ok := target[string(k)]; ok {
			t.Fatalf("the issuer computed epoch %d's group key: %s", e, how)
		}
	}
	for e := range keys {
		info := "group;fleet-a;" + strconv.FormatUint(e, 10)
		for _, g := range v.seeds {
			h := sha256.Sum256(g)
			msg := append([]byte(keyschedule.LabelGroup), h[:]...)
			for _, candidates := range [][][]byte{{make([]byte, 32)}, fields} {
				for _, w := range candidates {
					m := hmac.New(sha256.New, w)
					m.Write(msg)
					k, _ := hkdf.Key(sha256.New, append(bytes.Clone(g), m.Sum(nil)...), keyschedule.U64(e), info, 32)
					check(k, "seed with a window as the cohort secret")
					k2, _ := hkdf.Key(sha256.New, append(bytes.Clone(g), w...), keyschedule.U64(e), info, 32)
					check(k2, "seed with a window as the group mac")
				}
			}
			k, _ := hkdf.Key(sha256.New, g, keyschedule.U64(e), info, 32)
			check(k, "seed alone")
		}
	}
}

// TestGroupStateRoundTrip: the group state survives MarshalBinary and
// UnmarshalState exactly, and the largest state with one fits MaxState.
func TestGroupStateRoundTrip(t *testing.T) {
	iss, _ := signature.GenerateKey(signature.MLDSA87)
	pins, _ := signature.NewKeySet(iss.Public())
	sch, _ := kem.Lookup(kem.MLKEM1024)
	k, _ := sch.GenerateKey()
	id := "d" + string(bytes.Repeat([]byte("x"), 63))
	cohortID, label := string(bytes.Repeat([]byte("c"), 64)), string(bytes.Repeat([]byte("p"), 64))
	st, _ := accept.NewState(id, k)
	c, _ := cohort.NewSoftware(make([]byte, 32))
	g := make([]byte, 32)
	for e := uint64(1); e <= 3; e++ {
		key := st.Current
		if st.Next != nil {
			key = st.Next
		}
		ep, err := batch.Issue(iss, batch.Params{Epoch: e, IssuedAt: 1767225600, TTL: 3600},
			[]batch.Device{{ID: id, Key: key.PublicKey(), Prev: st.TicketHash, Purpose: label, Group: label, Cohort: cohortID, GroupSeed: g}})
		if err != nil {
			t.Fatal(err)
		}
		r, err := accept.Accept(st, accept.Input{Ticket: ep.Tickets[0].Ticket, Root: ep.Root, Pins: pins, Now: time.Unix(1767225601, 0), Cohort: c})
		if err != nil {
			t.Fatal(err)
		}
		st = r.State
	}
	st.Group.NextCtr = 1<<63 - 1
	b, err := st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > accept.MaxState {
		t.Fatalf("largest state with a group is %d bytes, over %d", len(b), accept.MaxState)
	}
	back, err := accept.UnmarshalState(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Group.Keys) != 2 || back.Group.Keys[0].Epoch != 2 || back.Group.Latest().Epoch != 3 ||
		!bytes.Equal(back.Group.Latest().Key, st.Group.Latest().Key) || back.Group.NextCtr != st.Group.NextCtr || back.Group.Cohort != cohortID {
		t.Fatalf("group state changed in a round trip: %+v", back.Group)
	}
	again, _ := back.MarshalBinary()
	if !bytes.Equal(again, b) {
		t.Fatal("re-encoding differs")
	}
}

// FuzzUnmarshalState: the state decoder, group state included, never
// panics, and a state it accepts re-encodes to the same bytes.
func FuzzUnmarshalState(f *testing.F) {
	sch, _ := kem.Lookup(kem.MLKEM768)
	k, _ := sch.NewPrivateKey(bytes.Repeat([]byte{1}, 64))
	st, _ := accept.NewState("dev-a", k)
	plain, _ := st.MarshalBinary()
	f.Add(plain)
	iss, _ := signature.NewKeyFromSeed(signature.MLDSA65, bytes.Repeat([]byte{2}, 32))
	pins, _ := signature.NewKeySet(iss.Public())
	c, _ := cohort.NewSoftware(make([]byte, 32))
	for e := uint64(1); e <= 2; e++ {
		key := st.Current
		if st.Next != nil {
			key = st.Next
		}
		ep, err := batch.Issue(iss, batch.Params{Epoch: e, IssuedAt: 1767225600, TTL: 3600},
			[]batch.Device{{ID: "dev-a", Key: key.PublicKey(), Prev: st.TicketHash, Purpose: "p", Group: "g", Cohort: "fleet-a", GroupSeed: make([]byte, 32)}})
		if err != nil {
			f.Fatal(err)
		}
		r, err := accept.Accept(st, accept.Input{Ticket: ep.Tickets[0].Ticket, Root: ep.Root, Pins: pins, Now: time.Unix(1767225601, 0), Cohort: c})
		if err != nil {
			f.Fatal(err)
		}
		st = r.State
	}
	grouped, _ := st.MarshalBinary()
	f.Add(grouped)
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := accept.UnmarshalState(b)
		if err != nil {
			return
		}
		again, err := s.MarshalBinary()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs: %v", err)
		}
	})
}
