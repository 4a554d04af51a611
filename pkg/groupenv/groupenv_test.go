package groupenv

import (
	"bytes"
	"errors"
	"testing"
)

func key(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

func seal(t *testing.T, k []byte, epoch uint64, sender string, ctr uint64, pt string) []byte {
	t.Helper()
	env, err := Seal(k, Header{Cohort: "fleet-a", Epoch: epoch, Sender: sender, Ctr: ctr}, []byte(pt))
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func TestSealOpen(t *testing.T) {
	k := key(1)
	env := seal(t, k, 3, "dev-a", 7, "hello")
	h, pt, err := Open(k, env)
	if err != nil || string(pt) != "hello" || h != (Header{"fleet-a", 3, "dev-a", 7}) {
		t.Fatalf("open: %v %q %v", err, pt, h)
	}
	if _, _, err := Open(key(2), env); !errors.Is(err, ErrAuth) {
		t.Fatalf("another key: %v", err)
	}
	// Two senders with one counter: different keys, so different
	// ciphertexts for the same plaintext.
	a, b := seal(t, k, 3, "dev-a", 0, "same"), seal(t, k, 3, "dev-b", 0, "same")
	if bytes.Equal(a[len(a)-20:], b[len(b)-20:]) {
		t.Fatal("two senders produced the same ciphertext")
	}
	// Every header field is authenticated: re-encode with one field
	// changed and the ciphertext kept.
	_, ct, _ := parse(env)
	for _, h := range []Header{{"fleet-b", 3, "dev-a", 7}, {"fleet-a", 4, "dev-a", 7}, {"fleet-a", 3, "dev-b", 7}, {"fleet-a", 3, "dev-a", 8}} {
		if _, err := open(k, h, ct); !errors.Is(err, ErrAuth) {
			t.Fatalf("%v: %v", h, err)
		}
	}
	bad := bytes.Clone(env)
	bad[len(bad)-1] ^= 1
	if _, _, err := Open(k, bad); !errors.Is(err, ErrAuth) {
		t.Fatalf("flipped tag: %v", err)
	}
	for _, h := range []Header{{"", 1, "dev-a", 0}, {"a;b", 1, "dev-a", 0}, {"fleet-a", 0, "dev-a", 0}, {"fleet-a", 1, "-x", 0}, {"fleet-a", 1, "dev-a", MaxCtr}} {
		if _, err := Seal(k, h, nil); !errors.Is(err, ErrBadInput) {
			t.Fatalf("%v: %v", h, err)
		}
	}
	if _, err := Seal(k, Header{"fleet-a", 1, "dev-a", 0}, make([]byte, MaxPlaintext+1)); !errors.Is(err, ErrBadInput) {
		t.Fatal("oversized plaintext sealed")
	}
	big := seal(t, k, 1<<53-1, "d"+string(bytes.Repeat([]byte("x"), 63)), MaxCtr-1, string(make([]byte, MaxPlaintext)))
	if len(big) > MaxEnvelopeSize {
		t.Fatalf("largest envelope is %d bytes", len(big))
	}
	if _, err := ParseHeader(append(big, 0)); !errors.Is(err, ErrMalformed) {
		t.Fatal("trailing byte accepted")
	}
}

func TestReceiverReplayWindow(t *testing.T) {
	r, err := NewReceiver("fleet-a")
	if err != nil {
		t.Fatal(err)
	}
	k3, k4, k5 := key(3), key(4), key(5)
	env := seal(t, k3, 3, "dev-a", 5, "x")
	if _, _, err := r.Open(env); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("no key yet: %v", err)
	}
	if err := r.SetKey(3, k3); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Open(env); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Open(env); !errors.Is(err, ErrReplay) {
		t.Fatalf("replay: %v", err)
	}
	// Out of order within the window opens once; other senders have
	// their own window.
	for _, c := range []uint64{4, 0, 6, 1000} {
		if _, _, err := r.Open(seal(t, k3, 3, "dev-a", c, "x")); err != nil {
			t.Fatalf("ctr %d: %v", c, err)
		}
	}
	if _, _, err := r.Open(seal(t, k3, 3, "dev-b", 5, "x")); err != nil {
		t.Fatalf("other sender, same ctr: %v", err)
	}
	for _, c := range []uint64{4, 0, 6} {
		if _, _, err := r.Open(seal(t, k3, 3, "dev-a", c, "x")); !errors.Is(err, ErrReplay) {
			t.Fatalf("ctr %d again: %v", c, err)
		}
	}
	if _, _, err := r.Open(seal(t, k3, 3, "dev-a", 5000, "x")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Open(seal(t, k3, 3, "dev-a", 5000-Window, "x")); !errors.Is(err, ErrTooOld) {
		t.Fatalf("below the window: %v", err)
	}
	if _, _, err := r.Open(seal(t, k3, 3, "dev-a", 5000-Window+1, "x")); err != nil {
		t.Fatalf("bottom of the window: %v", err)
	}
	// A forgery changes nothing: a failed open of ctr 4999 leaves it
	// openable.
	if _, _, err := r.Open(seal(t, key(9), 3, "dev-a", 4999, "x")); !errors.Is(err, ErrAuth) {
		t.Fatal(err)
	}
	if _, _, err := r.Open(seal(t, k3, 3, "dev-a", 4999, "x")); err != nil {
		t.Fatalf("after a forgery: %v", err)
	}
	// Two epochs are kept; the third drops the oldest.
	if err := r.SetKey(4, k4); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Open(seal(t, k3, 3, "dev-c", 0, "x")); err != nil {
		t.Fatalf("previous epoch: %v", err)
	}
	if err := r.SetKey(5, k5); err != nil {
		t.Fatal(err)
	}
	if got := r.Epochs(); len(got) != 2 || got[0] != 4 || got[1] != 5 {
		t.Fatalf("epochs %v", got)
	}
	if _, _, err := r.Open(seal(t, k3, 3, "dev-c", 1, "x")); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("dropped epoch: %v", err)
	}
	if err := r.SetKey(5, k4); !errors.Is(err, ErrBadInput) {
		t.Fatalf("another key for a held epoch: %v", err)
	}
	other, _ := Seal(k5, Header{Cohort: "fleet-b", Epoch: 5, Sender: "dev-a"}, nil)
	if _, _, err := r.Open(other); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("other cohort: %v", err)
	}
}

