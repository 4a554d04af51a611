package main

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/signature"
)

func TestRotateKeyUsage(t *testing.T) {
	clearEnv(t)
	base := []string{"rotate-key", "-store", "s.db", "-key", "k.pem", "-new-pub", "n.pub"}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"rotate-key"}, 2, "rotate-key needs -store"},
		{[]string{"rotate-key", "-store", "s.db"}, 2, "rotate-key needs -signing-key"},
		{[]string{"rotate-key", "-store", "s.db", "-key", "k.pem"}, 2, "rotate-key needs -new-pub"},
		{append(base, "-overlap", "0"), 2, "-overlap must be at least 1 epoch, got 0"},
		{append(base, "-overlap", "-1"), 2, `invalid value "-1" for flag -overlap`},
		{append(base, "extra"), 2, `rotate-key: unexpected argument "extra"`},
		{[]string{"rotate-key", "-bogus"}, 2, "flag provided but not defined: -bogus"},
		{base, 1, "-key: open k.pem"},
	} {
		code, _, stderr := runCmd(t, c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) || !strings.HasPrefix(stderr, "ekem-issuer: ") {
			t.Errorf("%v: code %d stderr %q, want %d containing %q", c.args, code, stderr, c.code, c.want)
		}
	}
	if _, stdout, _ := runCmd(t, "help"); !strings.Contains(stdout, "ekem-issuer rotate-key -store FILE -signing-key CURRENT.key -new-pub NEW.pub") ||
		!strings.Contains(stdout, "-next-signing-key FILE   EKEM_NEXT_SIGNING_KEY") {
		t.Error("usage does not describe rotate-key and -next-key")
	}
}

// TestRotateKey: rotate-key stores the announcement and says what happens
// next; refusals leave the store byte-identical; the issuer then starts
// with -key and -next-key.
func TestRotateKey(t *testing.T) {
	clearEnv(t)
	path := makeStore(t) // signed by the seed-1 key, last epoch 1
	dir := t.TempDir()
	cur, err := signature.NewKeyFromSeed(signature.MLDSA65, bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	curFile := filepath.Join(dir, "issuer.key")
	if err := os.WriteFile(curFile, signature.MarshalPrivateKeyPEM(cur), 0o600); err != nil {
		t.Fatal(err)
	}
	newKey, newPub := filepath.Join(dir, "issuer-2.key"), filepath.Join(dir, "issuer-2.pub")
	otherKey, otherPub := filepath.Join(dir, "other.key"), filepath.Join(dir, "other.pub")
	for _, f := range [][2]string{{newKey, newPub}, {otherKey, otherPub}} {
		if code, _, stderr := runCmd(t, "keygen", "-out", f[0], "-pub", f[1]); code != 0 {
			t.Fatal(stderr)
		}
	}
	pubPEM, _ := os.ReadFile(newPub)
	next, err := signature.ParsePublicKeyPEM(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	nextKID := fmt.Sprintf("%x", next.KID())

	unchanged := func(what string, before []byte) {
		t.Helper()
		if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
			t.Fatalf("%s changed the store file", what)
		}
	}
	before, _ := os.ReadFile(path)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-key", otherKey, "-new-pub", newPub}, "not the issuer's current key"},
		{[]string{"-key", curFile, "-new-pub", newKey}, "-new-pub " + newKey},
		{[]string{"-key", newPub, "-new-pub", newPub}, "-signing-key " + newPub},
	} {
		code, _, stderr := runCmd(t, append([]string{"rotate-key", "-store", path}, c.args...)...)
		if code != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: %d %q, want 1 containing %q", c.args, code, stderr, c.want)
		}
		unchanged(strings.Join(c.args, " "), before)
	}

	code, stdout, stderr := runCmd(t, "rotate-key", "-store", path, "-key", curFile, "-new-pub", newPub)
	if code != 0 {
		t.Fatalf("rotate-key: %d %s", code, stderr)
	}
	for _, want := range []string{
		fmt.Sprintf("issuer key %x hands over to new key %s (ML-DSA-87)", cur.Public().KID(), nextKID),
		"last issued epoch 1; epochs 2..4 are still signed by",
		"from epoch 5 on, by " + nextKID,
		"issuer/key/" + nextKID,
		"restart the issuer with -next-signing-key NEW.key (the secret key of " + newPub + "), keeping -signing-key " + curFile,
		"once epoch 5 is issued, run it with -signing-key NEW.key alone",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	st, err := issuer.OpenStore(path, true)
	if err != nil {
		t.Fatal(err)
	}
	rots, err := issuer.StoredRotations(st)
	st.Close()
	if err != nil || len(rots) != 1 || rots[0].From != 5 || !rots[0].New.Equal(next) {
		t.Fatalf("stored rotations %+v %v", rots, err)
	}

	// A second rotation before the first takes effect is refused.
	before, _ = os.ReadFile(path)
	code, _, stderr = runCmd(t, "rotate-key", "-store", path, "-key", newKey, "-new-pub", otherPub, "-overlap", "1")
	if code != 1 || !strings.Contains(stderr, "has not taken effect yet") {
		t.Fatalf("second rotation: %d %q", code, stderr)
	}
	unchanged("a refused second rotation", before)

	// The issuer starts with both keys, from flags or the environment.
	args := []string{"-broker", "tcp://127.0.0.1:1", "-key", curFile, "-store", path}
	t.Setenv("EKEM_NEXT_KEY", newKey)
	f, err := parseRun(args)
	if err != nil || f.nextKey != newKey {
		t.Fatalf("EKEM_NEXT_KEY: %+v %v", f, err)
	}
	cfg, err := f.config(slog.New(slog.DiscardHandler))
	if err != nil || cfg.NextKey == nil || !cfg.NextKey.Public().Equal(next) {
		t.Fatalf("config: %v", err)
	}
	iss, err := issuer.New(cfg)
	if err != nil {
		t.Fatalf("issuer with -next-key: %v", err)
	}
	iss.Close()
	os.Unsetenv("EKEM_NEXT_KEY")
	// The old key alone still starts (it signs epochs 2..4); the new one
	// alone does not.
	f, _ = parseRun([]string{"-broker", "tcp://127.0.0.1:1", "-key", newKey, "-store", path})
	if cfg, err = f.config(slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if _, err := issuer.New(cfg); !errors.Is(err, issuer.ErrSigningKey) || !strings.Contains(err.Error(), "epoch 2") {
		t.Fatalf("new key alone before the switch: %v", err)
	}
	if code, _, stderr := runCmd(t, append([]string{"run", "-next-key", curFile}, args...)...); code != 2 || !strings.Contains(stderr, "-next-signing-key and -signing-key must be different files") {
		t.Fatalf("same file: %d %q", code, stderr)
	}
}
