package integration

// Bad input on every topic each role reads, from the broker accounts that
// can write those topics (the ACL allows nobody else), against a real
// Mosquitto with the shipped broker-config:
//
//   - the issuer reads reg/+ and status/+: written by each device's own
//     account, so a hostile device (or a client with its password) is the
//     attacker;
//   - a device reads ticket/{id} and root/+ (and may read epoch): written only
//     by the issuer's account, so the attacker is a "malicious issuer" that
//     has the issuer's broker password but not its ML-DSA signing key.
//
// Each test shows the named rejection (counter and reason), that the role
// keeps running (the next real epoch works for everyone), and that its
// stored state did not change.

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/entropykem/entropykem/device"
	ekissuer "github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// nearBrokerLimit is a payload just under the shipped message_size_limit
// (16384 bytes, broker-config/mosquitto.conf): the largest a client can
// make the broker deliver.
const nearBrokerLimit = 16384 - 64

// garbage is bytes that are no CBOR map of ours (a CBOR text string
// header followed by junk).
var garbage = []byte("\x7f\xffnot-cbor\x00\x01\x02garbage")

// TestHostileInputToIssuer publishes, from dev-1's own broker account (a
// second client with its password), every kind of bad Registration and
// Status on reg/dev-1 and status/dev-1.
func TestHostileInputToIssuer(t *testing.T) {
	const victim, other = "dev-1", "dev-2"
	ids := []string{victim, other}
	f := newSysFleet(t, ids...)
	iss := f.startIssuer(t, nil)
	f.startDevices(t, ids...)
	f.issue(t, 1)
	f.waitEpoch(t, 1, ids...)

	before := map[string]ekissuer.DeviceInfo{}
	for _, id := range ids {
		before[id] = f.deviceInfo(t, id)
	}
	genuine := f.devices[victim].agent.Status() // verified by the issuer (waitEpoch)
	if !genuine.State.Accepted() || genuine.Epoch != 1 {
		t.Fatalf("%s: Status %+v, want the accepted epoch-1 Status", victim, genuine)
	}

	// A key the attacker holds, and a Registration of it without a proof.
	sch, err := kem.Lookup(kem.Default)
	if err != nil {
		t.Fatal(err)
	}
	evil, err := sch.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	evilPK := evil.PublicKey().Bytes()
	newKeyReg := mustMarshal(t, &wire.Registration{
		Version: wire.Version, DeviceID: victim, KEMAlg: kem.Default, PublicKey: evilPK,
		CreatedAt: uint64(time.Now().Unix()),
	})
	// The same with a re-key proof naming the latest ticket (its hash is
	// public, in the retained Status) but a tag the attacker cannot compute.
	fakeTag := make([]byte, 32)
	rand.Read(fakeTag)
	forgedRekey := mustMarshal(t, &wire.Registration{
		Version: wire.Version, DeviceID: victim, KEMAlg: kem.Default, PublicKey: evilPK,
		CreatedAt: uint64(time.Now().Unix()),
		Rekey:     &wire.RekeyProof{Epoch: 1, TicketHash: before[victim].TicketHash, Tag: fakeTag},
	})
	// A Status with the next seq, the right epoch and ticket_hash and a
	// wrong confirm tag.
	badConfirm := cloneStatus(genuine)
	badConfirm.Seq++
	badConfirm.Confirm[0] ^= 1
	// A Status that replays the real (public) confirm and next_tag but
	// swaps in the attacker's next key: an attempt to have the next ticket
	// encapsulated to a key the attacker holds.
	swappedKey := cloneStatus(genuine)
	swappedKey.Seq++
	swappedKey.NextPK = evilPK

	cases := []struct {
		name    string
		topic   string
		payload []byte
		counter string // issuer counter
		reason  string // log "reason" attribute
	}{
		{"registration garbage", regTopic(victim), garbage, "registrations_rejected:malformed", "malformed"},
		{"registration oversize", regTopic(victim), bytes.Repeat([]byte{0xa5}, nearBrokerLimit), "registrations_rejected:oversize", "oversize"},
		{"another device's registration", regTopic(victim), f.devices[other].agent.Registration(), "registrations_rejected:topic_mismatch", "topic_mismatch"},
		{"new key without proof", regTopic(victim), newKeyReg, "registrations_rejected:key_changed", "key_changed"},
		{"new key with a forged proof", regTopic(victim), forgedRekey, "registrations_rejected:bad_rekey_proof", "bad_rekey_proof"},
		{"status garbage", statusTopic(victim), garbage, "status_rejected:malformed", "malformed"},
		{"status oversize", statusTopic(victim), bytes.Repeat([]byte{0xa5}, nearBrokerLimit), "status_rejected:oversize", "oversize"},
		{"status with a bad confirm tag", statusTopic(victim), mustMarshal(t, badConfirm), "status_rejected:bad_confirm", "bad_confirm"},
		{"status with a swapped next key", statusTopic(victim), mustMarshal(t, swappedKey), "status_rejected:bad_next_tag", "bad_next_tag"},
		{"another device's status", statusTopic(victim), f.devices[other].agent.StatusBytes(), "status_rejected:topic_mismatch", "topic_mismatch"},
	}
	// The broker binds the client id to the username, so a second client on
	// dev-1's account takes over dev-1's session (and dev-1 would take it
	// back): the attacker holding dev-1's password works while dev-1 is off,
	// and dev-1 comes back afterwards.
	f.devices[victim].stop(t)
	hostile := connectAs(t, f.b, victim) // the attacker on dev-1's account
	storePath := f.issuerConfig().StorePath
	for _, tc := range cases {
		base := iss.Counters()[tc.counter]
		storeBefore := readFile(t, storePath)
		publish(t, hostile, tc.topic, tc.payload, true)
		waitCounter(t, "issuer after "+tc.name, iss.Counters, tc.counter, base+1)
		if !f.issLog.hasRecord(t, map[string]string{"reason": tc.reason, "topic": tc.topic, "level": "WARN"}) {
			t.Fatalf("%s: the issuer's log has no WARN record with reason %q on %s", tc.name, tc.reason, tc.topic)
		}
		for _, id := range ids {
			if got := f.deviceInfo(t, id); !reflect.DeepEqual(got, before[id]) {
				t.Fatalf("%s changed the issuer's record of %s:\n got %+v\nwant %+v", tc.name, id, got, before[id])
			}
		}
		// Not one byte of the issuer's store was written.
		if !bytes.Equal(readFile(t, storePath), storeBefore) {
			t.Fatalf("%s: the issuer's store file %s changed", tc.name, storePath)
		}
	}
	c := iss.Counters()
	for _, tc := range cases {
		if c[tc.counter] != 1 {
			t.Errorf("issuer counter %s = %d, want exactly 1", tc.counter, c[tc.counter])
		}
	}
	if c["clone_detected"] != 0 || c["registrations_pinned"] != 2 || c["registrations_rekeyed"] != 0 {
		t.Fatalf("issuer counters %v: want no clone, 2 pins, no re-key", c)
	}

	// The issuer keeps running: the next epoch works for everyone, and the
	// victim's ticket goes to the next key it really announced, not to the
	// attacker's.
	hostile.Disconnect(50)
	f.startDevice(t, victim)
	f.issue(t, 2)
	f.waitEpoch(t, 2, ids...)
	info := f.deviceInfo(t, victim)
	if got := fmt.Sprintf("%x", info.KeyHash); got != keyHashOf(genuine.NextPK) || got == keyHashOf(evilPK) {
		t.Fatalf("%s's epoch-2 ticket went to key %s, want its announced next key %s", victim, got, keyHashOf(genuine.NextPK))
	}
	if !bytes.Equal(info.PinnedKeyHash, before[victim].PinnedKeyHash) || info.State != ekissuer.StateActive {
		t.Fatalf("%s: pinned key %x state %s after the attack, want %x active", victim, info.PinnedKeyHash, info.State, before[victim].PinnedKeyHash)
	}
}

