package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/entropykem/entropykem/internal/bench"
)

const benchUsage = `usage: ekemctl bench [flags]

Starts Mosquitto with the shipped broker-config on a free loopback port and
measures, in one run: the broker floor (paho QoS 1 retained publishes of a
ticket-sized payload), the issuer's epoch for -devices devices through that
broker, the issuer's crypto per ticket against its primitive floor, a
device's ticket processing and memory, and a fleet of -fleet device agents
rotating. It prints a table with medians and ratios, and PASS/MISS per
performance goal. Needs mosquitto 2 (EKEM_MOSQUITTO may name the binary).
With -broker nats it also starts a 3-node NATS JetStream cluster
(broker-config/nats; nats-server 2.15.3 or later from EKEM_NATS_SERVER,
~/.cache/entropykem/nats-server-v2.15.3 or PATH) and puts its publish floor,
issuer epoch and memory per retained ticket per node next to Mosquitto's.

flags:
`

const benchExamples = `
examples:
  ekemctl bench                                  # ~1-2 minutes on 2 cores
  ekemctl bench -devices 100000 -fleet 10000 -json bench.json   # the goal sizes
  ekemctl bench -broker nats -devices 10000 -reps 1              # Mosquitto and a NATS cluster side by side
`

type benchFlags struct {
	cfg     bench.Config
	json    string
	profile string
}

func parseBench(args []string, stderr io.Writer) (benchFlags, error) {
	var f benchFlags
	fs := flag.NewFlagSet("ekemctl bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&f.cfg.Devices, "devices", 10000, "issuer epoch size N (2..2000000)")
	fs.IntVar(&f.cfg.Fleet, "fleet", 200, "simulated device agents M, each with its own MQTT connection (1..50000)")
	fs.IntVar(&f.cfg.CryptoDevices, "crypto-devices", 0, "epoch size of the crypto-only measurements (default min(devices, 10000))")
	fs.IntVar(&f.cfg.Reps, "reps", 3, "repetitions per median (1..100)")
	fs.StringVar(&f.cfg.Dir, "dir", "", "directory for the broker's and issuer's files (default: a temporary one, removed at exit)")
	fs.DurationVar(&f.cfg.FleetTimeout, "fleet-timeout", 120*time.Second, "how long to wait for the fleet's acknowledgements")
	fs.StringVar(&f.cfg.Broker, "broker", "mosquitto", "mosquitto, or nats: also run the publish floor, the issuer epoch and the memory per retained ticket on a 3-node NATS JetStream cluster (broker-config/nats), side by side")
	fs.BoolVar(&f.cfg.SkipChild, "no-agent-process", false, "do not run one agent in its own process (its RSS is then not measured)")
	fs.StringVar(&f.cfg.Store, "store", "", "an empty PostgreSQL database (postgres://…): also measure the issuer epochs on it")
	fs.StringVar(&f.json, "json", "", "also write the report as JSON to this file")
	fs.StringVar(&f.profile, "cpuprofile", "", "write a CPU profile of the whole run to this file (go tool pprof)")
	fs.Usage = func() {
		fmt.Fprint(stderr, benchUsage)
		fs.PrintDefaults()
		fmt.Fprint(stderr, benchExamples)
	}
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if fs.NArg() > 0 {
		return f, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return f, nil
}

func runBench(args []string, stdout, stderr io.Writer) int {
	if bench.IsChild() {
		return bench.RunChild(stdout, stderr)
	}
	f, err := parseBench(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "ekemctl bench: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if f.profile != "" {
		pf, err := os.Create(f.profile)
		if err != nil {
			fmt.Fprintf(stderr, "ekemctl bench: %v\n", err)
			return 1
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			fmt.Fprintf(stderr, "ekemctl bench: %v\n", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	rep, err := bench.Run(ctx, f.cfg, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "ekemctl bench: %v\n", err)
		if errors.Is(err, bench.ErrConfig) {
			return 2
		}
		return 1
	}
	if err := rep.WriteTable(stdout); err != nil {
		fmt.Fprintf(stderr, "ekemctl bench: %v\n", err)
		return 1
	}
	if f.json != "" {
		if err := rep.WriteJSON(f.json); err != nil {
			fmt.Fprintf(stderr, "ekemctl bench: %v\n", err)
			return 1
		}
	}
	return 0
}
