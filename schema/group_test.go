package schema_test

// Vectors of the cohort group key and the group envelope (PROTOCOL.md §7.7,
// §8.4.1; issue #20), in testdata/group.json. They come from their own
// fixed seeds and random stream, so adding them changed no other file;
// -update-group rewrites them.

import (
	"flag"
	"runtime"
	"testing"
	"testing/cryptotest"
	"time"

	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/groupenv"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

var updateGroup = flag.Bool("update-group", false, "rewrite testdata/group.json")

const groupFile = "testdata/group.json"

// GroupVectors is testdata/group.json.
type GroupVectors struct {
	Comment      string        `json:"comment"`
	Issuer       Issuer        `json:"issuer"`
	CohortID     string        `json:"cohort_id"`
	CohortSecret Hex           `json:"cohort_secret"`
	Purpose      string        `json:"purpose"`
	Group        string        `json:"group"`
	Epoch        uint64        `json:"epoch"`
	IssuedAt     uint64        `json:"issued_at"`
	GroupSeed    Hex           `json:"group_seed"`
	GroupMAC     Hex           `json:"group_mac"`
	GroupKey     Hex           `json:"group_key"`
	RootMessage  Hex           `json:"root_message"`
	Members      []GroupMember `json:"members"`
	NonMember    GroupMember   `json:"non_member"`
	Envelopes    []GroupEnvVec `json:"envelopes"`
	MustReject   []GroupReject `json:"must_reject"`
}

// GroupMember is one device's ticket of the epoch and what it derives.
type GroupMember struct {
	ID         string `json:"device_id"`
	Seed       Hex    `json:"kem_seed"` // ML-KEM-1024 d ‖ z
	Ticket     Hex    `json:"ticket"`
	TicketBody Hex    `json:"ticket_body"`
	SS         Hex    `json:"ss"`
	SeedKey    Hex    `json:"seed_key,omitempty"`
	Sealed     Hex    `json:"sealed_group_seed,omitempty"`
}

// GroupEnvVec is one sealed group envelope.
type GroupEnvVec struct {
	Sender    string `json:"sender"`
	Ctr       uint64 `json:"ctr"`
	SenderKey Hex    `json:"sender_key"`
	Nonce     Hex    `json:"nonce"`
	AAD       Hex    `json:"aad"`
	Plaintext Hex    `json:"plaintext"`
	Envelope  Hex    `json:"envelope"`
}

// GroupReject is an input a decoder must refuse.
type GroupReject struct {
	Rule  string `json:"rule"`
	Why   string `json:"why"`
	Input Hex    `json:"input"`
}

func TestGroupVectors(t *testing.T) {
	got := makeGroupVectors(t)
	if *updateGroup {
		*updateExtra = true
		defer func() { *updateExtra = false }()
	}
	writeOrCompare(t, groupFile, got)
}

func makeGroupVectors(t *testing.T) GroupVectors {
	cryptotest.SetGlobalRandom(t, 2)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	v := GroupVectors{
		Comment:  "entropykem v1 cohort group key and group envelope vectors; see README.md in this directory",
		CohortID: "fleet-a", CohortSecret: seq(32, 0xc0), Purpose: "telemetry", Group: "plant-7",
		Epoch: 7, IssuedAt: 1767225600, GroupSeed: seq(32, 0xa0),
	}
	iss, err := signature.NewKeyFromSeed(signature.MLDSA87, seq(32, 0x10))
	must(t, err)
	pub := iss.Public()
	v.Issuer = Issuer{Alg: int64(pub.Alg()), Seed: iss.Seed(), PublicKey: pub.Bytes(), KID: pub.KID()}
	pins, err := signature.NewKeySet(pub)
	must(t, err)
	sch, _ := kem.Lookup(kem.MLKEM1024)
	c, err := cohort.NewSoftware(v.CohortSecret)
	must(t, err)
	v.GroupMAC, err = keyschedule.GroupMAC(c, v.GroupSeed)
	must(t, err)
	v.GroupKey, err = keyschedule.GroupKeyFromMAC(v.GroupSeed, v.GroupMAC, v.Epoch, v.CohortID)
	must(t, err)

	ids := []string{"backend-1", "dev-a", "dev-b", "dev-x"} // dev-x is not a member
	keys := map[string]kem.PrivateKey{}
	var devs []batch.Device
	for i, id := range ids {
		k, err := sch.NewPrivateKey(seq(64, byte(0x20+i)))
		must(t, err)
		keys[id] = k
		d := batch.Device{ID: id, Key: k.PublicKey(), Purpose: v.Purpose, Group: v.Group}
		if id != "dev-x" {
			d.Cohort, d.GroupSeed = v.CohortID, v.GroupSeed
		}
		devs = append(devs, d)
	}
	ep, err := batch.Issue(iss, batch.Params{Epoch: v.Epoch, IssuedAt: v.IssuedAt, TTL: 3600}, devs)
	must(t, err)
	v.RootMessage = ep.Root
	for _, x := range ep.Tickets {
		tk, body, err := wire.ParseTicket(x.Ticket)
		must(t, err)
		k := keys[x.DeviceID]
		ss, err := k.Decapsulate(body.Ciphertext)
		must(t, err)
		m := GroupMember{ID: x.DeviceID, Seed: k.Seed(), Ticket: x.Ticket, TicketBody: tk.Body, SS: ss}
		st, err := accept.NewState(x.DeviceID, k)
		must(t, err)
		r, err := accept.Accept(st, accept.Input{Ticket: x.Ticket, Root: ep.Root, Pins: pins, Now: time.Unix(int64(v.IssuedAt)+10, 0), Cohort: c})
		must(t, err)
		if x.DeviceID == "dev-x" {
			if r.State.Group != nil {
				t.Fatal("a non-member derived a group key")
			}
			v.NonMember = m
			continue
		}
		m.Sealed = body.SealedGroupSeed
		m.SeedKey = kdf(ss, keyschedule.U64(v.Epoch), keyschedule.LabelGroupSeed+v.CohortID+";"+x.DeviceID)
		if k, _ := r.State.Group.KeyOf(v.Epoch); string(k) != string(v.GroupKey) {
			t.Fatalf("%s derived another group key", x.DeviceID)
		}
		v.Members = append(v.Members, m)
	}
	for _, e := range []struct {
		sender string
		ctr    uint64
		pt     string
	}{{"dev-a", 0, "21.5 C from dev-a"}, {"dev-b", 0, "19.0 C from dev-b"}, {"dev-a", 1, "21.6 C from dev-a"}} {
		h := groupenv.Header{Cohort: v.CohortID, Epoch: v.Epoch, Sender: e.sender, Ctr: e.ctr}
		env, err := groupenv.Seal(v.GroupKey, h, []byte(e.pt))
		must(t, err)
		sk, err := groupenv.SenderKey(v.GroupKey, e.sender)
		must(t, err)
		aad, err := cbor.Marshal(map[uint64]any{0: uint64(1), 1: v.CohortID, 2: v.Epoch, 3: e.sender, 4: e.ctr})
		must(t, err)
		v.Envelopes = append(v.Envelopes, GroupEnvVec{Sender: e.sender, Ctr: e.ctr, SenderKey: sk, Nonce: groupenv.Nonce(e.ctr),
			AAD: aad, Plaintext: []byte(e.pt), Envelope: env})
	}
	v.MustReject = groupRejects(t, v)
	return v
}

// groupRejects edits valid inputs one rule at a time.
func groupRejects(t *testing.T, v GroupVectors) []GroupReject {
	env := func(m map[uint64]any) Hex {
		b, err := cbor.Marshal(m)
		must(t, err)
		return b
	}
	ct := make([]byte, 16)
	base := func() map[uint64]any {
		return map[uint64]any{0: uint64(1), 1: v.CohortID, 2: v.Epoch, 3: "dev-a", 4: uint64(0), 5: ct}
	}
	with := func(k uint64, val any) Hex {
		m := base()
		if val == nil {
			delete(m, k)
		} else {
			m[k] = val
		}
		return env(m)
	}
	body, err := wire.ParseTicketBody(v.Members[0].TicketBody)
	must(t, err)
	bodyWith := func(edit func(m map[uint64]any)) Hex {
		m := map[uint64]any{0: uint64(1), 1: body.Aud, 2: body.Epoch, 3: body.IssuedAt, 4: body.TTL, 5: uint64(body.KEMAlg),
			6: body.Ciphertext, 7: body.Prev, 8: body.PKHash, 9: body.Purpose, 10: body.Group, 11: body.Cohort, 12: body.SealedGroupSeed}
		edit(m)
		return env(m)
	}
	return []GroupReject{
		{"group-envelope", "version is 1", with(0, uint64(2))},
		{"group-envelope", "cohort_id is a label: no ';'", with(1, "fleet;a")},
		{"group-envelope", "cohort_id is a label: not empty", with(1, "")},
		{"group-envelope", "epoch >= 1", with(2, uint64(0))},
		{"group-envelope", "sender is a device id", with(3, "-dev")},
		{"group-envelope", "ctr < 2^63", with(4, uint64(1)<<63)},
		{"group-envelope", "ciphertext holds at least the 16-byte tag", with(5, make([]byte, 15))},
		{"group-envelope", "every field is required", with(3, nil)},
		{"group-envelope", "no unknown keys", with(6, uint64(0))},
		{"ticket-body", "11 and 12 are present together: 11 alone", bodyWith(func(m map[uint64]any) { delete(m, 12) })},
		{"ticket-body", "11 and 12 are present together: 12 alone", bodyWith(func(m map[uint64]any) { delete(m, 11) })},
		{"ticket-body", "sealed group seed is 48 bytes", bodyWith(func(m map[uint64]any) { m[12] = make([]byte, 47) })},
		{"ticket-body", "cohort_id is a label", bodyWith(func(m map[uint64]any) { m[11] = "a b" })},
	}
}

// TestGroupMustReject runs the project's decoders over group.json's
// must_reject inputs.
func TestGroupMustReject(t *testing.T) {
	var v GroupVectors
	load(t, groupFile, &v)
	if len(v.MustReject) == 0 {
		t.Fatal("no must_reject inputs")
	}
	for _, r := range v.MustReject {
		var err error
		switch r.Rule {
		case "group-envelope":
			_, err = groupenv.ParseHeader(r.Input)
		case "ticket-body":
			_, err = wire.ParseTicketBody(r.Input)
		default:
			t.Fatalf("unknown rule %q", r.Rule)
		}
		if err == nil {
			t.Errorf("%s accepted: %s", r.Rule, r.Why)
		}
	}
}
