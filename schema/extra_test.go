package schema_test

// The vectors beyond vectors.json (issue #15): the other messages and
// Status states, the whole Merkle tree, the two other KEMs, the files of
// PROTOCOL.md §12 and Appendix A, and must_reject inputs for every decoding
// rule of §4. They are generated from the same fixed seeds after
// everything vectors.json holds (so none of its values changes) and
// compared byte for byte; -update-extra rewrites them.

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

var updateExtra = flag.Bool("update-extra", false, "rewrite the testdata files of extra_test.go")

// Extra file names, relative to the package.
const (
	messagesFile   = "testdata/messages.json"
	treeFile       = "testdata/tree.json"
	kemsFile       = "testdata/kems.json"
	filesFile      = "testdata/files.json"
	mustRejectFile = "testdata/must_reject.json"
)

// TicketVec is one issued ticket with its epoch's signed root.
type TicketVec struct {
	Epoch       uint64 `json:"epoch"`
	Ticket      Hex    `json:"ticket"`
	TicketBody  Hex    `json:"ticket_body"`
	TicketHash  Hex    `json:"ticket_hash"`
	RootMessage Hex    `json:"root_message"`
}

// Messages continues dev-01's story after vectors.json's epoch 2.
type Messages struct {
	Comment string `json:"comment"`
	// Epoch 3 is issued but the device misses it; epoch 4 follows it (to
	// the key announced after epoch 2, with prev = epoch 3's hash), so the
	// device accepts epoch 4 with a gap since epoch 2.
	Epoch3    TicketVec `json:"epoch3"`
	Epoch4    TicketVec `json:"epoch4"`
	SS4       Hex       `json:"epoch4_ss"`
	KeyEpoch4 Hex       `json:"epoch4_key_epoch"`
	Confirm4  Hex       `json:"epoch4_confirm"`
	NextSeed4 Hex       `json:"epoch4_next_seed"`
	NextTag4  Hex       `json:"epoch4_next_tag"`
	GapStatus Hex       `json:"gap_status"`
	// Then epoch 3's ticket is delivered again: a rollback (reason 7).
	RejectedStatus Hex `json:"rejected_status"`
	// A second, different epoch-4 ticket under a validly signed root:
	// equivocation (state 3, reason 8).
	Equivocating         TicketVec `json:"equivocating_epoch4"`
	EquivocationStatus   Hex       `json:"equivocation_status"`
	StaleAt              uint64    `json:"stale_at"`
	StaleStatus          Hex       `json:"stale_status"`
	RekeyNewSeed         Hex       `json:"rekey_new_seed"`
	RekeyNewPublicKey    Hex       `json:"rekey_new_public_key"`
	RekeyTag             Hex       `json:"rekey_tag"`
	RekeyRegistration    Hex       `json:"rekey_registration"`
	EpochInfo            Hex       `json:"epoch_info"`
	EpochInfoPeriodS     uint64    `json:"epoch_info_period_s"`
	OnlineTrue           Hex       `json:"online_true"`
	OnlineFalse          Hex       `json:"online_false"`
	OnlineSince          uint64    `json:"online_since"`
	ClockSkewSeconds     uint64    `json:"skew_s"`
	StatusTimesAreIssued string    `json:"status_times"`
}

// Leaf is one leaf of an epoch's tree.
type Leaf struct {
	DeviceID   string `json:"device_id"`
	LeafIndex  uint64 `json:"leaf_index"`
	TicketBody Hex    `json:"ticket_body"`
	LeafHash   Hex    `json:"leaf_hash"`
	Ticket     Hex    `json:"ticket"`
}

// TreeEpoch is every leaf of one epoch of vectors.json.
type TreeEpoch struct {
	Epoch      uint64 `json:"epoch"`
	TreeSize   uint64 `json:"tree_size"`
	MerkleRoot Hex    `json:"merkle_root"`
	Leaves     []Leaf `json:"leaves"`
}

type Tree struct {
	Comment string      `json:"comment"`
	Epochs  []TreeEpoch `json:"epochs"`
}

