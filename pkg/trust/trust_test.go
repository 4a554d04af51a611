package trust

import (
	"bytes"
	"errors"
	"testing"

	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

func newKey(t *testing.T) *signature.PrivateKey {
	t.Helper()
	k, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pinned(t *testing.T, keys ...*signature.PrivateKey) *Trust {
	t.Helper()
	var pubs []*signature.PublicKey
	for _, k := range keys {
		pubs = append(pubs, k.Public())
	}
	ks, err := signature.NewKeySet(pubs...)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := New(ks)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func sign(t *testing.T, old *signature.PrivateKey, next *signature.PrivateKey, from uint64) []byte {
	t.Helper()
	s, err := Sign(old, next.Public(), from, 1700000000)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func trusted(tr *Trust, k *signature.PrivateKey, e uint64) bool {
	_, ok := tr.KeysAt(e).Lookup(k.Public().KID())
	return ok
}

// TestRotationHandsOver checks the overlap: the old key signs epochs
// before From, the new key epochs from From on, and never both.
func TestRotationHandsOver(t *testing.T) {
	a, b := newKey(t), newKey(t)
	tr := pinned(t, a)
	learned, r, err := tr.Learn(sign(t, a, b, 10))
	if err != nil {
		t.Fatal(err)
	}
	if r.From != 10 || !bytes.Equal(r.Old, a.Public().KID()) || !r.New.Equal(b.Public()) {
		t.Fatalf("rotation %+v", r)
	}
	for e, want := range map[uint64][2]bool{1: {true, false}, 9: {true, false}, 10: {false, true}, 1 << 40: {false, true}} {
		if got := [2]bool{trusted(learned, a, e), trusted(learned, b, e)}; got != want {
			t.Errorf("epoch %d: old, new trusted = %v, want %v", e, got, want)
		}
	}
	if !trusted(tr, a, 10) || trusted(tr, b, 10) {
		t.Fatal("Learn changed the Trust it was called on")
	}
}

// TestRotationChain: a device offline across two rotations learns both in
// order, and the middle key then signs only its own epochs.
func TestRotationChain(t *testing.T) {
	a, b, c := newKey(t), newKey(t), newKey(t)
	ab, bc := sign(t, a, b, 10), sign(t, b, c, 20)
	tr := pinned(t, a)
	if _, _, err := tr.Learn(bc); !errors.Is(err, ErrUnverified) {
		t.Fatalf("b→c before a→b: %v, want ErrUnverified", err)
	}
	tr, _, err := tr.Learn(ab)
	if err != nil {
		t.Fatal(err)
	}
	if tr, _, err = tr.Learn(bc); err != nil {
		t.Fatal(err)
	}
	for _, c2 := range []struct {
		e       uint64
		a, b, c bool
	}{{9, true, false, false}, {10, false, true, false}, {19, false, true, false}, {20, false, false, true}} {
		if got := [3]bool{trusted(tr, a, c2.e), trusted(tr, b, c2.e), trusted(tr, c, c2.e)}; got != [3]bool{c2.a, c2.b, c2.c} {
			t.Errorf("epoch %d: a, b, c trusted = %v", c2.e, got)
		}
	}
	// The stored form reloads to the same trust, and only in order.
	back, err := Load(tr.KeysAt(1), tr.Signed())
	if err != nil {
		t.Fatal(err)
	}
	if !trusted(back, c, 20) || trusted(back, a, 20) || !trusted(back, b, 10) {
		t.Fatal("reloaded trust differs")
	}
	if _, err := Load(tr.KeysAt(1), [][]byte{bc, ab}); !errors.Is(err, ErrUnverified) {
		t.Fatalf("out-of-order load: %v", err)
	}
}

// TestRotationRefusals: everything an attacker or a confused issuer could
// publish on the key topic is refused, and leaves the Trust as it was.
func TestRotationRefusals(t *testing.T) {
	a, b, c, evil := newKey(t), newKey(t), newKey(t), newKey(t)
	tr := pinned(t, a)
	ab := sign(t, a, b, 10)
	learned, _, err := tr.Learn(ab)
	if err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Clone(ab)
	tampered[len(tampered)-1] ^= 1
	payload, _ := (&wire.KeyRotation{Version: 1, FromEpoch: 5, NewAlg: signature.MLDSA65, NewKey: c.Public().Bytes(), IssuedAt: 1}).Marshal()
	wrongVersionPayload := bytes.Clone(payload)
	wrongVersionPayload[2] = 2 // {0: 2, ...}
	wrongVersion, _ := signature.Sign1(a, wrongVersionPayload)
	for _, tc := range []struct {
		name string
		tr   *Trust
		msg  []byte
		want error
	}{
		{"garbage", tr, []byte("not cose"), ErrUnverified},
		{"signed by an unknown key", tr, sign(t, evil, c, 10), ErrUnverified},
		{"bad signature", tr, tampered, ErrUnverified},
		{"bad payload", tr, wrongVersion, ErrUnverified},
		{"rotation to a known key", learned, sign(t, b, a, 20), ErrUnverified},
		{"the same again", learned, ab, ErrKnown},
		{"the same content signed again", learned, resigned(t, a, b, ab), ErrKnown},
		{"the same key from another epoch", learned, sign(t, a, b, 11), ErrConflict},
		{"a second successor for a", learned, sign(t, a, c, 10), ErrConflict},
	} {
		before := tc.tr.Signed()
		if _, _, err := tc.tr.Learn(tc.msg); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if got := tc.tr.Signed(); len(got) != len(before) {
			t.Errorf("%s changed the trust", tc.name)
		}
	}
	if _, err := Sign(a, a.Public(), 3, 1); err == nil {
		t.Fatal("a key rotated to itself")
	}
}

// resigned signs the announcement a→b again: ML-DSA is hedged, so the
// bytes differ from ab's.
func resigned(t *testing.T, a, b *signature.PrivateKey, ab []byte) []byte {
	t.Helper()
	again := sign(t, a, b, 10)
	if bytes.Equal(again, ab) {
		t.Fatal("ML-DSA signed the same message to the same bytes: the test proves nothing")
	}
	return again
}

func TestRotationLimit(t *testing.T) {
	keys := []*signature.PrivateKey{newKey(t)}
	tr := pinned(t, keys[0])
	for i := range MaxRotations + 1 {
		next := newKey(t)
		var err error
		nt, _, err := tr.Learn(sign(t, keys[i], next, uint64(10*(i+1))))
		if i == MaxRotations {
			if !errors.Is(err, ErrLimit) {
				t.Fatalf("rotation %d: %v, want ErrLimit", i+1, err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		tr, keys = nt, append(keys, next)
	}
}

func FuzzLearn(f *testing.F) {
	a, b := newKeyF(f), newKeyF(f)
	ab, _ := Sign(a, b.Public(), 10, 1)
	f.Add(ab)
	f.Add([]byte{0xd2, 0x84})
	ks, _ := signature.NewKeySet(a.Public())
	tr, _ := New(ks)
	f.Fuzz(func(t *testing.T, msg []byte) {
		n, r, err := tr.Learn(msg)
		if err != nil {
			if n != nil || r != nil {
				t.Fatal("error with a result")
			}
			return
		}
		// Only a's real signature verifies: what is learned is ab's content.
		if !r.New.Equal(b.Public()) || r.From != 10 {
			t.Fatalf("learned %+v from a message a did not sign", r)
		}
	})
}

func newKeyF(f *testing.F) *signature.PrivateKey {
	k, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		f.Fatal(err)
	}
	return k
}

// TestLearnAll: a chain in any order is learned in one call; a forgery is
// kept for a retry; the receiver and the map are not changed.
func TestLearnAll(t *testing.T) {
	a, b, c, evil := newKey(t), newKey(t), newKey(t), newKey(t)
	tr := pinned(t, a)
	msgs := map[string][]byte{
		"1-bc":     sign(t, b, c, 20), // sorted first: needs a→b, learned on the retry
		"2-ab":     sign(t, a, b, 10),
		"3-forged": sign(t, evil, c, 30),
	}
	next, outs := tr.LearnAll(msgs)
	if len(outs) != 3 || len(msgs) != 3 || len(tr.Signed()) != 0 {
		t.Fatalf("outcomes %d, msgs %d, receiver learned %d", len(outs), len(msgs), len(tr.Signed()))
	}
	for _, o := range outs {
		learned := o.Err == nil && o.Rotation != nil
		if want := o.Key != "3-forged"; learned != want || o.Retry() == want {
			t.Errorf("%s: learned %v, retry %v (%v)", o.Key, learned, o.Retry(), o.Err)
		}
	}
	if !trusted(next, c, 20) || trusted(next, b, 20) || !trusted(next, b, 10) {
		t.Fatal("chain not learned in order")
	}
	// Again: the chain is known now, the forgery still waits.
	_, outs = next.LearnAll(msgs)
	for _, o := range outs {
		if o.Key != "3-forged" && !errors.Is(o.Err, ErrKnown) {
			t.Errorf("%s again: %v, want ErrKnown", o.Key, o.Err)
		}
	}
}
