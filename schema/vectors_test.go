// Package schema_test regenerates schema/testdata/vectors.json from fixed
// seeds with the project's implementation and fails on any difference, so
// that a change to any byte of any message or derivation is caught.
//
// Regenerate only for a deliberate, documented protocol change:
//
//	go test ./schema -update
package schema_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"runtime"
	"testing"
	"testing/cryptotest"
	"time"

	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/envelope"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/trust"
	"github.com/entropykem/entropykem/pkg/wire"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json")

const vectorsFile = "testdata/vectors.json"

// Hex is a byte string written as lowercase hex in JSON.
type Hex []byte

func (h Hex) MarshalJSON() ([]byte, error) { return json.Marshal(hex.EncodeToString(h)) }
func (h *Hex) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := hex.DecodeString(s)
	*h = v
	return err
}

type Vectors struct {
	Comment      string  `json:"comment"`
	CohortSecret Hex     `json:"cohort_secret"`
	Purpose      string  `json:"purpose"`
	Group        string  `json:"group"`
	Issuer       Issuer  `json:"issuer"`
	Device       Device  `json:"device"`
	Others       []Other `json:"other_devices"`
	Epochs       []Epoch `json:"epochs"`
	Envelope     Env     `json:"envelope"`
	KeyRotation  Rot     `json:"key_rotation"`
}

// Rot is the issuer's hand-over from its key (Vectors.Issuer) to the next.
type Rot struct {
	NewAlg       int64  `json:"new_alg"`
	NewSeed      Hex    `json:"new_seed"`
	NewPublicKey Hex    `json:"new_public_key"`
	NewKID       Hex    `json:"new_kid"`
	FromEpoch    uint64 `json:"from_epoch"`
	IssuedAt     uint64 `json:"issued_at"`
	Payload      Hex    `json:"payload"`
	Message      Hex    `json:"message"`
	Topic        string `json:"topic"`
}

type Issuer struct {
	Alg       int64 `json:"alg"`
	Seed      Hex   `json:"seed"`
	PublicKey Hex   `json:"public_key"`
	KID       Hex   `json:"kid"`
}

type Device struct {
	ID           string `json:"id"`
	KEMAlg       uint16 `json:"kem_alg"`
	Seed         Hex    `json:"seed"`
	PublicKey    Hex    `json:"public_key"`
	PKHash       Hex    `json:"pk_hash"`
	CreatedAt    uint64 `json:"created_at"`
	Registration Hex    `json:"registration"`
	// Reenrollment is the same Registration marked as a re-enrollment
	// (PROTOCOL.md §7.6: key 6 = true). A real one carries a new key.
	Reenrollment Hex `json:"reenrollment"`
}

type Other struct {
	ID   string `json:"id"`
	Seed Hex    `json:"seed"`
}

type Key struct {
	Ctr uint64 `json:"ctr"`
	Key Hex    `json:"key"`
}

type Epoch struct {
	Epoch       uint64 `json:"epoch"`
	IssuedAt    uint64 `json:"issued_at"`
	TTL         uint64 `json:"ttl_s"`
	DeviceKey   string `json:"device_key"`
	TicketBody  Hex    `json:"ticket_body"`
	TicketHash  Hex    `json:"ticket_hash"`
	LeafHash    Hex    `json:"leaf_hash"`
	LeafIndex   uint64 `json:"leaf_index"`
	TreeSize    uint64 `json:"tree_size"`
	Path        []Hex  `json:"path"`
	Ticket      Hex    `json:"ticket"`
	MerkleRoot  Hex    `json:"merkle_root"`
	RootPayload Hex    `json:"root_payload"`
	RootMessage Hex    `json:"root_message"`
	SS          Hex    `json:"ss"`
	CohortMix   Hex    `json:"cohort_mix"`
	KeyEpoch    Hex    `json:"key_epoch"`
	Confirm     Hex    `json:"confirm"`
	NextSeed    Hex    `json:"next_seed"`
	NextPKHash  Hex    `json:"next_pk_hash"`
	NextTag     Hex    `json:"next_tag"`
	Gap         bool   `json:"gap"`
	Status      Hex    `json:"status"`
	Ratchet     Hex    `json:"ratchet_state"`
	Keys        []Key  `json:"ratchet_keys"`
}

type Env struct {
	Epoch     uint64 `json:"epoch"`
	Ctr       uint64 `json:"ctr"`
	Key       Hex    `json:"key"`
	Plaintext Hex    `json:"plaintext"`
	Envelope  Hex    `json:"envelope"`
}