// KEMVec is one device of another KEM through one epoch.
type KEMVec struct {
	Name        string `json:"name"`
	KEMAlg      uint16 `json:"kem_alg"`
	DeviceID    string `json:"device_id"`
	Seed        Hex    `json:"seed"`
	PublicKey   Hex    `json:"public_key"`
	PKHash      Hex    `json:"pk_hash"`
	Ticket      Hex    `json:"ticket"`
	TicketBody  Hex    `json:"ticket_body"`
	TicketHash  Hex    `json:"ticket_hash"`
	RootMessage Hex    `json:"root_message"`
	Ciphertext  Hex    `json:"ct"`
	SS          Hex    `json:"ss"`
	CohortMix   Hex    `json:"cohort_mix"`
	KeyEpoch    Hex    `json:"key_epoch"`
	Confirm     Hex    `json:"confirm"`
	NextSeed    Hex    `json:"next_seed"`
	NextPKHash  Hex    `json:"next_pk_hash"`
	NextTag     Hex    `json:"next_tag"`
	Status      Hex    `json:"status"`
}

type KEMs struct {
	Comment string   `json:"comment"`
	Epoch   uint64   `json:"epoch"`
	KEMs    []KEMVec `json:"kems"`
}

// Files are example files of PROTOCOL.md §12 and Appendix A.
type Files struct {
	Comment          string `json:"comment"`
	IssuerSecretPEM  string `json:"issuer_secret_key_pem"`
	IssuerPublicPEM  string `json:"issuer_public_key_pem"`
	DeviceID         string `json:"device_id"`
	StateKey         Hex    `json:"state_key"`
	StateBin         Hex    `json:"state_bin"`
	StatePlaintext   Hex    `json:"state_plaintext"`
	DeviceState      Hex    `json:"device_state"`
	StateSeq         uint64 `json:"state_seq"`
	RegistrationCBOR Hex    `json:"registration_cbor"`
	StatusCBOR       Hex    `json:"status_cbor"`
	IssuerKeysCBOR   Hex    `json:"issuer_keys_cbor"`
}

func writeOrCompare(t *testing.T, file string, v any) {
	t.Helper()
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, '\n')
	if *updateExtra {
		if err := os.WriteFile(file, out, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run go test ./schema -update-extra after a deliberate change)", err)
	}
	if !bytes.Equal(want, out) {
		var w, g any
		_ = json.Unmarshal(want, &w)
		_ = json.Unmarshal(out, &g)
		compare(t, file, w, g)
		t.Fatalf("%s differs from the regenerated vectors", file)
	}
}

// TestExtraVectors regenerates every extra file and compares.
func TestExtraVectors(t *testing.T) {
	v, w := generateWorld(t)
	// Randomness continues from vectors.json's stream; one worker keeps
	// the draws in a fixed order.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	writeOrCompare(t, treeFile, makeTree(t, w))
	msgs, after4 := makeMessages(t, v, w)
	writeOrCompare(t, messagesFile, msgs)
	writeOrCompare(t, kemsFile, makeKEMs(t, v, w))
	writeOrCompare(t, filesFile, makeFiles(t, v, w, msgs, after4))
	writeOrCompare(t, mustRejectFile, makeMustReject(t, v))
	writeOrCompare(t, chunkedFile, makeChunked(t, v, w))
}

func makeTree(t *testing.T, w *world) Tree {
	tr := Tree{Comment: "every leaf of vectors.json's two epochs, so the whole RFC 9162 tree can be rebuilt; see README.md"}
	for i, tickets := range w.tickets {
		te := TreeEpoch{Epoch: uint64(i + 1), TreeSize: uint64(len(tickets))}
		for _, x := range tickets {
			tk, _, err := wire.ParseTicket(x.Ticket)
			must(t, err)
			te.Leaves = append(te.Leaves, Leaf{DeviceID: x.DeviceID, LeafIndex: tk.LeafIndex, TicketBody: tk.Body,
				LeafHash: leafHash(tk.Body), Ticket: x.Ticket})
		}
		parsed, err := signature.ParseSign1(w.roots[i])
		must(t, err)
		root, err := wire.ParseEpochRoot(parsed.Payload)
		must(t, err)
		te.MerkleRoot = root.Root
		tr.Epochs = append(tr.Epochs, te)
	}
	return tr
}

