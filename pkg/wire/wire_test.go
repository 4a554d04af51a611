package wire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
)

// hx decodes hex with spaces, for golden bytes written field by field.
func hx(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func seq(n int, start byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

func devicePK(t testing.TB) []byte {
	t.Helper()
	s, _ := kem.Lookup(kem.MLKEM1024)
	k, err := s.NewPrivateKey(seq(64, 0))
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey().Bytes()
}

func testRegistration(t testing.TB) *Registration {
	return &Registration{Version: 1, DeviceID: "dev-01", KEMAlg: kem.MLKEM1024, PublicKey: devicePK(t), CreatedAt: 1700000000}
}

// TestRegistrationGolden pins every byte of a Registration
// (schema/entropykem.cddl: registration).
func TestRegistrationGolden(t *testing.T) {
	r := testRegistration(t)
	want := cat(
		hx(t, "a5"),                      // map, 5 pairs
		hx(t, "00 01"),                   // 0: version = 1
		hx(t, "01 66 6465762d3031"),      // 1: device_id = text(6) "dev-01"
		hx(t, "02 18 42"),                // 2: kem_alg = 0x0042 ML-KEM-1024, shortest form (uint8)
		hx(t, "03 59 0620"), r.PublicKey, // 3: public key = bytes(1568)
		hx(t, "04 1a 6553f100"), // 4: created_at = 1700000000 (uint32)
	)
	got, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("encoding differs from golden bytes:\n got %x\nwant %x", got[:32], want[:32])
	}
	back, err := ParseRegistration(want)
	if err != nil {
		t.Fatal(err)
	}
	if back.DeviceID != r.DeviceID || back.KEMAlg != r.KEMAlg || !bytes.Equal(back.PublicKey, r.PublicKey) || back.CreatedAt != r.CreatedAt || back.Rekey != nil {
		t.Fatalf("decoded %+v", back)
	}
	// With a re-key proof: key 5 holds a map of three fields.
	r.Rekey = &RekeyProof{Epoch: 7, TicketHash: seq(32, 0x40), Tag: seq(32, 0x80)}
	want = cat(
		hx(t, "a6"), want[1:], // map, 6 pairs; fields 0..4 as above
		hx(t, "05 a3"),                       // 5: rekey = map, 3 pairs
		hx(t, "00 07"),                       //    0: epoch = 7
		hx(t, "01 5820"), r.Rekey.TicketHash, // 1: ticket_hash = bytes(32)
		hx(t, "02 5820"), r.Rekey.Tag, //        2: tag = bytes(32)
	)
	if got, _ = r.Marshal(); !bytes.Equal(got, want) {
		t.Fatal("registration with re-key proof differs from golden bytes")
	}
	if _, err := ParseRegistration(want); err != nil {
		t.Fatal(err)
	}
}

// TestRegistrationReenrollGolden pins a re-enrollment (PROTOCOL.md §7.6):
// key 6 is true, after created_at; false is never on the wire, and a
// re-enrollment carries no re-key proof.
func TestRegistrationReenrollGolden(t *testing.T) {
	r := testRegistration(t)
	plain, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	r.Reenroll = true
	want := cat(
		hx(t, "a6"), plain[1:], // map, 6 pairs; fields 0..4 as in TestRegistrationGolden
		hx(t, "06 f5"), //         6: reenroll = true (simple value 21)
	)
	got, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("re-enrollment differs from golden bytes:\n got %x\nwant %x", got[len(got)-8:], want[len(want)-8:])
	}
	back, err := ParseRegistration(want)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Reenroll || back.Rekey != nil || !bytes.Equal(back.PublicKey, r.PublicKey) {
		t.Fatalf("decoded %+v", back)
	}
	for _, c := range []struct {
		name string
		in   []byte
	}{
		{"reenroll false on the wire", cat(hx(t, "a6"), plain[1:], hx(t, "06 f4"))},
		{"reenroll not a bool", cat(hx(t, "a6"), plain[1:], hx(t, "06 01"))},
	} {
		if _, err := ParseRegistration(c.in); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", c.name, err)
		}
	}
	r.Rekey = &RekeyProof{Epoch: 7, TicketHash: seq(32, 0x40), Tag: seq(32, 0x80)}
	if _, err := r.Marshal(); !errors.Is(err, ErrMalformed) {
		t.Errorf("re-enrollment with a re-key proof encoded: %v", err)
	}
}

