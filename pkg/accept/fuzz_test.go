package accept

import (
	"bytes"
	"testing"
)

// FuzzAccept feeds arbitrary ticket and root bytes to Accept for a device
// at epoch 5. It must never panic and never change the input state; an
// accepted ticket must be one that re-encodes to its own bytes.
func FuzzAccept(f *testing.F) {
	fx := newFixture(f)
	fx.atEpoch5()
	tk6, root6, _ := fx.issue(6)
	f.Add(tk6, root6)
	f.Add(fx.last5, fx.last5root)
	f.Add(tk6[:len(tk6)/2], root6)
	f.Add(tk6, root6[:100])
	st := fx.st
	before := stateBytes(f, st)
	f.Fuzz(func(t *testing.T, ticket, root []byte) {
		r, err := Accept(st, fx.input(ticket, root))
		if !bytes.Equal(stateBytes(t, st), before) {
			t.Fatal("Accept changed its input state")
		}
		if err == nil && (r == nil || r.State.Epoch <= st.Epoch) {
			t.Fatal("accepted without advancing")
		}
	})
}
