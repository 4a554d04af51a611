package envelope

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/entropykem/entropykem/pkg/wire"
	"reflect"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/ratchet"
)

const dev = "dev-1"

func testKey(label string) []byte {
	h := sha256.Sum256([]byte("envelope test key " + label))
	return h[:]
}

// pair returns a sender state and a receiver that starts from a copy of
// the same key material.
func pair(t testing.TB, maxSkip int) (*ratchet.State, *Receiver) {
	t.Helper()
	st, err := ratchet.Init(1, testKey("e1"), "app")
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewReceiver(dev, st, maxSkip)
	if err != nil {
		t.Fatal(err)
	}
	return st, r
}

func seal(t testing.TB, st *ratchet.State, pt string) []byte {
	t.Helper()
	k, err := st.Next()
	if err != nil {
		t.Fatal(err)
	}
	env, err := Seal(dev, k, []byte(pt))
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// snapshot captures everything a Receiver holds, to prove that a failed
// Open changed nothing.
type snap struct {
	state    string
	skipped  map[keyID]string
	order    []keyID
	seen     map[keyID]struct{}
	seenRing []keyID
	seenPos  int
}

func snapshot(t *testing.T, r *Receiver) snap {
	t.Helper()
	b, err := r.st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	s := snap{
		state:    hex.EncodeToString(b),
		skipped:  make(map[keyID]string),
		order:    append([]keyID{}, r.order...),
		seen:     make(map[keyID]struct{}),
		seenRing: append([]keyID{}, r.seenRing...),
		seenPos:  r.seenPos,
	}
	for id, k := range r.skipped {
		s.skipped[id] = hex.EncodeToString(k)
	}
	for id := range r.seen {
		s.seen[id] = struct{}{}
	}
	return s
}

func mustOpen(t *testing.T, r *Receiver, env []byte, want string) Header {
	t.Helper()
	h, pt, err := r.Open(env)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if string(pt) != want {
		t.Fatalf("Open: got %q, want %q", pt, want)
	}
	return h
}

func openErr(t *testing.T, r *Receiver, env []byte, want error) {
	t.Helper()
	before := snapshot(t, r)
	_, pt, err := r.Open(env)
	if !errors.Is(err, want) || pt != nil {
		t.Fatalf("Open: got (%q, %v), want %v", pt, err, want)
	}
	if !reflect.DeepEqual(before, snapshot(t, r)) {
		t.Fatalf("Open failed with %v but changed the receiver", err)
	}
}

func TestRoundTrip(t *testing.T) {
	st, r := pair(t, 4)
	for _, n := range []int{0, 1, 256, 4096, MaxPlaintext} {
		pt := bytes.Repeat([]byte{byte(n)}, n)
		k, err := st.Next()
		if err != nil {
			t.Fatal(err)
		}
		env, err := Seal(dev, k, pt)
		if err != nil {
			t.Fatalf("Seal %d bytes: %v", n, err)
		}
		if len(env) > MaxEnvelopeSize {
			t.Fatalf("envelope of %d bytes exceeds the maximum", len(env))
		}
		ph, err := ParseHeader(env)
		if err != nil {
			t.Fatalf("ParseHeader: %v", err)
		}
		h, got, err := r.Open(env)
		if err != nil {
			t.Fatalf("Open %d bytes: %v", n, err)
		}
		if !bytes.Equal(got, pt) {
			t.Fatalf("%d bytes: plaintext differs", n)
		}
		want := Header{DeviceID: dev, Epoch: 1, Ctr: k.Ctr}
		if h != want || ph != want {
			t.Fatalf("header %v / %v, want %v", h, ph, want)
		}
	}
}

// The largest plaintext with the longest device id and the largest
// counters still fits in MaxEnvelopeSize.
func TestMaxEnvelope(t *testing.T) {
	id := "A" + strings.Repeat("z", wire.MaxIDLen-1)
	k := ratchet.Key{Epoch: ^uint64(0), Ctr: ratchet.MaxCtr - 1, Bytes: testKey("k")}
	env, err := Seal(id, k, make([]byte, MaxPlaintext))
	if err != nil {
		t.Fatal(err)
	}
	if len(env) > MaxEnvelopeSize {
		t.Fatalf("%d bytes > %d", len(env), MaxEnvelopeSize)
	}
	if _, err := ParseHeader(env); err != nil {
		t.Fatalf("largest envelope rejected: %v", err)
	}
	if _, err := Seal(id, k, make([]byte, MaxPlaintext+1)); !errors.Is(err, ErrBadInput) {
		t.Fatalf("oversized plaintext: %v", err)
	}
}

// The wire format and the AAD, checked against bytes built by hand from
// the spec and an independent ChaCha20-Poly1305 computation.
func TestWireFormat(t *testing.T) {
	key := testKey("k")
	pt := []byte("hello")
	env, err := Seal(dev, ratchet.Key{Epoch: 7, Ctr: 3, Bytes: key}, pt)
	if err != nil {
		t.Fatal(err)
	}
	// {0: 1, 1: "dev-1", 2: 7, 3: 3}
	aad := []byte{0xa4, 0x00, 0x01, 0x01, 0x65, 'd', 'e', 'v', '-', '1', 0x02, 0x07, 0x03, 0x03}
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		t.Fatal(err)
	}
	ct := aead.Seal(nil, make([]byte, 12), pt, aad)
	want := append([]byte{0xa5}, aad[1:]...)
	want = append(want, 0x04, 0x40|byte(len(ct)))
	want = append(want, ct...)
	if !bytes.Equal(env, want) {
		t.Fatalf("envelope\n got %x\nwant %x", env, want)
	}
}