func testBody() *TicketBody {
	return &TicketBody{
		Version: 1, Aud: "dev-01", Epoch: 3, IssuedAt: 1700000000, TTL: 600,
		KEMAlg: kem.MLKEM1024, Ciphertext: seq(1568, 1), Prev: seq(32, 0x20), PKHash: seq(32, 0x60),
		Purpose: "telemetry", Group: "plant-7",
	}
}

// TestFastEncodersMatchMarshal holds TicketBody.Marshal and Ticket.Marshal,
// written with cbor's Append functions, to cbor.Marshal's reflection-based
// core deterministic encoding, across every head-size boundary the fields
// can reach and for random values.
func TestFastEncodersMatchMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	nums := func(limit uint64) []uint64 {
		out := []uint64{limit}
		for _, v := range []uint64{1, 23, 24, 255, 256, 65535, 65536, 1<<32 - 1, 1 << 32} {
			if v <= limit {
				out = append(out, v)
			}
		}
		for range 8 {
			out = append(out, 1+r.Uint64N(limit))
		}
		return out
	}
	label := func(n int) string { return strings.Repeat("x", n) }
	body := testBody()
	check := func(name string, m interface{ Marshal() ([]byte, error) }) {
		t.Helper()
		fast, err := m.Marshal()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		generic, err := cbor.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fast, generic) {
			t.Fatalf("%s:\n   fast %x\ngeneric %x", name, fast, generic)
		}
	}
	for _, e := range nums(MaxEpoch) {
		for _, ttl := range nums(MaxTTL) {
			b := *body
			b.Epoch, b.TTL, b.IssuedAt = e, ttl, r.Uint64N(MaxTime+1)
			check("body", &b)
		}
	}
	for _, n := range []int{1, 23, 24, MaxIDLen} {
		for _, l := range []int{1, 23, 24, MaxLabelLen} {
			b := *body
			b.Aud, b.Purpose, b.Group = label(n), label(l), label(MaxLabelLen+1-l)
			check("body labels", &b)
		}
	}
	for _, id := range kem.IDs() {
		s, _ := kem.Lookup(id)
		b := *body
		b.KEMAlg, b.Ciphertext = id, seq(s.CiphertextSize(), 7)
		check("body "+id.String(), &b)
	}
	for _, l := range []int{1, 23, 24, MaxLabelLen} {
		b := *body
		b.Cohort, b.SealedGroupSeed = label(l), seq(SealedGroupSeedSize, 9)
		check("body cohort", &b)
	}
	enc, _ := body.Marshal()
	for _, size := range nums(1<<63 - 1) {
		for _, plen := range []int{0, 1, 23, 24, MaxProofLen} {
			path := make([][]byte, plen)
			for i := range path {
				path[i] = seq(32, byte(i))
			}
			check("ticket", &Ticket{Version: 1, Body: enc, LeafIndex: r.Uint64N(size), TreeSize: size, Path: path})
		}
	}
}

// TestTicketBodyGroupFields checks the cohort fields 11 and 12: present
// together, a label and exactly 48 bytes, and that the largest body with
// them still fits MaxTicketBody.
func TestTicketBodyGroupFields(t *testing.T) {
	big := testBody()
	big.Aud, big.Purpose, big.Group = strings.Repeat("a", MaxIDLen), strings.Repeat("p", MaxLabelLen), strings.Repeat("g", MaxLabelLen)
	big.Epoch, big.IssuedAt = MaxEpoch, MaxTime
	big.Cohort, big.SealedGroupSeed = strings.Repeat("c", MaxLabelLen), seq(SealedGroupSeedSize, 9)
	enc, err := big.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if len(enc) > MaxTicketBody {
		t.Fatalf("largest body with a group seed is %d bytes, over %d", len(enc), MaxTicketBody)
	}
	got, err := ParseTicketBody(enc)
	if err != nil || got.Cohort != big.Cohort || !bytes.Equal(got.SealedGroupSeed, big.SealedGroupSeed) {
		t.Fatalf("round trip: %v", err)
	}
	for name, edit := range map[string]func(*TicketBody){
		"cohort alone":  func(b *TicketBody) { b.Cohort = "c1" },
		"seed alone":    func(b *TicketBody) { b.SealedGroupSeed = seq(SealedGroupSeedSize, 1) },
		"short seed":    func(b *TicketBody) { b.Cohort, b.SealedGroupSeed = "c1", seq(SealedGroupSeedSize-1, 1) },
		"cohort with ;": func(b *TicketBody) { b.Cohort, b.SealedGroupSeed = "c;1", seq(SealedGroupSeedSize, 1) },
	} {
		b := testBody()
		edit(b)
		if _, err := b.Marshal(); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Marshal gave %v, want ErrMalformed", name, err)
		}
		generic, err := cbor.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseTicketBody(generic); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Parse gave %v, want ErrMalformed", name, err)
		}
	}
}

