package wire

import (
	"bytes"
	"testing"

	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/kem"
)

// seeds returns a valid message of every kind, so each fuzz target starts
// from every message shape.
func seeds(t testing.TB) [][]byte {
	reg, _ := testRegistration(t).Marshal()
	re := testRegistration(t)
	re.Reenroll = true
	reenroll, _ := re.Marshal()
	body, _ := testBody().Marshal()
	gb := testBody()
	gb.Cohort, gb.SealedGroupSeed = "fleet-a", seq(SealedGroupSeedSize, 4)
	groupBody, _ := gb.Marshal()
	tk, _ := (&Ticket{Version: 1, Body: body, LeafIndex: 1, TreeSize: 3, Path: [][]byte{seq(32, 1), seq(32, 2)}}).Marshal()
	root, _ := (&EpochRoot{Version: 1, Epoch: 3, IssuedAt: 5, TreeSize: 3, Root: seq(32, 9)}).Marshal()
	chunked, _ := (&EpochRoot{Version: 1, Epoch: 3, IssuedAt: 5, TreeSize: 3, Root: seq(32, 9), ChunkHeight: 1,
		ChunkRoots: [][]byte{seq(32, 1), seq(32, 2)}}).Marshal()
	st, _ := (&Status{Version: 1, DeviceID: "d", Epoch: 3, State: StateOK, Time: 1, Seq: 1, TicketHash: seq(32, 0),
		Confirm: seq(32, 1), NextAlg: kem.MLKEM1024, NextPK: devicePK(t), NextTag: seq(32, 2)}).Marshal()
	rej, _ := (&Status{Version: 1, DeviceID: "d", State: StateRejected, Reason: 3, Time: 1}).Marshal()
	info, _ := (&EpochInfo{Version: 1, Epoch: 3, IssuedAt: 5, PeriodS: 60, NextAt: 65}).Marshal()
	on, _ := (&Online{Version: 1, Online: true, Since: 5}).Marshal()
	kr, _ := testKeyRotation(t).Marshal()
	return [][]byte{reg, reenroll, body, groupBody, tk, root, chunked, st, rej, info, on, kr}
}

// roundTrip is the property every decoder must have: never panic, and an
// accepted input re-encodes to the identical bytes.
func roundTrip[T interface{ Marshal() ([]byte, error) }](t *testing.T, in []byte, parse func([]byte) (T, error)) {
	m, err := parse(in)
	if err != nil {
		return
	}
	out, err := m.Marshal()
	if err != nil {
		t.Fatalf("accepted input does not re-encode: %v", err)
	}
	if !bytes.Equal(out, in) {
		t.Fatalf("decode→encode changed the bytes:\n in %x\nout %x", in, out)
	}
	// The issuer's hand-written encoders (Ticket, TicketBody) must agree
	// with the reflection-based one the other messages use.
	if generic, err := cbor.Marshal(m); err != nil || !bytes.Equal(generic, out) {
		t.Fatalf("Marshal and cbor.Marshal differ (%v):\n    Marshal %x\ncbor.Marshal %x", err, out, generic)
	}
}

func fuzz[T interface{ Marshal() ([]byte, error) }](f *testing.F, parse func([]byte) (T, error)) {
	for _, s := range seeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) { roundTrip(t, in, parse) })
}

func FuzzRegistration(f *testing.F) { fuzz(f, ParseRegistration) }
func FuzzTicketBody(f *testing.F)   { fuzz(f, ParseTicketBody) }
func FuzzEpochRoot(f *testing.F)    { fuzz(f, ParseEpochRoot) }
func FuzzStatus(f *testing.F)       { fuzz(f, ParseStatus) }
func FuzzEpochInfo(f *testing.F)    { fuzz(f, ParseEpochInfo) }
func FuzzOnline(f *testing.F)       { fuzz(f, ParseOnline) }
func FuzzKeyRotation(f *testing.F)  { fuzz(f, ParseKeyRotation) }

func FuzzTicket(f *testing.F) {
	fuzz(f, func(b []byte) (*Ticket, error) {
		t, _, err := ParseTicket(b)
		return t, err
	})
}

// FuzzTopicParse: Parse never panics, and a topic it accepts is exactly
// what the builder of its kind makes of the parsed level.
func FuzzTopicParse(f *testing.F) {
	tp, _ := NewTopics(DefaultPrefix)
	for _, s := range []string{tp.Registration("dev-1"), tp.Root(3), tp.IssuerKey(make([]byte, 8)), tp.Epoch(), tp.Online(), "ekem/v1/root/01"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		p, err := tp.Parse(topic)
		if err != nil {
			return
		}
		var again string
		switch p.Kind {
		case TopicRegistration:
			again = tp.Registration(p.DeviceID)
		case TopicTicket:
			again = tp.Ticket(p.DeviceID)
		case TopicStatus:
			again = tp.Status(p.DeviceID)
		case TopicRoot:
			again = tp.Root(p.Epoch)
		case TopicEpoch:
			again = tp.Epoch()
		case TopicOnline:
			again = tp.Online()
		case TopicIssuerKey:
			again = tp.IssuerKey(p.KID)
		default:
			t.Fatalf("Parse(%q) accepted kind %v", topic, p.Kind)
		}
		if again != topic {
			t.Fatalf("Parse(%q) = %+v, which builds %q", topic, p, again)
		}
	})
}
