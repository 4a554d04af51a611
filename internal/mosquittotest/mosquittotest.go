// Package mosquittotest runs a real Mosquitto 2 broker for tests, configured
// with exactly the shipped broker-config (mosquitto.conf and acl) rendered
// into a temporary directory: only ports, directories and, when the test runs
// as root, "user root" differ. Credentials for the issuer, the monitor and the
// named devices come from broker-config/creds.
//
// If no mosquitto binary is found the test is skipped, unless the environment
// sets EKEM_REQUIRE_MOSQUITTO=1, in which case it fails. EKEM_MOSQUITTO may
// name the binary.
package mosquittotest

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/broker-config/creds"
	"github.com/entropykem/entropykem/internal/svctest"
)

// Environment variables read by Start.
const (
	EnvRequire = "EKEM_REQUIRE_MOSQUITTO" // "1": a missing broker fails the test
	EnvBinary  = "EKEM_MOSQUITTO"         // path of the mosquitto binary
)

// Bounded waits.
const (
	startTimeout = 10 * time.Second
	stopTimeout  = 10 * time.Second
	startTries   = 3 // a free port can be taken by another process before mosquitto binds it
)

// Options configures Start.
type Options struct {
	// Devices are the device accounts to create (ids as creds.ValidateDeviceID
	// accepts). The issuer and monitor accounts always exist.
	Devices []string
	// TLS also issues a client certificate (CN = account name) for every
	// account, for the TLS listener. That listener is always running, since it
	// is part of the shipped configuration; without client certificates no
	// client can use it.
	TLS bool
	// Issuers and Monitors are how many service instances get accounts
	// (ekem-issuer, ekem-issuer-2, …); 0 means DefaultInstances. The broker
	// binds the client id to the username, so two connections of one
	// account take each other over: a test that needs two concurrent
	// issuer or monitor connections uses two instances.
	Issuers, Monitors int
	// Cohorts are rendered into the ACL after the shipped rules
	// (brokerconfig.CohortSection): cohort id → its member accounts.
	Cohorts map[string][]string
}

// DefaultInstances of each service role that Start makes accounts for.
const DefaultInstances = 4