// TestTicketDraft checks that a Ticket built around its body in place is
// byte-for-byte Ticket.Marshal's, whatever room was reserved for the proof,
// and that Finish validates like Marshal.
func TestTicketDraft(t *testing.T) {
	body := testBody()
	enc, _ := body.Marshal()
	for _, reserve := range []int{0, 1, 10, MaxProofLen} {
		for _, plen := range []int{0, 1, 10, MaxProofLen} {
			d, err := DraftTicket(body, reserve)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(d.Body(), enc) {
				t.Fatal("draft body differs from TicketBody.Marshal")
			}
			path := make([][]byte, plen)
			for i := range path {
				path[i] = seq(32, byte(i))
			}
			got, err := d.Finish(5, 1<<40, path)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := (&Ticket{Version: Version, Body: enc, LeafIndex: 5, TreeSize: 1 << 40, Path: path}).Marshal()
			if !bytes.Equal(got, want) {
				t.Fatalf("reserve %d, path %d: draft ticket differs from Ticket.Marshal", reserve, plen)
			}
		}
	}
	// Filling the ciphertext slot gives the body with that ciphertext.
	slot := *body
	slot.Ciphertext = make([]byte, len(body.Ciphertext))
	d, err := DraftTicket(&slot, 4)
	if err != nil {
		t.Fatal(err)
	}
	if n := copy(d.Ciphertext(), body.Ciphertext); n != len(body.Ciphertext) {
		t.Fatalf("ciphertext slot of %d bytes", n)
	}
	if !bytes.Equal(d.Body(), enc) {
		t.Fatal("body with a filled ciphertext slot differs from TicketBody.Marshal")
	}
	d, _ = DraftTicket(body, 1)
	if _, err := d.Finish(3, 3, nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("leaf index = tree size: %v", err)
	}
	if _, err := d.Finish(0, 1, [][]byte{seq(31, 0)}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short path hash: %v", err)
	}
	bad := *body
	bad.Aud = "no spaces allowed"
	if _, err := DraftTicket(&bad, 1); !errors.Is(err, ErrMalformed) {
		t.Fatalf("invalid body drafted: %v", err)
	}
}

func testKeyRotation(t testing.TB) *KeyRotation {
	t.Helper()
	k, err := signature.NewKeyFromSeed(signature.MLDSA87, seq(32, 0))
	if err != nil {
		t.Fatal(err)
	}
	return &KeyRotation{Version: 1, FromEpoch: 12, NewAlg: signature.MLDSA87, NewKey: k.Public().Bytes(), IssuedAt: 1700000000}
}

func TestKeyRotation(t *testing.T) {
	good := testKeyRotation(t)
	b, err := good.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > MaxKeyRotation {
		t.Fatalf("ML-DSA-87 key rotation is %d bytes, over MaxKeyRotation %d", len(b), MaxKeyRotation)
	}
	// {0: 1, 1: 12, 2: -50, 3: h'…' (2592 bytes), 4: 1700000000}
	if want := hx(t, "a5 0001 010c 023831 03590a20"); !bytes.Equal(b[:len(want)], want) {
		t.Fatalf("key rotation head %x, want %x", b[:len(want)], want)
	}
	back, err := ParseKeyRotation(b)
	if err != nil || back.FromEpoch != 12 || back.NewAlg != signature.MLDSA87 || !bytes.Equal(back.NewKey, good.NewKey) {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	for name, mod := range map[string]func(*KeyRotation){
		"epoch 0":               func(k *KeyRotation) { k.FromEpoch = 0 },
		"unknown alg":           func(k *KeyRotation) { k.NewAlg = -7 },
		"ML-DSA-65 size for 87": func(k *KeyRotation) { k.NewKey = k.NewKey[:1952] },
		"version 2":             func(k *KeyRotation) { k.Version = 2 },
	} {
		k := *good
		mod(&k)
		if _, err := k.Marshal(); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Marshal: %v", name, err)
		}
		raw, err := cbor.Marshal(&k)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseKeyRotation(raw); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Parse: %v", name, err)
		}
	}
}

