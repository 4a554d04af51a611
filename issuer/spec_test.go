package issuer

import (
	"bytes"
	"testing"
	"time"

	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/wire"
)

// These tests follow schema/PROTOCOL.md's text on the three points where
// the issuer and the spec once disagreed (issue #15).

// rekeyRegistration is a Registration of newKey with the re-key proof of
// §7.5 for the ticket res reports.
func rekeyRegistration(t *testing.T, id string, res *accept.Result, newKey kem.PrivateKey) []byte {
	t.Helper()
	pk := newKey.PublicKey().Bytes()
	r := &wire.Registration{Version: 1, DeviceID: id, KEMAlg: newKey.Scheme().ID(), PublicKey: pk, CreatedAt: 1767225700,
		Rekey: &wire.RekeyProof{Epoch: res.State.Epoch, TicketHash: res.TicketHash, Tag: res.Secrets.RekeyTag(kem.PublicKeyHash(pk))}}
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// §7.5: "A valid re-key for the latest ticket T fixes the key of the next
// epoch: the issuer encapsulates it to the re-keyed key, whether the Status
// of T is processed before or after the Registration." §6 step 1 names
// the same order. The Status still confirms T in either order (§10), and
// both orders give the same outcome.
func TestSpecRekeyAndStatusInEitherOrder(t *testing.T) {
	type outcome struct {
		confirmed uint64
		pinned    []byte
		pkHash    []byte
		rejected  uint64
	}
	run := func(statusFirst bool) outcome {
		e := newEnv(t)
		d := newDevice(t, "dev-1")
		res := firstEpoch(e, d)
		// A device may re-key to another allowed algorithm (§7.5).
		sch, _ := kem.Lookup(kem.MLKEM1024)
		k, err := sch.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		status, reg := d.status(res), rekeyRegistration(t, "dev-1", res, k)
		msgs := [][2]string{{e.iss.topics.Status("dev-1"), string(status)}, {e.iss.topics.Registration("dev-1"), string(reg)}}
		if !statusFirst {
			msgs[0], msgs[1] = msgs[1], msgs[0]
		}
		for _, m := range msgs {
			e.iss.handle(m[0], []byte(m[1]))
		}
		info, _ := e.iss.Device("dev-1")
		var rejected uint64
		for name, v := range e.iss.Counters() {
			if bytes.HasPrefix([]byte(name), []byte("status_rejected:")) || bytes.HasPrefix([]byte(name), []byte("registrations_rejected:")) {
				rejected += v
			}
		}
		e.clock.Set(e.clock.Now().Add(time.Hour))
		e.issue()
		_, _, body := e.latest("dev-1")
		if body.KEMAlg != kem.MLKEM1024 {
			t.Errorf("status first %v: epoch 2 kem_alg %v, want the re-keyed key's", statusFirst, body.KEMAlg)
		}
		// The re-keyed key decapsulates it: a device that kept it (§8.1)
		// has the key of that ticket.
		if _, err := k.Decapsulate(body.Ciphertext); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(body.Prev, res.TicketHash) {
			t.Errorf("status first %v: the chain broke at the re-key", statusFirst)
		}
		return outcome{confirmed: info.ConfirmedEpoch, pinned: info.PinnedKeyHash, pkHash: body.PKHash, rejected: rejected}
	}
	a, b := run(true), run(false)
	for _, o := range []outcome{a, b} {
		if o.confirmed != 1 {
			t.Errorf("the Status of epoch 1 was not confirmed: %+v", o)
		}
		if o.rejected != 0 {
			t.Errorf("a valid message was rejected: %+v", o)
		}
		if !bytes.Equal(o.pinned, o.pkHash) {
			t.Errorf("epoch 2 is not to the re-keyed (now pinned) key: %+v", o)
		}
	}
	// Keys differ between runs (fresh ones); the decisions must not.
	if a.confirmed != b.confirmed || a.rejected != b.rejected {
		t.Fatalf("the order of the two topics decided the outcome: %+v vs %+v", a, b)
	}
}

// §7.4 and §10: "next_alg MUST equal the kem_alg of the ticket the Status
// reports"; otherwise the issuer refuses the Status (next_alg_changed) and
// encapsulates the next epoch to the key the previous ticket used. §8.1:
// the device, seeing that ticket to its current key, replaces its
// announced next key with a fresh one of the ticket's kem_alg, so rotation
// resumes at its next Status.
func TestSpecNextAlgMustEqualTicketKEM(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, "dev-1") // ML-KEM-768
	res := firstEpoch(e, d)
	sch, _ := kem.Lookup(kem.MLKEM1024)
	other, _ := sch.GenerateKey()
	pk := other.PublicKey().Bytes()
	e.iss.handle(e.iss.topics.Status("dev-1"), d.status(res, func(s *wire.Status) {
		s.NextAlg, s.NextPK, s.NextTag = kem.MLKEM1024, pk, res.Secrets.NextKeyTag(kem.PublicKeyHash(pk))
	}))
	if e.counter("status_rejected:next_alg_changed") != 1 {
		t.Fatalf("next_alg other than the ticket's KEM accepted: %v", e.iss.Counters())
	}
	used := kem.PublicKeyHash(d.st.Current.PublicKey().Bytes())
	refused := d.st.Next
	e.clock.Set(e.clock.Now().Add(time.Hour))
	e.issue()
	_, _, body := e.latest("dev-1")
	if !bytes.Equal(body.PKHash, used) || body.KEMAlg != kem.MLKEM768 {
		t.Fatal("after a refused Status, the next epoch must use the key the previous ticket used")
	}
	res2 := e.deliver(d)
	if res2.State.Next == refused || res2.State.Next.Scheme().ID() != kem.MLKEM768 {
		t.Fatal("the device must announce a fresh next key of the ticket's kem_alg")
	}
	e.iss.handle(e.iss.topics.Status("dev-1"), d.status(res2))
	e.clock.Set(e.clock.Now().Add(time.Hour))
	e.issue()
	_, _, body = e.latest("dev-1")
	if !bytes.Equal(body.PKHash, res2.State.Next.PublicKey().Hash()) {
		t.Fatal("rotation did not resume")
	}
}

// §8.5 and §10: a device republishes its last acceptance after a restart
// (after a stale report it sent later). When newer tickets have replaced
// that one meanwhile, the issuer ignores it as older; it is not a
// stale_status.
func TestSpecRestartRepublishNotStale(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, "dev-1")
	res := firstEpoch(e, d)
	topic := e.iss.topics.Status("dev-1")
	acceptance := d.status(res)
	e.iss.handle(topic, acceptance)
	stale := d.status(res, func(s *wire.Status) {
		s.State, s.Reason, s.Confirm, s.NextAlg, s.NextPK, s.NextTag = wire.StateStale, 12, nil, 0, nil, nil
	})
	e.iss.handle(topic, stale)
	e.issue()
	e.issue()
	// The restarted device: its last Status, then its last acceptance.
	e.iss.handle(topic, stale)
	e.iss.handle(topic, acceptance)
	if n := e.counter("status_rejected:stale_status"); n != 0 {
		t.Fatalf("restart republish logged as stale_status: %v", e.iss.Counters())
	}
	if e.counter("statuses_older") != 1 || e.counter("statuses_duplicate") != 1 {
		t.Fatalf("counters %v", e.iss.Counters())
	}
}