func issueOne(t *testing.T, w *world, e, at uint64, self batch.Device) (TicketVec, batch.Issued) {
	t.Helper()
	ep, err := batch.Issue(w.iss, batch.Params{Epoch: e, IssuedAt: at, TTL: 3600}, append([]batch.Device{self}, w.others...))
	must(t, err)
	for _, x := range ep.Tickets {
		if x.DeviceID == self.ID {
			tk, _, err := wire.ParseTicket(x.Ticket)
			must(t, err)
			return TicketVec{Epoch: e, Ticket: x.Ticket, TicketBody: tk.Body, TicketHash: x.TicketHash, RootMessage: ep.Root}, x
		}
	}
	t.Fatal("device not issued")
	return TicketVec{}, batch.Issued{}
}

func statusBytes(t *testing.T, s *wire.Status) []byte {
	t.Helper()
	b, err := s.Marshal()
	must(t, err)
	return b
}

const epochAt = 1767225600

func makeMessages(t *testing.T, v *Vectors, w *world) (Messages, *accept.State) {
	m := Messages{Comment: "dev-01 after vectors.json's epoch 2: a gap, a rollback, an equivocation, stale, a re-key, EpochInfo and Online; see README.md",
		ClockSkewSeconds: 30, StatusTimesAreIssued: "every Status's time is its ticket's issued_at + 10, the stale one's stale_at"}
	st := w.st
	id := st.DeviceID
	key := st.Next // no Status of epoch 3 reached the issuer: it reuses what epoch 3 used
	m.Epoch3, _ = issueOne(t, w, 3, epochAt+2*3600, batch.Device{ID: id, Key: key.PublicKey(), Prev: st.TicketHash, Purpose: v.Purpose, Group: v.Group})
	m.Epoch4, _ = issueOne(t, w, 4, epochAt+3*3600, batch.Device{ID: id, Key: key.PublicKey(), Prev: m.Epoch3.TicketHash, Purpose: v.Purpose, Group: v.Group})
	now := time.Unix(epochAt+3*3600+10, 0)
	in := func(tv TicketVec) accept.Input {
		return accept.Input{Ticket: tv.Ticket, Root: tv.RootMessage, Pins: w.pins, Now: now, Cohort: w.cohort,
			Policy: accept.Policy{Skew: 30 * time.Second}}
	}
	r, err := accept.Accept(st, in(m.Epoch4))
	must(t, err)
	if !r.Gap || r.PrevEpoch != 2 {
		t.Fatalf("epoch 4: gap %v prev %d", r.Gap, r.PrevEpoch)
	}
	_, body, _ := wire.ParseTicket(m.Epoch4.Ticket)
	ss, err := key.Decapsulate(body.Ciphertext)
	must(t, err)
	m.SS4, m.KeyEpoch4, m.Confirm4, m.NextSeed4, m.NextTag4 = ss, r.EpochKey, r.Secrets.Confirm(), r.State.Next.Seed(), r.NextTag
	prev := r.PrevEpoch
	seq := uint64(2) // vectors.json's Statuses were seq 1 and 2
	next := func() uint64 { seq++; return seq }
	base := func(state wire.State, reason accept.Reason, at uint64) *wire.Status {
		return &wire.Status{Version: 1, DeviceID: id, Epoch: 4, State: state, Reason: uint64(reason), Time: at, Seq: next(), TicketHash: r.TicketHash}
	}
	gs := base(wire.StateGap, accept.ReasonNone, epochAt+3*3600+10)
	gs.Confirm, gs.NextAlg, gs.NextPK, gs.NextTag, gs.PrevEpoch = r.Secrets.Confirm(), r.State.Next.Scheme().ID(), r.State.Next.PublicKey().Bytes(), r.NextTag, &prev
	m.GapStatus = statusBytes(t, gs)
	after := r.State

	_, err = accept.Accept(after, in(m.Epoch3))
	if accept.ReasonOf(err) != accept.ReasonRollback {
		t.Fatalf("epoch 3 after 4: %v", err)
	}
	m.RejectedStatus = statusBytes(t, base(accept.StateOf(err), accept.ReasonOf(err), epochAt+3*3600+10))

	m.Equivocating, _ = issueOne(t, w, 4, epochAt+3*3600, batch.Device{ID: id, Key: key.PublicKey(), Prev: m.Epoch3.TicketHash, Purpose: v.Purpose, Group: v.Group})
	_, err = accept.Accept(after, in(m.Equivocating))
	if accept.ReasonOf(err) != accept.ReasonEquivocation {
		t.Fatalf("second epoch 4: %v", err)
	}
	m.EquivocationStatus = statusBytes(t, base(accept.StateOf(err), accept.ReasonOf(err), epochAt+3*3600+10))

	m.StaleAt = epochAt + 3*3600 + 3600 + 30 + 1
	if !after.Stale(m.StaleAt, 30) || after.Stale(m.StaleAt-1, 30) {
		t.Fatal("stale_at is not the first stale second")
	}
	m.StaleStatus = statusBytes(t, base(wire.StateStale, accept.ReasonStale, m.StaleAt))

	// Re-key (§7.5) right after accepting epoch 4, to an ML-KEM-768 key.
	sch, _ := kem.Lookup(kem.MLKEM768)
	nk, err := sch.NewPrivateKey(seq64(0x70))
	must(t, err)
	npk := nk.PublicKey().Bytes()
	m.RekeyNewSeed, m.RekeyNewPublicKey = nk.Seed(), npk
	m.RekeyTag = r.Secrets.RekeyTag(kem.PublicKeyHash(npk))
	reg := &wire.Registration{Version: 1, DeviceID: id, KEMAlg: kem.MLKEM768, PublicKey: npk, CreatedAt: epochAt + 3*3600 + 20,
		Rekey: &wire.RekeyProof{Epoch: 4, TicketHash: r.TicketHash, Tag: m.RekeyTag}}
	m.RekeyRegistration, err = reg.Marshal()
	must(t, err)

	m.EpochInfoPeriodS = 3600
	info := &wire.EpochInfo{Version: 1, Epoch: 4, IssuedAt: epochAt + 3*3600, PeriodS: 3600, NextAt: epochAt + 4*3600}
	m.EpochInfo, err = info.Marshal()
	must(t, err)
	m.OnlineSince = epochAt - 600
	for _, on := range []bool{true, false} {
		b, err := (&wire.Online{Version: 1, Online: on, Since: m.OnlineSince}).Marshal()
		must(t, err)
		if on {
			m.OnlineTrue = b
		} else {
			m.OnlineFalse = b
		}
	}
	return m, after
}

