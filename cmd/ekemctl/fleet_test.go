package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
		{[]string{"fleet"}, 2, "usage: ekemctl fleet status"},
		{[]string{"fleet", "-h"}, 0, ""},
		{[]string{"fleet", "status"}, 2, "-broker is required"},
		{[]string{"fleet", "status", "-broker", "tcp://127.0.0.1:1"}, 2, "-issuer-pub is required"},
		{[]string{"fleet", "status", "-broker", "tcp://127.0.0.1:1", "-issuer-pub", "x"}, 2, "a credential is required"},
		{[]string{"fleet", "status", "-broker", "tcp://127.0.0.1:1", "-issuer-pub", "x", "-cert", "c"}, 2, "-cert and -key go together"},
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
