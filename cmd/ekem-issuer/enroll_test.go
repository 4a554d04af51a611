package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// enroll imports a CSV into a stopped store, audited; a malformed list is
// refused with its line and imports nothing; deny needs the running issuer.
func TestEnrollCommand(t *testing.T) {
	clearEnv(t)
	path := makeStore(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "batch.csv")
	os.WriteFile(good, []byte("device_id,key_sha256\ndev-a\ndev-new,"+strings.Repeat("0f", 32)+"\n"), 0o600)
	bad := filepath.Join(dir, "bad.csv")
	os.WriteFile(bad, []byte("dev-x\nekem-issuer\n"), 0o600)

	code, _, stderr := runCmd(t, "enroll", "-store", path, "-admin-socket", "off", bad)
	if code != 1 || !strings.Contains(stderr, "line 2") || !strings.Contains(stderr, "reserved") {
		t.Fatalf("bad list: exit %d, %q", code, stderr)
	}
	code, stdout, stderr := runCmd(t, "enroll", "-store", path, "-admin-socket", "off", "-reason", "batch 7", good)
	if code != 0 || !strings.Contains(stdout, "enrolled 2 devices: 1 new, 1 already known") {
		t.Fatalf("enroll: exit %d, %q %q", code, stdout, stderr)
	}
	if d := storedDevice(t, path, "dev-new"); !d.Enrolled || len(d.EnrolledKeyHash) != 32 || d.PinnedKeyHash != nil {
		t.Fatalf("dev-new after enroll: %+v", d)
	}
	if d := storedDevice(t, path, "dev-a"); !d.Enrolled {
		t.Fatalf("dev-a after enroll: %+v", d)
	}
	code, stdout, _ = runCmd(t, "audit", "-store", path, "-admin-socket", "off")
	if code != 0 || !strings.Contains(stdout, "enroll") || !strings.Contains(stdout, "batch 7") || strings.Contains(stdout, "dev-x") {
		t.Fatalf("audit after enroll: exit %d\n%s", code, stdout)
	}
	code, _, stderr = runCmd(t, "deny", "-store", path, "-admin-socket", "off", "dev-new")
	if code != 1 || !strings.Contains(stderr, "running issuer") {
		t.Fatalf("deny on a stopped store: exit %d, %q", code, stderr)
	}
}
