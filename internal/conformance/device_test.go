package conformance

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/internal/mosquittotest"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/signature"
)

func kitBroker(b *mosquittotest.Broker) Broker {
	a := b.Issuer()
	return Broker{URL: b.URL(), Username: a.Username, Password: a.Password}
}

// runDeviceKit runs the kit against whatever start starts, on a fresh
// Mosquitto, and returns the report.
func runDeviceKit(t *testing.T, id string, start func(ctx context.Context, b *mosquittotest.Broker, pins *signature.KeySet)) *Report {
	t.Helper()
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{id}})
	key, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		t.Fatal(err)
	}
	pins, err := signature.NewKeySet(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	type out struct {
		rep *Report
		err error
	}
	done := make(chan out, 1)
	go func() {
		rep, err := RunDevice(ctx, DeviceOptions{Broker: kitBroker(b), DeviceID: id, IssuerKey: key, StaleWait: 20 * time.Second})
		done <- out{rep, err}
	}()
	dctx, dcancel := context.WithCancel(ctx)
	start(dctx, b, pins)
	o := <-done
	dcancel()
	if o.err != nil {
		t.Fatal(o.err)
	}
	var buf bytes.Buffer
	o.rep.Print(&buf)
	t.Logf("\n%s", buf.String())
	return o.rep
}

// The project's own device passes every rule.
func TestDeviceKitPassesAgent(t *testing.T) {
	const id = "dut-1"
	rep := runDeviceKit(t, id, func(ctx context.Context, b *mosquittotest.Broker, pins *signature.KeySet) {
		coh, _ := cohort.NewSoftware(bytes.Repeat([]byte{9}, 32))
		a, err := device.New(device.Config{ID: id, Broker: b.URL(), Password: b.Account(id).Password, StateDir: t.TempDir(),
			Cohort: coh, IssuerKeys: pins, StaleInterval: 500 * time.Millisecond, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			a.Run(ctx)
		}()
		t.Cleanup(func() { a.Close() })
	})
	if rep.Failed() != 0 {
		t.Fatalf("%d rules failed", rep.Failed())
	}
	for _, r := range rep.Results {
		if r.Skipped && r.Rule != RuleRekey {
			t.Errorf("%s skipped: %s", r.Rule, r.Detail)
		}
	}
}

// A device that accepts a rollback, or that never reports a gap, fails
// exactly the rule it breaks.
func TestDeviceKitCatchesBrokenDevices(t *testing.T) {
	for bug, rule := range map[string]string{"rollback": RuleRollback, "prev": RuleGap, "held": RuleHeldReplaced} {
		t.Run(bug, func(t *testing.T) {
			const id = "dut-broken"
			rep := runDeviceKit(t, id, func(ctx context.Context, b *mosquittotest.Broker, pins *signature.KeySet) {
				d := &brokenDevice{id: id, broker: b.URL(), password: b.Account(id).Password, pins: pins, bug: bug}
				go d.run(ctx, t)
			})
			if rep.Failed() == 0 {
				t.Fatal("the kit passed a broken device")
			}
			r, ok := rep.Result(rule)
			if !ok || r.Pass {
				t.Fatalf("rule %q did not fail: %+v", rule, r)
			}
			// The double is otherwise correct: the rules before the broken
			// one pass.
			for _, x := range rep.Results {
				if x.Rule == rule {
					break
				}
				if !x.Pass && !x.Skipped {
					t.Errorf("rule %q failed before %q: %s", x.Rule, rule, x.Detail)
				}
			}
		})
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