// TestTicketBodyGolden pins every byte of a ticket body
// (schema/entropykem.cddl: ticket-body).
func TestTicketBodyGolden(t *testing.T) {
	b := testBody()
	want := cat(
		hx(t, "ab"),                       // map, 11 pairs
		hx(t, "00 01"),                    // 0: version = 1
		hx(t, "01 66 6465762d3031"),       // 1: aud = text(6) "dev-01"
		hx(t, "02 03"),                    // 2: epoch = 3
		hx(t, "03 1a 6553f100"),           // 3: issued_at = 1700000000
		hx(t, "04 19 0258"),               // 4: ttl_s = 600
		hx(t, "05 18 42"),                 // 5: kem_alg = 0x0042 ML-KEM-1024, shortest form (uint8)
		hx(t, "06 59 0620"), b.Ciphertext, // 6: ct = bytes(1568)
		hx(t, "07 5820"), b.Prev, //          7: prev = bytes(32)
		hx(t, "08 5820"), b.PKHash, //        8: pk_hash = bytes(32)
		hx(t, "09 69 74656c656d65747279"), // 9: purpose = text(9) "telemetry"
		hx(t, "0a 67 706c616e742d37"),     //     10: group = text(7) "plant-7"
	)
	got, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("encoding differs from golden bytes:\n got %x\nwant %x", got[:40], want[:40])
	}
	back, err := ParseTicketBody(want)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := back.Marshal()
	if !bytes.Equal(again, want) {
		t.Fatal("decode→encode is not byte-identical")
	}
}