// Broker is a running (or stopped) Mosquitto child process.
type Broker struct {
	t        testing.TB
	bin      string
	dir      string
	creds    *creds.Set
	accounts map[string]creds.Account
	port     int
	tlsPort  int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// Start renders the shipped configuration into t.TempDir(), generates
// credentials, starts mosquitto, waits until both listeners accept
// connections, and stops the broker in t.Cleanup.
func Start(t testing.TB, opts Options) *Broker {
	t.Helper()
	bin := findBinary(t)
	dir := t.TempDir()
	if opts.Issuers == 0 {
		opts.Issuers = DefaultInstances
	}
	if opts.Monitors == 0 {
		opts.Monitors = DefaultInstances
	}
	set, err := creds.NewSet(creds.Options{
		Devices: opts.Devices, Issuers: opts.Issuers, Monitors: opts.Monitors,
		CA: true, ClientCerts: opts.TLS, ServerHosts: []string{"localhost", "127.0.0.1"},
	})
	if err != nil {
		t.Fatalf("mosquittotest: %v", err)
	}
	b := &Broker{t: t, bin: bin, dir: dir, creds: set, accounts: map[string]creds.Account{}}
	for _, a := range set.Accounts() {
		b.accounts[a.Username] = a
	}
	// Only the files the broker reads: a file per account would cost seconds
	// for thousands of devices on a slow disk.
	if err := set.WriteBroker(b.configDir()); err != nil {
		t.Fatalf("mosquittotest: %v", err)
	}
	if err := appendCohorts(b.configDir(), opts.Cohorts); err != nil {
		t.Fatalf("mosquittotest: %v", err)
	}
	if err := b.writeStatic(); err != nil {
		t.Fatalf("mosquittotest: %v", err)
	}
	t.Cleanup(b.cleanup)
	b.startFresh()
	return b
}

// appendCohorts appends a section per cohort to the rendered ACL.
func appendCohorts(dir string, cohorts map[string][]string) error {
	if len(cohorts) == 0 {
		return nil
	}
	names := make([]string, 0, len(cohorts))
	for c := range cohorts {
		names = append(names, c)
	}
	sort.Strings(names)
	f, err := os.OpenFile(creds.ACLFile(dir), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, c := range names {
		sec, err := brokerconfig.CohortSection(c, cohorts[c])
		if err != nil {
			return err
		}
		if _, err := f.WriteString("\n" + sec); err != nil {
			return err
		}
	}
	return f.Close()
}

// writeStatic makes the persistence directory. (WriteBroker wrote the
// shipped ACL, rendered with the service instances, next to the password
// file, and the CA's empty CRL.)
func (b *Broker) writeStatic() error {
	return os.MkdirAll(b.DataDir(), 0o700)
}

// configDir holds passwd, acl and certs/: a credentials directory in the
// layout of mkcreds (package creds), so creds.Revoke works on it.
func (b *Broker) configDir() string { return filepath.Join(b.dir, "config") }

// ConfigDir is the credentials directory the broker reads (passwd, acl,
// certs/ca.crt, certs/crl.pem): the layout mkcreds writes.
func (b *Broker) ConfigDir() string { return b.configDir() }

// writeConfig renders the shipped mosquitto.conf for this broker's ports and
// directories.
func (b *Broker) writeConfig() error {
	o := brokerconfig.RenderOptions{
		ConfigDir:    b.configDir(),
		CertDir:      creds.CertDir(b.configDir()),
		DataDir:      b.DataDir(),
		PasswordPort: b.port,
		TLSPort:      b.tlsPort,
		TLSHost:      "127.0.0.1",
	}
	if os.Geteuid() == 0 {
		// Started as root, mosquitto would switch to the "mosquitto" user,
		// which cannot read this test's private temporary directory.
		o.User = "root"
	}
	conf, err := brokerconfig.RenderConfig(o)
	if err != nil {
		return err
	}
	return os.WriteFile(b.ConfigPath(), []byte(conf), 0o600)
}

// startFresh picks free ports and starts the broker, retrying with new ports
// if another process took one in between.
func (b *Broker) startFresh() {
	b.t.Helper()
	var err error
	for try := 0; try < startTries; try++ {
		if b.port, b.tlsPort, err = freePorts(); err != nil {
			b.t.Fatalf("mosquittotest: %v", err)
		}
		if err = b.writeConfig(); err != nil {
			b.t.Fatalf("mosquittotest: %v", err)
		}
		if err = b.launch(); err == nil {
			return
		}
		if !strings.Contains(b.Log(), "Address already in use") {
			break
		}
	}
	b.t.Fatalf("mosquittotest: %v\n%s", err, b.logTail())
}

// launch starts the process and waits until both listeners accept.
func (b *Broker) launch() error {
	logf, err := os.OpenFile(b.LogPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(b.bin, "-c", b.ConfigPath())
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", b.bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait() // the exit status is visible in the log; Stop reports timeouts
		logf.Close()
		close(done)
	}()
	b.mu.Lock()
	b.cmd, b.done = cmd, done
	b.mu.Unlock()
	return b.waitReady(done)
}

func (b *Broker) waitReady(done chan struct{}) error {
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return errors.New("mosquitto exited during start-up")
		default:
		}
		if accepts(b.Addr()) && accepts(b.TLSAddr()) {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.Kill()
	return fmt.Errorf("mosquitto did not accept connections within %v", startTimeout)
}

func accepts(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// freePorts returns two distinct ports that were free on 127.0.0.1 a moment ago.
func freePorts() (int, int, error) {
	ports, err := svctest.FreePorts(2)
	if err != nil {
		return 0, 0, fmt.Errorf("mosquittotest: %w", err)
	}
	return ports[0], ports[1], nil
}

// Stop sends sig to the broker and waits (at most 10 s) for it to exit.
// SIGTERM makes mosquitto save its persistence database; SIGKILL loses what
// was not autosaved. Stop on a stopped broker returns nil.
func (b *Broker) Stop(sig os.Signal) error {
	b.mu.Lock()
	cmd, done := b.cmd, b.done
	b.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := svctest.Stop(cmd, done, sig, stopTimeout); err != nil {
		return fmt.Errorf("mosquittotest: broker: %w", err)
	}
	return nil
}

// Kill stops the broker with SIGKILL, as a crash would.
func (b *Broker) Kill() {
	if err := b.Stop(syscall.SIGKILL); err != nil {
		b.t.Errorf("%v", err)
	}
}

// Restart starts a stopped broker again with the same configuration, ports
// and data directory, so persisted retained messages come back. It must be
// called from the test goroutine.
func (b *Broker) Restart() {
	b.t.Helper()
	if b.Running() {
		b.t.Fatalf("mosquittotest: Restart of a running broker; Stop it first")
	}
	if err := b.launch(); err != nil {
		b.t.Fatalf("mosquittotest: restart: %v\n%s", err, b.logTail())
	}
}

// Running reports whether the broker process is alive.
func (b *Broker) Running() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return false
	}
	select {
	case <-b.done:
		return false
	default:
		return true
	}
}

func (b *Broker) cleanup() {
	if err := b.Stop(syscall.SIGTERM); err != nil {
		b.t.Errorf("%v", err)
	}
	if b.t.Failed() {
		b.t.Logf("mosquittotest: broker log %s:\n%s", b.LogPath(), b.logTail())
	}
}

// Addr is the password listener, "127.0.0.1:PORT".
func (b *Broker) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port)) }

