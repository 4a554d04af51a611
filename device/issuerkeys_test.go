package device

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/trust"
	"github.com/entropykem/entropykem/pkg/wire"
)

func (e *env) issuerKey(kid []byte, signed []byte) {
	e.a.handle(e.pub, Message{Topic: topics.IssuerKey(kid), Payload: signed})
}

func mustKey(t *testing.T) *signature.PrivateKey {
	t.Helper()
	k, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestIssuerKeyRotation follows one device through an issuer key rotation
// from key A to key B at epoch 3: B's root arrives before the announcement
// (refused, then accepted once B is learned), A may no longer sign epoch 3,
// and the learned key survives a restart without the announcement.
func TestIssuerKeyRotation(t *testing.T) {
	e := newEnv(t, nil)
	a := e.is.key
	b := mustKey(t)
	s1, iss1 := e.first()
	d2 := nextDevice(t, s1, iss1)

	// Epoch 2 is signed by A, still pinned.
	iss2, ep2 := e.is.issueWith(a, 2, e.clock.Now(), 600, d2)
	e.deliver(iss2, ep2)
	s2, _ := e.pub.lastStatus(t)
	if s2.Epoch != 2 || s2.State != wire.StateOK {
		t.Fatalf("epoch 2: %+v", s2)
	}
	d3 := nextDevice(t, s2, iss2)

	// Epoch 3 signed by B before the device knows B: refused, nothing kept.
	state2 := e.stateFile()
	iss3, ep3 := e.is.issueWith(b, 3, e.clock.Now(), 600, d3)
	e.deliver(iss3, ep3)
	if s, _ := e.pub.lastStatus(t); s.State != wire.StateRejected || accept.Reason(s.Reason) != accept.ReasonUnknownIssuerKey {
		t.Fatalf("root signed by the unannounced key: status %v reason %d", s.State, s.Reason)
	}
	if !bytes.Equal(e.stateFile(), state2) {
		t.Fatal("state.bin changed on a rejection")
	}

	// An announcement the pinned key did not sign is refused and not stored.
	forged, err := trust.Sign(mustKey(t), b.Public(), 3, 1)
	if err != nil {
		t.Fatal(err)
	}
	e.issuerKey(b.Public().KID(), forged)
	if c := e.a.Counters(); c["issuer_key_rejected"] != 1 || c["issuer_key_learned"] != 0 {
		t.Fatalf("forged announcement: counters %v", c)
	}
	if _, err := os.Stat(filepath.Join(e.dir, issuerKeysFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("issuer-keys.cbor written for a forged announcement: %v", err)
	}

	// The real announcement, signed by A: B is learned and stored, and the
	// waiting epoch-3 ticket is evaluated again and accepted.
	ab, err := trust.Sign(a, b.Public(), 3, 1)
	if err != nil {
		t.Fatal(err)
	}
	e.issuerKey(b.Public().KID(), ab)
	if c := e.a.Counters(); c["issuer_key_learned"] != 1 {
		t.Fatalf("announcement: counters %v", c)
	}
	s3, _ := e.pub.lastStatus(t)
	if s3.Epoch != 3 || s3.State != wire.StateOK {
		t.Fatalf("epoch 3 after learning B: %+v", s3)
	}
	e.issuerKey(b.Public().KID(), ab) // re-delivered: harmless
	if c := e.a.Counters(); c["issuer_key_learned"] != 1 || c["issuer_key_rejected"] != 1 {
		t.Fatalf("re-delivered announcement: counters %v", c)
	}

	// A is retired from epoch 3 on: an epoch-4 root signed by A is refused
	// even though A is pinned.
	d4 := nextDevice(t, s3, iss3)
	issA4, epA4 := e.is.issueWith(a, 4, e.clock.Now(), 600, d4)
	e.deliver(issA4, epA4)
	if s, _ := e.pub.lastStatus(t); s.State != wire.StateRejected || accept.Reason(s.Reason) != accept.ReasonUnknownIssuerKey {
		t.Fatalf("root signed by the retired key: status %v reason %d", s.State, s.Reason)
	}

	// After a restart, B is trusted from the stored announcement alone.
	e.reopen()
	iss4, ep4 := e.is.issueWith(b, 4, e.clock.Now(), 600, d4)
	e.deliver(iss4, ep4)
	if s, _ := e.pub.lastStatus(t); s.Epoch != 4 || s.State != wire.StateOK {
		t.Fatalf("epoch 4 signed by B after a restart: %+v", s)
	}

	// A stored announcement that no longer verifies stops the device from
	// opening: it is never silently dropped.
	path := filepath.Join(e.dir, issuerKeysFileName)
	stored, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.a.Close(); err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(stored)
	bad[len(bad)-1] ^= 1
	if err := os.WriteFile(path, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(e.config()); !errors.Is(err, ErrStateCorrupt) {
		t.Fatalf("New with a tampered issuer-keys.cbor: %v, want ErrStateCorrupt", err)
	}
	if err := os.WriteFile(path, stored, 0o600); err != nil {
		t.Fatal(err)
	}
	e.open()
}

// TestIssuerKeyChainOutOfOrder: announcements A→B and B→C delivered in the
// wrong order are both learned.
func TestIssuerKeyChainOutOfOrder(t *testing.T) {
	e := newEnv(t, nil)
	a, b, c := e.is.key, mustKey(t), mustKey(t)
	ab, _ := trust.Sign(a, b.Public(), 5, 1)
	bc, _ := trust.Sign(b, c.Public(), 9, 1)
	e.issuerKey(c.Public().KID(), bc)
	if n := e.a.Counters()["issuer_key_learned"]; n != 0 {
		t.Fatal("B→C learned before A→B")
	}
	// A forgery is held too, and retried, but reported once.
	forged, _ := trust.Sign(mustKey(t), c.Public(), 9, 1)
	e.issuerKey([]byte("forgery1"), forged)
	e.issuerKey(b.Public().KID(), ab)
	if c := e.a.Counters(); c["issuer_key_learned"] != 2 || c["issuer_key_rejected"] != 2 {
		t.Fatalf("counters %v: want 2 learned (the held B→C after A→B) and 2 rejections (B→C and the forgery, once each)", c)
	}
	for ep, k := range map[uint64]*signature.PrivateKey{4: a, 5: b, 8: b, 9: c} {
		if _, ok := e.a.trust.KeysAt(ep).Lookup(k.Public().KID()); !ok {
			t.Errorf("epoch %d: expected key not trusted", ep)
		}
	}
}
