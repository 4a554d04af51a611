package groupenv

import (
	"fmt"
	"testing"
)

// BenchmarkSealOpen measures sealing and opening (with the replay window)
// one group envelope per iteration, for small and 1 KiB payloads.
func BenchmarkSealOpen(b *testing.B) {
	k := key(1)
	for _, n := range []int{64, 1024} {
		pt := make([]byte, n)
		b.Run(fmt.Sprintf("seal/bytes=%d", n), func(b *testing.B) {
			var ctr uint64
			for b.Loop() {
				if _, err := Seal(k, Header{Cohort: "fleet-a", Epoch: 1, Sender: "dev-a", Ctr: ctr}, pt); err != nil {
					b.Fatal(err)
				}
				ctr++
			}
		})
		b.Run(fmt.Sprintf("open/bytes=%d", n), func(b *testing.B) {
			envs := make([][]byte, 4096)
			for i := range envs {
				envs[i], _ = Seal(k, Header{Cohort: "fleet-a", Epoch: 1, Sender: "dev-a", Ctr: uint64(i)}, pt)
			}
			r, _ := NewReceiver("fleet-a")
			_ = r.SetKey(1, k)
			i := 0
			for b.Loop() {
				if i == len(envs) { // a fresh window for the next round
					b.StopTimer()
					r, _ = NewReceiver("fleet-a")
					_ = r.SetKey(1, k)
					i = 0
					b.StartTimer()
				}
				if _, _, err := r.Open(envs[i]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