func TestTicketRoundTrip(t *testing.T) {
	body, _ := testBody().Marshal()
	tk := &Ticket{Version: 1, Body: body, LeafIndex: 2, TreeSize: 5, Path: [][]byte{seq(32, 1), seq(32, 2), seq(32, 3)}}
	b, err := tk.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, gotBody, err := ParseTicket(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.LeafIndex != 2 || got.TreeSize != 5 || len(got.Path) != 3 || gotBody.Epoch != 3 {
		t.Fatalf("decoded %+v", got)
	}
	// A tree of one: an empty path, encoded as an empty array.
	tk = &Ticket{Version: 1, Body: body, LeafIndex: 0, TreeSize: 1, Path: [][]byte{}}
	if b, err = tk.Marshal(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ParseTicket(b); err != nil {
		t.Fatal(err)
	}
}

// mutate returns a copy of a message's CBOR map, decoded generically, with
// f applied, re-encoded deterministically.
func mutate(t *testing.T, msg []byte, f func(m map[uint64]any)) []byte {
	t.Helper()
	var m map[uint64]any
	if err := fxUnmarshal(msg, &m); err != nil {
		t.Fatal(err)
	}
	f(m)
	b, err := cbor.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStrictDecoding(t *testing.T) {
	reg, _ := testRegistration(t).Marshal()
	body, _ := testBody().Marshal()
	cases := []struct {
		name  string
		input []byte
		parse func([]byte) error
	}{
		{"unknown key", mutate(t, reg, func(m map[uint64]any) { m[9] = uint64(1) }), parseReg},
		{"missing key", mutate(t, reg, func(m map[uint64]any) { delete(m, 4) }), parseReg},
		{"version 2", mutate(t, reg, func(m map[uint64]any) { m[0] = uint64(2) }), parseReg},
		{"version 0", mutate(t, reg, func(m map[uint64]any) { m[0] = uint64(0) }), parseReg},
		{"unknown kem", mutate(t, reg, func(m map[uint64]any) { m[2] = uint64(0x0010) }), parseReg},
		{"short key", mutate(t, reg, func(m map[uint64]any) { m[3] = seq(1567, 0) }), parseReg},
		{"key as text", mutate(t, reg, func(m map[uint64]any) { m[3] = string(seq(10, 'a')) }), parseReg},
		{"bad id slash", mutate(t, reg, func(m map[uint64]any) { m[1] = "a/b" }), parseReg},
		{"bad id plus", mutate(t, reg, func(m map[uint64]any) { m[1] = "a+" }), parseReg},
		{"bad id leading dash", mutate(t, reg, func(m map[uint64]any) { m[1] = "-a" }), parseReg},
		{"id too long", mutate(t, reg, func(m map[uint64]any) { m[1] = strings.Repeat("a", 65) }), parseReg},
		{"negative time", mutate(t, reg, func(m map[uint64]any) { m[4] = int64(-1) }), parseReg},
		{"time past 9999", mutate(t, reg, func(m map[uint64]any) { m[4] = uint64(MaxTime + 1) }), parseReg},
		{"empty rekey", mutate(t, reg, func(m map[uint64]any) { m[5] = map[uint64]any{} }), parseReg},
		{"trailing byte", append(bytes.Clone(reg), 0x00), parseReg},
		{"truncated", reg[:len(reg)-1], parseReg},
		{"empty", nil, parseReg},
		{"tagged", append([]byte{0xd8, 0x18}, reg...), parseReg},
		{"array not map", hx(t, "8100"), parseReg},
		{"too large", append(bytes.Clone(reg), make([]byte, MaxRegistration)...), parseReg},
		{"duplicate key", dupKey(reg), parseReg},
		{"indefinite map", indefinite(reg), parseReg},
		{"non-minimal int", nonMinimal(t), parseReg},
		{"epoch 0", mutate(t, body, func(m map[uint64]any) { m[2] = uint64(0) }), parseBody},
		{"epoch 2^53", mutate(t, body, func(m map[uint64]any) { m[2] = uint64(MaxEpoch + 1) }), parseBody},
		{"ttl 0", mutate(t, body, func(m map[uint64]any) { m[4] = uint64(0) }), parseBody},
		{"ttl too long", mutate(t, body, func(m map[uint64]any) { m[4] = uint64(MaxTTL + 1) }), parseBody},
		{"ct of 768", mutate(t, body, func(m map[uint64]any) { m[6] = seq(1088, 0) }), parseBody},
		{"prev short", mutate(t, body, func(m map[uint64]any) { m[7] = seq(31, 0) }), parseBody},
		{"pk_hash long", mutate(t, body, func(m map[uint64]any) { m[8] = seq(33, 0) }), parseBody},
		{"purpose with ;", mutate(t, body, func(m map[uint64]any) { m[9] = "a;b" }), parseBody},
		{"group with space", mutate(t, body, func(m map[uint64]any) { m[10] = "a b" }), parseBody},
		{"group empty", mutate(t, body, func(m map[uint64]any) { m[10] = "" }), parseBody},
		{"purpose non-ascii", mutate(t, body, func(m map[uint64]any) { m[9] = "é" }), parseBody},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.parse(c.input)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
		})
	}
	if err := parseReg(append(bytes.Clone(reg), make([]byte, MaxRegistration)...)); !errors.Is(err, cbor.ErrTooLarge) {
		t.Fatalf("oversize: got %v, want ErrTooLarge", err)
	}
}

func parseReg(b []byte) error  { _, err := ParseRegistration(b); return err }
func parseBody(b []byte) error { _, err := ParseTicketBody(b); return err }

// dupKey repeats key 0 (version) at the end of a map and bumps its count.
func dupKey(msg []byte) []byte {
	b := bytes.Clone(msg)
	b[0]++
	return append(b, 0x00, 0x01)
}

// indefinite turns a definite-length map (header 0xa0+n) into an
// indefinite one.
func indefinite(msg []byte) []byte {
	return append(append([]byte{0xbf}, msg[1:]...), 0xff)
}

// nonMinimal encodes created_at 1 in 9 bytes instead of 1.
func nonMinimal(t *testing.T) []byte {
	r := testRegistration(t)
	r.CreatedAt = 1
	b, _ := r.Marshal()
	i := bytes.LastIndex(b, []byte{0x04, 0x01})
	return cat(b[:i], hx(t, "04 1b 0000000000000001"), b[i+2:])
}

func TestStatusRules(t *testing.T) {
	prev := uint64(2)
	ok := func() *Status {
		return &Status{Version: 1, DeviceID: "dev-01", Epoch: 3, State: StateOK, Time: 1700000000, Seq: 4,
			TicketHash: seq(32, 0), Confirm: seq(32, 1), NextAlg: kem.MLKEM1024, NextPK: devicePK(t), NextTag: seq(32, 2)}
	}
	for _, s := range []*Status{
		ok(),
		func() *Status { s := ok(); s.State, s.PrevEpoch = StateGap, &prev; return s }(),
		{Version: 1, DeviceID: "dev-01", Epoch: 3, State: StateRejected, Reason: 4, Time: 1, TicketHash: seq(32, 0)},
		{Version: 1, DeviceID: "dev-01", State: StateRejected, Reason: 1, Time: 1},
		{Version: 1, DeviceID: "dev-01", Epoch: 3, State: StateStale, Reason: 12, Time: 1, TicketHash: seq(32, 0)},
	} {
		b, err := s.Marshal()
		if err != nil {
			t.Fatalf("%v: %v", s.State, err)
		}
		back, err := ParseStatus(b)
		if err != nil {
			t.Fatalf("%v: %v", s.State, err)
		}
		again, _ := back.Marshal()
		if !bytes.Equal(again, b) {
			t.Fatalf("%v: not byte-identical", s.State)
		}
	}
	bad := []struct {
		name string
		f    func(s *Status)
	}{
		{"ok without confirm", func(s *Status) { s.Confirm = nil }},
		{"ok without next key", func(s *Status) { s.NextPK = nil }},
		{"ok with reason", func(s *Status) { s.Reason = 3 }},
		{"ok with prev_epoch", func(s *Status) { s.PrevEpoch = &prev }},
		{"gap without prev_epoch", func(s *Status) { s.State = StateGap }},
		{"gap prev_epoch not below", func(s *Status) { s.State, s.PrevEpoch = StateGap, &s.Epoch }},
		{"rejected with confirm", func(s *Status) { s.State, s.Reason = StateRejected, 3 }},
		{"rejected without reason", func(s *Status) {
			s.State, s.Confirm, s.NextAlg, s.NextPK, s.NextTag = StateRejected, nil, 0, nil, nil
		}},
		{"unknown state", func(s *Status) { s.State = 5 }},
		{"epoch 0 with hash", func(s *Status) { s.Epoch = 0 }},
		{"next key wrong size", func(s *Status) { s.NextPK = s.NextPK[:100] }},
		{"reason too big", func(s *Status) {
			s.State, s.Reason, s.Confirm, s.NextAlg, s.NextPK, s.NextTag = StateRejected, 70000, nil, 0, nil, nil
		}},
	}
	for _, c := range bad {
		s := ok()
		c.f(s)
		if _, err := s.Marshal(); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Marshal: got %v, want ErrMalformed", c.name, err)
		}
		raw, err := cbor.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseStatus(raw); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Parse: got %v, want ErrMalformed", c.name, err)
		}
	}
}

