package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/entropykem/entropykem/internal/bench"
	"github.com/entropykem/entropykem/internal/natstest"
)

// TestMain lets the bench re-execute this test binary as its one
// device-agent process (bench.ChildEnv), as it re-executes ekemctl, and
// makes it the ekemctl command of the scripts in testdata/script.
func TestMain(m *testing.M) {
	if bench.IsChild() {
		os.Exit(bench.RunChild(os.Stdout, os.Stderr))
	}
	testscript.Main(m, map[string]func(){"ekemctl": main})
}

// TestBench runs the whole benchmark at tiny sizes against a real
// Mosquitto: it must exit 0, print every measurement row and a PASS or MISS
// for every goal, and write JSON with every row measured (a positive value:
// -1 marks a measurement that did not happen). It checks completeness, not
// timings.
func TestBench(t *testing.T) {
	if _, err := bench.FindMosquitto(); err != nil {
		if os.Getenv("EKEM_REQUIRE_MOSQUITTO") == "1" {
			t.Fatalf("bench needs mosquitto: %v (EKEM_REQUIRE_MOSQUITTO=1)", err)
		}
		t.Skipf("bench needs mosquitto: %v; set EKEM_REQUIRE_MOSQUITTO=1 to make this a failure", err)
	}
	if testing.Short() {
		t.Skip("runs a broker and a small fleet")
	}
	js := filepath.Join(t.TempDir(), "bench.json")
	var out, errb bytes.Buffer
	code := run([]string{"bench", "-devices", "50", "-fleet", "5", "-reps", "1", "-json", js}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	data, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	for _, k := range bench.RowKeys {
		row, ok := rep.Row(k)
		if !ok {
			t.Errorf("row %s missing from the JSON report", k)
			continue
		}
		// RSS growth over a handful of in-process agents is noise and may
		// even be negative; it only has to be reported.
		if row.Value <= 0 && k != "device.rss_fleet_per_agent" {
			t.Errorf("row %s = %v %s (%s): not measured", k, row.Value, row.Unit, row.Note)
		}
		if !strings.Contains(out.String(), row.Label) {
			t.Errorf("table lacks row %q", row.Label)
		}
	}
	if len(rep.Goals) != 5 {
		t.Errorf("%d goals in the report, want 5", len(rep.Goals))
	}
	for _, g := range rep.Goals {
		if !strings.Contains(out.String(), g.Name) {
			t.Errorf("table lacks goal %q", g.Name)
		}
	}
	if n := strings.Count(out.String(), "PASS") + strings.Count(out.String(), "MISS"); n != 5 {
		t.Errorf("%d PASS/MISS verdicts printed, want 5:\n%s", n, out.String())
	}
}

func TestBenchFlags(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "-devices", "1"},
		{"bench", "-fleet", "-1"},
		{"bench", "-reps", "101"},
		{"bench", "extra"},
	} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2 (stderr %s)", args, code, errb.String())
		}
	}
}

// TestBenchNATS runs the benchmark at tiny sizes with -broker nats: next to
// the Mosquitto rows it must report the publish floor, the issuer's epoch
// and the memory per retained ticket on a 3-node NATS cluster.
func TestBenchNATS(t *testing.T) {
	if _, err := bench.FindMosquitto(); err != nil {
		t.Skipf("bench needs mosquitto: %v", err)
	}
	if _, err := natstest.FindBinary(); err != nil {
		if os.Getenv(natstest.EnvRequire) == "1" {
			t.Fatalf("bench -broker nats needs nats-server: %v (%s=1)", err, natstest.EnvRequire)
		}
		t.Skipf("bench -broker nats needs nats-server: %v", err)
	}
	if testing.Short() {
		t.Skip("runs two brokers")
	}
	js := filepath.Join(t.TempDir(), "bench.json")
	var out, errb bytes.Buffer
	code := run([]string{"bench", "-broker", "nats", "-devices", "50", "-fleet", "3", "-reps", "1", "-no-agent-process", "-json", js}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	data, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	for _, k := range bench.NATSRowKeys {
		row, ok := rep.Row(k)
		if !ok {
			t.Errorf("row %s missing", k)
			continue
		}
		// RSS growth over 50 tickets is noise; it only has to be reported.
		if row.Value <= 0 && !strings.Contains(k, "mem_per_ticket") {
			t.Errorf("row %s = %v %s: not measured", k, row.Value, row.Unit)
		}
		if !strings.Contains(out.String(), row.Label) {
			t.Errorf("table lacks row %q", row.Label)
		}
	}
}
