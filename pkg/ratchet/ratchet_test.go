package ratchet_test

import (
	"bytes"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/ratchet"
)

// testKey returns a 32-byte key derived from a label, so tests are
// deterministic without hard-coding bytes.
func testKey(label string) []byte {
	h := sha256.Sum256([]byte("ratchet test key " + label))
	return h[:]
}

func mustInit(t testing.TB, epoch uint64, key []byte, purpose string) *ratchet.State {
	t.Helper()
	s, err := ratchet.Init(epoch, key, purpose)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	return s
}

func mustNext(t testing.TB, s *ratchet.State) ratchet.Key {
	t.Helper()
	k, err := s.Next()
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return k
}

func mustMarshal(t testing.TB, s *ratchet.State) []byte {
	t.Helper()
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatalf("MarshalBinary: %v", err)
	}
	return b
}

// Independent computation of the formulas, written from the spec with
// crypto/hkdf and crypto/hmac directly.

func refHKDF(t *testing.T, ikm, salt []byte, info string) []byte {
	t.Helper()
	k, err := hkdf.Key(sha256.New, ikm, salt, info, 32)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func refHMAC(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// refChain runs the spec's chain from chain for n steps and returns the
// message keys and the final chain.
func refKeys(chain []byte, purpose string, from, n uint64) ([][]byte, []byte) {
	var out [][]byte
	for i := from; i < from+n; i++ {
		out = append(out, refHMAC(chain, fmt.Sprintf("msg:%s;ctr=%d", purpose, i)))
		chain = refHMAC(chain, "ratchet")
	}
	return out, chain
}

// wireState mirrors the documented serialized form, to inspect and to
// forge states independently of the package.
type wireState struct {
	Version uint64 `cbor:"0,keyasint"`
	Epoch   uint64 `cbor:"1,keyasint"`
	Ctr     uint64 `cbor:"2,keyasint"`
	Purpose string `cbor:"3,keyasint"`
	Root    []byte `cbor:"4,keyasint"`
	Chain   []byte `cbor:"5,keyasint"`
}

func decodeWire(t *testing.T, b []byte) wireState {
	t.Helper()
	var w wireState
	if err := cbor.Unmarshal(b, 1024, &w); err != nil {
		t.Fatalf("decode state: %v", err)
	}
	return w
}

func encodeWire(t testing.TB, w any) []byte {
	t.Helper()
	b, err := cbor.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFormulasAgainstReference(t *testing.T) {
	for _, tc := range []struct {
		epoch   uint64
		purpose string
	}{
		{0, "app"},
		{7, "telemetry"},
		{1 << 40, "x"},
		{^uint64(0) - 1, strings.Repeat("p", ratchet.MaxPurposeLen)},
	} {
		t.Run(fmt.Sprintf("epoch=%d", tc.epoch), func(t *testing.T) {
			keyE := testKey(fmt.Sprint("init", tc.epoch))
			s := mustInit(t, tc.epoch, keyE, tc.purpose)

			root := keyE
			chain := refHKDF(t, root, nil, fmt.Sprintf("chain:%d", tc.epoch))
			w := decodeWire(t, mustMarshal(t, s))
			if w.Version != 1 || w.Epoch != tc.epoch || w.Ctr != 0 || w.Purpose != tc.purpose ||
				!bytes.Equal(w.Root, root) || !bytes.Equal(w.Chain, chain) {
				t.Fatalf("initial state differs from the spec")
			}

			// 12 keys cover single- and two-digit counters (decimal, no padding).
			want, chainAfter := refKeys(chain, tc.purpose, 0, 12)
			for n, wk := range want {
				k := mustNext(t, s)
				if k.Epoch != tc.epoch || k.Ctr != uint64(n) {
					t.Fatalf("key %d named (%d, %d)", n, k.Epoch, k.Ctr)
				}
				if !bytes.Equal(k.Bytes, wk) {
					t.Fatalf("key %d differs from HMAC(chain, msg:...)", n)
				}
			}
			w = decodeWire(t, mustMarshal(t, s))
			if w.Ctr != 12 || !bytes.Equal(w.Chain, chainAfter) || !bytes.Equal(w.Root, root) {
				t.Fatalf("state after 12 keys differs from the spec")
			}

			// Mix at a newer epoch.
			e2 := tc.epoch + 1
			key2 := testKey(fmt.Sprint("mix", e2))
			if err := s.Mix(e2, key2); err != nil {
				t.Fatalf("Mix: %v", err)
			}
			salt := binary.BigEndian.AppendUint64(nil, e2)
			root2 := refHKDF(t, append(append([]byte{}, root...), key2...), salt, fmt.Sprintf("mix:%d", e2))
			chain2 := refHKDF(t, root2, nil, fmt.Sprintf("chain:%d", e2))
			w = decodeWire(t, mustMarshal(t, s))
			if w.Epoch != e2 || w.Ctr != 0 || !bytes.Equal(w.Root, root2) || !bytes.Equal(w.Chain, chain2) {
				t.Fatalf("state after Mix differs from the spec")
			}
			want2, _ := refKeys(chain2, tc.purpose, 0, 3)
			for n, wk := range want2 {
				k := mustNext(t, s)
				if k.Epoch != e2 || k.Ctr != uint64(n) || !bytes.Equal(k.Bytes, wk) {
					t.Fatalf("key %d after Mix differs from the spec", n)
				}
			}
		})
	}
}

// A state restored at a large counter derives the spec's key for that
// counter (exercises multi-digit decimal formatting).
func TestLargeCounterLabel(t *testing.T) {
	chain := testKey("chain")
	for _, ctr := range []uint64{100, 123456789, ratchet.MaxCtr - 1} {
		b := encodeWire(t, wireState{Version: 1, Epoch: 3, Ctr: ctr, Purpose: "p", Root: testKey("root"), Chain: chain})
		s, err := ratchet.UnmarshalState(b)
		if err != nil {
			t.Fatalf("UnmarshalState: %v", err)
		}
		k := mustNext(t, s)
		want, _ := refKeys(chain, "p", ctr, 1)
		if k.Ctr != ctr || !bytes.Equal(k.Bytes, want[0]) {
			t.Fatalf("ctr %d: key differs from the spec", ctr)
		}
	}
}

func TestDeterministic(t *testing.T) {
	a := mustInit(t, 5, testKey("k"), "app")
	b := mustInit(t, 5, testKey("k"), "app")
	for i := range 100 {
		ka, kb := mustNext(t, a), mustNext(t, b)
		if ka.Ctr != kb.Ctr || !bytes.Equal(ka.Bytes, kb.Bytes) {
			t.Fatalf("key %d differs between identical states", i)
		}
	}
	if !bytes.Equal(mustMarshal(t, a), mustMarshal(t, b)) {
		t.Fatal("identical histories give different states")
	}
}

func TestDistinct(t *testing.T) {
	s := mustInit(t, 5, testKey("k"), "app")
	seen := make(map[string]uint64)
	for range 1000 {
		k := mustNext(t, s)
		if len(k.Bytes) != ratchet.KeySize {
			t.Fatalf("key of %d bytes", len(k.Bytes))
		}
		if prev, dup := seen[string(k.Bytes)]; dup {
			t.Fatalf("key %d repeats key %d", k.Ctr, prev)
		}
		seen[string(k.Bytes)] = k.Ctr
	}

	for _, other := range []*ratchet.State{
		mustInit(t, 5, testKey("k"), "app2"), // purpose
		mustInit(t, 6, testKey("k"), "app"),  // epoch
		mustInit(t, 5, testKey("k2"), "app"), // key
	} {
		for range 1000 {
			k := mustNext(t, other)
			if n, dup := seen[string(k.Bytes)]; dup {
				t.Fatalf("%v collides with key %d of the base state", k, n)
			}
		}
	}
}

func TestMix(t *testing.T) {
	base := mustInit(t, 5, testKey("k"), "app")
	for range 3 {
		mustNext(t, base)
	}
	mixed := base.Clone()
	if err := mixed.Mix(6, testKey("k6")); err != nil {
		t.Fatalf("Mix: %v", err)
	}
	mixedOther := base.Clone()
	if err := mixedOther.Mix(6, testKey("other")); err != nil {
		t.Fatalf("Mix: %v", err)
	}
	if mixed.Epoch() != 6 || mixed.NextCtr() != 0 {
		t.Fatalf("after Mix: epoch %d ctr %d", mixed.Epoch(), mixed.NextCtr())
	}
	old := make(map[string]bool)
	for range 200 {
		old[string(mustNext(t, base).Bytes)] = true
	}
	other := make(map[string]bool)
	for range 200 {
		other[string(mustNext(t, mixedOther).Bytes)] = true
	}
	for range 200 {
		k := mustNext(t, mixed)
		if old[string(k.Bytes)] || other[string(k.Bytes)] {
			t.Fatalf("%v after Mix equals a key without it or with another epoch key", k)
		}
	}
}

func TestMixRejectsStaleAndBadKey(t *testing.T) {
	s := mustInit(t, 5, testKey("k"), "app")
	mustNext(t, s)
	before := mustMarshal(t, s)
	for _, e := range []uint64{0, 4, 5} {
		if err := s.Mix(e, testKey("x")); !errors.Is(err, ratchet.ErrStaleEpoch) {
			t.Fatalf("Mix(%d): got %v, want ErrStaleEpoch", e, err)
		}
		if !bytes.Equal(before, mustMarshal(t, s)) {
			t.Fatalf("Mix(%d) failed but changed the state", e)
		}
	}
	for _, n := range []int{0, 31, 33} {
		if err := s.Mix(6, make([]byte, n)); !errors.Is(err, ratchet.ErrBadKey) {
			t.Fatalf("Mix with %d-byte key: got %v", n, err)
		}
		if !bytes.Equal(before, mustMarshal(t, s)) {
			t.Fatal("Mix with a bad key changed the state")
		}
	}
}

func TestInitRejects(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33, 64} {
		if _, err := ratchet.Init(1, make([]byte, n), "app"); !errors.Is(err, ratchet.ErrBadKey) {
			t.Errorf("%d-byte key: got %v", n, err)
		}
	}
	for _, p := range []string{"", "a;b", "a b", "caf\u00e9", "a\x00", strings.Repeat("a", ratchet.MaxPurposeLen+1)} {
		if _, err := ratchet.Init(1, testKey("k"), p); !errors.Is(err, ratchet.ErrBadPurpose) {
			t.Errorf("purpose %q: got %v", p, err)
		}
	}
}

func TestInitCopiesKey(t *testing.T) {
	key := testKey("k")
	s := mustInit(t, 1, key, "app")
	ref := mustInit(t, 1, testKey("k"), "app")
	clear(key)
	if !bytes.Equal(mustNext(t, s).Bytes, mustNext(t, ref).Bytes) {
		t.Fatal("state aliases the caller's key")
	}
}

func TestExhausted(t *testing.T) {
	b := encodeWire(t, wireState{Version: 1, Epoch: 3, Ctr: ratchet.MaxCtr - 1, Purpose: "p", Root: testKey("r"), Chain: testKey("c")})
	s, err := ratchet.UnmarshalState(b)
	if err != nil {
		t.Fatal(err)
	}
	if k := mustNext(t, s); k.Ctr != ratchet.MaxCtr-1 {
		t.Fatalf("got ctr %d", k.Ctr)
	}
	before := mustMarshal(t, s)
	if _, err := s.Next(); !errors.Is(err, ratchet.ErrExhausted) {
		t.Fatalf("got %v, want ErrExhausted", err)
	}
	if !bytes.Equal(before, mustMarshal(t, s)) {
		t.Fatal("exhausted Next changed the state")
	}
	// An exhausted state round-trips and recovers with a Mix.
	s2, err := ratchet.UnmarshalState(before)
	if err != nil {
		t.Fatalf("exhausted state does not round-trip: %v", err)
	}
	if err := s2.Mix(4, testKey("k4")); err != nil {
		t.Fatal(err)
	}
	if k := mustNext(t, s2); k.Epoch != 4 || k.Ctr != 0 {
		t.Fatalf("after Mix: %v", k)
	}
}

func TestClone(t *testing.T) {
	s := mustInit(t, 1, testKey("k"), "app")
	c := s.Clone()
	before := mustMarshal(t, s)
	mustNext(t, c)
	if err := c.Mix(2, testKey("k2")); err != nil {
		t.Fatal(err)
	}
	mustNext(t, c)
	c.Wipe()
	if !bytes.Equal(before, mustMarshal(t, s)) {
		t.Fatal("using the clone changed the original")
	}
}

func TestWipe(t *testing.T) {
	s := mustInit(t, 1, testKey("k"), "app")
	s.Wipe()
	if _, err := s.Next(); !errors.Is(err, ratchet.ErrBadState) {
		t.Errorf("Next after Wipe: %v", err)
	}
	if err := s.Mix(2, testKey("k2")); !errors.Is(err, ratchet.ErrBadState) {
		t.Errorf("Mix after Wipe: %v", err)
	}
	if _, err := s.MarshalBinary(); !errors.Is(err, ratchet.ErrBadState) {
		t.Errorf("MarshalBinary after Wipe: %v", err)
	}
	k := mustNext(t, mustInit(t, 1, testKey("k"), "app"))
	k.Wipe()
	if !bytes.Equal(k.Bytes, make([]byte, ratchet.KeySize)) {
		t.Error("Key.Wipe left bytes")
	}
}

func TestNoSecretsInStrings(t *testing.T) {
	s := mustInit(t, 1, testKey("k"), "app")
	k := mustNext(t, s)
	w := decodeWire(t, mustMarshal(t, s))
	for _, out := range []string{
		fmt.Sprintf("%v %+v %#v %s", k, k, k, k),
		fmt.Sprintf("%v %+v %#v %s", s, s, s, s),
		fmt.Sprintf("%v %+v %#v", &k, []ratchet.Key{k}, struct{ K ratchet.Key }{k}),
	} {
		for _, secret := range [][]byte{k.Bytes, w.Root, w.Chain} {
			if strings.Contains(out, hex.EncodeToString(secret)) ||
				strings.Contains(out, fmt.Sprint(secret)) ||
				strings.Contains(out, fmt.Sprintf("%#v", secret)) {
				t.Fatalf("formatted output reveals a secret: %s", out)
			}
		}
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	s := mustInit(t, 9, testKey("k"), "app")
	for range 17 {
		mustNext(t, s)
	}
	if err := s.Mix(12, testKey("k12")); err != nil {
		t.Fatal(err)
	}
	mustNext(t, s)
	b := mustMarshal(t, s)
	r, err := ratchet.UnmarshalState(b)
	if err != nil {
		t.Fatalf("UnmarshalState: %v", err)
	}
	if !bytes.Equal(b, mustMarshal(t, r)) {
		t.Fatal("round trip is not byte-identical")
	}
	if r.Epoch() != 12 || r.NextCtr() != 1 || r.Purpose() != "app" {
		t.Fatalf("accessors after round trip: %v", r)
	}
	for range 5 {
		if !bytes.Equal(mustNext(t, s).Bytes, mustNext(t, r).Bytes) {
			t.Fatal("restored state derives different keys")
		}
	}
}

func TestMaxStateSize(t *testing.T) {
	b := encodeWire(t, wireState{
		Version: 1, Epoch: ^uint64(0), Ctr: ratchet.MaxCtr,
		Purpose: strings.Repeat("~", ratchet.MaxPurposeLen), Root: testKey("r"), Chain: testKey("c"),
	})
	if len(b) > ratchet.MaxStateSize {
		t.Fatalf("largest state is %d bytes, over MaxStateSize %d", len(b), ratchet.MaxStateSize)
	}
	if _, err := ratchet.UnmarshalState(b); err != nil {
		t.Fatalf("largest valid state rejected: %v", err)
	}
	t.Logf("largest state: %d bytes", len(b))
}

func TestUnmarshalStateRejects(t *testing.T) {
	valid := wireState{Version: 1, Epoch: 3, Ctr: 4, Purpose: "app", Root: testKey("r"), Chain: testKey("c")}
	good := encodeWire(t, valid)
	if _, err := ratchet.UnmarshalState(good); err != nil {
		t.Fatalf("valid state rejected: %v", err)
	}

	cases := map[string][]byte{
		"empty":     {},
		"extended":  append(append([]byte{}, good...), 0x00),
		"two items": append(append([]byte{}, good...), good...),
		"oversized": append(append([]byte{}, good...), make([]byte, ratchet.MaxStateSize)...),
		"not a map": encodeWire(t, []any{1, 3, 4}),
	}
	for i := 0; i < len(good); i++ {
		cases[fmt.Sprintf("truncated to %d", i)] = good[:i]
	}
	mod := func(f func(*wireState)) []byte {
		w := valid
		f(&w)
		return encodeWire(t, w)
	}
	cases["version 0"] = mod(func(w *wireState) { w.Version = 0 })
	cases["version 2"] = mod(func(w *wireState) { w.Version = 2 })
	cases["ctr > 2^63"] = mod(func(w *wireState) { w.Ctr = ratchet.MaxCtr + 1 })
	cases["ctr max"] = mod(func(w *wireState) { w.Ctr = ^uint64(0) })
	cases["empty purpose"] = mod(func(w *wireState) { w.Purpose = "" })
	cases["purpose with ;"] = mod(func(w *wireState) { w.Purpose = "a;b" })
	cases["long purpose"] = mod(func(w *wireState) { w.Purpose = strings.Repeat("a", ratchet.MaxPurposeLen+1) })
	for _, n := range []int{0, 31, 33, 64} {
		cases[fmt.Sprintf("root %d", n)] = mod(func(w *wireState) { w.Root = make([]byte, n) })
		cases[fmt.Sprintf("chain %d", n)] = mod(func(w *wireState) { w.Chain = make([]byte, n) })
	}
	cases["root nil"] = mod(func(w *wireState) { w.Root = nil })
	// Missing and extra fields.
	cases["missing chain"] = encodeWire(t, struct {
		Version uint64 `cbor:"0,keyasint"`
		Epoch   uint64 `cbor:"1,keyasint"`
		Ctr     uint64 `cbor:"2,keyasint"`
		Purpose string `cbor:"3,keyasint"`
		Root    []byte `cbor:"4,keyasint"`
	}{1, 3, 4, "app", testKey("r")})
	cases["missing version"] = encodeWire(t, map[uint64]any{1: 3, 2: 4, 3: "app", 4: testKey("r"), 5: testKey("c")})
	cases["extra field"] = encodeWire(t, map[uint64]any{0: 1, 1: 3, 2: 4, 3: "app", 4: testKey("r"), 5: testKey("c"), 6: 0})
	cases["root as text"] = encodeWire(t, map[uint64]any{0: 1, 1: 3, 2: 4, 3: "app", 4: string(testKey("r")[:16]), 5: testKey("c")})
	cases["negative epoch"] = encodeWire(t, map[uint64]any{0: 1, 1: -3, 2: 4, 3: "app", 4: testKey("r"), 5: testKey("c")})
	// A non-deterministic encoding of the valid state: epoch 3 as a
	// two-byte integer (0x18 0x03) instead of 0x03.
	nd := bytes.Replace(good, []byte{0x01, 0x03}, []byte{0x01, 0x18, 0x03}, 1)
	if bytes.Equal(nd, good) {
		t.Fatal("test setup: epoch encoding not found")
	}
	cases["non-deterministic int"] = nd

	for name, b := range cases {
		s, err := ratchet.UnmarshalState(b)
		if err == nil || !errors.Is(err, ratchet.ErrBadState) || s != nil {
			t.Errorf("%s: got (%v, %v), want ErrBadState", name, s, err)
		}
	}
}

func FuzzUnmarshalState(f *testing.F) {
	s, _ := ratchet.Init(3, testKey("k"), "app")
	b, _ := s.MarshalBinary()
	f.Add(b)
	_, _ = s.Next()
	_ = s.Mix(1<<40, testKey("k2"))
	b, _ = s.MarshalBinary()
	f.Add(b)
	f.Add(encodeWire(f, wireState{Version: 1, Epoch: ^uint64(0), Ctr: ratchet.MaxCtr, Purpose: strings.Repeat("~", 64), Root: testKey("r"), Chain: testKey("c")}))
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ratchet.UnmarshalState(b)
		if err != nil {
			if !errors.Is(err, ratchet.ErrBadState) || s != nil {
				t.Fatalf("error %v does not wrap ErrBadState", err)
			}
			return
		}
		// Accepted input is exactly the canonical encoding of the state.
		again, err := s.MarshalBinary()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("accepted state does not re-encode to its input: %v", err)
		}
		if _, err := s.Next(); err != nil && !errors.Is(err, ratchet.ErrExhausted) {
			t.Fatalf("Next on accepted state: %v", err)
		}
	})
}

func BenchmarkNext(b *testing.B) {
	s, err := ratchet.Init(1, testKey("k"), "telemetry")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Next(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMix(b *testing.B) {
	s, err := ratchet.Init(1, testKey("k"), "telemetry")
	if err != nil {
		b.Fatal(err)
	}
	key := testKey("k2")
	e := uint64(1)
	b.ReportAllocs()
	for b.Loop() {
		e++
		if err := s.Mix(e, key); err != nil {
			b.Fatal(err)
		}
	}
}

// Floors for comparison in the same run: one HKDF-SHA256 (extract and
// expand, L = 32) and one HMAC-SHA256 under a new key. Next costs two HMACs
// under one key; Mix costs two HKDFs.
func BenchmarkFloorHKDF(b *testing.B) {
	ikm := testKey("k")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := hkdf.Key(sha256.New, ikm, nil, "chain:1", 32); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFloorHMAC(b *testing.B) {
	key := testKey("k")
	msg := []byte("msg:telemetry;ctr=12345")
	b.ReportAllocs()
	for b.Loop() {
		m := hmac.New(sha256.New, key)
		m.Write(msg)
		_ = m.Sum(nil)
	}
}
