package keyschedule

import (
	"bytes"
	"errors"
	"testing"

	"github.com/entropykem/entropykem/pkg/cohort"
)

func TestGroupSeedSealOpen(t *testing.T) {
	ss, g := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	sealed := make([]byte, 48)
	if err := SealGroupSeedTo(sealed, ss, 5, "fleet-a", "dev-a", g); err != nil {
		t.Fatal(err)
	}
	got, err := OpenGroupSeed(ss, 5, "fleet-a", "dev-a", sealed)
	if err != nil || !bytes.Equal(got, g) {
		t.Fatalf("open: %v", err)
	}
	// Bound to ss, epoch, cohort and audience.
	for name, open := range map[string]func() ([]byte, error){
		"ss": func() ([]byte, error) {
			return OpenGroupSeed(bytes.Repeat([]byte{3}, 32), 5, "fleet-a", "dev-a", sealed)
		},
		"epoch":  func() ([]byte, error) { return OpenGroupSeed(ss, 6, "fleet-a", "dev-a", sealed) },
		"cohort": func() ([]byte, error) { return OpenGroupSeed(ss, 5, "fleet-b", "dev-a", sealed) },
		"aud":    func() ([]byte, error) { return OpenGroupSeed(ss, 5, "fleet-a", "dev-b", sealed) },
	} {
		if _, err := open(); !errors.Is(err, ErrGroupSeed) {
			t.Errorf("another %s opened the seed: %v", name, err)
		}
	}
	if err := SealGroupSeedTo(make([]byte, 47), ss, 5, "fleet-a", "dev-a", g); !errors.Is(err, ErrInput) {
		t.Fatal("short destination accepted")
	}
	c1, _ := cohort.NewSoftware(bytes.Repeat([]byte{7}, 32))
	c2, _ := cohort.NewSoftware(bytes.Repeat([]byte{8}, 32))
	k1, _ := GroupKey(c1, g, 5, "fleet-a")
	k1b, _ := GroupKey(c1, g, 5, "fleet-a")
	k2, _ := GroupKey(c2, g, 5, "fleet-a")
	k3, _ := GroupKey(c1, g, 6, "fleet-a")
	k4, _ := GroupKey(c1, g, 5, "fleet-b")
	if !bytes.Equal(k1, k1b) || bytes.Equal(k1, k2) || bytes.Equal(k1, k3) || bytes.Equal(k1, k4) {
		t.Fatal("group key not a function of exactly the cohort secret, epoch and cohort")
	}
}