func TestSealRejects(t *testing.T) {
	k := ratchet.Key{Epoch: 1, Ctr: 0, Bytes: testKey("k")}
	for _, id := range []string{"", "-a", "a b", "a/b", strings.Repeat("a", 65)} {
		if _, err := Seal(id, k, nil); !errors.Is(err, ErrBadInput) {
			t.Errorf("device id %q: %v", id, err)
		}
	}
	for _, n := range []int{0, 16, 31, 33} {
		if _, err := Seal(dev, ratchet.Key{Epoch: 1, Bytes: make([]byte, n)}, nil); !errors.Is(err, ErrBadInput) {
			t.Errorf("%d-byte key: %v", n, err)
		}
	}
	if _, err := Seal(dev, ratchet.Key{Epoch: 1, Ctr: ratchet.MaxCtr, Bytes: testKey("k")}, nil); !errors.Is(err, ErrBadInput) {
		t.Errorf("ctr MaxCtr: %v", err)
	}
}

func TestCheckDeviceID(t *testing.T) {
	good := []string{"a", "Z", "0", "dev-1", "a.b_c-d", "9" + strings.Repeat("x", 63), "A.-_"}
	bad := []string{"", "-a", ".a", "_a", "a b", "a/b", "a+b", "a#", "ä", "a\x00", strings.Repeat("x", 65), "a;b"}
	for _, id := range good {
		if err := checkDeviceID(id); err != nil {
			t.Errorf("%q rejected: %v", id, err)
		}
	}
	for _, id := range bad {
		if checkDeviceID(id) == nil {
			t.Errorf("%q accepted", id)
		}
	}
}

