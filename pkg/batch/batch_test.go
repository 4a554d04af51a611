package batch

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/merkle"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

func devices(t testing.TB, n int, alg kem.ID) ([]Device, map[string]kem.PrivateKey) {
	t.Helper()
	s, _ := kem.Lookup(alg)
	devs := make([]Device, n)
	keys := map[string]kem.PrivateKey{}
	for i := range devs {
		k, err := s.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("dev-%05d", n-i) // reverse order: Issue must sort
		devs[i] = Device{ID: id, Key: k.PublicKey(), Purpose: "p", Group: "g"}
		keys[id] = k
	}
	return devs, keys
}

func TestIssue(t *testing.T) {
	key, _ := signature.GenerateKey(signature.MLDSA65)
	for _, n := range []int{1, 2, 3, 7} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			devs, keys := devices(t, n, kem.MLKEM768)
			issueAndCheck(t, key, devs, keys)
		})
	}
}

// TestIssueEveryKEM issues one epoch to a device of each allowed KEM: each
// is encapsulated in place into its ticket body, and decapsulates to the
// secrets the issuer kept.
func TestIssueEveryKEM(t *testing.T) {
	key, _ := signature.GenerateKey(signature.MLDSA65)
	var devs []Device
	keys := map[string]kem.PrivateKey{}
	for _, id := range kem.IDs() {
		s, _ := kem.Lookup(id)
		if s.CiphertextSize() > maxCiphertext {
			t.Fatalf("%v ciphertexts (%d bytes) exceed the placeholder (%d)", id, s.CiphertextSize(), maxCiphertext)
		}
		k, err := s.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("dev-%d", id)
		devs = append(devs, Device{ID: name, Key: k.PublicKey(), Purpose: "p", Group: "g"})
		keys[name] = k
	}
	issueAndCheck(t, key, devs, keys)
}

// issueAndCheck issues epoch 9 to devs and checks the signed root and every
// ticket against the devices' keys.
func issueAndCheck(t *testing.T, key *signature.PrivateKey, devs []Device, keys map[string]kem.PrivateKey) {
	t.Helper()
	ep, err := Issue(key, Params{Epoch: 9, IssuedAt: 100, TTL: 60}, devs)
	if err != nil {
		t.Fatal(err)
	}
	payload, _, err := signature.Verify1(ep.Root, mustKeySet(t, key))
	if err != nil {
		t.Fatal(err)
	}
	root, err := wire.ParseEpochRoot(payload)
	if err != nil || root.Epoch != 9 || root.TreeSize != uint64(len(devs)) {
		t.Fatalf("root %+v %v", root, err)
	}
	for i, iss := range ep.Tickets {
		checkTicket(t, i, iss, root, keys[iss.DeviceID])
		if i > 0 && ep.Tickets[i-1].DeviceID >= iss.DeviceID {
			t.Fatal("tickets not in device id order")
		}
	}
}

func checkTicket(t *testing.T, i int, iss Issued, root *wire.EpochRoot, dk kem.PrivateKey) {
	t.Helper()
	tk, body, err := wire.ParseTicket(iss.Ticket)
	if err != nil {
		t.Fatal(err)
	}
	if tk.LeafIndex != uint64(i) || body.Aud != iss.DeviceID || body.Epoch != 9 {
		t.Fatalf("ticket %d: %+v", i, body)
	}
	if err := merkle.VerifyInclusion(tk.LeafIndex, tk.TreeSize, merkle.LeafHash(tk.Body), tk.Path, root.Root); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(body.Prev, make([]byte, 32)) || !bytes.Equal(body.PKHash, kem.PublicKeyHash(dk.PublicKey().Bytes())) {
		t.Fatal("prev or pk_hash")
	}
	ss, _ := dk.Decapsulate(body.Ciphertext)
	sec, _ := keyschedule.DeriveTicketSecrets(ss, keyschedule.TicketHash(tk.Body))
	if !bytes.Equal(sec.Confirm(), iss.Secrets.Confirm()) || !bytes.Equal(iss.TicketHash, keyschedule.TicketHash(tk.Body)) {
		t.Fatal("issuer's secrets do not match the device's decapsulation")
	}
}

func mustKeySet(t *testing.T, k *signature.PrivateKey) *signature.KeySet {
	s, err := signature.NewKeySet(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestIssueRejects(t *testing.T) {
	key, _ := signature.GenerateKey(signature.MLDSA65)
	if _, err := Issue(key, Params{Epoch: 1, IssuedAt: 1, TTL: 1}, nil); !errors.Is(err, ErrInput) {
		t.Fatal("empty epoch", err)
	}
	devs, _ := devices(t, 2, kem.MLKEM768)
	devs[1].ID = devs[0].ID
	if _, err := Issue(key, Params{Epoch: 1, IssuedAt: 1, TTL: 1}, devs); !errors.Is(err, ErrInput) {
		t.Fatal("duplicate id", err)
	}
	devs, _ = devices(t, 1, kem.MLKEM768)
	devs[0].Group = "a;b"
	if _, err := Issue(key, Params{Epoch: 1, IssuedAt: 1, TTL: 1}, devs); !errors.Is(err, wire.ErrMalformed) {
		t.Fatal("bad group", err)
	}
	devs[0].Group = "g"
	if _, err := Issue(key, Params{Epoch: 0, IssuedAt: 1, TTL: 1}, devs); !errors.Is(err, wire.ErrMalformed) {
		t.Fatal("epoch 0", err)
	}
}
