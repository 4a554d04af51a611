package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/logbuf"
	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// files holds the provisioning files of a test fleet.
type files struct {
	dir, issuerPub, cohort, password, passwords string
	issuer                                      *signature.PrivateKey
}

func provision(t *testing.T) files {
	t.Helper()
	dir := t.TempDir()
	k, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		t.Fatal(err)
	}
	f := files{dir: dir, issuer: k,
		issuerPub: filepath.Join(dir, "issuer.pub"), cohort: filepath.Join(dir, "cohort.key"),
		password: filepath.Join(dir, "pw"), passwords: filepath.Join(dir, "pws")}
	write := func(p string, b []byte) {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(f.issuerPub, signature.MarshalPublicKeyPEM(k.Public()))
	write(f.cohort, []byte(strings.Repeat("ab", 32)+"\n"))
	write(f.password, []byte("secret\n"))
	if err := os.Mkdir(f.passwords, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"dev-0001", "dev-0002"} {
		write(filepath.Join(f.passwords, id), []byte("pw-"+id+"\n"))
	}
	return f
}

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestUsageErrors(t *testing.T) {
	f := provision(t)
	short := filepath.Join(f.dir, "short")
	os.WriteFile(short, []byte("0123456789"), 0o600)
	good := []string{"-id", "dev-0001", "-broker", "tcp://127.0.0.1:1", "-password-file", f.password,
		"-state", filepath.Join(f.dir, "s"), "-issuer-pub", f.issuerPub, "-cohort-file", f.cohort}
	with := func(extra ...string) []string { return append(append([]string{"run"}, good...), extra...) }
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"no command", nil, nil, "usage: ekem-device"},
		{"unknown command", []string{"fly"}, nil, `unknown command "fly"`},
		{"unknown flag", []string{"run", "-nope"}, nil, "flag provided but not defined: -nope"},
		{"extra argument", with("extra"), nil, `unexpected argument "extra"`},
		{"missing id", []string{"run"}, nil, "-id is required"},
		{"bad id", with("-id", "a/b"), nil, "-id: wire: invalid device id"},
		{"bad id from env", []string{"run", "-broker", "tcp://x:1"}, map[string]string{"EKEM_DEVICE_ID": "bad id"}, "EKEM_DEVICE_ID: wire: invalid device id"},
		{"missing state", []string{"run", "-id", "dev-1"}, nil, "-state is required"},
		{"missing broker", []string{"run", "-id", "dev-1", "-state", f.dir}, map[string]string{"EKEM_PASSWORD": "x"}, "-broker is required"},
		{"bad broker scheme", with("-broker", "http://h:1"), nil, `-broker: unsupported scheme "http"`},
		{"bad broker env", []string{"run", "-id", "dev-1", "-state", f.dir}, map[string]string{"EKEM_BROKER": "nohost", "EKEM_PASSWORD": "x"}, "EKEM_BROKER: \"nohost\" is not a broker URL"},
		{"bad kem", with("-kem", "ML-KEM-512"), nil, `-kem: unknown KEM "ML-KEM-512"`},
		{"short cohort", with("-cohort-file", short), nil, "-cohort-file: " + short + " must hold 32 raw bytes or 64 hex characters"},
		{"missing cohort env", append([]string{"run"}, good[:len(good)-2]...), map[string]string{"EKEM_COHORT_FILE": filepath.Join(f.dir, "none")}, "EKEM_COHORT_FILE: open"},
		{"missing issuer key", with("-issuer-pub", filepath.Join(f.dir, "none.pub")), nil, "-issuer-pub: open"},
		{"issuer key not PEM", with("-issuer-pub", f.password), nil, "-issuer-pub: " + f.password},
		{"two passwords", with(), map[string]string{"EKEM_PASSWORD": "x"}, "EKEM_PASSWORD and -password-file are exclusive"},
		{"password in argv", with("-password", "hunter2"), nil, "-password: secrets are never accepted on the command line"},
		{"password= in argv", with("--password=hunter2"), nil, "-password: secrets are never accepted on the command line"},
		{"tls flag and its alias", with("-tls-ca", "a", "-ca", "b"), nil, "-tls-ca and its deprecated alias -ca"},
		{"tls env and its old name differ", with(), map[string]string{"EKEM_TLS_KEY": "a", "EKEM_KEY": "b"}, "EKEM_TLS_KEY and its deprecated name EKEM_KEY differ"},
		{"bad log format", with("-log-format", "xml"), nil, `-log-format: "xml" is not text or json`},
		{"no password", []string{"run", "-id", "dev-1", "-state", f.dir, "-broker", "tcp://h:1"}, nil, "a broker password is required"},
		{"bad skew env", with(), map[string]string{"EKEM_SKEW": "soon"}, "EKEM_SKEW: invalid value for -skew: parse error"},
		{"negative skew", with("-skew", "-1s"), nil, "-skew: negative skew"},
		{"zero max jump", with("-max-jump", "0"), nil, "-max-jump: must be at least 1"},
		{"bad log level", with("-log-level", "loud"), nil, `-log-level: "loud" is not debug`},
		{"cert without key", with("-tls-cert", f.password), nil, "-tls-cert and -tls-key go together"},
		{"bad ca", with("-tls-ca", f.password), nil, "-tls-ca: " + f.password + " holds no PEM certificate"},
		{"bad ca by its old name", with("-ca", f.password), nil, "ekem-device: warning: -ca is deprecated; use -tls-ca\nekem-device: -tls-ca: " + f.password + " holds no PEM certificate"},
		{"bad ca by its old variable", with(), map[string]string{"EKEM_CA": f.password}, "ekem-device: warning: EKEM_CA is deprecated; use EKEM_TLS_CA\nekem-device: EKEM_CA: " + f.password + " holds no PEM certificate"},
		{"bad prefix", with("-prefix", "a/#"), nil, "-prefix:"},
		{"fleet n", []string{"fleet", "-n", "0"}, nil, "-n: 0 is not between 1 and 10000"},
		{"fleet id prefix", []string{"fleet", "-n", "2", "-state", f.dir, "-id-prefix", "a/"}, nil, `-id-prefix: "a/" gives device id "a/0001"`},
		{"fleet passwords dir", []string{"fleet", "-n", "3", "-state", f.dir, "-passwords", f.passwords}, nil, "-passwords: open " + filepath.Join(f.passwords, "dev-0003")},
		{"fleet passwords and password", []string{"fleet", "-n", "1", "-state", f.dir, "-passwords", f.passwords}, map[string]string{"EKEM_PASSWORD": "x"}, "-passwords excludes EKEM_PASSWORD"},
		{"next-key id", []string{"next-key"}, nil, "-id is required"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errb logbuf.Buffer
			code := execute(t.Context(), c.args, env(c.env), &out, &errb)
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr: %s", code, errb.String())
			}
			if !strings.Contains(errb.String(), c.want) {
				t.Fatalf("stderr %q does not contain %q", errb.String(), c.want)
			}
			if strings.Contains(errb.String(), "hunter2") {
				t.Fatalf("stderr shows the password: %q", errb.String())
			}
			if c.args != nil && !strings.HasPrefix(errb.String(), "ekem-device: ") {
				t.Fatalf("stderr not prefixed: %q", errb.String())
			}
			if _, err := os.Stat(filepath.Join(f.dir, "s")); err == nil {
				t.Fatal("a usage error created state")
			}
		})
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"help"}, {"run", "-h"}, {"fleet", "-h"}, {"next-key", "-h"}} {
		var out, errb logbuf.Buffer
		if code := execute(t.Context(), args, env(nil), &out, &errb); code != 0 {
			t.Fatalf("%v: exit %d", args, code)
		}
		if !strings.Contains(out.String()+errb.String(), "examples:\n  ekem-device ") {
			t.Fatalf("%v: no examples in usage", args)
		}
	}
}