// URL is the password listener as a paho broker URL, "tcp://127.0.0.1:PORT".
func (b *Broker) URL() string { return "tcp://" + b.Addr() }

// TLSAddr is the TLS (client certificate) listener, "127.0.0.1:PORT".
func (b *Broker) TLSAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(b.tlsPort)) }

// TLSURL is the TLS listener as a paho broker URL, "ssl://127.0.0.1:PORT".
func (b *Broker) TLSURL() string { return "ssl://" + b.TLSAddr() }

// Dir is the broker's temporary directory.
func (b *Broker) Dir() string { return b.dir }

// DataDir holds the persistence database (mosquitto.db).
func (b *Broker) DataDir() string { return filepath.Join(b.dir, "data") }

// ConfigPath is the rendered mosquitto.conf.
func (b *Broker) ConfigPath() string { return filepath.Join(b.dir, "mosquitto.conf") }

// LogPath is the file that receives the broker's stdout and stderr.
func (b *Broker) LogPath() string { return filepath.Join(b.dir, "mosquitto.log") }

// Log returns the broker log so far.
func (b *Broker) Log() string {
	data, _ := os.ReadFile(b.LogPath()) // a missing log reads as empty
	return string(data)
}

func (b *Broker) logTail() string {
	lines := strings.Split(strings.TrimRight(b.Log(), "\n"), "\n")
	if len(lines) > 80 {
		lines = lines[len(lines)-80:]
	}
	return strings.Join(lines, "\n")
}

// Creds is every credential the harness generated (client certificates and
// keys in memory; only the broker's files are on disk).
func (b *Broker) Creds() *creds.Set { return b.creds }

// Issuer is the ekem-issuer account.
func (b *Broker) Issuer() creds.Account { return b.creds.Issuer }

// Monitor is the ekem-monitor account.
func (b *Broker) Monitor() creds.Account { return b.creds.Monitor }

// Account returns the account named name; the test fails if there is none.
func (b *Broker) Account(name string) creds.Account {
	b.t.Helper()
	a, ok := b.accounts[name]
	if !ok {
		b.t.Fatalf("mosquittotest: no account %q", name)
	}
	return a
}

// Lookup returns the account named name; unlike Account it is safe to call
// from any goroutine.
func (b *Broker) Lookup(name string) (creds.Account, bool) {
	a, ok := b.accounts[name]
	return a, ok
}

// ClientTLS returns a TLS configuration for the TLS listener that trusts the
// test CA and, if name is not empty, presents name's client certificate
// (Options.TLS must have been set). With name empty it presents none.
func (b *Broker) ClientTLS(name string) *tls.Config {
	b.t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(b.creds.CA.Cert)
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if name == "" {
		return cfg
	}
	pair, ok := b.creds.Clients[name]
	if !ok {
		b.t.Fatalf("mosquittotest: no client certificate for %q (set Options.TLS)", name)
	}
	cert, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
	if err != nil {
		b.t.Fatalf("mosquittotest: client certificate for %q: %v", name, err)
	}
	cfg.Certificates = []tls.Certificate{cert}
	return cfg
}

var versionRE = regexp.MustCompile(`mosquitto version (\d+)\.(\d+)\.(\d+)`)

// findBinary locates mosquitto 2.x, or skips (fails under EKEM_REQUIRE_MOSQUITTO=1).
func findBinary(t testing.TB) string {
	t.Helper()
	bin, err := lookBinary()
	if err == nil {
		out, _ := exec.Command(bin, "-h").CombinedOutput() // -h exits non-zero
		m := versionRE.FindSubmatch(out)
		switch {
		case m == nil:
			err = fmt.Errorf("cannot read the version of %s", bin)
		case !bytes.Equal(m[1], []byte("2")):
			err = fmt.Errorf("%s is version %s.%s.%s; the shipped configuration needs Mosquitto 2", bin, m[1], m[2], m[3])
		}
	}
	if err != nil {
		svctest.Unavailable(t, EnvRequire, "mosquittotest: "+err.Error(), "install mosquitto 2 (apt-get install mosquitto)")
	}
	return bin
}

func lookBinary() (string, error) {
	return svctest.FindBinary(EnvBinary, "mosquitto", "/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin")
}

// Binary returns the path of a Mosquitto 2 binary for a test that runs its
// own configuration, or skips the test (fails it under
// EKEM_REQUIRE_MOSQUITTO=1) as Start does.
func Binary(t testing.TB) string {
	t.Helper()
	return findBinary(t)
}
