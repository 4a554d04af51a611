package integration

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/mosquittotest"
	"github.com/entropykem/entropykem/pkg/signature"
)

// unit is what a test reads from a systemd unit of deploy/systemd: its
// [Service] environment, files, credentials and command line.
type unit struct {
	env       []string // Environment=, in order
	envFiles  []string // EnvironmentFile= (a leading "-" kept)
	creds     [][2]string
	stateDirs []string
	exec      []string
}

func readUnit(t *testing.T, path string) unit {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var u unit
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, "[") {
			section = l
			continue
		}
		k, v, _ := strings.Cut(l, "=")
		if section != "[Service]" {
			continue
		}
		switch k {
		case "Environment":
			u.env = append(u.env, v)
		case "EnvironmentFile":
			u.envFiles = append(u.envFiles, v)
		case "LoadCredential":
			name, src, _ := strings.Cut(v, ":")
			u.creds = append(u.creds, [2]string{name, src})
		case "StateDirectory":
			u.stateDirs = append(u.stateDirs, v)
		case "ExecStart":
			u.exec = strings.Fields(v)
		}
	}
	return u
}

// unitHost maps a unit's absolute paths into a test's directory.
type unitHost struct {
	root, bin, instance string
}

func (h unitHost) path(p string) string {
	switch {
	case strings.HasPrefix(p, "/usr/local/bin/"):
		return filepath.Join(h.bin, strings.TrimPrefix(p, "/usr/local/bin/"))
	case strings.HasPrefix(p, "/"):
		return filepath.Join(h.root, p)
	}
	return p
}