func TestEpochRootAndAnnouncements(t *testing.T) {
	r := &EpochRoot{Version: 1, Epoch: 9, IssuedAt: 1700000000, TreeSize: 3, Root: seq(32, 7)}
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseEpochRoot(b); err != nil {
		t.Fatal(err)
	}
	r.TreeSize = 0
	if _, err := r.Marshal(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("tree size 0: %v", err)
	}
	// A streamed epoch: 2^h-leaf chunks, as many roots as chunks, 2..64.
	full := make([][]byte, MaxChunks+1)
	for i := range full {
		full[i] = seq(32, byte(i))
	}
	for _, c := range []struct {
		size, h uint64
		roots   int
		ok      bool
	}{
		{3, 1, 2, true}, {4, 1, 2, true}, {5, 1, 3, true}, {64 * 8, 3, 64, true},
		{3, 1, 3, false}, {3, 2, 1, false}, {3, 0, 2, false}, {3, 64, 2, false},
		{65 * 8, 3, 65, false}, {3, 1, 0, false},
	} {
		r := &EpochRoot{Version: 1, Epoch: 9, IssuedAt: 5, TreeSize: c.size, Root: seq(32, 7), ChunkHeight: c.h, ChunkRoots: full[:c.roots]}
		b, err := r.Marshal()
		if (err == nil) != c.ok {
			t.Fatalf("size %d height %d roots %d: %v", c.size, c.h, c.roots, err)
		}
		if c.ok {
			if len(b) > MaxEpochRoot {
				t.Fatalf("%d bytes", len(b))
			}
			if got, err := ParseEpochRoot(b); err != nil || !got.Chunked() {
				t.Fatalf("parse: %v", err)
			}
		}
	}
	e := &EpochInfo{Version: 1, Epoch: 9, IssuedAt: 5, PeriodS: 60, NextAt: 65}
	if b, err = e.Marshal(); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseEpochInfo(b); err != nil {
		t.Fatal(err)
	}
	o := &Online{Version: 1, Online: true, Since: 5}
	if b, err = o.Marshal(); err != nil {
		t.Fatal(err)
	}
	if got, err := ParseOnline(b); err != nil || !got.Online {
		t.Fatal(got, err)
	}
}