// issueFor reads the registrations of ids and issues epoch e to them.
func issueFor(t *testing.T, f files, e uint64, devs []batch.Device) *batch.Epoch {
	t.Helper()
	ep, err := batch.Issue(f.issuer, batch.Params{Epoch: e, IssuedAt: uint64(time.Now().Unix()), TTL: 600}, devs)
	if err != nil {
		t.Fatal(err)
	}
	return ep
}

func regDevice(t *testing.T, b []byte) batch.Device {
	t.Helper()
	r, err := wire.ParseRegistration(b)
	if err != nil {
		t.Fatal(err)
	}
	sch, _ := kem.Lookup(r.KEMAlg)
	pk, err := sch.ParsePublicKey(r.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return batch.Device{ID: r.DeviceID, Key: pk, Purpose: "telemetry", Group: "g"}
}

// waitFor waits (guarding against a hang, not timing anything) until
// buf matches re.
func waitFor(t *testing.T, buf *logbuf.Buffer, re string) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m := rx.FindString(buf.String()); m != "" {
			return m
		}
	}
	t.Fatalf("output never matched %q:\n%s", re, buf.String())
	return ""
}

func TestFleetAndNextKey(t *testing.T) {
	f := provision(t)
	url := startBroker(t)
	topics, _ := wire.NewTopics(wire.DefaultPrefix)
	iss := dialRecorder(t, url, "ekem-issuer", topics.AllRegistrations(), topics.AllStatuses())
	base := filepath.Join(f.dir, "fleet")
	ctx, cancel := context.WithCancel(t.Context())
	var out, errb logbuf.Buffer
	done := make(chan int, 1)
	go func() {
		done <- execute(ctx, []string{"fleet", "-n", "2", "-broker", url, "-passwords", f.passwords, "-state", base,
			"-issuer-pub", f.issuerPub, "-cohort-file", f.cohort, "-kem", "x-wing"}, env(nil), &out, &errb)
	}()
	var devs []batch.Device
	for _, id := range []string{"dev-0001", "dev-0002"} {
		d := regDevice(t, iss.Wait(topics.Registration(id), 1))
		if d.Key.Scheme().ID() != kem.XWing {
			t.Fatalf("%s registered %v", id, d.Key.Scheme().ID())
		}
		devs = append(devs, d)
	}
	ep := issueFor(t, f, 1, devs)
	iss.Put(topics.Root(1), ep.Root)
	for _, tk := range ep.Tickets {
		iss.Put(topics.Ticket(tk.DeviceID), tk.Ticket)
	}
	fp1 := waitFor(t, &errb, `msg="ticket accepted" fleet_index=1 device=dev-0001 epoch=1 state=ok prev_epoch=0 key=[0-9a-f]{16}`)
	waitFor(t, &errb, `msg="ticket accepted" fleet_index=2 device=dev-0002 epoch=1 state=ok prev_epoch=0 key=[0-9a-f]{16}`)
	for i, id := range []string{"dev-0001", "dev-0002"} {
		s, err := wire.ParseStatus(iss.Wait(topics.Status(id), 1))
		if err != nil || s.Epoch != 1 || !ep.Tickets[i].Secrets.CheckConfirm(s.Confirm) {
			t.Fatalf("%s status %+v %v", id, s, err)
		}
	}
	// The state directory is locked while the fleet runs.
	nk := []string{"next-key", "-id", "dev-0001", "-state", filepath.Join(base, "dev-0001"), "-cohort-file", f.cohort}
	var o2, e2 logbuf.Buffer
	if code := execute(t.Context(), nk, env(nil), &o2, &e2); code != 1 || !strings.Contains(e2.String(), "in use by another agent") {
		t.Fatalf("next-key on a running device: exit %d, %s", code, e2.String())
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("fleet exit %d: %s", code, errb.String())
	}
	if !strings.Contains(errb.String(), "WARNING: cohort secret held in a file (development only)") {
		t.Fatal("no warning about the file-backed cohort secret")
	}
	if strings.Contains(out.String(), strings.Repeat("ab", 32)) || strings.Contains(errb.String(), strings.Repeat("ab", 32)) {
		t.Fatal("cohort secret printed")
	}

	// next-key without the network: (1, 0), then (1, 1); fingerprints differ
	// from each other and from the epoch key's.
	var fps []string
	for ctr := range 2 {
		var o, e logbuf.Buffer
		if code := execute(t.Context(), nk, env(nil), &o, &e); code != 0 {
			t.Fatalf("next-key exit %d: %s", code, e.String())
		}
		want := regexp.MustCompile(`^dev-0001 epoch=1 ctr=` + string(rune('0'+ctr)) + ` fingerprint=([0-9a-f]{16})\n$`)
		m := want.FindStringSubmatch(o.String())
		if m == nil {
			t.Fatalf("next-key printed %q", o.String())
		}
		fps = append(fps, m[1])
	}
	if fps[0] == fps[1] || strings.HasSuffix(fp1, fps[0]) {
		t.Fatalf("fingerprints %v, epoch key %s", fps, fp1)
	}
	// next-key on a directory without a device creates nothing.
	var o, e logbuf.Buffer
	empty := filepath.Join(f.dir, "empty")
	if code := execute(t.Context(), []string{"next-key", "-id", "dev-0009", "-state", empty, "-cohort-file", f.cohort}, env(nil), &o, &e); code != 1 ||
		!strings.Contains(e.String(), "no device state") {
		t.Fatalf("next-key without state: exit %d, %s", code, e.String())
	}
	if _, err := os.Stat(filepath.Join(empty, "state.bin")); err == nil {
		t.Fatal("next-key created a device")
	}
}

