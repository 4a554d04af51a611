package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/entropykem/entropykem/broker-config/creds"
	"github.com/entropykem/entropykem/internal/mosquittotest"
	"github.com/entropykem/entropykem/internal/mqttc"
)

// TestDebianLayoutRealMosquitto renders mosquitto.conf for the Debian
// layout (/etc/mosquitto, /etc/mosquitto/certs, /var/lib/mosquitto, user
// mosquitto) under a staging root, installs the broker's files with
// "mkcreds render-config -install", and starts a real Mosquitto on it. Run
// as root with a mosquitto user (as on Debian), the broker drops to that
// user before reading passwd and server.key: the install's ownership
// (root, group mosquitto, 0640) must let it. A device logs in with its
// password and with its client certificate; a wrong password is refused.
func TestDebianLayoutRealMosquitto(t *testing.T) {
	bin := mosquittotest.Binary(t)
	brokerUser := ""
	if os.Geteuid() == 0 {
		if _, err := user.Lookup("mosquitto"); err != nil {
			t.Skip("running as root without a mosquitto user: the Debian layout's user cannot be tested")
		}
		brokerUser = "mosquitto"
	} else if u, err := user.Current(); err == nil {
		brokerUser = u.Username // mosquitto does not switch users when not started as root
	}
	root := t.TempDir()
	// The broker's user must reach the staging tree, as it reaches /etc.
	for _, d := range []string{root, filepath.Dir(root)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	credsDir := filepath.Join(t.TempDir(), "creds")
	mk := func(args ...string) {
		t.Helper()
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 0 {
			t.Fatalf("mkcreds %v: exit %d\n%s%s", args, code, out.String(), errb.String())
		}
	}
	mk("-out", credsDir, "-ids", "dev-1", "-ca", "-hosts", "localhost,127.0.0.1")
	port, tlsPort := freePort(t), freePort(t)
	mk("render-config", "-layout", "debian", "-root", root, "-port", strconv.Itoa(port), "-tls-port", strconv.Itoa(tlsPort),
		"-tls-host", "127.0.0.1", "-user", brokerUser, "-creds", credsDir, "-install")

	conf := filepath.Join(root, "etc/mosquitto/mosquitto.conf")
	logPath := filepath.Join(t.TempDir(), "mosquitto.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	t.Cleanup(stop)
	brokerLog := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	for deadline := time.Now().Add(10 * time.Second); !(accepts(port) && accepts(tlsPort)); time.Sleep(20 * time.Millisecond) {
		select {
		case <-exited:
			t.Fatalf("mosquitto exited at start-up:\n%s", brokerLog())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto does not listen:\n%s", brokerLog())
		}
	}

	dev, err := creds.ReadAccountFile(creds.AccountFile(credsDir, "dev-1"))
	if err != nil {
		t.Fatal(err)
	}
	dial := func(o mqttc.Options) error {
		o.ClientID, o.Logger = "debian-test-"+strconv.Itoa(int(time.Now().UnixNano()%1e6)), slog.New(slog.DiscardHandler)
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		c, err := mqttc.Dial(ctx, o)
		if err == nil {
			c.Close()
		}
		return err
	}
	url := "tcp://127.0.0.1:" + strconv.Itoa(port)
	if err := dial(mqttc.Options{Broker: url, Username: "dev-1", Password: dev.Password}); err != nil {
		t.Fatalf("password login: %v\n%s", err, brokerLog())
	}
	if err := dial(mqttc.Options{Broker: url, Username: "dev-1", Password: "wrong"}); !errors.Is(err, mqttc.ErrRefused) {
		t.Fatalf("wrong password: %v", err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(creds.CertDir(credsDir), "ca.crt"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	certFile, keyFile := creds.ClientCertFiles(credsDir, "dev-1")
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	tlsConf := &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	if err := dial(mqttc.Options{Broker: "ssl://127.0.0.1:" + strconv.Itoa(tlsPort), TLS: tlsConf}); err != nil {
		t.Fatalf("client certificate login: %v\n%s", err, brokerLog())
	}
	stop()
	db := filepath.Join(root, "var/lib/mosquitto/mosquitto.db")
	st, err := os.Stat(db)
	if err != nil {
		t.Fatalf("no persistence database after SIGTERM: %v\n%s", err, brokerLog())
	}
	if os.Geteuid() != 0 {
		return
	}
	if u, err := user.Lookup(brokerUser); err == nil {
		if uid := strconv.Itoa(int(st.Sys().(*syscall.Stat_t).Uid)); uid != u.Uid {
			t.Errorf("mosquitto.db owned by uid %s, want %s (%s): the broker did not drop privileges", uid, u.Uid, brokerUser)
		}
	}
	// Why the install sets group ownership: a root-only 0600 password file
	// (as a plain copy makes it) stops the broker from starting.
	passwd := filepath.Join(root, "etc/mosquitto/passwd")
	if err := os.Chown(passwd, 0, 0); err != nil {
		t.Fatal(err)
	}
	os.Chmod(passwd, 0o600)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-c", conf).CombinedOutput() // exits at once (killed if not)
	if err == nil || !bytes.Contains(out, []byte("Unable to open pwfile")) {
		t.Fatalf("mosquitto with a root-only password file: %v\n%s", err, out)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func accepts(port int) bool {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
