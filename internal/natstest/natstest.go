// Package natstest runs a real 3-node NATS JetStream cluster on loopback for
// tests and benchmarks, configured by broker-config/nats exactly as shipped
// (natsconf.RenderNode and RenderAccounts): only ports and directories
// differ. Clients reach it through a small loopback load balancer (URL),
// which sends each new connection to the next node that accepts it, as a
// TCP load balancer or a DNS name with the three nodes' addresses does in
// production; when a node dies its clients reconnect to another.
//
// Every nats-server is started with Pdeathsig SIGKILL, so it dies with the
// test binary even if the test is killed; Close (t.Cleanup under Start)
// kills the nodes.
//
// It needs nats-server MinVersion or later (FindBinary): older releases,
// Debian's 2.9.10 among them, PUBACK a retained message they then lose and
// stall subscriptions when a node dies (broker-config/nats/README.md). If
// no such binary is found Start skips the test, unless EKEM_REQUIRE_NATS=1,
// in which case it fails. EKEM_NATS_SERVER may name the binary; .ci/run
// builds MinVersion from source (InstallCommand) into CacheBinary.
package natstest

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/entropykem/entropykem/broker-config/creds"
	natsconf "github.com/entropykem/entropykem/broker-config/nats"
	"github.com/entropykem/entropykem/internal/mqttc"
	"github.com/entropykem/entropykem/internal/svctest"
)

// Environment variables read by Start and FindBinary.
const (
	EnvRequire = "EKEM_REQUIRE_NATS" // "1": a missing nats-server fails the test
	EnvBinary  = "EKEM_NATS_SERVER"  // path of the nats-server binary
)

// Nodes is the cluster size.
const Nodes = 3

// Bounded waits.
const (
	startTimeout = 60 * time.Second
	stopTimeout  = 30 * time.Second
)

// MinVersion is the oldest nats-server the tests accept: the release
// whose MQTT interface was measured to ride through a node's death here.
const MinVersion = "2.15.3"

// InstallCommand builds nats-server MinVersion with Go (the module proxy
// serves it) into the directory of CacheBinary.
const InstallCommand = "GOBIN=\"${XDG_CACHE_HOME:-$HOME/.cache}/entropykem/nats-server-v" + MinVersion +
	"\" go install github.com/nats-io/nats-server/v2@v" + MinVersion

// ErrNoBinary: no nats-server of MinVersion or later was found.
var ErrNoBinary = errors.New("natstest: no nats-server v" + MinVersion + " or later (build it with: " + InstallCommand +
	"; or set " + EnvBinary + "; Debian's 2.9 is too old)")

// Options configures New.
type Options struct {
	// Devices are the device accounts to create (natsconf.ValidateDeviceID:
	// no '.'). The issuer and monitor accounts always exist.
	Devices []string
	// Dir holds the configuration, stores and logs (a new temporary
	// directory, removed by Close, if empty).
	Dir string
	// Logf, if set, receives progress lines.
	Logf func(string, ...any)
}

// Cluster is three running (or stopped) nats-server nodes and a balancer.
type Cluster struct {
	bin      string
	dir      string
	ownDir   bool
	creds    *creds.Set
	accounts map[string]creds.Account
	nodes    [Nodes]*node
	lb       *balancer
	logf     func(string, ...any)
}

type node struct {
	name                                        string
	clientPort, clusterPort, httpPort, mqttPort int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start is New for a test: it skips without nats-server (fails under
// EKEM_REQUIRE_NATS=1), fails the test on error, and closes the cluster in
// t.Cleanup (logging the nodes' log tails if the test failed).
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	if _, err := FindBinary(); err != nil {
		svctest.Unavailable(t, EnvRequire, "natstest: "+err.Error(), "")
	}
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	c, err := New(o)
	if err != nil {
		t.Fatalf("natstest: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i := range c.nodes {
				t.Logf("natstest: node %d log, warnings, errors and leader changes:\n%s", i, c.Notable(i, 80))
			}
		}
		if err := c.Close(); err != nil {
			t.Errorf("natstest: %v", err)
		}
	})
	return c
}

// CacheBinary is where .ci/run (InstallCommand) puts nats-server
// MinVersion: $XDG_CACHE_HOME, else $HOME/.cache, then
// entropykem/nats-server-v{MinVersion}/nats-server ("" without either).
func CacheBinary() string {
	dir := os.Getenv("XDG_CACHE_HOME")
	if dir == "" {
		home := os.Getenv("HOME")
		if home == "" {
			return ""
		}
		dir = filepath.Join(home, ".cache")
	}
	return filepath.Join(dir, "entropykem", "nats-server-v"+MinVersion, "nats-server")
}

