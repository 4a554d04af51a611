package integration

// Device lifecycle on a real Mosquitto (issue 14): permanent connection
// errors fail fast with a hint or are retried with one hinted line per
// backoff step, a client certificate naming another id is refused at
// start, and a session taken over by a second agent with the same id is
// named in the log.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/internal/mosquittotest"
	"github.com/entropykem/entropykem/internal/mqttc"
)

// TestPermanentConnectionErrors runs a device agent against each
// misconfiguration of issue 14 and checks that it exits within seconds
// with a hint (ErrPermanent), or, for an unknown host, retries with one
// hinted line per backoff step.
func TestPermanentConnectionErrors(t *testing.T) {
	f := newSysFleet(t, "dev-1")
	tb := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{"dev-1"}, TLS: true})
	otherCA := func() *tls.Config {
		c := tb.ClientTLS("dev-1")
		c.RootCAs = x509.NewCertPool() // trusts nothing: the broker's CA is unknown
		return c
	}
	cases := []struct {
		name   string
		broker string
		tls    *tls.Config
		hint   string
		retry  bool // retried with hinted lines rather than a quick exit
	}{
		{"bad port", "tcp://127.0.0.1:99999", nil, "port", false},
		{"ssl to a plain port", "ssl://" + tb.Addr(), tb.ClientTLS("dev-1"), "plain", true},
		// TLS 1.3 delivers the broker's certificate_required alert after
		// the handshake: the client sees either the alert (a quick exit)
		// or a bare close (retried, with a hint naming the certificate).
		{"certificate required", tb.TLSURL(), tb.ClientTLS(""), "TLS client certificate", true},
		{"unknown CA", tb.TLSURL(), otherCA(), "CA", false},
		{"unknown host", "tcp://no-such-host.invalid:1883", nil, "host no-such-host.invalid", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			logs := &logBuffer{}
			a, err := device.New(device.Config{ID: "dev-1", Broker: c.broker, Password: tb.Account("dev-1").Password,
				TLS: c.tls, StateDir: filepath.Join(t.TempDir(), "s"), Cohort: f.cohort, IssuerKeys: f.pins,
				Logger: deviceLogger(logs), Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			window := 7 * time.Second
			ctx, cancel := context.WithTimeout(context.Background(), window)
			defer cancel()
			start := time.Now()
			err = a.Run(ctx)
			took := time.Since(start)
			// Either outcome the issue allows: a quick exit with the hint,
			// or (retry) one hinted line per backoff step.
			if !c.retry || errors.Is(err, mqttc.ErrPermanent) {
				if !errors.Is(err, mqttc.ErrPermanent) || !strings.Contains(err.Error(), "hint: ") || !strings.Contains(err.Error(), c.hint) {
					t.Fatalf("Run: %v, want ErrPermanent with a hint about %q", err, c.hint)
				}
				// A case that may be retried first can give up on a later
				// attempt (the alert arrives then), within the window.
				if limit := 3 * time.Second; took > limit && !c.retry {
					t.Fatalf("took %v to give up", took)
				}
				t.Logf("%s: exit after %v: %v", c.name, took.Round(time.Millisecond), err)
				return
			}
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			// One hinted line per attempt, each announcing a wait within
			// that attempt's backoff window (1 s, 2 s, 4 s, ...).
			var lines int
			var waits []time.Duration
			for _, r := range logs.records(t) {
				if r["msg"] != "mqtt connect failed, retrying" {
					continue
				}
				if h, _ := r["hint"].(string); !strings.Contains(h, c.hint) {
					t.Errorf("line without the hint %q: %v", c.hint, r)
				}
				wait := time.Duration(r["retry_in"].(float64))
				if w := mqttc.DefaultBackoff.Window(lines); wait > w {
					t.Errorf("attempt %d waits %v, beyond its window %v", lines, wait, w)
				}
				waits = append(waits, wait)
				lines++
			}
			if lines < 1 {
				t.Fatalf("no hinted line in %v", window)
			}
			t.Logf("%s: %d hinted lines in %v, waits %v", c.name, lines, window, waits)
		})
	}
}

// TestCertificateForAnotherID: a client certificate whose CN is another
// device id is refused at start, with the ids named.
func TestCertificateForAnotherID(t *testing.T) {
	tb := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{"dev-1", "dev-2"}, TLS: true})
	f := newSysFleet(t)
	a, err := device.New(device.Config{ID: "dev-1", Broker: tb.TLSURL(), TLS: tb.ClientTLS("dev-2"),
		StateDir: t.TempDir(), Cohort: f.cohort, IssuerKeys: f.pins, Logger: deviceLogger(&logBuffer{})})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = a.Run(ctx)
	if !errors.Is(err, device.ErrConfig) || !strings.Contains(err.Error(), `"dev-2"`) || !strings.Contains(err.Error(), `"dev-1"`) {
		t.Fatalf("Run: %v, want ErrConfig naming both ids", err)
	}
}

// TestSessionTakenOver: two agents with one id (and one account) kick each
// other off the broker; the log says the session was taken over.
func TestSessionTakenOver(t *testing.T) {
	f := newSysFleet(t, "dev-1")
	logs := &logBuffer{}
	var agents []*device.Agent
	for i := range 2 {
		a, err := device.New(device.Config{ID: "dev-1", Broker: f.b.URL(), Password: f.b.Account("dev-1").Password,
			StateDir: filepath.Join(t.TempDir(), "s"), Cohort: f.cohort, IssuerKeys: f.pins,
			Logger: deviceLogger(logs).With("agent", i)})
		if err != nil {
			t.Fatal(err)
		}
		agents = append(agents, a)
		go a.Run(context.Background())
	}
	defer func() {
		for _, a := range agents {
			a.Close()
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), "session_taken_over") {
		if time.Now().After(deadline) {
			t.Fatalf("no session_taken_over in the log within 30 s:\n%s", tail(logs.String(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, r := range logs.records(t) {
		if r["reason"] == "session_taken_over" {
			if r["client_id"] != "dev-1" {
				t.Fatalf("record does not name the client id: %v", r)
			}
			t.Logf("%v", r["msg"])
			return
		}
	}
}
