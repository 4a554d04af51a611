package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/internal/pgtest"
)

// TestPostgresCommands: migrate, copy-store from bbolt, then the store
// commands on the database.
func TestPostgresCommands(t *testing.T) {
	clearEnv(t)
	srv := pgtest.Start(t)
	url := srv.URL(srv.NewDatabase(t))
	code, out, errOut := runCmd(t, "migrate", "-store", url)
	if code != 0 || !strings.Contains(out, "schema migrated from version 0 to 1") {
		t.Fatalf("migrate: %d %q %q", code, out, errOut)
	}
	if code, out, _ = runCmd(t, "migrate", "-store", url); code != 0 || !strings.Contains(out, "up to date") {
		t.Fatalf("second migrate: %d %q", code, out)
	}
	if code, _, errOut = runCmd(t, "migrate", "-store", "issuer.db"); code == 0 || !strings.Contains(errOut, "not a postgres:// URL") {
		t.Fatalf("migrate of a file: %d %q", code, errOut)
	}
	path := makeStore(t)
	code, out, errOut = runCmd(t, "copy-store", "-from", path, "-to", url)
	if code != 0 || !strings.Contains(out, "copied 2 devices") {
		t.Fatalf("copy-store: %d %q %q", code, out, errOut)
	}
	// Copied once only: the database is no longer empty.
	if code, _, errOut = runCmd(t, "copy-store", "-from", path, "-to", url); code == 0 || !strings.Contains(errOut, "not empty") {
		t.Fatalf("second copy-store: %d %q", code, errOut)
	}
	code, out, errOut = runCmd(t, "devices", "-store", url)
	if code != 0 || !strings.Contains(out, "last epoch: 1, devices: 2") || !strings.Contains(out, "dev-b") {
		t.Fatalf("devices on postgres: %d %q %q", code, out, errOut)
	}
	if code, _, errOut = runCmd(t, "revoke", "-store", url, "-reason", "test", "dev-a"); code != 0 {
		t.Fatalf("revoke on postgres: %d %q", code, errOut)
	}
	code, out, _ = runCmd(t, "audit", "-store", url)
	if code != 0 || !strings.Contains(out, "revoke") || !strings.Contains(out, "dev-a") {
		t.Fatalf("audit on postgres: %d %q", code, out)
	}
	if got := storedDevice(t, url, "dev-a"); got.State != "revoked" {
		t.Fatalf("dev-a after revoke: %+v", got)
	}
	// run on PostgreSQL: no admin socket; a lease within half the period.
	dir := t.TempDir()
	key, pub := filepath.Join(dir, "k.pem"), filepath.Join(dir, "k.pub")
	if code, _, errOut := runCmd(t, "keygen", "-out", key, "-pub", pub); code != 0 {
		t.Fatal(errOut)
	}
	base := []string{"run", "-broker", "tcp://127.0.0.1:1", "-key", key, "-store", url, "-period", "1m"}
	for _, c := range []struct {
		extra []string
		code  int
		want  string
	}{
		{[]string{"-lease-ttl", "40s"}, 1, "lease ttl must be between 200ms and half the period"},
		{[]string{"-lease-ttl", "-1s"}, 2, "-lease-ttl must not be negative"},
	} {
		code, _, errOut := runCmd(t, append(base, c.extra...)...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("run %v: %d %q, want %d %q", c.extra, code, errOut, c.code, c.want)
		}
	}
}