// rewrite decodes an envelope, lets f change it and re-encodes it.
func rewrite(t *testing.T, env []byte, f func(*envelopeWire)) []byte {
	t.Helper()
	var w envelopeWire
	if err := cbor.Unmarshal(env, MaxEnvelopeSize, &w); err != nil {
		t.Fatal(err)
	}
	w.Ciphertext = append([]byte{}, w.Ciphertext...)
	f(&w)
	b, err := cbor.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestTamperIsErrAuthAndChangesNothing(t *testing.T) {
	st, r := pair(t, 8)
	mustOpen(t, r, seal(t, st, "m0"), "m0")
	env1 := seal(t, st, "m1") // ctr 1
	// Make ctr 2 a stored skipped key, so a tampered ctr that points at a
	// stored key is also covered.
	env2 := seal(t, st, "m2")
	mustOpen(t, r, seal(t, st, "m3"), "m3") // stores 1 and 2
	env4 := seal(t, st, "m4")
	if r.Stored() != 2 {
		t.Fatalf("stored %d keys, want 2", r.Stored())
	}

	for name, env := range map[string][]byte{
		"ctr ahead":             rewrite(t, env4, func(w *envelopeWire) { w.Ctr = 6 }),
		"ctr onto stored key":   rewrite(t, env1, func(w *envelopeWire) { w.Ctr = 2 }),
		"ciphertext first bit":  rewrite(t, env4, func(w *envelopeWire) { w.Ciphertext[0] ^= 1 }),
		"ciphertext last bit":   rewrite(t, env4, func(w *envelopeWire) { w.Ciphertext[len(w.Ciphertext)-1] ^= 0x80 }),
		"stored ciphertext bit": rewrite(t, env2, func(w *envelopeWire) { w.Ciphertext[1] ^= 4 }),
		"truncated tag":         rewrite(t, env4, func(w *envelopeWire) { w.Ciphertext = w.Ciphertext[:len(w.Ciphertext)-1] }),
		"appended byte":         rewrite(t, env4, func(w *envelopeWire) { w.Ciphertext = append(w.Ciphertext, 0) }),
	} {
		t.Run(name, func(t *testing.T) { openErr(t, r, env, ErrAuth) })
	}
	// Every single bit of the ciphertext and tag.
	var w envelopeWire
	if err := cbor.Unmarshal(env4, MaxEnvelopeSize, &w); err != nil {
		t.Fatal(err)
	}
	for bit := 0; bit < 8*len(w.Ciphertext); bit++ {
		openErr(t, r, rewrite(t, env4, func(w *envelopeWire) { w.Ciphertext[bit/8] ^= 1 << (bit % 8) }), ErrAuth)
	}
	// The genuine envelopes still open after all the forgeries.
	mustOpen(t, r, env1, "m1")
	mustOpen(t, r, env2, "m2")
	mustOpen(t, r, env4, "m4")
}

// The device id is bound into the AAD: an envelope relabelled for another
// device that shares the key material does not open.
func TestDeviceIDBoundToCiphertext(t *testing.T) {
	st, _ := pair(t, 4)
	other, err := NewReceiver("dev-2", st, 4)
	if err != nil {
		t.Fatal(err)
	}
	env := seal(t, st, "m0")
	openErr(t, other, env, ErrWrongDevice)
	openErr(t, other, rewrite(t, env, func(w *envelopeWire) { w.DeviceID = "dev-2" }), ErrAuth)
}

// The epoch is bound into the AAD: an envelope of epoch 2 relabelled as
// epoch 1, pointing at a stored epoch-1 key, does not open.
func TestEpochBoundToCiphertext(t *testing.T) {
	st, r := pair(t, 4)
	old0 := seal(t, st, "e1c0")
	mustOpen(t, r, seal(t, st, "e1c1"), "e1c1") // stores (1, 0)
	for _, s := range []interface{ Mix(uint64, []byte) error }{st, r} {
		if err := s.Mix(2, testKey("e2")); err != nil {
			t.Fatal(err)
		}
	}
	env := seal(t, st, "e2c0")
	openErr(t, r, rewrite(t, env, func(w *envelopeWire) { w.Epoch = 1 }), ErrAuth)
	mustOpen(t, r, env, "e2c0")
	mustOpen(t, r, old0, "e1c0")
}

func TestReplay(t *testing.T) {
	st, r := pair(t, 4)
	env := seal(t, st, "m0")
	mustOpen(t, r, env, "m0")
	openErr(t, r, env, ErrReplay)
	env1 := seal(t, st, "m1")
	mustOpen(t, r, env1, "m1")
	openErr(t, r, env, ErrReplay)
	openErr(t, r, env1, ErrReplay)
}

// With maxSkip 0 (strictly in order), every opened envelope is still a
// replay within the minimum history.
func TestReplayStrictOrder(t *testing.T) {
	st, r := pair(t, 0)
	var envs [][]byte
	for i := range minHistory {
		envs = append(envs, seal(t, st, fmt.Sprint(i)))
		mustOpen(t, r, envs[i], fmt.Sprint(i))
	}
	for _, env := range envs {
		openErr(t, r, env, ErrReplay)
	}
	mustOpen(t, r, seal(t, st, "next"), "next")
	openErr(t, r, envs[0], ErrTooOld) // left the history: refused all the same
	lost := seal(t, st, "lost")
	openErr(t, r, seal(t, st, "ahead"), ErrTooFarAhead)
	mustOpen(t, r, lost, "lost")
}

func TestOutOfOrderOpensExactlyOnce(t *testing.T) {
	const n = 10
	st, r := pair(t, n)
	envs := make([][]byte, n)
	for i := range envs {
		envs[i] = seal(t, st, fmt.Sprint("m", i))
	}
	for _, i := range []int{9, 0, 5, 3, 8, 1, 2, 7, 4, 6} {
		h := mustOpen(t, r, envs[i], fmt.Sprint("m", i))
		if h.Ctr != uint64(i) {
			t.Fatalf("header ctr %d, want %d", h.Ctr, i)
		}
		openErr(t, r, envs[i], ErrReplay)
	}
	if r.Stored() != 0 {
		t.Fatalf("%d keys left stored after all opened", r.Stored())
	}
	for i := range envs {
		openErr(t, r, envs[i], ErrReplay)
	}
	if r.NextCtr() != n {
		t.Fatalf("next ctr %d, want %d", r.NextCtr(), n)
	}
}

func TestTooFarAhead(t *testing.T) {
	const maxSkip = 5
	st, r := pair(t, maxSkip)
	var envs [][]byte
	for i := 0; i <= maxSkip+1; i++ {
		envs = append(envs, seal(t, st, fmt.Sprint(i)))
	}
	openErr(t, r, envs[maxSkip+1], ErrTooFarAhead)
	mustOpen(t, r, envs[maxSkip], fmt.Sprint(maxSkip)) // skips exactly maxSkip
	if r.Stored() != maxSkip {
		t.Fatalf("stored %d, want %d", r.Stored(), maxSkip)
	}
	mustOpen(t, r, envs[maxSkip+1], fmt.Sprint(maxSkip+1))

	// An epoch the receiver has not mixed in is too far ahead.
	if err := st.Mix(2, testKey("e2")); err != nil {
		t.Fatal(err)
	}
	openErr(t, r, seal(t, st, "e2"), ErrTooFarAhead)
}

func TestSkippedStoreBounded(t *testing.T) {
	const maxSkip = 8
	st, r := pair(t, maxSkip)
	var lost [][]byte
	for round := range 100 {
		for range maxSkip {
			lost = append(lost, seal(t, st, "lost"))
		}
		mustOpen(t, r, seal(t, st, fmt.Sprint(round)), fmt.Sprint(round))
		if r.Stored() > maxSkip || len(r.skipped) > maxSkip || len(r.order) > maxSkip || cap(r.order) > 2*maxSkip {
			t.Fatalf("round %d: %d keys stored (order len %d cap %d), bound %d",
				round, len(r.skipped), len(r.order), cap(r.order), maxSkip)
		}
		if len(r.seen) != len(r.seenRing) || len(r.seenRing) > max(maxSkip+1, minHistory) {
			t.Fatalf("replay history %d/%d exceeds its bound", len(r.seen), len(r.seenRing))
		}
	}
	// Only the last round's skipped keys are left; all earlier are gone.
	for _, env := range lost[:len(lost)-maxSkip] {
		openErr(t, r, env, ErrTooOld)
	}
	for _, env := range lost[len(lost)-maxSkip:] {
		mustOpen(t, r, env, "lost")
	}
}

func TestOldestDroppedFirst(t *testing.T) {
	st, r := pair(t, 4)
	e := make([][]byte, 8)
	for i := range e {
		e[i] = seal(t, st, fmt.Sprint(i))
	}
	mustOpen(t, r, e[3], "3") // stores 0, 1, 2
	mustOpen(t, r, e[7], "7") // stores 4, 5, 6; drops 0, 1
	if r.Stored() != 4 {
		t.Fatalf("stored %d, want 4", r.Stored())
	}
	openErr(t, r, e[0], ErrTooOld)
	openErr(t, r, e[1], ErrTooOld)
	for _, i := range []int{2, 4, 5, 6} {
		mustOpen(t, r, e[i], fmt.Sprint(i))
	}
	if r.Stored() != 0 {
		t.Fatalf("stored %d, want 0", r.Stored())
	}
}

func TestOpenAcrossMix(t *testing.T) {
	st, r := pair(t, 4)
	a0, a1, a2 := seal(t, st, "a0"), seal(t, st, "a1"), seal(t, st, "a2")
	a3 := seal(t, st, "a3")
	mustOpen(t, r, a2, "a2") // stores (1,0), (1,1)
	if err := st.Mix(2, testKey("e2")); err != nil {
		t.Fatal(err)
	}
	b0, b1 := seal(t, st, "b0"), seal(t, st, "b1")
	openErr(t, r, b0, ErrTooFarAhead)

	before := snapshot(t, r)
	if err := r.Mix(1, testKey("e1")); !errors.Is(err, ratchet.ErrStaleEpoch) {
		t.Fatalf("stale Mix: %v", err)
	}
	if !reflect.DeepEqual(before, snapshot(t, r)) {
		t.Fatal("stale Mix changed the receiver")
	}
	if err := r.Mix(2, testKey("e2")); err != nil {
		t.Fatal(err)
	}
	if r.Epoch() != 2 || r.NextCtr() != 0 || r.Stored() != 2 {
		t.Fatalf("after Mix: epoch %d next %d stored %d", r.Epoch(), r.NextCtr(), r.Stored())
	}
	mustOpen(t, r, b1, "b1")
	mustOpen(t, r, a0, "a0")
	mustOpen(t, r, b0, "b0")
	mustOpen(t, r, a1, "a1")
	for _, env := range [][]byte{a0, a1, a2, b0, b1} {
		openErr(t, r, env, ErrReplay)
	}
	// (1, 3) was never derived before the mix: it cannot open any more.
	openErr(t, r, a3, ErrTooOld)
}

// Keys of the old epoch and of the new epoch share one bound.
func TestStoreBoundAcrossMix(t *testing.T) {
	st, r := pair(t, 3)
	a := []([]byte){seal(t, st, "a0"), seal(t, st, "a1"), seal(t, st, "a2")}
	mustOpen(t, r, seal(t, st, "a3"), "a3") // stores (1,0..2)
	for _, s := range []interface{ Mix(uint64, []byte) error }{st, r} {
		if err := s.Mix(2, testKey("e2")); err != nil {
			t.Fatal(err)
		}
	}
	b0 := seal(t, st, "b0")
	_ = seal(t, st, "b1")
	mustOpen(t, r, seal(t, st, "b2"), "b2") // stores (2,0), (2,1); drops (1,0), (1,1)
	if r.Stored() != 3 {
		t.Fatalf("stored %d, want 3", r.Stored())
	}
	openErr(t, r, a[0], ErrTooOld)
	openErr(t, r, a[1], ErrTooOld)
	mustOpen(t, r, a[2], "a2")
	mustOpen(t, r, b0, "b0")
}

func TestWrongDevice(t *testing.T) {
	k := ratchet.Key{Epoch: 1, Ctr: 0, Bytes: testKey("k")}
	env, err := Seal("dev-9", k, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	_, r := pair(t, 4)
	openErr(t, r, env, ErrWrongDevice)
}

func TestReceiverCopiesState(t *testing.T) {
	st, err := ratchet.Init(1, testKey("e1"), "app")
	if err != nil {
		t.Fatal(err)
	}
	before, _ := st.MarshalBinary()
	r, err := NewReceiver(dev, st, 4)
	if err != nil {
		t.Fatal(err)
	}
	sender := st.Clone()
	mustOpen(t, r, seal(t, sender, "m0"), "m0")
	after, _ := st.MarshalBinary()
	if !bytes.Equal(before, after) {
		t.Fatal("Open advanced the caller's state")
	}
}

func TestNewReceiverRejects(t *testing.T) {
	st, _ := pair(t, 0)
	for name, f := range map[string]func() (*Receiver, error){
		"bad id":       func() (*Receiver, error) { return NewReceiver("-x", st, 1) },
		"nil state":    func() (*Receiver, error) { return NewReceiver(dev, nil, 1) },
		"negative":     func() (*Receiver, error) { return NewReceiver(dev, st, -1) },
		"over the cap": func() (*Receiver, error) { return NewReceiver(dev, st, MaxSkipLimit+1) },
	} {
		if r, err := f(); !errors.Is(err, ErrBadInput) || r != nil {
			t.Errorf("%s: got (%v, %v)", name, r, err)
		}
	}
}

func TestParseHeaderRejects(t *testing.T) {
	st, _ := pair(t, 0)
	good := seal(t, st, "payload")
	if _, err := ParseHeader(good); err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"empty":     nil,
		"oversized": append(append([]byte{}, good...), make([]byte, MaxEnvelopeSize)...),
		"extended":  append(append([]byte{}, good...), 0),
		"version 2": rewrite(t, good, func(w *envelopeWire) { w.Version = 2 }),
		"version 0": rewrite(t, good, func(w *envelopeWire) { w.Version = 0 }),
		"ctr 2^63":  rewrite(t, good, func(w *envelopeWire) { w.Ctr = ratchet.MaxCtr }),
		"no tag":    rewrite(t, good, func(w *envelopeWire) { w.Ciphertext = w.Ciphertext[:TagSize-1] }),
		"bad id":    rewrite(t, good, func(w *envelopeWire) { w.DeviceID = "_x" }),
		"long id":   rewrite(t, good, func(w *envelopeWire) { w.DeviceID = strings.Repeat("x", 65) }),
		"extra field": func() []byte {
			b, _ := cbor.Marshal(map[uint64]any{0: 1, 1: dev, 2: 1, 3: 0, 4: make([]byte, 16), 5: 0})
			return b
		}(),
		"missing ctr": func() []byte {
			b, _ := cbor.Marshal(map[uint64]any{0: 1, 1: dev, 2: 1, 4: make([]byte, 16)})
			return b
		}(),
		"ct as text": func() []byte {
			b, _ := cbor.Marshal(map[uint64]any{0: 1, 1: dev, 2: 1, 3: 0, 4: strings.Repeat("x", 16)})
			return b
		}(),
	}
	for i := 0; i < len(good); i++ {
		cases[fmt.Sprint("truncated ", i)] = good[:i]
	}
	for name, env := range cases {
		if _, err := ParseHeader(env); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: ParseHeader: %v", name, err)
		}
		_, r := pair(t, 4)
		openErr(t, r, env, ErrMalformed)
	}
}

