package device

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"
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