func seq64(start byte) []byte { return seq(64, start) }

func makeKEMs(t *testing.T, v *Vectors, w *world) KEMs {
	out := KEMs{Comment: "one device of each other KEM through epoch 1, alone in its tree, under vectors.json's issuer key; see README.md", Epoch: 1}
	for _, c := range []struct {
		name string
		id   kem.ID
		dev  string
		seed []byte
	}{
		{"ML-KEM-768", kem.MLKEM768, "dev-768", seq(64, 0x30)},
		{"X-Wing", kem.XWing, "dev-xwing", seq(32, 0x40)},
	} {
		sch, err := kem.Lookup(c.id)
		must(t, err)
		dk, err := sch.NewPrivateKey(c.seed)
		must(t, err)
		st, err := accept.NewState(c.dev, dk)
		must(t, err)
		ep, err := batch.Issue(w.iss, batch.Params{Epoch: 1, IssuedAt: epochAt, TTL: 3600},
			[]batch.Device{{ID: c.dev, Key: dk.PublicKey(), Purpose: v.Purpose, Group: v.Group}})
		must(t, err)
		x := ep.Tickets[0]
		r, err := accept.Accept(st, accept.Input{Ticket: x.Ticket, Root: ep.Root, Pins: w.pins, Now: time.Unix(epochAt+10, 0), Cohort: w.cohort})
		must(t, err)
		tk, body, err := wire.ParseTicket(x.Ticket)
		must(t, err)
		ss, err := dk.Decapsulate(body.Ciphertext)
		must(t, err)
		mix, err := keyschedule.CohortMix(w.cohort, r.TicketHash)
		must(t, err)
		out.KEMs = append(out.KEMs, KEMVec{
			Name: c.name, KEMAlg: uint16(c.id), DeviceID: c.dev, Seed: dk.Seed(), PublicKey: dk.PublicKey().Bytes(),
			PKHash: kem.PublicKeyHash(dk.PublicKey().Bytes()), Ticket: x.Ticket, TicketBody: tk.Body, TicketHash: r.TicketHash,
			RootMessage: ep.Root, Ciphertext: body.Ciphertext, SS: ss, CohortMix: mix, KeyEpoch: r.EpochKey,
			Confirm: r.Secrets.Confirm(), NextSeed: r.State.Next.Seed(), NextPKHash: r.State.Next.PublicKey().Hash(),
			NextTag: r.NextTag, Status: status(t, r, epochAt+10, 1),
		})
	}
	return out
}

