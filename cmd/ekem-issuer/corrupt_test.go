package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/pkg/signature"
)

// TestCorruptStoreEveryCommand: a truncated or garbled store gives every
// command a clear error naming the file and what to do, never a panic, and
// leaves the file as it was.
func TestCorruptStoreEveryCommand(t *testing.T) {
	clearEnv(t)
	good, err := os.ReadFile(makeStore(t))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "issuer.key")
	key, _ := signature.GenerateKey(signature.MLDSA65)
	os.WriteFile(keyFile, signature.MarshalPrivateKeyPEM(key), 0o600)
	pubFile := filepath.Join(dir, "next.pub")
	next, _ := signature.GenerateKey(signature.MLDSA65)
	os.WriteFile(pubFile, signature.MarshalPublicKeyPEM(next.Public()), 0o600)
	garbled := append([]byte(nil), good...)
	for k := 2 * 4096; k < len(garbled); k++ {
		garbled[k] = 0xa5
	}
	for name, b := range map[string][]byte{"truncated": good[:len(good)/2], "garbled": garbled} {
		path := filepath.Join(dir, name+".db")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{
			{"devices"}, {"devices", "-json"}, {"device", "dev-a"}, {"audit"},
			{"revoke", "dev-a"}, {"release", "dev-a"}, {"reset", "dev-a"}, {"approve", "dev-a"},
			{"rotate-key", "-key", keyFile, "-new-pub", pubFile},
			{"run", "-broker", "tcp://127.0.0.1:1", "-key", keyFile},
			{"recover", "-broker", "tcp://127.0.0.1:1", "-key", keyFile},
		} {
			args := append(append(args[:1:1], "-store", path), args[1:]...)
			code, stdout, stderr := runCmd(t, args...)
			if code != 1 || !strings.Contains(stderr, path) || !strings.Contains(stderr, "corrupt") ||
				!strings.Contains(stderr, "hint:") || strings.Contains(stderr+stdout, "panic") {
				t.Errorf("%s store: ekem-issuer %v: exit %d\nstdout: %s\nstderr: %s", name, args[:1], code, stdout, stderr)
			}
			if after, _ := os.ReadFile(path); string(after) != string(b) {
				t.Fatalf("%s store: ekem-issuer %v changed the file", name, args[:1])
			}
		}
	}
}
