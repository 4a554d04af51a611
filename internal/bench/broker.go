package bench

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/broker-config/creds"
	"github.com/entropykem/entropykem/internal/natstest"
)

// ErrNoMosquitto is returned when no mosquitto binary can be found.
var ErrNoMosquitto = errors.New("bench: no mosquitto binary (apt-get install mosquitto, or set EKEM_MOSQUITTO)")

// broker is a Mosquitto child process running the shipped broker-config
// (internal/mosquittotest renders it the same way): only ports, directories
// and, when run as root, "user root" differ from broker-config/mosquitto.conf.
type broker struct {
	dir   string
	port  int
	creds *creds.Set
	cmd   *exec.Cmd
	done  chan struct{}
	// nats, if set, makes this broker the NATS cluster instead (nats.go).
	nats *natstest.Cluster
}

// startBroker renders the shipped configuration and a password file with
// the issuer, monitor and the given device accounts into dir, and starts
// mosquitto on a free loopback port.
func startBroker(dir string, devices []string) (*broker, error) {
	bin, err := mosquittoBinary()
	if err != nil {
		return nil, err
	}
	set, err := creds.NewSet(creds.Options{Devices: devices, CA: true, ServerHosts: []string{"127.0.0.1"}})
	if err != nil {
		return nil, fmt.Errorf("bench: credentials: %w", err)
	}
	b := &broker{dir: dir, creds: set}
	confDir := filepath.Join(dir, "config")
	if err := set.WriteBroker(confDir); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	if err := os.WriteFile(filepath.Join(confDir, brokerconfig.ACLFileName), []byte(brokerconfig.ACL()), 0o600); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	for try := 0; try < 3; try++ {
		if err = b.launch(bin, confDir); err == nil {
			return b, nil
		}
		if !strings.Contains(b.logTail(), "Address already in use") {
			break
		}
	}
	return nil, fmt.Errorf("bench: mosquitto: %w\n%s", err, b.logTail())
}

func (b *broker) launch(bin, confDir string) error {
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	b.port = ports[0]
	o := brokerconfig.RenderOptions{
		ConfigDir: confDir, CertDir: creds.CertDir(confDir), DataDir: filepath.Join(b.dir, "data"),
		PasswordPort: ports[0], TLSPort: ports[1], TLSHost: "127.0.0.1",
	}
	if os.Geteuid() == 0 {
		o.User = "root" // else mosquitto drops to a user that cannot read dir
	}
	conf, err := brokerconfig.RenderConfig(o)
	if err != nil {
		return err
	}
	confPath := filepath.Join(b.dir, "mosquitto.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return err
	}
	logf, err := os.OpenFile(b.logPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, "-c", confPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	b.cmd, b.done = cmd, done
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return errors.New("mosquitto exited during start-up")
		default:
		}
		if c, err := net.DialTimeout("tcp", b.addr(), 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.stop()
	return errors.New("mosquitto did not accept connections within 10s")
}

func (b *broker) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port)) }
func (b *broker) url() string {
	if b.nats != nil {
		return b.nats.URL()
	}
	return "tcp://" + b.addr()
}
func (b *broker) pid() int { return b.cmd.Process.Pid }
func (b *broker) logPath() string {
	return filepath.Join(b.dir, "mosquitto.log")
}

func (b *broker) logTail() string {
	data, _ := os.ReadFile(b.logPath()) // missing log: empty
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}

func (b *broker) password(user string) string {
	for _, a := range b.creds.Accounts() {
		if a.Username == user {
			return a.Password
		}
	}
	return ""
}

// stop terminates the broker (SIGTERM, then SIGKILL after 10 s).
func (b *broker) stop() {
	if b.nats != nil {
		_ = b.nats.Close() // SIGTERM, then SIGKILL, per node
		return
	}
	if b.cmd == nil {
		return
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(10 * time.Second):
		_ = b.cmd.Process.Kill()
		<-b.done
	}
}

func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("bench: free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// FindMosquitto returns the mosquitto binary the benchmark would run:
// $EKEM_MOSQUITTO, else mosquitto in PATH or in the usual sbin directories.
func FindMosquitto() (string, error) { return mosquittoBinary() }

func mosquittoBinary() (string, error) {
	if p := os.Getenv("EKEM_MOSQUITTO"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", ErrNoMosquitto
}
