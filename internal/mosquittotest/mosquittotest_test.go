package mosquittotest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

func dial(t *testing.T, url, user, password string) mqtt.Client {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("%s-%d", user, time.Now().UnixNano())).
		SetUsername(user).SetPassword(password).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	tok := c.Connect()
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", user, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

// retained subscribes and returns the first message on topic (bounded wait).
func retained(t *testing.T, b *Broker, user, topic string) string {
	t.Helper()
	a := b.Account(user)
	c := dial(t, b.URL(), a.Username, a.Password)
	got := make(chan string, 1)
	tok := c.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		select {
		case got <- string(m.Payload()):
		default:
		}
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	select {
	case p := <-got:
		return p
	case <-time.After(5 * time.Second):
		t.Fatalf("no retained message on %s", topic)
		return ""
	}
}

func publishRetained(t *testing.T, b *Broker, topic, payload string) {
	t.Helper()
	iss := b.Issuer()
	c := dial(t, b.URL(), iss.Username, iss.Password)
	tok := c.Publish(topic, 1, true, payload)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	c.Disconnect(50)
}

func TestStopSavesAndRestartRestores(t *testing.T) {
	b := Start(t, Options{Devices: []string{"dev-1"}})
	if !b.Running() {
		t.Fatal("broker not running after Start")
	}
	publishRetained(t, b, "ekem/v1/ticket/dev-1", "t1")
	port := b.Addr()
	if err := b.Stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if b.Running() {
		t.Fatal("broker running after Stop")
	}
	if _, err := os.Stat(filepath.Join(b.DataDir(), "mosquitto.db")); err != nil {
		t.Fatalf("no persistence database after SIGTERM: %v", err)
	}
	b.Restart()
	if b.Addr() != port {
		t.Fatalf("restart moved the broker from %s to %s", port, b.Addr())
	}
	if got := retained(t, b, "dev-1", "ekem/v1/ticket/dev-1"); got != "t1" {
		t.Fatalf("retained after restart = %q, want t1", got)
	}
}

func TestKillAndRestart(t *testing.T) {
	b := Start(t, Options{})
	b.Kill()
	if b.Running() {
		t.Fatal("broker running after Kill")
	}
	b.Restart()
	iss := b.Issuer()
	dial(t, b.URL(), iss.Username, iss.Password)
	if n := strings.Count(b.Log(), "mosquitto version 2"); n < 3 { // starting, running, (killed), starting, running
		t.Errorf("log shows %d version lines, want a second start", n)
	}
}

func TestTLSClientCertificate(t *testing.T) {
	b := Start(t, Options{Devices: []string{"dev-1"}, TLS: true})
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.TLSURL()).SetClientID("tls-dev-1").
		SetTLSConfig(b.ClientTLS("dev-1")).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	tok := c.Connect()
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("TLS connect: %v", tok.Error())
	}
	c.Disconnect(50)
	if !strings.Contains(b.Log(), "u'dev-1'") {
		t.Errorf("broker log does not show username dev-1 for the certificate client")
	}
}

// fakeTB records Skipf and Fatalf instead of acting on the real test.
type fakeTB struct {
	testing.TB
	mu      sync.Mutex
	skipped bool
	failed  bool
	msg     string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Skipf(format string, args ...any) {
	f.record(&f.skipped, format, args)
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.record(&f.failed, format, args)
}
func (f *fakeTB) record(flag *bool, format string, args []any) {
	f.mu.Lock()
	*flag, f.msg = true, fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}

func runFind(t *testing.T) *fakeTB {
	f := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		findBinary(f)
	}()
	<-done
	return f
}

func TestMissingBinary(t *testing.T) {
	t.Setenv(EnvBinary, filepath.Join(t.TempDir(), "no-such-mosquitto"))
	t.Setenv(EnvRequire, "")
	if f := runFind(t); !f.skipped || f.failed || !strings.Contains(f.msg, EnvRequire) {
		t.Errorf("without %s: skipped=%v failed=%v msg=%q; want a skip naming the variable", EnvRequire, f.skipped, f.failed, f.msg)
	}
	t.Setenv(EnvRequire, "1")
	if f := runFind(t); f.skipped || !f.failed {
		t.Errorf("with %s=1: skipped=%v failed=%v; want a failure", EnvRequire, f.skipped, f.failed)
	}
}
