package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/broker-config/creds"
)

func TestRunWritesCredentials(t *testing.T) {
	out := filepath.Join(t.TempDir(), "c")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-out", out, "-devices", "2", "-prefix", "meter-", "-ids", "boiler-7", "-ca"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	pw, err := os.ReadFile(creds.PasswordFile(out))
	if err != nil {
		t.Fatal(err)
	}
	var users []string
	for _, l := range strings.Split(strings.TrimSpace(string(pw)), "\n") {
		u, _, _ := strings.Cut(l, ":")
		users = append(users, u)
	}
	want := "ekem-issuer,ekem-monitor,meter-1,meter-2,boiler-7"
	if got := strings.Join(users, ","); got != want {
		t.Errorf("password file users %s, want %s", got, want)
	}
	a, err := creds.ReadAccountFile(creds.AccountFile(out, "boiler-7"))
	if err != nil || a.Username != "boiler-7" {
		t.Errorf("account file: %+v, %v", a, err)
	}
	cert, _ := creds.ClientCertFiles(out, "meter-2")
	if _, err := os.Stat(cert); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if strings.Contains(stdout.String(), a.Password) {
		t.Error("stdout shows a password")
	}
}

func TestRunRefuses(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"-devices", "1"}, 2, "-out is required"},
		{[]string{"-out", dir + "/a", "-ids", "ekem-issuer"}, 2, "reserved account name"},
		{[]string{"-out", dir + "/b", "-ids", "Ekem-Monitor"}, 2, "reserved account name"},
		{[]string{"-out", dir + "/c", "-ids", "a/b"}, 2, "invalid device id"},
		{[]string{"-out", dir + "/d", "-prefix", "-x", "-devices", "1"}, 2, "invalid device id"},
		{[]string{"-out", dir + "/e", "-devices", "-1"}, 2, "negative"},
		{[]string{"-out", dir + "/f", "extra"}, 2, "unexpected argument"},
	}
	for _, tc := range cases {
		var stdout, stderr bytes.Buffer
		code := run(tc.args, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stderr.String(), tc.msg) {
			t.Errorf("run(%q) = %d, stderr %q; want %d and %q", tc.args, code, stderr.String(), tc.code, tc.msg)
		}
	}
	var stderr bytes.Buffer
	out := filepath.Join(dir, "twice")
	if code := run([]string{"-out", out}, &bytes.Buffer{}, &stderr); code != 0 {
		t.Fatalf("first run: %d %s", code, stderr.String())
	}
	stderr.Reset()
	if code := run([]string{"-out", out}, &bytes.Buffer{}, &stderr); code != 1 || !strings.Contains(stderr.String(), "never overwrites") {
		t.Errorf("second run into %s = %d, %q; want a refusal", out, code, stderr.String())
	}
}