// start runs u as systemd would: credentials copied into a fresh directory
// (%d), %i the instance, Environment= then EnvironmentFile= (which wins),
// state directories created, and the command with nothing else in its
// environment.
func (h unitHost) start(t *testing.T, name string, u unit) *proc {
	t.Helper()
	credDir := filepath.Join(h.root, "run/credentials", name)
	if err := os.MkdirAll(credDir, 0o700); err != nil {
		t.Fatal(err)
	}
	spec := func(s string) string {
		return strings.NewReplacer("%d", credDir, "%i", h.instance).Replace(s)
	}
	for _, c := range u.creds {
		b, err := os.ReadFile(h.path(spec(c[1])))
		if err != nil {
			t.Fatalf("%s: LoadCredential=%s:%s: %v", name, c[0], c[1], err)
		}
		if err := os.WriteFile(filepath.Join(credDir, c[0]), b, 0o400); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range u.stateDirs {
		if err := os.MkdirAll(h.path("/var/lib/"+spec(d)), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	vars := map[string]string{}
	var order []string
	set := func(kv string) {
		k, v, _ := strings.Cut(kv, "=")
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	for _, e := range u.env {
		set(spec(e))
	}
	for _, f := range u.envFiles {
		optional := strings.HasPrefix(f, "-")
		b, err := os.ReadFile(h.path(spec(strings.TrimPrefix(f, "-"))))
		if err != nil {
			if optional {
				continue
			}
			t.Fatalf("%s: EnvironmentFile=%s: %v", name, f, err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				set(l)
			}
		}
	}
	var env []string
	for _, k := range order {
		v := vars[k]
		if strings.HasPrefix(v, "/var/lib/") {
			v = h.path(v)
		}
		env = append(env, k+"="+v)
	}
	args := make([]string, len(u.exec))
	for i, a := range u.exec {
		args[i] = spec(a)
	}
	return startProc(t, name, env, h.path(args[0]), args[1:]...)
}

var unitBins struct {
	once sync.Once
	dir  string
	err  error
	out  []byte
}

// TestDeployUnitsAgainstShippedBroker runs the issuer, a device and the
// fleet exporter exactly as deploy/systemd's units and env examples
// configure them (credentials through LoadCredential, the broker from the
// env file) against a Mosquitto with the shipped configuration, whose TLS
// listener requires client certificates: the device accepts an epoch, the
// exporter sees it current, and no deprecated name is used.
func TestDeployUnitsAgainstShippedBroker(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{"dev-0001"}, TLS: true})
	unitBins.once.Do(func() {
		unitBins.dir, unitBins.err = os.MkdirTemp("", "ekem-unit-bin-")
		if unitBins.err == nil {
			cmd := exec.Command("go", "build", "-o", unitBins.dir+string(os.PathSeparator), "./cmd/ekem-issuer", "./cmd/ekem-device", "./cmd/ekemctl")
			cmd.Dir = ".."
			unitBins.out, unitBins.err = cmd.CombinedOutput()
		}
	})
	if unitBins.err != nil {
		t.Fatalf("build: %v\n%s", unitBins.err, unitBins.out)
	}
	t.Cleanup(func() { os.RemoveAll(unitBins.dir) })
	h := unitHost{root: t.TempDir(), bin: unitBins.dir, instance: "dev-0001"}
	etc := h.path("/etc/entropykem")
	set := b.Creds()
	issuerMetrics, exporterMetrics := freeAddr(t), freeAddr(t)
	files := map[string][]byte{
		"ca.crt":               set.CA.CertPEM(),
		"ekem-issuer.crt":      set.Clients["ekem-issuer"].CertPEM,
		"ekem-issuer.key":      set.Clients["ekem-issuer"].KeyPEM,
		"ekem-monitor.crt":     set.Clients["ekem-monitor"].CertPEM,
		"ekem-monitor.key":     set.Clients["ekem-monitor"].KeyPEM,
		"devices/dev-0001.crt": set.Clients["dev-0001"].CertPEM,
		"devices/dev-0001.key": set.Clients["dev-0001"].KeyPEM,
		"cohort.secret":        bytes.Repeat([]byte{7}, 32),
		"issuer.env":           example(t, "issuer.env.example", b.TLSURL(), "EKEM_PERIOD=1h", "EKEM_PERIOD=2s", "127.0.0.1:7741", issuerMetrics),
		"device.env":           example(t, "device.env.example", b.TLSURL(), "EKEM_TPM=/dev/tpmrm0", "EKEM_COHORT_FILE="+filepath.Join(etc, "cohort.secret")),
		"fleet-exporter.env":   example(t, "fleet-exporter.env.example", b.TLSURL()),
	}
	key, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		t.Fatal(err)
	}
	files["issuer.key"] = signature.MarshalPrivateKeyPEM(key)
	files["issuer.pub"] = signature.MarshalPublicKeyPEM(key.Public())
	for name, data := range files {
		p := filepath.Join(etc, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	issuerUnit := readUnit(t, "../deploy/systemd/ekem-issuer.service")
	deviceUnit := readUnit(t, "../deploy/systemd/ekem-device@.service")
	exporterUnit := readUnit(t, "../deploy/systemd/ekem-fleet-exporter.service")
	for i, a := range exporterUnit.exec {
		exporterUnit.exec[i] = strings.ReplaceAll(a, "127.0.0.1:7742", exporterMetrics)
	}
	iss := h.start(t, "ekem-issuer", issuerUnit)
	dev := h.start(t, "ekem-device@dev-0001", deviceUnit)
	exp := h.start(t, "ekem-fleet-exporter", exporterUnit)

	deadline := time.Now().Add(60 * time.Second)
	for {
		m := httpGet(exporterMetrics, "/metrics")
		if strings.Contains(m, `ekem_fleet_devices{state="current"} 1`) && strings.Contains(httpGet(issuerMetrics, "/readyz"), "ready") {
			break
		}
		if time.Now().After(deadline) || iss.exited() || dev.exited() || exp.exited() {
			t.Fatalf("the units did not bring dev-0001 to current\nexporter metrics:\n%s\nissuer:\n%s\ndevice:\n%s\nexporter:\n%s",
				grepLines(m, "ekem_fleet_"), iss.stderr.tail(20), dev.stderr.tail(20), exp.stderr.tail(20))
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, p := range []*proc{iss, dev, exp} {
		for _, l := range p.stderr.all() {
			if strings.Contains(l, "deprecated") {
				t.Errorf("%s uses a deprecated name: %s", p.name, l)
			}
		}
	}
	if !strings.Contains(strings.Join(dev.stderr.all(), "\n"), `"msg":"ticket accepted"`) {
		t.Errorf("the device's JSON log has no accepted ticket:\n%s", dev.stderr.tail(20))
	}
}

// example reads deploy/systemd/NAME with EKEM_BROKER pointed at broker and
// the given old/new replacements applied.
func example(t *testing.T, name, broker string, replace ...string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("../deploy/systemd", name))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), "EKEM_BROKER=ssl://broker.example:8883", "EKEM_BROKER="+broker, 1)
	for i := 0; i+1 < len(replace); i += 2 {
		if !strings.Contains(s, replace[i]) {
			t.Fatalf("%s has no %q", name, replace[i])
		}
		s = strings.Replace(s, replace[i], replace[i+1], 1)
	}
	return []byte(s)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func httpGet(addr, path string) string {
	c := http.Client{Timeout: 2 * time.Second}
	r, err := c.Get("http://" + addr + path)
	if err != nil {
		return ""
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	return string(b)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
