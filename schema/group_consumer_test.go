package schema_test

import (
	"bytes"
	"crypto/mlkem"
	"strconv"
	"testing"

	"github.com/cloudflare/circl/sign/mldsa/mldsa87"
	"golang.org/x/crypto/chacha20poly1305"
)

// TestGroupVectorsIndependently checks group.json the way another
// implementation would (PROTOCOL.md §7.7, §8.4.1): the standard library's
// ML-KEM, circl's ML-DSA, a generic CBOR decoder and the derivations
// written out, none of the project's packages.
func TestGroupVectorsIndependently(t *testing.T) {
	var v GroupVectors
	load(t, groupFile, &v)
	var pk mldsa87.PublicKey
	if err := pk.UnmarshalBinary(v.Issuer.PublicKey); err != nil {
		t.Fatal(err)
	}
	payload := cborMap(t, verifySign1(t, "group root", v.RootMessage, &pk))
	if payload[1] != v.Epoch || payload[3] != uint64(len(v.Members)+1) {
		t.Fatalf("root payload %v", payload)
	}
	gmac := mac(v.CohortSecret, append([]byte("ekem/v1 group"), sum(v.GroupSeed)...))
	eq(t, "group_mac", gmac, v.GroupMAC)
	groupKey := kdf(append(bytes.Clone(v.GroupSeed), gmac...), u64(v.Epoch), "group;"+v.CohortID+";"+strconv.FormatUint(v.Epoch, 10))
	eq(t, "group_key", groupKey, v.GroupKey)
	if len(v.Members) != 3 {
		t.Fatalf("%d members", len(v.Members))
	}
	for _, m := range v.Members {
		body := memberBody(t, m)
		if body[11] != v.CohortID {
			t.Fatalf("%s: cohort %v", m.ID, body[11])
		}
		seedKey := kdf(m.SS, u64(v.Epoch), "ekem/v1 group-seed;"+v.CohortID+";"+m.ID)
		eq(t, m.ID+" seed_key", seedKey, m.SeedKey)
		eq(t, m.ID+" sealed seed in body", body[12].([]byte), m.Sealed)
		aead, err := chacha20poly1305.New(seedKey)
		if err != nil {
			t.Fatal(err)
		}
		g, err := aead.Open(nil, make([]byte, 12), m.Sealed, nil)
		if err != nil {
			t.Fatalf("%s: sealed seed does not open: %v", m.ID, err)
		}
		eq(t, m.ID+" group seed", g, v.GroupSeed)
	}
	if body := memberBody(t, v.NonMember); body[11] != nil || body[12] != nil {
		t.Fatal("the non-member's body carries a group seed")
	}
	seen := map[string]bool{}
	for _, e := range v.Envelopes {
		sk := kdf(v.GroupKey, nil, "ekem/v1 group-sender;"+e.Sender)
		eq(t, "sender_key", sk, e.SenderKey)
		nonce := append(make([]byte, 4), u64(e.Ctr)...)
		eq(t, "nonce", nonce, e.Nonce)
		env := cborMap(t, e.Envelope)
		if env[0] != uint64(1) || env[1] != v.CohortID || env[2] != v.Epoch || env[3] != e.Sender || env[4] != e.Ctr || len(env) != 6 {
			t.Fatalf("envelope header %v", env)
		}
		aad := []byte{0xa5, 0x00, 0x01, 0x01, 0x60 + byte(len(v.CohortID))}
		aad = append(aad, v.CohortID...)
		aad = append(aad, 0x02, byte(v.Epoch), 0x03, 0x60+byte(len(e.Sender)))
		aad = append(append(aad, e.Sender...), 0x04, byte(e.Ctr)) // epoch and ctr < 24 here
		eq(t, "aad", aad, e.AAD)
		aead, err := chacha20poly1305.New(sk)
		if err != nil {
			t.Fatal(err)
		}
		pt, err := aead.Open(nil, nonce, env[5].([]byte), aad)
		if err != nil {
			t.Fatalf("envelope of %s ctr %d does not open: %v", e.Sender, e.Ctr, err)
		}
		eq(t, "plaintext", pt, e.Plaintext)
		id := e.Sender + "/" + strconv.FormatUint(e.Ctr, 10)
		if seen[id] {
			t.Fatalf("two envelopes with sender and ctr %s", id)
		}
		seen[id] = true
	}
}

func memberBody(t *testing.T, m GroupMember) map[uint64]any {
	t.Helper()
	tk := cborMap(t, m.Ticket)
	eq(t, m.ID+" body", tk[1].([]byte), m.TicketBody)
	body := cborMap(t, m.TicketBody)
	if body[1] != m.ID {
		t.Fatalf("aud %v", body[1])
	}
	dk, err := mlkem.NewDecapsulationKey1024(m.Seed)
	if err != nil {
		t.Fatal(err)
	}
	ss, err := dk.Decapsulate(body[6].([]byte))
	if err != nil {
		t.Fatal(err)
	}
	eq(t, m.ID+" ss", ss, m.SS)
	return body
}
