package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/cliflag"
	"github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

// clearEnv makes sure no EKEM_* variable of the environment leaks in.
func clearEnv(t *testing.T) {
	for _, v := range append([]string{"EKEM_PASSWORD", "EKEM_KEY", "EKEM_NEXT_KEY", "EKEM_CA", "EKEM_CERT", "EKEM_KEYFILE"}, mapValues(runEnv)...) {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
}

func mapValues(m map[string]cliflag.Env) []string {
	var out []string
	for _, v := range m {
		out = append(out, v.Var)
	}
	return out
}

func TestRunFlagErrors(t *testing.T) {
	clearEnv(t)
	base := []string{"run", "-broker", "tcp://127.0.0.1:1", "-key", "k.pem", "-store", "s.db"}
	cases := []struct {
		args []string
		env  map[string]string
		want string
		code int
	}{
		{[]string{"run", "-bogus"}, nil, "flag provided but not defined: -bogus", 2},
		{[]string{"run"}, nil, "-broker is required", 2},
		{append(base, "-period", "0s"), nil, "ekem-issuer: -period must be at least 1s, got 0s", 2},
		{append(base, "-period", "abc"), nil, `invalid value "abc" for flag -period`, 2},
		{base, map[string]string{"EKEM_PERIOD": "500ms"}, "-period must be at least 1s, got 500ms", 2},
		{base, map[string]string{"EKEM_PERIOD": "abc"}, `EKEM_PERIOD: invalid value for -period`, 2},
		{append(base, "-ttl", "1500ms"), nil, "-ttl must be a whole number of seconds", 2},
		{append(base, "-ttl", "800h"), nil, "-ttl must be between 1s and", 2},
		{append(base, "-keep-roots", "1"), nil, "-keep-roots must be at least 2, got 1", 2},
		{append(base, "-cert", "c.pem"), nil, "-tls-cert and -tls-key go together", 2},
		{append(base, "-ca", "ca.pem"), nil, "need an ssl://", 2},
		{append(base, "-log-level", "loud"), nil, "-log-level", 2},
		{append(base, "extra"), nil, `unexpected argument "extra"`, 2},
		{[]string{"run", "-broker", "http://x:1", "-key", "k", "-store", "s"}, nil, "unsupported scheme", 2},
		{base, nil, "-signing-key: open k.pem", 1},
		{[]string{"frobnicate"}, nil, `unknown command "frobnicate"`, 2},
		{append(base, "-lease-ttl", "1s"), nil, "-lease-ttl needs a postgres:// store", 2},
	}
	for _, c := range cases {
		for k, v := range c.env {
			t.Setenv(k, v)
		}
		code, _, stderr := runCmd(t, c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) || !strings.HasPrefix(stderr, "ekem-issuer: ") {
			t.Errorf("%v %v: code %d stderr %q, want %d containing %q", c.args, c.env, code, stderr, c.code, c.want)
		}
		for k := range c.env {
			os.Unsetenv(k)
		}
	}
}

func TestRunFlagsFromEnv(t *testing.T) {
	clearEnv(t)
	t.Setenv("EKEM_BROKER", "ssl://mqtt.example:8883")
	t.Setenv("EKEM_KEY", "k.pem")
	t.Setenv("EKEM_STORE", "env.db")
	t.Setenv("EKEM_PERIOD", "15m")
	t.Setenv("EKEM_PREFIX", "fleet/v1")
	f, err := parseRun([]string{"-store", "flag.db"})
	if err != nil {
		t.Fatal(err)
	}
	if f.broker != "ssl://mqtt.example:8883" || f.period != 15*time.Minute || f.prefix != "fleet/v1" || f.store != "flag.db" {
		t.Fatalf("%+v", f)
	}
}

func TestPasswordSources(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	pf := filepath.Join(dir, "pw")
	os.WriteFile(pf, []byte("s3cret\n"), 0o600)
	if _, p, err := readPassword(pf, ""); err != nil || p != "s3cret" {
		t.Fatalf("%q %v", p, err)
	}
	t.Setenv("EKEM_PASSWORD", "other")
	if _, _, err := readPassword(pf, ""); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Fatalf("both sources: %v", err)
	}
	if _, p, err := readPassword("", ""); err != nil || p != "other" {
		t.Fatalf("%q %v", p, err)
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	os.Unsetenv("EKEM_PASSWORD")
	if _, _, err := readPassword(empty, ""); err == nil {
		t.Fatal("empty password file accepted")
	}
}

func TestKeygen(t *testing.T) {
	dir := t.TempDir()
	out, pub := filepath.Join(dir, "issuer.key"), filepath.Join(dir, "issuer.pub")
	code, stdout, stderr := runCmd(t, "keygen", "-out", out, "-pub", pub, "-alg", "ML-DSA-65")
	if code != 0 {
		t.Fatalf("keygen: %d %s", code, stderr)
	}
	if !strings.Contains(stdout, "ML-DSA-65") {
		t.Fatalf("stdout %q", stdout)
	}
	st, err := os.Stat(out)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode %v %v", st.Mode(), err)
	}
	privPEM, _ := os.ReadFile(out)
	pubPEM, _ := os.ReadFile(pub)
	k, err := signature.ParsePrivateKeyPEM(privPEM)
	if err != nil {
		t.Fatal(err)
	}
	p, err := signature.ParsePublicKeyPEM(pubPEM)
	if err != nil || !p.Equal(k.Public()) || k.Alg() != signature.MLDSA65 {
		t.Fatal("key files do not match")
	}
	// Never overwrite.
	code, _, stderr = runCmd(t, "keygen", "-out", out, "-pub", filepath.Join(dir, "other.pub"))
	if code != 1 || !strings.Contains(stderr, "refusing to overwrite") {
		t.Fatalf("overwrite: %d %s", code, stderr)
	}
	if again, _ := os.ReadFile(out); !bytes.Equal(again, privPEM) {
		t.Fatal("secret key file changed")
	}
	if _, err := os.Stat(filepath.Join(dir, "other.pub")); err == nil {
		t.Fatal("public file written although the secret exists")
	}
	for _, args := range [][]string{
		{"keygen", "-out", filepath.Join(dir, "a"), "-pub", filepath.Join(dir, "b"), "-alg", "RSA"},
		{"keygen", "-out", filepath.Join(dir, "a")},
	} {
		if code, _, _ := runCmd(t, args...); code != 2 {
			t.Fatalf("%v: code %d", args, code)
		}
	}
}

