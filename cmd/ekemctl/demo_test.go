package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestDemo runs the quickstart end to end on the embedded broker: it must
// end with the N/N line and exit 0.
func TestDemo(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"demo", "-devices", "3", "-epochs", "2", "-period", "1s"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if last := lines[len(lines)-1]; last != "3/3 devices on epoch 2" {
		t.Fatalf("last line %q", last)
	}
	if n := strings.Count(out.String(), "accepted epoch"); n != 6 {
		t.Fatalf("%d acceptances printed, want 6", n)
	}
	if !strings.Contains(out.String(), "every ticket encapsulated to a fresh device KEM key") {
		t.Fatal("epoch 2 did not use fresh device keys")
	}
}

func TestDemoFlags(t *testing.T) {
	for _, args := range [][]string{
		{"demo", "-devices", "0"},
		{"demo", "-epochs", "-1"},
		{"demo", "-period", "10ms"},
		{"demo", "-broker", "tcp://127.0.0.1:1"},
		{"demo", "-creds", "/tmp"},
		{"demo", "extra"},
		{"nosuch"},
	} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
		if !strings.Contains(errb.String(), "ekemctl") {
			t.Errorf("%v: stderr %q does not name the tool", args, errb.String())
		}
	}
}
