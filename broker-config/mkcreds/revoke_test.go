package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/broker-config/creds"
)

// mkcreds revoke removes the password, lists the certificate in the CRL,
// denies the account in the ACL and signals the broker's process; a second
// revoke and an unknown name change nothing.
func TestRevokeCommand(t *testing.T) {
	out := filepath.Join(t.TempDir(), "c")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-out", out, "-ids", "dev-1,dev-2", "-issuers", "2", "-ca"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	acl, _ := os.ReadFile(creds.ACLFile(out))
	if !strings.Contains(string(acl), "user ekem-issuer-2\n") {
		t.Fatal("-issuers 2 did not render a section for ekem-issuer-2")
	}
	if _, err := creds.ReadAccountFile(creds.AccountFile(out, "ekem-issuer-2")); err != nil {
		t.Fatalf("no account for ekem-issuer-2: %v", err)
	}

	// A process that stands for the broker and records its SIGHUP.
	sleeper := exec.Command("sleep", "30")
	if err := sleeper.Start(); err != nil {
		t.Skipf("no sleep binary: %v", err)
	}
	defer sleeper.Process.Kill()
	pidfile := filepath.Join(t.TempDir(), "pid")
	if err := os.WriteFile(pidfile, []byte(strconv.Itoa(sleeper.Process.Pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	stdout.Reset()
	stderr.Reset()
	if code := run([]string{"revoke", "-dir", out, "-pidfile", pidfile, "dev-1"}, &stdout, &stderr); code != 0 {
		t.Fatalf("revoke: exit %d: %s", code, stderr.String())
	}
	for _, want := range []string{"password removed", "added to the CRL", "denied every topic", "sent SIGHUP"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("revoke output lacks %q:\n%s", want, stdout.String())
		}
	}
	if err := sleeper.Wait(); err == nil || !strings.Contains(err.Error(), "hangup") {
		t.Errorf("the process named by -pidfile ended with %v, want SIGHUP", err)
	}
	pw, _ := os.ReadFile(creds.PasswordFile(out))
	if strings.Contains(string(pw), "dev-1:") || !strings.Contains(string(pw), "dev-2:") {
		t.Errorf("password file after revoke:\n%s", pw)
	}

	snapshot := func() string {
		var b strings.Builder
		for _, p := range []string{creds.PasswordFile(out), creds.ACLFile(out), creds.CRLFile(out)} {
			data, _ := os.ReadFile(p)
			b.Write(data)
		}
		return b.String()
	}
	before := snapshot()
	stdout.Reset()
	if code := run([]string{"revoke", "-dir", out, "dev-1"}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "already revoked") {
		t.Errorf("second revoke: exit %d, %q", code, stdout.String())
	}
	stderr.Reset()
	if code := run([]string{"revoke", "-dir", out, "dev-404"}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "unknown account") {
		t.Errorf("unknown account: exit %d, %q", code, stderr.String())
	}
	if snapshot() != before {
		t.Error("a second revoke or an unknown name changed the files")
	}
	for _, args := range [][]string{{"revoke", "dev-1"}, {"revoke", "-dir", out}, {"revoke", "-dir", out, "-hup", "1", "-pidfile", pidfile, "dev-2"}} {
		if code := run(args, &stdout, &stderr); code != 2 {
			t.Errorf("run(%q) = %d, want 2", args, code)
		}
	}
}
