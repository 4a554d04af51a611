package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/entropykem/entropykem/broker-config/creds"
	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/internal/mosquittotest"
	"github.com/entropykem/entropykem/internal/mqttc"
	"github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// liveFleet is an issuer and one device on the shipped prefix and their
// default client ids, as a production fleet runs.
type liveFleet struct {
	iss *issuer.Issuer
	dev *device.Agent
}

func startLiveFleet(t *testing.T, b *mosquittotest.Broker) *liveFleet {
	t.Helper()
	ctx := t.Context()
	dir := t.TempDir()
	key, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		t.Fatal(err)
	}
	pins, _ := signature.NewKeySet(key.Public())
	iss, err := issuer.New(issuer.Config{Broker: b.URL(), Username: b.Issuer().Username, Password: b.Issuer().Password,
		Key: key, StorePath: filepath.Join(dir, "issuer.db"), Period: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { iss.Close() })
	if err := iss.Start(ctx); err != nil {
		t.Fatal(err)
	}
	secret := make([]byte, cohort.SecretSize)
	rand.Read(secret)
	coh, _ := cohort.NewSoftware(secret)
	dev, err := device.New(device.Config{ID: "dev-1", Broker: b.URL(), Password: b.Account("dev-1").Password,
		StateDir: filepath.Join(dir, "dev-1"), Cohort: coh, IssuerKeys: pins, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	go dev.Run(ctx)
	f := &liveFleet{iss: iss, dev: dev}
	waitUntil(t, "the issuer pins dev-1", func() bool { return len(iss.Devices()) == 1 })
	f.issue(t, 1)
	return f
}

// issue issues the next epoch and waits until the device accepted it and
// the issuer verified its confirmation.
func (f *liveFleet) issue(t *testing.T, want uint64) {
	t.Helper()
	epoch, err := f.iss.IssueEpoch(t.Context())
	if err != nil || epoch != want {
		t.Fatalf("issue epoch: %d, %v; want %d", epoch, err, want)
	}
	waitUntil(t, "dev-1 confirms the epoch", func() bool {
		d, ok := f.iss.Device("dev-1")
		return f.dev.Epoch() == want && ok && d.ConfirmedEpoch == want
	})
}

func waitUntil(t *testing.T, what string, done func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !done(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

// retained returns the retained messages under filter that account may
// read, by topic.
func retained(t *testing.T, b *mosquittotest.Broker, user, password, filter string) map[string][]byte {
	t.Helper()
	c, err := mqttc.Dial(t.Context(), mqttc.Options{Broker: b.URL(), ClientID: "test-reader-" + user, Username: user,
		Password: password, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Subscribe(filter); err != nil {
		t.Fatal(err)
	}
	got := map[string][]byte{}
	for {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		m, ok := c.Inbox().Next(ctx)
		cancel()
		if !ok {
			return got
		}
		if m.Retained && len(m.Payload) > 0 {
			got[m.Topic] = m.Payload
		}
	}
}

// TestDemoRefusesLiveFleet runs "ekemctl demo -broker -creds" against a
// real Mosquitto (the shipped configuration) that carries a live fleet:
// the demo refuses before it connects any issuer or device, and the fleet
// is untouched: nothing of the fleet's retained state changed, and the
// same device accepts and confirms the next epoch.
func TestDemoRefusesLiveFleet(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{"dev-1", "dev-2"}})
	credsDir := demoCreds(t, b)
	fleet := startLiveFleet(t, b)
	mon := b.Monitor()
	before := retained(t, b, mon.Username, mon.Password, wire.DefaultPrefix+"/#")

	var out, errb bytes.Buffer
	code := run([]string{"demo", "-broker", b.URL(), "-creds", credsDir, "-devices", "2", "-epochs", "1", "-period", "1s"}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "the broker carries a live fleet: ekem/v1/issuer/online is retained") {
		t.Fatalf("demo against a live fleet: exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	if strings.Contains(out.String(), "issuer   ") || strings.Contains(out.String(), "device   ") {
		t.Fatalf("the demo started clients before refusing:\n%s", out.String())
	}

	after := retained(t, b, mon.Username, mon.Password, wire.DefaultPrefix+"/#")
	if len(after) != len(before) {
		t.Fatalf("retained fleet messages: %d before the demo, %d after", len(before), len(after))
	}
	for topic, p := range before {
		if !bytes.Equal(after[topic], p) {
			t.Errorf("retained %s changed", topic)
		}
	}
	fleet.issue(t, 2) // the fleet still runs: same issuer, same device
	if n := len(fleet.iss.Devices()); n != 1 {
		t.Fatalf("issuer sees %d devices", n)
	}
}

// TestDemoOnMosquittoLeavesNoTrace runs the demo against a real Mosquitto
// with no fleet: it works under its own prefix with the shipped ACL, never
// writes under ekem/v1, and clears its retained messages at the end.
func TestDemoOnMosquittoLeavesNoTrace(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{"dev-1", "dev-2"}})
	credsDir := demoCreds(t, b)
	var out, errb bytes.Buffer
	code := run([]string{"demo", "-broker", b.URL(), "-creds", credsDir, "-devices", "2", "-epochs", "2", "-period", "1s"}, &out, &errb)
	if code != 0 || !strings.HasSuffix(out.String(), "2/2 devices on epoch 2\n") || !strings.Contains(out.String(), "topics under ekem-demo/") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	mon := b.Monitor()
	if got := retained(t, b, mon.Username, mon.Password, wire.DefaultPrefix+"/#"); len(got) != 0 {
		t.Errorf("the demo left %d retained messages under ekem/v1", len(got))
	}
	iss := b.Issuer()
	if got := retained(t, b, iss.Username, iss.Password, DemoPrefixRoot+"/#"); len(got) != 0 {
		t.Errorf("the demo left retained messages under its prefix: %v", keys(got))
	}
	dev := b.Account("dev-1")
	if got := retained(t, b, dev.Username, dev.Password, DemoPrefixRoot+"/#"); len(got) != 0 {
		t.Errorf("the demo left retained messages a device reads: %v", keys(got))
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// demoCreds writes the broker's account files (accounts/NAME.env) as
// mkcreds does, for the demo's -creds.
func demoCreds(t *testing.T, b *mosquittotest.Broker) string {
	t.Helper()
	dir := t.TempDir()
	for _, a := range b.Creds().Accounts() {
		if err := os.MkdirAll(filepath.Dir(creds.AccountFile(dir, a.Username)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(creds.AccountFile(dir, a.Username), a.Marshal(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
