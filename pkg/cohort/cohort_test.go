package cohort

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestVectors checks the software provider against
// schema/testdata/cohort_mac.json, which was made independently of Go.
func TestVectors(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "schema", "testdata", "cohort_mac.json"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Vectors []struct{ Secret, Msg, MAC string } `json:"vectors"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Vectors) == 0 {
		t.Fatal("no vectors")
	}
	for i, v := range file.Vectors {
		secret, _ := hex.DecodeString(v.Secret)
		msg, _ := hex.DecodeString(v.Msg)
		want, _ := hex.DecodeString(v.MAC)
		s, err := NewSoftware(secret)
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.MAC(msg)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("vector %d: got %x, want %x (%v)", i, got, want, err)
		}
	}
}

func TestBounds(t *testing.T) {
	for _, n := range []int{0, 31, 33, 64} {
		if _, err := NewSoftware(make([]byte, n)); !errors.Is(err, ErrBadSecret) {
			t.Errorf("secret of %d bytes: %v", n, err)
		}
	}
	secret := bytes.Repeat([]byte{0xa5}, SecretSize)
	s, _ := NewSoftware(secret)
	secret[0] = 0 // the provider keeps its own copy
	a, _ := s.MAC([]byte("m"))
	s2, _ := NewSoftware(bytes.Repeat([]byte{0xa5}, SecretSize))
	if b, _ := s2.MAC([]byte("m")); !bytes.Equal(a, b) {
		t.Fatal("caller's buffer changed the provider's secret")
	}
	if _, err := s.MAC(make([]byte, MaxMessage+1)); err == nil {
		t.Fatal("message over the TPM's input buffer accepted")
	}
}