// rotate makes the issuer's announcement of its next key, from epoch 3.
// It comes last so that every earlier value keeps its randomness.
func rotate(t *testing.T, iss *signature.PrivateKey, pins *signature.KeySet) Rot {
	next, err := signature.NewKeyFromSeed(signature.MLDSA87, seq(32, 0x90))
	must(t, err)
	const from, at = 3, 1767229200
	msg, err := trust.Sign(iss, next.Public(), from, at)
	must(t, err)
	payload, _, err := signature.Verify1(msg, pins)
	must(t, err)
	tp, _ := wire.NewTopics(wire.DefaultPrefix)
	return Rot{NewAlg: int64(next.Alg()), NewSeed: next.Seed(), NewPublicKey: next.Public().Bytes(), NewKID: next.Public().KID(),
		FromEpoch: from, IssuedAt: at, Payload: payload, Message: msg, Topic: tp.IssuerKey(next.Public().KID())}
}

func seq(n int, start byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

func TestVectors(t *testing.T) {
	got := generate(t)
	out, err := json.MarshalIndent(got, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, '\n')
	if *update {
		if err := os.WriteFile(vectorsFile, out, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatalf("%v (run go test ./schema -update after a deliberate change)", err)
	}
	var wantV Vectors
	if err := json.Unmarshal(want, &wantV); err != nil {
		t.Fatal(err)
	}
	compare(t, "", wantV, got)
	if !bytes.Equal(want, out) {
		t.Fatal("vectors.json differs from the regenerated vectors")
	}
}

// compare reports the first differing field by name, which is more useful
// than a whole-file diff.
func compare(t *testing.T, path string, want, got any) {
	t.Helper()
	w, _ := json.Marshal(want)
	g, _ := json.Marshal(got)
	if bytes.Equal(w, g) {
		return
	}
	var wm, gm map[string]json.RawMessage
	if json.Unmarshal(w, &wm) != nil || json.Unmarshal(g, &gm) != nil {
		var wl, gl []json.RawMessage
		if json.Unmarshal(w, &wl) == nil && json.Unmarshal(g, &gl) == nil && len(wl) == len(gl) {
			for i := range wl {
				compare(t, path+"["+string(rune('0'+i))+"]", wl[i], gl[i])
			}
			return
		}
		t.Errorf("%s: got %s, want %s", path, g, w)
		return
	}
	for k := range wm {
		compare(t, path+"."+k, wm[k], gm[k])
	}
}

func generate(t *testing.T) *Vectors {
	v, _ := generateWorld(t)
	return v
}

// world is what generating vectors.json leaves behind, for the vectors
// built on top of it (extra_test.go). Those are made after everything
// vectors.json holds, so they change none of its values.
type world struct {
	iss     *signature.PrivateKey
	pins    *signature.KeySet
	cohort  cohort.Secret
	st      *accept.State // after epoch 2 and the envelope
	others  []batch.Device
	tickets [][]batch.Issued // per epoch, in leaf order
	roots   [][]byte
	results []*accept.Result
}

func generateWorld(t *testing.T) (*Vectors, *world) {
	cryptotest.SetGlobalRandom(t, 1)
	// One worker: encapsulations draw from the global random stream in a
	// fixed order.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))

	v := &Vectors{
		Comment:      "entropykem v1 known-answer vectors; see README.md in this directory",
		CohortSecret: seq(32, 0xc0), Purpose: "telemetry", Group: "plant-7",
	}
	iss, err := signature.NewKeyFromSeed(signature.MLDSA87, seq(32, 0x10))
	must(t, err)
	pub := iss.Public()
	v.Issuer = Issuer{Alg: int64(pub.Alg()), Seed: iss.Seed(), PublicKey: pub.Bytes(), KID: pub.KID()}
	pins, err := signature.NewKeySet(pub)
	must(t, err)

	sch, _ := kem.Lookup(kem.MLKEM1024)
	dk, err := sch.NewPrivateKey(seq(64, 0x20))
	must(t, err)
	reg := &wire.Registration{Version: 1, DeviceID: "dev-01", KEMAlg: kem.MLKEM1024, PublicKey: dk.PublicKey().Bytes(), CreatedAt: 1767225600}
	regBytes, err := reg.Marshal()
	must(t, err)
	re := *reg
	re.Reenroll = true
	reBytes, err := re.Marshal()
	must(t, err)
	v.Device = Device{ID: reg.DeviceID, KEMAlg: uint16(reg.KEMAlg), Seed: dk.Seed(), PublicKey: reg.PublicKey,
		PKHash: kem.PublicKeyHash(reg.PublicKey), CreatedAt: reg.CreatedAt, Registration: regBytes, Reenrollment: reBytes}

	var others []batch.Device
	for i, id := range []string{"dev-00", "dev-02"} {
		k, err := sch.NewPrivateKey(seq(64, byte(0x60+i)))
		must(t, err)
		v.Others = append(v.Others, Other{ID: id, Seed: k.Seed()})
		others = append(others, batch.Device{ID: id, Key: k.PublicKey(), Purpose: v.Purpose, Group: v.Group})
	}
	c, err := cohort.NewSoftware(v.CohortSecret)
	must(t, err)
	st, err := accept.NewState(reg.DeviceID, dk)
	must(t, err)

	w := &world{iss: iss, pins: pins, cohort: c, others: others}
	for i, e := range []uint64{1, 2} {
		ep := runEpoch(t, v, st, pins, iss, c, others, e, 1767225600+uint64(i)*3600, i == 0)
		v.Epochs = append(v.Epochs, ep.vec)
		st = ep.state
		w.tickets, w.roots, w.results = append(w.tickets, ep.tickets), append(w.roots, ep.root), append(w.results, ep.res)
	}
	v.Envelope = sealEnvelope(t, st, reg.DeviceID)
	v.KeyRotation = rotate(t, iss, pins)
	w.st = st
	return v, w
}

type epochOut struct {
	vec     Epoch
	state   *accept.State
	tickets []batch.Issued
	root    []byte
	res     *accept.Result
}

// runEpoch issues epoch e (the first to the registered key, the second to
// the key the device announced) and accepts it as the device would.
func runEpoch(t *testing.T, v *Vectors, st *accept.State, pins *signature.KeySet, iss *signature.PrivateKey, c cohort.Secret, others []batch.Device, e, at uint64, first bool) epochOut {
	key, name := st.Current, "registered"
	if !first {
		key, name = st.Next, "next of previous epoch"
	}
	self := batch.Device{ID: st.DeviceID, Key: key.PublicKey(), Prev: st.TicketHash, Purpose: v.Purpose, Group: v.Group}
	ep, err := batch.Issue(iss, batch.Params{Epoch: e, IssuedAt: at, TTL: 3600}, append([]batch.Device{self}, others...))
	must(t, err)
	var mine batch.Issued
	for _, x := range ep.Tickets {
		if x.DeviceID == st.DeviceID {
			mine = x
		}
	}
	r, err := accept.Accept(st, accept.Input{Ticket: mine.Ticket, Root: ep.Root, Pins: pins, Now: time.Unix(int64(at)+10, 0), Cohort: c})
	must(t, err)
	tk, body, err := wire.ParseTicket(mine.Ticket)
	must(t, err)
	ss, err := key.Decapsulate(body.Ciphertext)
	must(t, err)
	mix, err := keyschedule.CohortMix(c, r.TicketHash)
	must(t, err)
	out := Epoch{
		Epoch: e, IssuedAt: at, TTL: 3600, DeviceKey: name, TicketBody: tk.Body, TicketHash: r.TicketHash,
		LeafHash: leafHash(tk.Body), LeafIndex: tk.LeafIndex, TreeSize: tk.TreeSize, Ticket: mine.Ticket,
		MerkleRoot: ep.Payload.Root, RootMessage: ep.Root, SS: ss, CohortMix: mix, KeyEpoch: r.EpochKey,
		Confirm: r.Secrets.Confirm(), NextSeed: r.State.Next.Seed(),
		NextPKHash: kem.PublicKeyHash(r.State.Next.PublicKey().Bytes()), NextTag: r.NextTag, Gap: r.Gap,
	}
	out.RootPayload, err = ep.Payload.Marshal()
	must(t, err)
	for _, p := range tk.Path {
		out.Path = append(out.Path, p)
	}
	out.Status = status(t, r, at+10, e)
	for range 5 {
		k, err := r.State.Ratchet.Next()
		must(t, err)
		out.Keys = append(out.Keys, Key{Ctr: k.Ctr, Key: k.Bytes})
	}
	out.Ratchet, err = r.State.Ratchet.MarshalBinary()
	must(t, err)
	return epochOut{out, r.State, ep.Tickets, ep.Root, r}
}

func status(t *testing.T, r *accept.Result, now, seq uint64) []byte {
	s := &wire.Status{Version: 1, DeviceID: r.State.DeviceID, Epoch: r.State.Epoch, State: wire.StateOK, Time: now, Seq: seq,
		TicketHash: r.TicketHash, Confirm: r.Secrets.Confirm(), NextAlg: r.State.Next.Scheme().ID(),
		NextPK: r.State.Next.PublicKey().Bytes(), NextTag: r.NextTag}
	b, err := s.Marshal()
	must(t, err)
	return b
}

func sealEnvelope(t *testing.T, st *accept.State, id string) Env {
	k, err := st.Ratchet.Next()
	must(t, err)
	pt := []byte("hello from dev-01")
	env, err := envelope.Seal(id, k, pt)
	must(t, err)
	return Env{Epoch: k.Epoch, Ctr: k.Ctr, Key: k.Bytes, Plaintext: pt, Envelope: env}
}

func leafHash(body []byte) []byte {
	return keyschedule.TicketHash(append([]byte{0}, body...))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