// FindBinary returns the first nats-server of MinVersion or later among
// $EKEM_NATS_SERVER (which, if set, must be one), CacheBinary, nats-server
// in PATH and the usual sbin directories. The error names every binary it
// found too old.
func FindBinary() (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvBinary, p, err)
		}
		if err := checkVersion(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvBinary, p, err)
		}
		return p, nil
	}
	var cands []string
	if p := CacheBinary(); p != "" {
		cands = append(cands, p)
	}
	if p, err := exec.LookPath("nats-server"); err == nil {
		cands = append(cands, p)
	}
	cands = append(cands, "/usr/local/bin/nats-server", "/usr/local/sbin/nats-server", "/usr/sbin/nats-server")
	var old []string
	for _, p := range cands {
		if _, err := os.Stat(p); err != nil {
			continue
		}
		if err := checkVersion(p); err != nil {
			old = append(old, p+": "+err.Error())
			continue
		}
		return p, nil
	}
	if len(old) > 0 {
		return "", fmt.Errorf("%w; found only: %s", ErrNoBinary, strings.Join(old, "; "))
	}
	return "", ErrNoBinary
}

// ErrOldVersion: a nats-server older than MinVersion.
var ErrOldVersion = errors.New("nats-server older than v" + MinVersion)

// checkVersion runs bin --version ("nats-server: v2.15.3") and compares.
func checkVersion(bin string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return fmt.Errorf("%s --version: %w", bin, err)
	}
	v := strings.TrimSpace(string(out))
	v = strings.TrimPrefix(strings.TrimPrefix(v, "nats-server: "), "v")
	got, ok := parseVersion(v)
	if !ok {
		return fmt.Errorf("%s --version: unrecognised %q", bin, strings.TrimSpace(string(out)))
	}
	want, _ := parseVersion(MinVersion)
	for k := range want {
		if got[k] != want[k] {
			if got[k] < want[k] {
				return fmt.Errorf("%w: v%s", ErrOldVersion, v)
			}
			return nil
		}
	}
	return nil
}

// parseVersion parses "major.minor.patch" with an optional "-suffix".
func parseVersion(v string) ([3]int, bool) {
	var out [3]int
	v, _, _ = strings.Cut(v, "-")
	parts := strings.Split(v, ".")
	if len(parts) != 3 {
		return out, false
	}
	for k, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return out, false
		}
		out[k] = n
	}
	return out, true
}

// New renders the configuration, starts the three nodes and the balancer,
// and waits until every node is healthy and the MQTT interface works.
func New(o Options) (c *Cluster, err error) {
	bin, err := FindBinary()
	if err != nil {
		return nil, err
	}
	c = &Cluster{bin: bin, dir: o.Dir, accounts: map[string]creds.Account{}, logf: o.Logf}
	if c.logf == nil {
		c.logf = func(string, ...any) {}
	}
	if c.dir == "" {
		if c.dir, err = os.MkdirTemp("", "ekem-nats-"); err != nil {
			return nil, fmt.Errorf("natstest: %w", err)
		}
		c.ownDir = true
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	for _, id := range o.Devices {
		if err := natsconf.ValidateDeviceID(id); err != nil {
			return nil, err
		}
	}
	if c.creds, err = creds.NewSet(creds.Options{Devices: o.Devices}); err != nil {
		return nil, err
	}
	for _, a := range c.creds.Accounts() {
		c.accounts[a.Username] = a
	}
	if err := c.writeConfig(); err != nil {
		return nil, err
	}
	for i := range c.nodes {
		if err := c.launch(i); err != nil {
			return nil, err
		}
	}
	if c.lb, err = newBalancer(c.mqttAddrs()); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	// The first MQTT connection of the account creates its replicated
	// streams; WaitHealthy makes one on every node, so tests start on a
	// ready cluster.
	for i := range c.nodes {
		if err := c.WaitHealthy(ctx, i); err != nil {
			return nil, err
		}
	}
	c.logf("nats cluster ready: %s", strings.Join(c.mqttAddrs(), " "))
	return c, nil
}

func (c *Cluster) writeConfig() error {
	conf := c.confDir()
	if err := os.MkdirAll(conf, 0o700); err != nil {
		return fmt.Errorf("natstest: %w", err)
	}
	ports, err := freePorts(4 * Nodes)
	if err != nil {
		return err
	}
	var routes []string
	for i := range c.nodes {
		n := &node{name: "nats-" + strconv.Itoa(i+1), clientPort: ports[4*i], clusterPort: ports[4*i+1], httpPort: ports[4*i+2], mqttPort: ports[4*i+3]}
		c.nodes[i] = n
		routes = append(routes, loop(n.clusterPort))
	}
	accounts, err := natsconf.RenderAccounts(c.creds)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(conf, natsconf.AccountsFileName), []byte(accounts), 0o600); err != nil {
		return fmt.Errorf("natstest: %w", err)
	}
	pw := make([]byte, 24)
	rand.Read(pw)
	for i, n := range c.nodes {
		s, err := natsconf.RenderNode(natsconf.NodeOptions{
			ServerName: n.name, ClientListen: loop(n.clientPort), HTTPListen: loop(n.httpPort),
			MQTTListen: loop(n.mqttPort), ClusterListen: loop(n.clusterPort), Routes: routes,
			StoreDir: c.StoreDir(i), RoutePassword: base64.RawURLEncoding.EncodeToString(pw),
		})
		if err != nil {
			return err
		}
		if err := os.WriteFile(c.ConfigPath(i), []byte(s), 0o600); err != nil {
			return fmt.Errorf("natstest: %w", err)
		}
	}
	return nil
}

