package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/mosquittotest"
	"github.com/entropykem/entropykem/pkg/signature"
)

// exitCode waits (bounded) for p to end and returns its exit code.
func exitCode(t *testing.T, p *proc, d time.Duration) int {
	t.Helper()
	if err := waitExit(t, p, d); err == nil {
		return 0
	}
	return p.cmd.ProcessState.ExitCode()
}

// TestConformanceDeviceBinary runs "ekemctl conformance device" against
// "ekem-device run" over a real Mosquitto: every rule passes.
func TestConformanceDeviceBinary(t *testing.T) {
	const id = "conf-dev"
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{id}})
	dir := t.TempDir()
	key, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		t.Fatal(err)
	}
	keyFile, pubFile := writeIssuerKeyFiles(t, dir, key)
	cohortFile, _ := writeCohortFile(t, dir)
	issPw := filepath.Join(dir, "issuer.pw")
	if err := os.WriteFile(issPw, []byte(b.Issuer().Password), 0o600); err != nil {
		t.Fatal(err)
	}
	kit := startProc(t, "ekemctl conformance device", nil, binary(t, "ekemctl"), "conformance", "device",
		"-broker", b.URL(), "-password-file", issPw, "-id", id, "-issuer-key", keyFile)
	dev := startProc(t, "ekem-device run", []string{"EKEM_PASSWORD=" + b.Account(id).Password}, binary(t, "ekem-device"), "run",
		"-id", id, "-broker", b.URL(), "-state", filepath.Join(dir, "state"), "-issuer-pub", pubFile, "-cohort-file", cohortFile)
	code := exitCode(t, kit, 3*time.Minute)
	out := strings.Join(kit.stdout.all(), "\n")
	t.Logf("kit:\n%s", out)
	if code != 0 || !strings.Contains(out, " 0 failed") {
		t.Fatalf("exit %d; kit stderr:\n%s\ndevice stderr:\n%s", code, kit.stderr.tail(20), dev.stderr.tail(40))
	}
}

// TestConformanceIssuerBinary runs "ekemctl conformance issuer" against
// "ekem-issuer run" over a real Mosquitto: every rule passes.
func TestConformanceIssuerBinary(t *testing.T) {
	ids := []string{"conf-a", "conf-b", "conf-c"}
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: ids})
	dir := t.TempDir()
	key, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		t.Fatal(err)
	}
	keyFile, pubFile := writeIssuerKeyFiles(t, dir, key)
	acct := b.Issuer()
	iss := startProc(t, "ekem-issuer run", []string{"EKEM_PASSWORD=" + acct.Password}, binary(t, "ekem-issuer"), "run",
		"-broker", b.URL(), "-username", acct.Username, "-key", keyFile, "-store", filepath.Join(dir, "issuer.db"), "-period", "1s")
	var lines []string
	for _, id := range ids {
		lines = append(lines, fmt.Sprintf("%s %s", id, b.Account(id).Password))
	}
	devices := filepath.Join(dir, "devices")
	if err := os.WriteFile(devices, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	kit := startProc(t, "ekemctl conformance issuer", nil, binary(t, "ekemctl"), "conformance", "issuer",
		"-broker", b.URL(), "-issuer-pub", pubFile, "-devices-file", devices)
	code := exitCode(t, kit, 3*time.Minute)
	out := strings.Join(kit.stdout.all(), "\n")
	t.Logf("kit:\n%s", out)
	if code != 0 || !strings.Contains(out, " 0 failed") {
		t.Fatalf("exit %d; kit stderr:\n%s\nissuer stderr:\n%s", code, kit.stderr.tail(20), iss.stderr.tail(40))
	}
}
