package device

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/entropykem/entropykem/pkg/wire"
)

// TestStateFileVector opens schema/testdata/files.json's state.bin with the
// device's own reader (PROTOCOL.md Appendix A) and merges its status.cbor,
// so the vector and this implementation's files cannot drift apart.
func TestStateFileVector(t *testing.T) {
	raw, err := os.ReadFile("../schema/testdata/files.json")
	if err != nil {
		t.Fatal(err)
	}
	var f map[string]any
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	hx := func(k string) []byte {
		b, err := hex.DecodeString(f[k].(string))
		if err != nil {
			t.Fatal(k, err)
		}
		return b
	}
	id := f["device_id"].(string)
	l, err := openState(hx("state_key"), id, hx("state_bin"))
	if err != nil {
		t.Fatal(err)
	}
	enc, err := l.st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(enc, hx("device_state")) || l.seq != uint64(f["state_seq"].(float64)) || l.st.Epoch != 4 {
		t.Fatalf("state.bin: epoch %d seq %d", l.st.Epoch, l.seq)
	}
	seq, status, err := mergeStatus(id, l.seq, l.status, hx("status_cbor"))
	if err != nil {
		t.Fatal(err)
	}
	if seq != 6 || !bytes.Equal(status, hx("status_cbor")) {
		t.Fatalf("merged seq %d", seq)
	}
	// Another key does not open it.
	other := hx("state_key")
	other[0] ^= 1
	if _, err := openState(other, id, hx("state_bin")); err == nil {
		t.Fatal("state.bin opened under another key")
	}
}

// PROTOCOL.md §7.4/§8.1: when the issuer refuses a Status (say, for its
// next_alg) it encapsulates the next epoch to the key the previous ticket
// used. The agent accepts it, counts and logs "next_key_not_taken", and
// announces a fresh next key instead of repeating the refused one.
func TestNextKeyNotTaken(t *testing.T) {
	e := newEnv(t, nil)
	s1, iss1 := e.first()
	refused := s1.NextPK
	cur := regDevice(t, e.a.Registration())
	cur.Prev = iss1.TicketHash
	e.clock.Add(time.Minute)
	iss2, ep2 := e.is.issue(2, e.clock.Now(), cur)
	e.deliver(iss2, ep2)
	s2, _ := e.pub.lastStatus(t)
	if s2.Epoch != 2 || s2.State != wire.StateOK {
		t.Fatalf("epoch 2 to the current key: %+v", s2)
	}
	if bytes.Equal(s2.NextPK, refused) {
		t.Fatal("the refused next key is announced again")
	}
	if s2.NextAlg != cur.Key.Scheme().ID() {
		t.Fatal("next_alg is not the ticket's kem_alg")
	}
	nextDevice(t, s2, iss2)
	if e.a.Counters()["next_key_not_taken"] != 1 {
		t.Fatalf("counters %v", e.a.Counters())
	}
}