func TestConcurrentOpen(t *testing.T) {
	const n = 64
	st, r := pair(t, n)
	envs := make([][]byte, n)
	for i := range envs {
		envs[i] = seal(t, st, fmt.Sprint(i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range envs {
		for range 2 { // each envelope twice: exactly one must succeed
			wg.Go(func() {
				_, pt, err := r.Open(envs[i])
				if err == nil && string(pt) != fmt.Sprint(i) {
					err = fmt.Errorf("wrong plaintext %q", pt)
				}
				errs <- err
			})
		}
	}
	wg.Wait()
	close(errs)
	ok := 0
	for err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrReplay):
		default:
			t.Fatalf("unexpected error %v", err)
		}
	}
	if ok != n {
		t.Fatalf("%d successful opens, want %d", ok, n)
	}
}

func FuzzParseEnvelope(f *testing.F) {
	st, err := ratchet.Init(1, testKey("e1"), "app")
	if err != nil {
		f.Fatal(err)
	}
	base := st.Clone()
	for i := range 4 {
		f.Add(seal(f, st, strings.Repeat("x", i*40)))
	}
	if err := st.Mix(2, testKey("e2")); err != nil {
		f.Fatal(err)
	}
	f.Add(seal(f, st, "epoch 2"))
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, env []byte) {
		r, err := NewReceiver(dev, base, 8)
		if err != nil {
			t.Fatal(err)
		}
		ph, perr := ParseHeader(env)
		before := snapshot(t, r)
		h, pt, err := r.Open(env)
		if err != nil && !reflect.DeepEqual(before, snapshot(t, r)) {
			t.Fatalf("failed Open (%v) changed the receiver", err)
		}
		if perr != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseHeader failed (%v) but Open gave %v", perr, err)
			}
			return
		}
		if h != ph {
			t.Fatalf("Open header %v, ParseHeader %v", h, ph)
		}
		if err != nil {
			return
		}
		// An envelope that opened is canonical: re-sealing gives its bytes.
		c := base.Clone()
		var k ratchet.Key
		for {
			if k, err = c.Next(); err != nil {
				t.Fatal(err)
			}
			if k.Ctr == h.Ctr {
				break
			}
		}
		again, err := Seal(h.DeviceID, k, pt)
		if err != nil || !bytes.Equal(again, env) {
			t.Fatalf("opened envelope is not what Seal produces: %v", err)
		}
		if _, _, err := r.Open(env); !errors.Is(err, ErrReplay) {
			t.Fatalf("second Open: %v, want ErrReplay", err)
		}
	})
}

