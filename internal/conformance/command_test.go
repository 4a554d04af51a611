package conformance

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCommandUsageErrors(t *testing.T) {
	dir := t.TempDir()
	devs := filepath.Join(dir, "devs")
	os.WriteFile(devs, []byte("# kit devices\ndev-a pw-a\n\ndev-b\n"), 0o600)
	cases := []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "usage"},
		{[]string{"-h"}, 0, "usage"},
		{[]string{"bogus"}, 2, "unknown mode"},
		{[]string{"device"}, 2, "-broker is required"},
		{[]string{"device", "-broker", "tcp://127.0.0.1:1"}, 2, "-id and -issuer-key are required"},
		{[]string{"device", "-broker", "tcp://127.0.0.1:1", "-id", "d", "-issuer-key", filepath.Join(dir, "none")}, 2, "no such file"},
		{[]string{"issuer", "-broker", "tcp://127.0.0.1:1"}, 2, "-issuer-pub and -devices-file are required"},
		{[]string{"issuer", "-broker", "tcp://127.0.0.1:1", "-issuer-pub", devs, "-devices-file", devs}, 2, "-issuer-pub"},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		code := Command(context.Background(), c.args, &out, &errb)
		if code != c.code || !strings.Contains(out.String()+errb.String(), c.want) {
			t.Errorf("%v: exit %d (want %d), output %q (want %q)", c.args, code, c.code, out.String()+errb.String(), c.want)
		}
	}
	if _, err := readDevices(devs); err == nil || !strings.Contains(err.Error(), ":4:") {
		t.Fatalf("a line without a password: %v", err)
	}
}