func makeFiles(t *testing.T, v *Vectors, w *world, m Messages, st *accept.State) Files {
	f := Files{Comment: "the key files of PROTOCOL.md §12 and this implementation's state directory (Appendix A) for dev-01 after messages.json's gap Status; see README.md",
		DeviceID: st.DeviceID, StateSeq: 3}
	var key []byte
	f.IssuerSecretPEM = string(signature.MarshalPrivateKeyPEM(w.iss))
	f.IssuerPublicPEM = string(signature.MarshalPublicKeyPEM(w.iss.Public()))
	back, err := signature.ParsePrivateKeyPEM([]byte(f.IssuerSecretPEM))
	must(t, err)
	pub, err := signature.ParsePublicKeyPEM([]byte(f.IssuerPublicPEM))
	must(t, err)
	if !back.Public().Equal(w.iss.Public()) || !pub.Equal(w.iss.Public()) {
		t.Fatal("key files do not parse back")
	}
	key, err = keyschedule.StateKey(w.cohort, st.DeviceID)
	must(t, err)
	f.StateKey = key
	f.DeviceState, err = st.MarshalBinary()
	must(t, err)
	type record struct {
		Version uint64 `cbor:"0,keyasint"`
		State   []byte `cbor:"1,keyasint"`
		Seq     uint64 `cbor:"2,keyasint"`
		Status  []byte `cbor:"3,keyasint,omitempty"`
	}
	f.StatePlaintext, err = cbor.Marshal(&record{Version: 1, State: f.DeviceState, Seq: 3, Status: m.GapStatus})
	must(t, err)
	aead, err := chacha20poly1305.NewX(key)
	must(t, err)
	nonce := seq(24, 0xa0)
	f.StateBin = aead.Seal(append([]byte("EKDS\x01"), nonce...), nonce, f.StatePlaintext, append([]byte("ekem/v1 device-state"), st.DeviceID...))
	f.RegistrationCBOR = v.Device.Registration
	f.StatusCBOR = m.StaleStatus // a Status with no state change; its seq (6) is above state.bin's
	type keys struct {
		Version uint64   `cbor:"0,keyasint"`
		Signed  [][]byte `cbor:"1,keyasint,omitempty"`
	}
	f.IssuerKeysCBOR, err = cbor.Marshal(&keys{Version: 1, Signed: [][]byte{v.KeyRotation.Message}})
	must(t, err)
	return f
}