func loop(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// freePorts returns n distinct ports that were free on 127.0.0.1 a moment ago.
func freePorts(n int) ([]int, error) {
	ports, err := svctest.FreePorts(n)
	if err != nil {
		return nil, fmt.Errorf("natstest: %w", err)
	}
	return ports, nil
}

// launch starts node i's process (its configuration must exist).
func (c *Cluster) launch(i int) error {
	n := c.nodes[i]
	logf, err := os.OpenFile(c.LogPath(i), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("natstest: %w", err)
	}
	cmd := exec.Command(c.bin, "-c", c.ConfigPath(i))
	cmd.Stdout, cmd.Stderr = logf, logf
	// The node dies with this process, even if it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("natstest: start %s: %w", c.bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait() // the exit status is in the log; Stop reports timeouts
		logf.Close()
		close(done)
	}()
	n.mu.Lock()
	n.cmd, n.done = cmd, done
	n.mu.Unlock()
	return nil
}

// WaitHealthy waits until node i's /healthz?js-server-only=true answers
// 200 (the node runs and its JetStream is in contact with the meta leader;
// its streams may still be catching up, which raft does on its own) and
// its MQTT interface accepts a session and a QoS 1 subscription.
func (c *Cluster) WaitHealthy(ctx context.Context, i int) error {
	if err := c.waitHealthz(ctx, i); err != nil {
		return err
	}
	if err := c.warmUp(ctx, c.NodeURL(i)); err != nil {
		return fmt.Errorf("natstest: MQTT on node %d: %w\n%s", i, err, c.Notable(i, 30))
	}
	return nil
}

func (c *Cluster) waitHealthz(ctx context.Context, i int) error {
	return c.pollHealthz(ctx, i, "/healthz?js-server-only=true")
}

// WaitCurrent waits until node i's /healthz answers 200: every stream and
// consumer replica it holds is current (caught up with its leader), as an
// operator checks before taking another node down after a replacement.
func (c *Cluster) WaitCurrent(ctx context.Context, i int) error {
	return c.pollHealthz(ctx, i, "/healthz")
}

