package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/internal/logbuf"
	"github.com/entropykem/entropykem/internal/swtpmtest"
	"github.com/entropykem/entropykem/pkg/wire"
)

// TestRunRefusesLostStateThenReenroll: after state.bin is lost, run and
// next-key refuse (exit 1) with the cause and the command to run; reenroll
// then makes a new key marked as a re-enrollment, refuses to replace a
// working state without -force, and refuses while the agent runs.
func TestRunRefusesLostStateThenReenroll(t *testing.T) {
	f := provision(t)
	dir := filepath.Join(f.dir, "s")
	ids := []string{"-id", "dev-0001", "-state", dir, "-cohort-file", f.cohort}
	exec := func(args ...string) (int, string, string) {
		var o, e logbuf.Buffer
		code := execute(t.Context(), args, env(nil), &o, &e)
		return code, o.String(), e.String()
	}
	if code, _, e := exec(append([]string{"reenroll"}, ids...)...); code != 0 {
		t.Fatalf("reenroll of a new directory: exit %d %s", code, e)
	}
	reg1, _ := os.ReadFile(filepath.Join(dir, "registration.cbor"))
	// A working state is replaced only with -force.
	if code, _, e := exec(append([]string{"reenroll"}, ids...)...); code != 1 || !strings.Contains(e, "-force") {
		t.Fatalf("reenroll of a working state: exit %d %s", code, e)
	}
	if err := os.Remove(filepath.Join(dir, "state.bin")); err != nil {
		t.Fatal(err)
	}
	run := []string{"run", "-broker", "tcp://127.0.0.1:1", "-password-file", f.password, "-issuer-pub", f.issuerPub}
	for _, args := range [][]string{append(run, ids...), append([]string{"next-key"}, ids...)} {
		code, _, e := exec(args...)
		if code != 1 || !strings.Contains(e, "ekem-device reenroll -id dev-0001 -state "+dir) || !strings.Contains(e, "registration.cbor") {
			t.Fatalf("%s on a lost state: exit %d %s", args[0], code, e)
		}
		if _, err := os.Stat(filepath.Join(dir, "state.bin")); err == nil {
			t.Fatalf("%s created a state", args[0])
		}
	}
	code, out, e := exec(append([]string{"reenroll"}, ids...)...)
	if code != 0 || !strings.Contains(out, "re-enrolled") || !strings.Contains(out, "ekem-issuer approve dev-0001") {
		t.Fatalf("reenroll: exit %d %s %s", code, out, e)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "registration.cbor"))
	r, err := wire.ParseRegistration(b)
	if err != nil || !r.Reenroll || string(b) == string(reg1) {
		t.Fatalf("registration after reenroll: %+v %v", r, err)
	}
	// A state under another cohort secret: run says what to check.
	other := filepath.Join(f.dir, "other.key")
	if err := os.WriteFile(other, []byte(strings.Repeat("cd", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, e := exec("next-key", "-id", "dev-0001", "-state", dir, "-cohort-file", other); code != 1 ||
		!strings.Contains(e, "does not decrypt") || !strings.Contains(e, "hint: check the device id and the cohort secret") {
		t.Fatalf("next-key under another cohort: exit %d %s", code, e)
	}
}

// TestReenrollWithTPM: a TPM device whose state.bin is lost refuses to run
// (the cohort blob alone is not an identity, the registration is) and
// re-enrolls under its TPM cohort key; the blob is kept.
func TestReenrollWithTPM(t *testing.T) {
	sw := swtpmtest.Start(t)
	f := provision(t)
	secret := tpmNewSecret(t)
	dir := t.TempDir()
	tpmProvision(t, secret, dir, sw.Socket())
	blob, _ := tpmBlob(t, dir)
	tpmNewDevice(t, dir, sw.Socket(), "dev-0001")
	if err := os.Remove(filepath.Join(dir, "state.bin")); err != nil {
		t.Fatal(err)
	}
	if code, _, e := tpmCLI(t, secret, tpmRunArgs(f, dir, sw.Socket())...); code != 1 || !strings.Contains(e, "ekem-device reenroll") {
		t.Fatalf("run on a lost state: exit %d %s", code, e)
	}
	code, out, e := tpmCLI(t, secret, "reenroll", "-id", "dev-0001", "-state", dir, "-tpm", sw.Socket())
	if code != 0 || !strings.Contains(out, "re-enrolled") {
		t.Fatalf("reenroll: exit %d %s %s", code, out, e)
	}
	if b, _ := tpmBlob(t, dir); !bytes.Equal(b, blob) {
		t.Fatal("cohort.blob changed")
	}
	b, _ := os.ReadFile(filepath.Join(dir, "registration.cbor"))
	if r, err := wire.ParseRegistration(b); err != nil || !r.Reenroll {
		t.Fatalf("registration %+v %v", r, err)
	}
	tpmNewDevice(t, dir, sw.Socket(), "dev-0001") // the new state loads under the TPM key
}