func benchSizes() []int { return []int{256, 4096} }

func BenchmarkSeal(b *testing.B) {
	for _, n := range benchSizes() {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			k := ratchet.Key{Epoch: 1, Ctr: 12345, Bytes: testKey("k")}
			pt := make([]byte, n)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Seal(dev, k, pt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOpen opens envelopes in order; each Open derives its key
// (clone the state, one ratchet step) and decrypts.
func BenchmarkOpen(b *testing.B) {
	for _, n := range benchSizes() {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			st, r := pair(b, 16)
			pt := make([]byte, n)
			const batch = 256
			envs := make([][]byte, 0, batch)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if i%batch == 0 {
					b.StopTimer()
					envs = envs[:0]
					for range batch {
						k, err := st.Next()
						if err != nil {
							b.Fatal(err)
						}
						env, err := Seal(dev, k, pt)
						if err != nil {
							b.Fatal(err)
						}
						envs = append(envs, env)
					}
					b.StartTimer()
				}
				if _, _, err := r.Open(envs[i%batch]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestOpenWithKey(t *testing.T) {
	k := ratchet.Key{Epoch: 3, Ctr: 9, Bytes: bytes.Repeat([]byte{5}, ratchet.KeySize)}
	env, err := Seal("dev-a", k, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if _, pt, err := OpenWithKey("dev-a", k, env); err != nil || string(pt) != "x" {
		t.Fatalf("open: %v", err)
	}
	if _, _, err := OpenWithKey("dev-b", k, env); !errors.Is(err, ErrWrongDevice) {
		t.Fatalf("other device: %v", err)
	}
	other := k
	other.Ctr = 10
	if _, _, err := OpenWithKey("dev-a", other, env); !errors.Is(err, ErrBadInput) {
		t.Fatalf("key of another ctr: %v", err)
	}
	other = ratchet.Key{Epoch: 3, Ctr: 9, Bytes: bytes.Repeat([]byte{6}, ratchet.KeySize)}
	if _, _, err := OpenWithKey("dev-a", other, env); !errors.Is(err, ErrAuth) {
		t.Fatalf("wrong key: %v", err)
	}
}