func TestRunFromEnvironment(t *testing.T) {
	f := provision(t)
	url := startBroker(t)
	topics, _ := wire.NewTopics("site/ekem")
	iss := dialRecorder(t, url, "ekem-issuer", topics.AllRegistrations(), topics.AllStatuses())
	e := map[string]string{
		"EKEM_DEVICE_ID": "sensor-7", "EKEM_BROKER": url, "EKEM_PASSWORD_FILE": f.password,
		"EKEM_STATE_DIR": filepath.Join(f.dir, "s7"), "EKEM_ISSUER_PUB": f.issuerPub,
		"EKEM_COHORT_FILE": f.cohort, "EKEM_PREFIX": "site/ekem", "EKEM_KEM": "ML-KEM-768",
	}
	ctx, cancel := context.WithCancel(t.Context())
	var out, errb logbuf.Buffer
	done := make(chan int, 1)
	go func() { done <- execute(ctx, []string{"run"}, env(e), &out, &errb) }()
	d := regDevice(t, iss.Wait(topics.Registration("sensor-7"), 1))
	if d.Key.Scheme().ID() != kem.MLKEM768 {
		t.Fatal("EKEM_KEM ignored")
	}
	ep := issueFor(t, f, 1, []batch.Device{d})
	iss.Put(topics.Root(1), ep.Root)
	iss.Put(topics.Ticket("sensor-7"), ep.Tickets[0].Ticket)
	waitFor(t, &errb, `msg="ticket accepted" device=sensor-7 epoch=1 state=ok`)
	iss.Put(topics.Ticket("sensor-7"), []byte("junk"))
	waitFor(t, &errb, `msg="ticket rejected" device=sensor-7 reason=malformed ticket_epoch=0 epoch=1`)
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("run exit %d: %s", code, errb.String())
	}
}
