package standing

import "testing"

func TestAllDistinctAndOrdered(t *testing.T) {
	seen := map[Standing]bool{}
	for i, s := range All {
		if seen[s] {
			t.Fatalf("%q twice", s)
		}
		seen[s] = true
		if s.Severity() != i || !s.Valid() {
			t.Fatalf("%q: severity %d, want %d", s, s.Severity(), i)
		}
	}
	if Standing("unissued").Valid() || Standing("unissued").Severity() != len(All) {
		t.Fatal("an unknown word is valid")
	}
	if got := Strings(); len(got) != len(All) || got[0] != string(Revoked) {
		t.Fatalf("Strings: %v", got)
	}
}
