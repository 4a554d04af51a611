package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
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
		"-broker", b.URL(), "-username", acct.Username, "-key", keyFile, "-store", filepath.Join(dir, "issuer.db"), "-period", "1s",
		"-chunk-leaves", "2") // three played ids: every epoch streamed in two chunks (§5.5)
	var lines []string
	for _, id := range ids {
		lines = append(lines, fmt.Sprintf("%s %s", id, b.Account(id).Password))
	}
	devices := filepath.Join(dir, "devices")
	if err := os.WriteFile(devices, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The played ids are made members of one cohort online, through the
	// running issuer's admin socket, with the CLI an operator uses
	// (enrolled first: membership needs the issuer's record of the id).
	store := filepath.Join(dir, "issuer.db")
	sysWaitFor(t, "the issuer's admin socket", func() bool { _, err := os.Stat(store + ".sock"); return err == nil })
	enroll := filepath.Join(dir, "enroll.csv")
	if err := os.WriteFile(enroll, []byte(strings.Join(ids, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := runBin(t, nil, binary(t, "ekem-issuer"), "enroll", "-store", store, enroll); code != 0 {
		t.Fatalf("enroll: exit %d %s %s", code, out, errOut)
	}
	for _, id := range ids {
		code, out, errOut := runBin(t, nil, binary(t, "ekem-issuer"), "cohort", "-store", store, "-reason", "conformance", id, "conf-cohort")
		if code != 0 || !strings.Contains(out, "member of cohort conf-cohort") {
			t.Fatalf("cohort %s: exit %d %s %s", id, code, out, errOut)
		}
	}
	code, out, _ := runBin(t, nil, binary(t, "ekem-issuer"), "audit", "-store", store)
	if strings.Count(out, "cohort (none) -> conf-cohort") != len(ids) || !strings.Contains(out, "via admin socket") {
		t.Fatalf("audit (exit %d) does not show the online cohort changes:\n%s", code, out)
	}
	kit := startProc(t, "ekemctl conformance issuer", nil, binary(t, "ekemctl"), "conformance", "issuer",
		"-broker", b.URL(), "-issuer-pub", pubFile, "-devices-file", devices, "-cohort", "conf-cohort")
	code = exitCode(t, kit, 3*time.Minute)
	out = strings.Join(kit.stdout.all(), "\n")
	t.Logf("kit:\n%s", out)
	if code != 0 || !strings.Contains(out, " 0 failed") {
		t.Fatalf("exit %d; kit stderr:\n%s\nissuer stderr:\n%s", code, kit.stderr.tail(20), iss.stderr.tail(40))
	}
	if !regexp.MustCompile(`cohort group seed +§7\.7.* PASS`).MatchString(out) {
		t.Fatal("the kit did not check the cohort group seed")
	}
	if !regexp.MustCompile(`streamed epoch +§5\.4.* PASS`).MatchString(out) {
		t.Fatal("the kit did not check streamed epochs")
	}
}