func TestReceiverBoundsSenders(t *testing.T) {
	r, _ := NewReceiver("fleet-a")
	k := key(7)
	_ = r.SetKey(1, k)
	for i := range MaxSenders {
		if _, _, err := r.Open(seal(t, k, 1, "d"+itoa(i), 0, "")); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := r.Open(seal(t, k, 1, "one-too-many", 0, "")); !errors.Is(err, ErrTooManySenders) {
		t.Fatalf("sender beyond the bound: %v", err)
	}
	if _, _, err := r.Open(seal(t, k, 1, "d0", 1, "")); err != nil {
		t.Fatalf("a known sender: %v", err)
	}
}

func itoa(i int) string {
	b := []byte{}
	for {
		b = append([]byte{byte('0' + i%10)}, b...)
		if i /= 10; i == 0 {
			return string(b)
		}
	}
}

// FuzzParse: the decoder never panics, and what it accepts re-encodes to
// the same bytes.
func FuzzParse(f *testing.F) {
	k := key(1)
	env, _ := Seal(k, Header{Cohort: "fleet-a", Epoch: 3, Sender: "dev-a", Ctr: 7}, []byte("hello"))
	f.Add(env)
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, ct, err := parse(b)
		if err != nil {
			return
		}
		again, err := marshal(h, ct)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs: %v", err)
		}
	})
}
