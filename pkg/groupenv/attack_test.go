package groupenv

import (
	"errors"
	"math/rand/v2"
	"testing"
)

// refWindow is PROTOCOL.md §7.8's replay window written out directly: the
// highest ctr opened and the 1023 below it (1024 counters), each once; a
// ctr of highest - 1024 or lower is too old.
type refWindow struct {
	any  bool
	top  uint64
	seen map[uint64]bool
}

func (w *refWindow) open(ctr uint64) error {
	switch {
	case w.any && ctr < w.top && w.top-ctr >= Window:
		return ErrTooOld
	case w.any && w.seen[ctr]:
		return ErrReplay
	}
	if w.seen == nil {
		w.seen = map[uint64]bool{}
	}
	w.seen[ctr] = true
	if !w.any || ctr > w.top {
		w.top, w.any = ctr, true
	}
	return nil
}

// TestWindowMatchesSpec drives the bitmap window and the written-out rule
// with the same counters (random walks near the window's edges, jumps of
// exactly Window-1, Window and Window+1, the top of the counter range) and
// requires the same verdict every time.
func TestWindowMatchesSpec(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for run := range 200 {
		var w window
		var ref refWindow
		base := uint64(0)
		if run%4 == 3 {
			base = MaxCtr - 1 - 5000 // ends at the largest counter
		}
		for i := range 3000 {
			var ctr uint64
			switch r := rng.IntN(10); {
			case r < 3 && ref.any:
				ctr = ref.top - min(ref.top, uint64(Window-2+rng.IntN(5))) // around the bottom edge
			case r < 5 && ref.any:
				ctr = ref.top + uint64(Window-1+rng.IntN(3)) // jumps of Window-1..Window+1
			case r < 7 && ref.any:
				ctr = ref.top - min(ref.top, uint64(rng.IntN(40)))
			default:
				ctr = base + uint64(rng.IntN(5000))
			}
			if ctr >= MaxCtr {
				ctr = MaxCtr - 1
			}
			want := ref.open(ctr)
			got := w.fresh(ctr)
			if got == nil {
				w.mark(ctr)
			}
			if !errors.Is(got, want) && (got != nil || want != nil) {
				t.Fatalf("run %d step %d ctr %d (top %d): window %v, spec %v", run, i, ctr, ref.top, got, want)
			}
		}
	}
}

// TestHeaderIsAuthenticated: every header field of a sealed envelope is
// bound. An envelope re-encoded with another sender (sender confusion),
// counter, epoch or cohort does not open under the group key, and a failed
// open leaves the replay window as it was.
func TestHeaderIsAuthenticated(t *testing.T) {
	k := key(3)
	h := Header{Cohort: "fleet-a", Epoch: 4, Sender: "dev-a", Ctr: 9}
	env, err := Seal(k, h, []byte("reading"))
	if err != nil {
		t.Fatal(err)
	}
	_, ct, err := parse(env)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := NewReceiver("fleet-a")
	_ = r.SetKey(4, k)
	_ = r.SetKey(5, k) // the same key bytes under another epoch: the epoch still separates
	for name, edit := range map[string]func(*Header){
		"sender": func(h *Header) { h.Sender = "dev-b" },
		"ctr":    func(h *Header) { h.Ctr = 10 },
		"epoch":  func(h *Header) { h.Epoch = 5 },
	} {
		x := h
		edit(&x)
		forged, err := marshal(x, ct)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := Open(k, forged); !errors.Is(err, ErrAuth) {
			t.Fatalf("%s changed: %v", name, err)
		}
		if _, _, err := r.Open(forged); !errors.Is(err, ErrAuth) {
			t.Fatalf("receiver, %s changed: %v", name, err)
		}
	}
	x := h
	x.Cohort = "fleet-b"
	forged, _ := marshal(x, ct)
	if _, _, err := Open(k, forged); !errors.Is(err, ErrAuth) {
		t.Fatalf("cohort changed: %v", err)
	}
	// The forgeries of dev-b ctr 9 and dev-a ctr 10 left no trace.
	if _, _, err := r.Open(env); err != nil {
		t.Fatalf("the genuine envelope after forgeries: %v", err)
	}
	other, _ := Seal(k, Header{Cohort: "fleet-a", Epoch: 4, Sender: "dev-b", Ctr: 9}, nil)
	if _, _, err := r.Open(other); err != nil {
		t.Fatalf("dev-b's own ctr 9: %v", err)
	}
}

// TestCounterEdges: the largest counter seals and opens once; 2^63 is
// refused by Seal and by the decoder.
func TestCounterEdges(t *testing.T) {
	k := key(4)
	top := seal(t, k, 1, "dev-a", MaxCtr-1, "last")
	r, _ := NewReceiver("fleet-a")
	_ = r.SetKey(1, k)
	if _, _, err := r.Open(top); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Open(top); !errors.Is(err, ErrReplay) {
		t.Fatalf("largest ctr again: %v", err)
	}
	if _, _, err := r.Open(seal(t, k, 1, "dev-a", 0, "")); !errors.Is(err, ErrTooOld) {
		t.Fatalf("ctr 0 after the largest: %v", err)
	}
	if _, err := Seal(k, Header{Cohort: "fleet-a", Epoch: 1, Sender: "dev-a", Ctr: MaxCtr}, nil); !errors.Is(err, ErrBadInput) {
		t.Fatalf("seal at 2^63: %v", err)
	}
	over, _ := marshal(Header{Cohort: "fleet-a", Epoch: 1, Sender: "dev-a", Ctr: MaxCtr}, make([]byte, 16))
	if _, err := ParseHeader(over); !errors.Is(err, ErrMalformed) {
		t.Fatalf("decoding ctr 2^63: %v", err)
	}
}