// makeStore creates a store with two devices, one with an epoch.
func makeStore(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "issuer.db")
	key, err := signature.NewKeyFromSeed(signature.MLDSA65, bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	iss, err := issuer.New(issuer.Config{Key: key, StorePath: path, Period: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer iss.Close()
	sch, _ := kem.Lookup(kem.MLKEM768)
	for _, id := range []string{"dev-a", "dev-b"} {
		k, _ := sch.GenerateKey()
		r := &wire.Registration{Version: 1, DeviceID: id, KEMAlg: kem.MLKEM768, PublicKey: k.PublicKey().Bytes(), CreatedAt: 1}
		b, _ := r.Marshal()
		iss.HandleMessage("ekem/v1/reg/"+id, b)
	}
	if _, err := iss.IssueEpoch(t.Context()); err != nil {
		t.Fatal(err)
	}
	return path
}

// storedDevice reads one device from the store at path.
func storedDevice(t *testing.T, path, id string) issuer.DeviceInfo {
	t.Helper()
	st, err := issuer.OpenStore(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	d, err := issuer.StoreAdmin{Store: st}.Device(id)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestStoreCommands(t *testing.T) {
	clearEnv(t)
	path := makeStore(t)
	before, _ := os.ReadFile(path)
	code, stdout, stderr := runCmd(t, "devices", "-store", path)
	if code != 0 || !strings.Contains(stdout, "last epoch: 1, devices: 2") || !strings.Contains(stdout, "dev-b") {
		t.Fatalf("devices: %d %q %q", code, stdout, stderr)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("devices modified the store")
	}
	// One device in full, from the store as the list shows it.
	code, stdout, stderr = runCmd(t, "device", "-store", path, "dev-a")
	info := storedDevice(t, path, "dev-a")
	for _, want := range []string{"device:", "dev-a", "state:", "active", fmt.Sprintf("%x", info.TicketHash),
		fmt.Sprintf("%x", info.PinnedKeyHash), "latest ticket epoch:", "ML-KEM-768"} {
		if code != 0 || !strings.Contains(stdout, want) {
			t.Fatalf("device dev-a: %d, %q missing from %q (%q)", code, want, stdout, stderr)
		}
	}
	code, stdout, _ = runCmd(t, "device", "-store", path, "-json", "dev-b")
	var shown issuer.DeviceInfo
	if err := json.Unmarshal([]byte(stdout), &shown); code != 0 || err != nil || shown.ID != "dev-b" || shown.LastEpoch != 1 {
		t.Fatalf("device -json dev-b: %d %v %+v", code, err, shown)
	}
	t.Setenv("EKEM_STORE", path)
	code, stdout, _ = runCmd(t, "devices", "-json")
	if code != 0 || !strings.Contains(stdout, `"last_epoch": 1`) {
		t.Fatalf("devices -json: %d %q", code, stdout)
	}
	if code, _, stderr := runCmd(t, "revoke", "dev-a"); code != 0 {
		t.Fatalf("revoke: %s", stderr)
	}
	d := storedDevice(t, path, "dev-a")
	if d.State != issuer.StateRevoked {
		t.Fatalf("state %s", d.State)
	}
	if code, _, _ := runCmd(t, "release", "-reason", "inspected", "dev-a"); code != 0 {
		t.Fatal("release failed")
	}
	if code, _, _ := runCmd(t, "reset", "dev-b"); code != 0 {
		t.Fatal("reset failed")
	}
	a, b := storedDevice(t, path, "dev-a"), storedDevice(t, path, "dev-b")
	if a.State != issuer.StateActive || b.PinnedKeyHash != nil || b.LastEpoch != 1 {
		t.Fatalf("after release/reset: %+v %+v", a, b)
	}
	// Every action is in the audit log, in order, with its actor.
	code, stdout, stderr = runCmd(t, "audit")
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if code != 0 || len(lines) != 4 || !strings.Contains(lines[1], "revoke") || !strings.Contains(lines[2], "release") ||
		!strings.Contains(lines[2], "inspected") || !strings.Contains(lines[3], "reset") ||
		!strings.Contains(lines[1], fmt.Sprintf("uid=%d(", os.Getuid())) || !strings.Contains(lines[1], "dev-a") {
		t.Fatalf("audit: %d %q %q", code, stdout, stderr)
	}
	// A backup of the stopped store is a whole store with the same devices.
	copyPath := filepath.Join(t.TempDir(), "copy.db")
	if code, stdout, stderr := runCmd(t, "backup", "-out", copyPath); code != 0 || !strings.Contains(stdout, "last epoch 1, 2 devices") {
		t.Fatalf("backup: %d %q %q", code, stdout, stderr)
	}
	if storedDevice(t, copyPath, "dev-a").State != issuer.StateActive {
		t.Fatal("the backup does not hold dev-a as stored")
	}
	if code, _, stderr := runCmd(t, "backup", "-out", copyPath); code != 1 || !strings.Contains(stderr, "file exists") {
		t.Fatalf("backup over an existing file: %d %q", code, stderr)
	}
	// Approve needs the running issuer, which holds what it approves.
	if code, _, stderr := runCmd(t, "approve", "dev-a"); code != 1 || !strings.Contains(stderr, "needs the running issuer") {
		t.Fatalf("approve on a stopped store: %d %q", code, stderr)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"reset", "nobody"}, 1, "unknown device"},
		{[]string{"device", "nobody"}, 1, "unknown device"},
		{[]string{"device"}, 2, "exactly one device id"},
		{[]string{"device", "bad/id"}, 2, "invalid device id"},
		{[]string{"reset"}, 2, "exactly one device id"},
		{[]string{"reset", "bad/id"}, 2, "invalid device id"},
		{[]string{"devices", "-store", filepath.Join(t.TempDir(), "none.db")}, 1, "no such file"},
	} {
		code, _, stderr := runCmd(t, c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: %d %q", c.args, code, stderr)
		}
	}
	// A store in use (a running issuer) is refused with a clear error.
	held, err := issuer.OpenStore(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if code, _, stderr := runCmd(t, "revoke", "dev-a"); code != 1 || !strings.Contains(stderr, "in use") {
		t.Fatalf("locked store: %d %q", code, stderr)
	}
}

// TestStoreDirectoryCreated: -store's help says "created if missing"; the
// directory is, too (it was "no such file or directory").
func TestStoreDirectoryCreated(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	keyFile, pubFile := filepath.Join(dir, "issuer.key"), filepath.Join(dir, "issuer.pub")
	if code, _, stderr := runCmd(t, "keygen", "-out", keyFile, "-pub", pubFile); code != 0 {
		t.Fatal(stderr)
	}
	store := filepath.Join(dir, "var", "lib", "ekem", "issuer.db")
	f, err := parseRun([]string{"-broker", "tcp://127.0.0.1:1", "-signing-key", keyFile, "-store", store})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := f.config(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Dir(store))
	if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
		t.Fatalf("store directory: %v %v", st, err)
	}
	iss, err := issuer.New(cfg)
	if err != nil {
		t.Fatalf("issuer with a store in a new directory: %v", err)
	}
	iss.Close()
}