// TestHostileInputToDevice publishes, from the issuer's broker account but
// without the issuer's signing key, every kind of bad ticket and root on
// ticket/dev-1 and root/2, and garbage on epoch. dev-1 rejects each with its
// named reason, reports it, never rewrites state.bin, and then accepts the
// real epoch 2 directly (no gap).
func TestHostileInputToDevice(t *testing.T) {
	const victim, other = "dev-1", "dev-2"
	ids := []string{victim, other}
	f := newSysFleet(t, ids...)
	iss := f.startIssuer(t, nil)
	f.startDevices(t, ids...)
	f.issue(t, 1)
	f.waitEpoch(t, 1, ids...)

	d := f.devices[victim]
	stateBefore := d.stateFile(t)
	st1 := d.agent.Status()
	issuerUser := issuer2 // an issuer instance's account (the running issuer keeps ekem-issuer)
	// Monitor the victim's published Status, and fetch dev-2's retained
	// ticket. The issuer's account cannot read tickets (the ACL lets it only
	// write them), but tickets are not secret: the monitor account reads them.
	statuses := subscribe(t, f.b, monitor2, statusTopic(victim))
	tickets := subscribe(t, f.b, monitor3, ticketTopic(other))
	tickets.waitForTopic(t, ticketTopic(other))
	otherTicket := []byte(tickets.messages()[0].Payload)

	// A complete epoch 2 for dev-1 signed by an ML-DSA-87 key that is not
	// pinned: a correct ticket (to dev-1's announced next key, with the
	// right prev) in a correct Merkle tree. Only the signing key is wrong.
	attacker, err := signature.GenerateKey(signature.MLDSA87)
	if err != nil {
		t.Fatal(err)
	}
	forge := func() *batch.Epoch {
		sch, err := kem.Lookup(st1.NextAlg)
		if err != nil {
			t.Fatal(err)
		}
		next, err := sch.ParsePublicKey(st1.NextPK)
		if err != nil {
			t.Fatal(err)
		}
		ep, err := batch.Issue(attacker, batch.Params{Epoch: 2, IssuedAt: uint64(time.Now().Unix()), TTL: 120},
			[]batch.Device{{ID: victim, Key: next, Prev: st1.TicketHash, Purpose: ekissuer.DefaultLabel, Group: ekissuer.DefaultLabel}})
		if err != nil {
			t.Fatal(err)
		}
		return ep
	}
	unknownKid := forge()
	// Another forged epoch whose COSE header claims the pinned kid: the
	// signature (by the attacker's key) does not verify under the pin.
	claimsPin := forge()
	akid, pkid := attacker.Public().KID(), f.key.Public().KID()
	if n := bytes.Count(claimsPin.Root, akid); n != 1 {
		t.Fatalf("attacker kid occurs %d times in its COSE_Sign1, want 1", n)
	}
	claimsPin.Root = bytes.Replace(claimsPin.Root, akid, pkid, 1)

	type step struct {
		name    string
		topic   string
		payload []byte
	}
	cases := []struct {
		name   string
		steps  []step
		reason accept.Reason
	}{
		{"ticket garbage", []step{{"ticket", ticketTopic(victim), garbage}}, accept.ReasonMalformed},
		{"ticket oversize", []step{{"ticket", ticketTopic(victim), bytes.Repeat([]byte{0xa5}, nearBrokerLimit)}}, accept.ReasonMalformed},
		{"another device's ticket", []step{{"ticket", ticketTopic(victim), otherTicket}}, accept.ReasonWrongAudience},
		{"root signed by an unpinned key", []step{
			{"root", rootTopic(2), unknownKid.Root},
			{"ticket", ticketTopic(victim), unknownKid.Tickets[0].Ticket},
		}, accept.ReasonUnknownIssuerKey},
		// The forged epoch-2 ticket is still the latest: a new root for its
		// epoch makes the device evaluate it again.
		{"root garbage", []step{{"root", rootTopic(2), garbage}}, accept.ReasonMalformed},
		{"root claiming the pinned kid, signed by another key", []step{
			{"clear ticket", ticketTopic(victim), nil},
			{"root", rootTopic(2), claimsPin.Root},
			{"ticket", ticketTopic(victim), claimsPin.Tickets[0].Ticket},
		}, accept.ReasonBadSignature},
	}
	m := connectAs(t, f.b, issuerUser) // the malicious issuer
	for _, tc := range cases {
		name := "rejected:" + tc.reason.String()
		base := d.agent.Counters()[name]
		nev := len(d.events.ofKind(device.EventRejected))
		for _, s := range tc.steps {
			publish(t, m, s.topic, s.payload, true)
		}
		// The event is emitted after the counter and the Status: wait for it.
		sysWaitFor(t, fmt.Sprintf("%s: a rejected event with reason %s", tc.name, tc.reason), func() bool {
			evs := d.events.ofKind(device.EventRejected)
			return len(evs) > nev && evs[len(evs)-1].Reason == tc.reason
		})
		evs := d.events.ofKind(device.EventRejected)
		if ev := evs[len(evs)-1]; ev.Epoch != 1 || ev.State != wire.StateRejected {
			t.Fatalf("%s: last rejected event %+v, want state rejected at epoch 1", tc.name, ev)
		}
		if got := d.agent.Counters()[name]; got != base+1 {
			t.Fatalf("%s: device counter %s = %d, want %d", tc.name, name, got, base+1)
		}
		st := d.agent.Status()
		if st.State != wire.StateRejected || accept.Reason(st.Reason) != tc.reason || st.Epoch != 1 || !bytes.Equal(st.TicketHash, st1.TicketHash) {
			t.Fatalf("%s: Status state %v reason %d epoch %d, want rejected %d at epoch 1 with the epoch-1 ticket", tc.name, st.State, st.Reason, st.Epoch, tc.reason)
		}
		statuses.waitUntil(t, sysTimeout, fmt.Sprintf("a published Status with reason %s", tc.reason), func(ms []message) bool {
			for _, msg := range ms {
				if s, err := wire.ParseStatus([]byte(msg.Payload)); err == nil && s.State == wire.StateRejected && accept.Reason(s.Reason) == tc.reason {
					return true
				}
			}
			return false
		})
		if got := d.agent.Epoch(); got != 1 {
			t.Fatalf("%s: device moved to epoch %d", tc.name, got)
		}
		if !bytes.Equal(d.stateFile(t), stateBefore) {
			t.Fatalf("%s: state.bin was rewritten by a rejected input", tc.name)
		}
		if n := d.agent.Counters()["accepted"]; n != 1 {
			t.Fatalf("%s: device accepted %d tickets, want 1", tc.name, n)
		}
	}
	// The issuer, which reads the victim's Status, saw the rejections.
	for _, r := range []accept.Reason{accept.ReasonWrongAudience, accept.ReasonUnknownIssuerKey, accept.ReasonBadSignature} {
		waitCounter(t, "issuer", iss.Counters, "device_reported:rejected:"+r.String(), 1)
	}
	// Garbage on the epoch announcement: nothing a device may trust.
	publish(t, m, topicEpoch, garbage, true)

	// The device keeps running: the real epoch 2 (its root replaces the
	// forged one, its ticket the forged ticket) is accepted directly.
	f.issue(t, 2)
	f.waitEpoch(t, 2, ids...)
	ev := d.events.accepted()
	if len(ev) != 2 || ev[1].Epoch != 2 || ev[1].Gap {
		t.Fatalf("%s: accepted %s, want epochs 1 and 2 without gap", victim, describeEvents(d.events.all()))
	}
	if st := d.agent.Status(); st.State != wire.StateOK || st.Epoch != 2 {
		t.Fatalf("%s: Status state %v epoch %d, want ok 2", victim, st.State, st.Epoch)
	}
	if bytes.Equal(d.stateFile(t), stateBefore) {
		t.Fatal("state.bin unchanged after accepting epoch 2: the comparison above would prove nothing")
	}
	// The other device was never attacked directly, but epochs stream (§6):
	// its real epoch-2 ticket may arrive while the forged root/2 is still
	// retained, and §8.2 evaluates a held ticket against a root of its
	// epoch when one is there. That can only fail rule 2 against the forged
	// root (its one-leaf tree, then its signature); the real root then
	// replaces it and the ticket, held unchanged, is accepted directly.
	for _, ev := range f.devices[other].events.ofKind(device.EventRejected) {
		if (ev.Reason != accept.ReasonBadProof && ev.Reason != accept.ReasonBadSignature) || ev.Epoch != 1 || ev.TicketEpoch != 2 {
			t.Fatalf("%s rejected %+v, want at most the forged root/2's bad_proof or bad_signature, at epoch 1", other, ev)
		}
	}
	if ev := f.devices[other].events.accepted(); len(ev) != 2 || ev[1].Epoch != 2 || ev[1].Gap {
		t.Fatalf("%s: accepted %s, want epochs 1 and 2 without gap", other, describeEvents(f.devices[other].events.all()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), sysTimeout)
	defer cancel()
	if _, err := iss.WaitConfirmed(ctx, victim, 2); err != nil {
		t.Fatal(err)
	}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustMarshal(t testing.TB, m interface{ Marshal() ([]byte, error) }) []byte {
	t.Helper()
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// cloneStatus deep-copies the byte fields of s, so that changing one
// cannot change the original.
func cloneStatus(s wire.Status) *wire.Status {
	c := s
	c.TicketHash = bytes.Clone(s.TicketHash)
	c.Confirm = bytes.Clone(s.Confirm)
	c.NextPK = bytes.Clone(s.NextPK)
	c.NextTag = bytes.Clone(s.NextTag)
	return &c
}
