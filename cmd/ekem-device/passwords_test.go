package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/broker-config/creds"
	"github.com/entropykem/entropykem/internal/logbuf"
)

// TestFleetPasswordsFromMkcreds: fleet -passwords takes a mkcreds
// directory (accounts/ID.env), a directory of ID.env files or of bare
// per-id files, and refuses another device's account file.
func TestFleetPasswordsFromMkcreds(t *testing.T) {
	ids := []string{"dev-0001", "dev-0002"}
	want := map[string]string{}
	mk := t.TempDir()
	envDir := t.TempDir()
	bare := t.TempDir()
	os.Mkdir(filepath.Join(mk, "accounts"), 0o700)
	for _, id := range ids {
		a, err := creds.NewAccount(id)
		if err != nil {
			t.Fatal(err)
		}
		want[id] = a.Password
		os.WriteFile(creds.AccountFile(mk, id), a.Marshal(), 0o600)
		os.WriteFile(filepath.Join(envDir, id+".env"), a.Marshal(), 0o600)
		os.WriteFile(filepath.Join(bare, id), []byte(a.Password+"\n"), 0o600)
	}
	for _, dir := range []string{mk, envDir, bare} {
		o := newOpts("fleet", "", &logbuf.Buffer{}, "passwords", "password", "password-file")
		if err := o.parse([]string{"-passwords", dir}, env(nil)); err != nil {
			t.Fatal(err)
		}
		pws, err := fleetPasswords(o, ids)
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		for i, id := range ids {
			if pws[i] != want[id] {
				t.Errorf("%s: %s's password is not its account's", dir, id)
			}
		}
	}
	// dev-0002's file holds dev-0001's account: refused, naming both.
	b, _ := os.ReadFile(creds.AccountFile(mk, "dev-0001"))
	os.WriteFile(creds.AccountFile(mk, "dev-0002"), b, 0o600)
	o := newOpts("fleet", "", &logbuf.Buffer{}, "passwords", "password", "password-file")
	o.parse([]string{"-passwords", mk}, env(nil))
	if _, err := fleetPasswords(o, ids); err == nil || !strings.Contains(err.Error(), `account file of "dev-0001", but the username is "dev-0002"`) {
		t.Fatalf("another device's account file: %v", err)
	}
}