func TestTopics(t *testing.T) {
	tp, err := NewTopics(DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	if got := tp.Ticket("dev-1"); got != "ekem/v1/ticket/dev-1" {
		t.Fatal(got)
	}
	if id, err := tp.DeviceOf("reg", "ekem/v1/reg/dev-1"); err != nil || id != "dev-1" {
		t.Fatal(id, err)
	}
	for _, bad := range []string{"ekem/v1/reg/", "ekem/v1/reg/a/b", "ekem/v1/status/a", "ekem/v1/reg/-x"} {
		if _, err := tp.DeviceOf("reg", bad); err == nil {
			t.Errorf("DeviceOf(%q) accepted", bad)
		}
	}
	if e, err := tp.EpochOf("ekem/v1/root/42"); err != nil || e != 42 {
		t.Fatal(e, err)
	}
	for _, bad := range []string{"ekem/v1/root/042", "ekem/v1/root/0", "ekem/v1/root/x", "ekem/v1/root/9007199254740992"} {
		if _, err := tp.EpochOf(bad); err == nil {
			t.Errorf("EpochOf(%q) accepted", bad)
		}
	}
	for _, bad := range []string{"", "a/#", "a/+/b", "/a", "a/", "$SYS"} {
		if _, err := NewTopics(bad); err == nil {
			t.Errorf("NewTopics(%q) accepted", bad)
		}
	}
}

// TestTopicParse: every builder's topic parses back to its kind and level,
// and topics outside the table, or with a level the builder would not
// make, do not.
func TestTopicParse(t *testing.T) {
	tp, _ := NewTopics("site/a")
	kid := []byte{1, 2, 3, 4, 5, 6, 7, 0xab}
	for topic, want := range map[string]Topic{
		tp.Registration("dev-1"): {Kind: TopicRegistration, DeviceID: "dev-1"},
		tp.Ticket("dev-1"):       {Kind: TopicTicket, DeviceID: "dev-1"},
		tp.Status("d.2_x"):       {Kind: TopicStatus, DeviceID: "d.2_x"},
		tp.Root(7):               {Kind: TopicRoot, Epoch: 7},
		tp.Root(MaxEpoch):        {Kind: TopicRoot, Epoch: MaxEpoch},
		tp.Epoch():               {Kind: TopicEpoch},
		tp.Online():              {Kind: TopicOnline},
		tp.IssuerKey(kid):        {Kind: TopicIssuerKey, KID: kid},
	} {
		got, err := tp.Parse(topic)
		if err != nil || got.Kind != want.Kind || got.DeviceID != want.DeviceID || got.Epoch != want.Epoch || !bytes.Equal(got.KID, want.KID) {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", topic, got, err, want)
		}
	}
	for topic, kind := range map[string]TopicKind{
		"site/a/reg/":      TopicRegistration,
		"site/a/reg/a/b":   TopicRegistration,
		"site/a/ticket/-x": TopicTicket,
		"site/a/status/" + strings.Repeat("a", 65): TopicStatus,
		"site/a/root/0":                          TopicRoot,
		"site/a/root/07":                         TopicRoot,
		"site/a/root/x":                          TopicRoot,
		"site/a/root/9007199254740992":           TopicRoot,
		"site/a/issuer/key/0102030405060708090a": TopicIssuerKey,
		"site/a/issuer/key/01020304050607AB":     TopicIssuerKey,
		"site/a/issuer/key/":                     TopicIssuerKey,
		"site/a/epoch/x":                         TopicUnknown,
		"site/a/issuer/online/x":                 TopicUnknown,
		"site/a/other":                           TopicUnknown,
		"site/b/reg/dev-1":                       TopicUnknown,
		"site/a":                                 TopicUnknown,
		"$SYS/broker/uptime":                     TopicUnknown,
	} {
		got, err := tp.Parse(topic)
		if !errors.Is(err, ErrTopic) || got.Kind != kind {
			t.Errorf("Parse(%q) = %+v, %v; want kind %v and ErrTopic", topic, got, err, kind)
		}
	}
}
