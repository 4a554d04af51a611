package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/internal/mqttc"
)

// TestReconnectSpreadAfterBrokerRestart: 200 device agents lose their
// Mosquitto at one moment; after it restarts they come back spread over
// the backoff window (full jitter), not in lockstep. The spread is
// reported; only a loose property is asserted (a timing test must not be
// a benchmark): every agent is back within the backoff bounds, and not all
// within 100 ms of each other.
func TestReconnectSpreadAfterBrokerRestart(t *testing.T) {
	const n = 200
	ids := faultIDs("rc-", n)
	f := newSysFleet(t, ids...)
	logs := &logBuffer{}
	for _, id := range ids {
		a, err := device.New(device.Config{ID: id, Broker: f.b.URL(), Password: f.b.Account(id).Password,
			StateDir: filepath.Join(f.dir, id), Cohort: f.cohort, IssuerKeys: f.pins, Logger: deviceLogger(logs)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		go a.Run(context.Background())
	}
	connected := func(after time.Time) map[string]time.Time {
		out := map[string]time.Time{}
		for _, r := range logs.records(t) {
			if r["msg"] != "mqtt connected" {
				continue
			}
			at, err := time.Parse(time.RFC3339Nano, r["time"].(string))
			if err != nil {
				t.Fatal(err)
			}
			if id, _ := r["device"].(string); at.After(after) {
				if _, seen := out[id]; !seen {
					out[id] = at
				}
			}
		}
		return out
	}
	waitAll := func(after time.Time, within time.Duration) map[string]time.Time {
		deadline := time.Now().Add(within)
		for {
			c := connected(after)
			if len(c) == n {
				return c
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d agents connected within %v", len(c), n, within)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitAll(time.Time{}, 60*time.Second)

	if err := f.b.Stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	f.b.Restart()
	up := time.Now()
	// Back within the backoff bounds: the broker was down for less than a
	// second, so a few windows (1 + 2 + 4 + 8 s) plus connection time.
	back := waitAll(down, 40*time.Second)
	var times []time.Duration
	for _, at := range back {
		times = append(times, at.Sub(down)) // since the connections were lost
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	q := func(p float64) time.Duration { return times[int(p*float64(len(times)-1))].Round(time.Millisecond) }
	spread := times[len(times)-1] - times[0]
	hist := map[int]int{}
	for _, d := range times {
		hist[int(d/(500*time.Millisecond))]++
	}
	var buckets []string
	for k := 0; k <= int(times[len(times)-1]/(500*time.Millisecond)); k++ {
		buckets = append(buckets, fmt.Sprintf("%.1f-%.1fs:%d", float64(k)/2, float64(k+1)/2, hist[k]))
	}
	t.Logf("broker down %v; %d agents reconnected, after the loss: first %v, median %v, p90 %v, last %v, spread %v (backoff %v..%v, full jitter)",
		up.Sub(down).Round(time.Millisecond), n, q(0), q(0.5), q(0.9), q(1), spread.Round(time.Millisecond),
		mqttc.DefaultBackoff.Min, mqttc.DefaultBackoff.Max)
	t.Logf("reconnections per half second after the loss: %s", strings.Join(buckets, " "))
	if spread < 100*time.Millisecond {
		t.Fatalf("all %d agents reconnected within %v of each other: lockstep", n, spread)
	}
}