func (c *Cluster) pollHealthz(ctx context.Context, i int, path string) error {
	n := c.nodes[i]
	url := "http://" + loop(n.httpPort) + path
	hc := &http.Client{Timeout: time.Second}
	for {
		if !c.Running(i) {
			return fmt.Errorf("natstest: node %d exited:\n%s", i, c.Notable(i, 30))
		}
		resp, err := hc.Get(url)
		if err == nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("natstest: node %d not healthy: %w\n%s", i, ctx.Err(), c.Notable(i, 30))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// warmUp connects as the issuer and subscribes at QoS 1 until it works
// (mqttc.Subscribe checks the SUBACK's return code).
func (c *Cluster) warmUp(ctx context.Context, url string) error {
	a := c.creds.Issuer
	var last error
	for {
		actx, cancel := context.WithTimeout(ctx, 6*time.Second)
		cl, err := mqttc.Dial(actx, mqttc.Options{Broker: url, ClientID: "natstest-warmup",
			Username: a.Username, Password: a.Password, Timeout: 6 * time.Second,
			Logger: slog.New(slog.DiscardHandler)})
		cancel()
		if err == nil {
			err = cl.Subscribe("ekem/v1/reg/+")
			cl.Close()
			if err == nil {
				return nil
			}
			last = fmt.Errorf("subscribe: %w", err)
		} else {
			last = fmt.Errorf("connect: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Kill stops node i with SIGKILL, as a crash would, and waits for it.
func (c *Cluster) Kill(i int) error { return c.stop(i, syscall.SIGKILL) }

// Stop stops node i with SIGTERM (a clean shutdown) and waits for it.
func (c *Cluster) Stop(i int) error { return c.stop(i, syscall.SIGTERM) }

func (c *Cluster) stop(i int, sig syscall.Signal) error {
	n := c.nodes[i]
	if n == nil {
		return nil
	}
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := svctest.Stop(cmd, done, sig, stopTimeout); err != nil {
		return fmt.Errorf("natstest: node %d: %w", i, err)
	}
	return nil
}

// Restart starts stopped node i again with the same configuration and
// store, and waits until it is healthy.
func (c *Cluster) Restart(ctx context.Context, i int) error {
	if c.Running(i) {
		return fmt.Errorf("natstest: restart of running node %d", i)
	}
	if err := c.launch(i); err != nil {
		return err
	}
	return c.WaitHealthy(ctx, i)
}

// RestartEmpty starts stopped node i again with an empty JetStream store,
// as a replaced disk or host would, and waits until it is healthy (it has
// caught up with the cluster).
func (c *Cluster) RestartEmpty(ctx context.Context, i int) error {
	if c.Running(i) {
		return fmt.Errorf("natstest: restart of running node %d", i)
	}
	if err := os.RemoveAll(c.StoreDir(i)); err != nil {
		return fmt.Errorf("natstest: %w", err)
	}
	return c.Restart(ctx, i)
}

// Running reports whether node i's process is alive.
func (c *Cluster) Running(i int) bool {
	n := c.nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Close stops the balancer, kills every node (SIGKILL: nothing of the
// cluster outlives it, and a clean shutdown of JetStream can take longer
// than a test should wait) and removes the directory if New made it.
func (c *Cluster) Close() error {
	var errs []error
	if c.lb != nil {
		c.lb.Close()
	}
	for i := range c.nodes {
		if err := c.Kill(i); err != nil {
			errs = append(errs, err)
		}
	}
	if c.ownDir {
		os.RemoveAll(c.dir)
	}
	return errors.Join(errs...)
}

// URL is the balancer as a paho broker URL: what a fleet is given.
func (c *Cluster) URL() string { return "tcp://" + c.lb.Addr() }

// ClientAddr is node i's core NATS listener (host:port), which no
// entropykem account may use.
func (c *Cluster) ClientAddr(i int) string { return loop(c.nodes[i].clientPort) }

// NodeURL is node i's own MQTT listener.
func (c *Cluster) NodeURL(i int) string { return "tcp://" + loop(c.nodes[i].mqttPort) }

// PID returns node i's process id (0 if it never started).
func (c *Cluster) PID(i int) int {
	n := c.nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

func (c *Cluster) mqttAddrs() []string {
	var out []string
	for _, n := range c.nodes {
		out = append(out, loop(n.mqttPort))
	}
	return out
}

// Dir is the cluster's directory.
func (c *Cluster) Dir() string     { return c.dir }
func (c *Cluster) confDir() string { return filepath.Join(c.dir, "conf") }

// ConfigPath is node i's rendered configuration.
func (c *Cluster) ConfigPath(i int) string {
	return filepath.Join(c.confDir(), c.nodes[i].name+".conf")
}

// AccountsPath is the rendered accounts file shared by the nodes.
func (c *Cluster) AccountsPath() string {
	return filepath.Join(c.confDir(), natsconf.AccountsFileName)
}

// StoreDir is node i's JetStream store.
func (c *Cluster) StoreDir(i int) string {
	return filepath.Join(c.dir, "node-"+strconv.Itoa(i+1), "js")
}

// LogPath is node i's log.
func (c *Cluster) LogPath(i int) string {
	return filepath.Join(c.dir, "node-"+strconv.Itoa(i+1)+".log")
}

// Log returns node i's log so far.
func (c *Cluster) Log(i int) string {
	b, _ := os.ReadFile(c.LogPath(i)) // a missing log reads as empty
	return string(b)
}

// LogTail returns the last n lines of node i's log.
func (c *Cluster) LogTail(i, n int) string {
	lines := strings.Split(strings.TrimRight(c.Log(i), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Notable returns the last n lines of node i's log that are warnings,
// errors or leader changes.
func (c *Cluster) Notable(i, n int) string {
	var out []string
	for _, l := range strings.Split(c.Log(i), "\n") {
		if (strings.Contains(l, "[WRN]") || strings.Contains(l, "[ERR]") || strings.Contains(l, "leader")) &&
			!strings.Contains(l, "connect to route") {
			out = append(out, l)
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return strings.Join(out, "\n")
}

// Creds is every credential the harness generated.
func (c *Cluster) Creds() *creds.Set { return c.creds }

// Issuer is the ekem-issuer account.
func (c *Cluster) Issuer() creds.Account { return c.creds.Issuer }

// Monitor is the ekem-monitor account.
func (c *Cluster) Monitor() creds.Account { return c.creds.Monitor }

// Lookup returns the account named name.
func (c *Cluster) Lookup(name string) (creds.Account, bool) {
	a, ok := c.accounts[name]
	return a, ok
}

// Account returns the account named name; it panics if there is none
// (a test bug).
func (c *Cluster) Account(name string) creds.Account {
	a, ok := c.accounts[name]
	if !ok {
		panic("natstest: no account " + name)
	}
	return a
}
