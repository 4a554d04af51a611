package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/broker-config/creds"
	"github.com/entropykem/entropykem/internal/embedbroker"
	"github.com/entropykem/entropykem/internal/monitor"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

func TestFleetUsage(t *testing.T) {
	t.Setenv("EKEM_PASSWORD", "")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"fleet"}, 2, "ekemctl fleet: missing subcommand (the only one is status)"},
		{[]string{"fleet", "list"}, 2, `ekemctl fleet: unknown subcommand "list" (the only one is status)`},
		{[]string{"fleet", "status", "-h"}, 0, "usage: ekemctl fleet status"},
		{[]string{"fleet", "-h"}, 0, ""},
		{[]string{"fleet", "status"}, 2, "-broker is required"},
		{[]string{"fleet", "status", "-broker", "tcp://127.0.0.1:1"}, 2, "-issuer-pub is required"},
		{[]string{"fleet", "status", "-broker", "tcp://127.0.0.1:1", "-issuer-pub", "x"}, 2, "a credential is required"},
		{[]string{"fleet", "status", "-broker", "tcp://127.0.0.1:1", "-issuer-pub", "x", "-tls-cert", "c"}, 2, "-tls-cert and -tls-key go together"},
		{[]string{"fleet", "status", "-broker", "tcp://127.0.0.1:1", "-issuer-pub", "x", "-cert", "c"}, 2, "ekemctl fleet: warning: -cert is deprecated; use -tls-cert"},
		{[]string{"fleet", "status", "-broker", "tcp://127.0.0.1:1", "-issuer-pub", "x", "-password", "hunter2"}, 2, "secrets are never accepted on the command line"},
		{[]string{"fleet", "status", "-broker", "tcp://127.0.0.1:1", "-issuer-pub", "x", "-password-file", "p", "-json", "-watch"}, 2, "exclude each other"},
		{[]string{"fleet", "status", "-broker", "tcp://127.0.0.1:1", "-issuer-pub", "/nonexistent", "-password-file", "p"}, 2, "-issuer-pub"},
	} {
		var out, errb bytes.Buffer
		if code := run(tc.args, &out, &errb); code != tc.code || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, errb.String(), tc.code, tc.want)
		}
	}
	var out, errb bytes.Buffer
	if run([]string{"help"}, &out, &errb); !strings.Contains(out.String(), "fleet") {
		t.Errorf("ekemctl usage does not list fleet:\n%s", out.String())
	}
}

// TestFleetStatusEmbedded runs "ekemctl fleet status -json" against the
// embedded broker with the monitor account from the environment, as a
// systemd unit would (EnvironmentFile with EKEM_USERNAME/EKEM_PASSWORD).
func TestFleetStatusEmbedded(t *testing.T) {
	b, err := embedbroker.Start("127.0.0.1:0", wire.DefaultPrefix, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.AddUser("ekem-monitor", "monitor-pw"); err != nil {
		t.Fatal(err)
	}
	key, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		t.Fatal(err)
	}
	pub := filepath.Join(t.TempDir(), "issuer.pub")
	if err := os.WriteFile(pub, signature.MarshalPublicKeyPEM(key.Public()), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("EKEM_USERNAME", "ekem-monitor")
	t.Setenv("EKEM_PASSWORD", "monitor-pw")
	var out, errb bytes.Buffer
	code := run([]string{"fleet", "status", "-broker", b.URL(), "-issuer-pub", pub, "-json", "-settle", "200ms"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var s monitor.Snapshot
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if s.Epoch != 0 || len(s.Devices) != 0 || s.Totals[monitor.StateCurrent] != 0 {
		t.Fatalf("empty fleet: %+v", s)
	}
	t.Setenv("EKEM_PASSWORD", "wrong")
	if code := run([]string{"fleet", "status", "-broker", b.URL(), "-issuer-pub", pub, "-timeout", "5s"}, &out, &errb); code != 1 {
		t.Fatalf("wrong password: exit %d", code)
	}
}

// TestFleetStatusBrokerDown: with nothing listening, the one-shot status
// gives up after -connect-timeout with a message that says so (it used to
// wait -timeout, 60 s, and print "context deadline exceeded").
func TestFleetStatusBrokerDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	dir := t.TempDir()
	key, _ := signature.GenerateKey(signature.MLDSA65)
	pub := filepath.Join(dir, "issuer.pub")
	os.WriteFile(pub, signature.MarshalPublicKeyPEM(key.Public()), 0o600)
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("x\n"), 0o600)
	t.Setenv("EKEM_PASSWORD", "")
	var out, errb bytes.Buffer
	code := run([]string{"fleet", "status", "-broker", "tcp://" + addr, "-issuer-pub", pub, "-password-file", pw, "-connect-timeout", "1s"}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "cannot reach the broker at tcp://"+addr+" within 1s") ||
		!strings.Contains(errb.String(), "hint: is the broker running") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}

// TestFleetStatusAccountFile: the monitor's account file from mkcreds
// (accounts/ekem-monitor.env) is accepted as -password-file: the embedded
// broker checks the password, so a wrong file fails to log in.
func TestFleetStatusAccountFile(t *testing.T) {
	b, err := embedbroker.Start("127.0.0.1:0", wire.DefaultPrefix, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	acct, err := creds.NewAccount("ekem-monitor")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.AddUser(acct.Username, acct.Password); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	key, _ := signature.GenerateKey(signature.MLDSA65)
	pub := filepath.Join(dir, "issuer.pub")
	os.WriteFile(pub, signature.MarshalPublicKeyPEM(key.Public()), 0o600)
	good := filepath.Join(dir, "ekem-monitor.env")
	os.WriteFile(good, acct.Marshal(), 0o600)
	other, _ := creds.NewAccount("ekem-monitor")
	wrong := filepath.Join(dir, "wrong.env")
	os.WriteFile(wrong, other.Marshal(), 0o600)
	t.Setenv("EKEM_PASSWORD", "")
	t.Setenv("EKEM_USERNAME", "")
	var out, errb bytes.Buffer
	if code := run([]string{"fleet", "status", "-broker", b.URL(), "-issuer-pub", pub, "-password-file", good, "-json", "-settle", "200ms"}, &out, &errb); code != 0 {
		t.Fatalf("account file: exit %d: %s", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"fleet", "status", "-broker", b.URL(), "-issuer-pub", pub, "-password-file", wrong, "-json"}, &out, &errb); code != 1 ||
		!strings.Contains(errb.String(), "refused") {
		t.Fatalf("another password: exit %d: %s", code, errb.String())
	}
}
