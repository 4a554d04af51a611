package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/internal/embedbroker"
	"github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

type demoConfig struct {
	devices int
	epochs  int
	period  time.Duration
	broker  string
	creds   string
	listen  string
	dir     string
	verbose bool
}

func parseDemo(args []string, stderr io.Writer) (demoConfig, error) {
	var c demoConfig
	fs := flag.NewFlagSet("ekemctl demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&c.devices, "devices", 5, "number of simulated devices (1..1000)")
	fs.IntVar(&c.epochs, "epochs", 3, "number of epochs to issue (1..1000)")
	fs.DurationVar(&c.period, "period", 2*time.Second, "epoch period")
	fs.StringVar(&c.broker, "broker", "", "use this broker (tcp://host:port, e.g. Mosquitto with broker-config) instead of the embedded one; needs -creds. The demo refuses a broker that carries a fleet (a retained ekem/v1/issuer/online)")
	fs.StringVar(&c.creds, "creds", "", "with -broker: the directory made by 'go run ./broker-config/mkcreds' for that broker")
	fs.StringVar(&c.listen, "listen", "127.0.0.1:0", "address of the embedded broker")
	fs.StringVar(&c.dir, "dir", "", "keep keys and state in this directory (default: a temporary one, removed at exit)")
	fs.BoolVar(&c.verbose, "v", false, "log the issuer's and devices' structured logs to stderr")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: ekemctl demo [flags]\n\nRuns an issuer and -devices devices over real MQTT on an embedded broker, issues -epochs\nepochs and checks that every device accepted every epoch. Its topics are under\n%s/<random> and its MQTT client ids its own, so it never disturbs a fleet; with\n-broker it refuses a broker whose %s/issuer/online is retained (a fleet's issuer).\n\nflags:\n", DemoPrefixRoot, wire.DefaultPrefix)
		fs.PrintDefaults()
		fmt.Fprintf(stderr, "\nexamples:\n  ekemctl demo\n  ekemctl demo -devices 20 -epochs 5 -period 1s\n")
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	switch {
	case fs.NArg() > 0:
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case c.devices < 1 || c.devices > 1000:
		return c, fmt.Errorf("-devices must be 1..1000, got %d", c.devices)
	case c.epochs < 1 || c.epochs > 1000:
		return c, fmt.Errorf("-epochs must be 1..1000, got %d", c.epochs)
	case c.period < time.Second:
		return c, fmt.Errorf("-period must be at least 1s, got %v", c.period)
	case c.broker != "" && c.creds == "":
		return c, errors.New("-broker needs -creds DIR, the credentials made by 'go run ./broker-config/mkcreds -out DIR -devices N' for that broker (hint: omit -broker to use the embedded broker)")
	case c.broker == "" && c.creds != "":
		return c, errors.New("-creds is only used with -broker")
	}
	return c, nil
}

func demo(args []string, stdout, stderr io.Writer) int {
	c, err := parseDemo(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "ekemctl demo: %v\n", err)
		return 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := runDemo(ctx, c, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "ekemctl demo: %v\n", err)
		return 1
	}
	return 0
}

// fleetView collects what the devices report, for the final check.
type fleetView struct {
	mu       sync.Mutex
	accepted map[string][]uint64
	problems map[string]string
}

func (v *fleetView) accept(id string, epoch uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.accepted[id] = append(v.accepted[id], epoch)
}

func (v *fleetView) problem(id, what string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.problems[id] = what
}

func runDemo(ctx context.Context, c demoConfig, stdout, stderr io.Writer) error {
	dir := c.dir
	if dir == "" {
		d, err := os.MkdirTemp("", "ekem-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	logger := slog.New(slog.DiscardHandler)
	if c.verbose {
		logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	out := &printer{w: stdout}

	run := newDemoRun()
	broker, err := openBroker(ctx, c, run, logger)
	if err != nil {
		return err
	}
	defer broker.close()
	out.say("broker   %s, topics under %s/", broker.describe, run.prefix)
	if c.broker != "" {
		// Runs after the issuer and the devices are closed (defers run
		// last-in first-out).
		defer func() {
			ids := make([]string, c.devices)
			for i := range ids {
				ids[i] = fmt.Sprintf("dev-%d", i+1)
			}
			if err := clearRetained(context.WithoutCancel(ctx), broker, run, ids, c.epochs); err != nil {
				fmt.Fprintf(stderr, "ekemctl demo: warning: %v\n", err)
			}
		}()
	}

	iss, pins, kid, err := startIssuer(ctx, c, run, dir, broker, logger)
	if err != nil {
		return err
	}
	defer iss.Close()
	out.say("issuer   ML-DSA-87 key %s, epoch period %v", hex.EncodeToString(kid), c.period)

	view := &fleetView{accepted: map[string][]uint64{}, problems: map[string]string{}}
	agents, err := startDevices(ctx, c, run, dir, broker, pins, logger, out, view)
	if err != nil {
		return err
	}
	defer func() {
		for _, a := range agents {
			a.Close()
		}
	}()
	if err := waitRegistered(ctx, iss, c.devices, 15*time.Second, out); err != nil {
		return err
	}
	keys := map[string]string{} // device id → hash of the KEM key its latest ticket used
	for e := 1; e <= c.epochs; e++ {
		start := time.Now()
		out.say("epoch    %d issuing to %d devices: one signature over a Merkle tree of %d tickets", iss.LastEpoch()+1, c.devices, c.devices)
		epoch, err := iss.IssueEpoch(ctx)
		if err != nil {
			return fmt.Errorf("issue epoch %d: %w", e, err)
		}
		if err := waitEpoch(ctx, iss, agents, epoch, max(10*time.Second, 5*c.period)); err != nil {
			return report(view, agents, err)
		}
		fresh, err := checkRotation(iss, keys, epoch)
		if err != nil {
			return report(view, agents, err)
		}
		out.say("epoch    %d confirmed by all %d devices (%v); %s", epoch, c.devices, time.Since(start).Round(time.Millisecond), fresh)
		if e < c.epochs {
			time.Sleep(max(0, c.period-time.Since(start)))
		}
	}
	return finalCheck(iss, agents, view, uint64(c.epochs), out)
}

func startIssuer(ctx context.Context, c demoConfig, run demoRun, dir string, broker *demoBroker, logger *slog.Logger) (*issuer.Issuer, *signature.KeySet, []byte, error) {
	key, err := signature.GenerateKey(signature.MLDSA87)
	if err != nil {
		return nil, nil, nil, err
	}
	pins, err := signature.NewKeySet(key.Public())
	if err != nil {
		return nil, nil, nil, err
	}
	pw, err := broker.account(embedbroker.IssuerUser)
	if err != nil {
		return nil, nil, nil, err
	}
	iss, err := issuer.New(issuer.Config{
		Broker: broker.url, Username: embedbroker.IssuerUser, Password: pw, ClientID: run.clientID("issuer"), Prefix: run.prefix,
		Key: key, StorePath: filepath.Join(dir, "issuer.db"), Period: c.period, TTL: 10 * c.period,
		Logger: logger, // the issuer adds role=issuer itself
	})
	if err != nil {
		return nil, nil, nil, err
	}
	if err := iss.Start(ctx); err != nil {
		iss.Close()
		return nil, nil, nil, err
	}
	return iss, pins, key.Public().KID(), nil
}

func startDevices(ctx context.Context, c demoConfig, run demoRun, dir string, broker *demoBroker, pins *signature.KeySet, logger *slog.Logger, out *printer, view *fleetView) ([]*device.Agent, error) {
	secret := make([]byte, cohort.SecretSize)
	rand.Read(secret)
	coh, err := cohort.NewSoftware(secret)
	if err != nil {
		return nil, err
	}
	var agents []*device.Agent
	for i := 1; i <= c.devices; i++ {
		id := fmt.Sprintf("dev-%d", i)
		pw, err := broker.account(id)
		if err != nil {
			return agents, err
		}
		a, err := device.New(device.Config{
			ID: id, Broker: broker.url, Password: pw, StateDir: filepath.Join(dir, id),
			ClientID: run.clientID(id), Prefix: run.prefix,
			Cohort: coh, IssuerKeys: pins, Logger: logger.With("role", "device", "device", id),
			OnEvent: func(ev device.Event) { onDeviceEvent(out, view, id, ev) },
		})
		if err != nil {
			return agents, err
		}
		agents = append(agents, a)
		go func() {
			if err := a.Run(ctx); err != nil && ctx.Err() == nil {
				view.problem(id, err.Error())
			}
		}()
		out.say("device   %s registered an ML-KEM-1024 key", id)
	}
	return agents, nil
}

func onDeviceEvent(out *printer, view *fleetView, id string, ev device.Event) {
	switch ev.Kind {
	case device.EventAccepted:
		view.accept(id, ev.Epoch)
		gap := ""
		if ev.Gap {
			gap = " (gap recorded)"
		}
		out.say("device   %s accepted epoch %d, key fingerprint %s%s", id, ev.Epoch, ev.Fingerprint, gap)
	case device.EventRejected, device.EventStale:
		view.problem(id, fmt.Sprintf("%s: %s", ev.Kind, ev.Reason))
		out.say("device   %s %s: %s", id, ev.Kind, ev.Reason)
	}
}

func waitRegistered(ctx context.Context, iss *issuer.Issuer, n int, timeout time.Duration, out *printer) error {
	err := poll(ctx, timeout, func() bool { return len(iss.Devices()) == n })
	if err != nil {
		return fmt.Errorf("only %d of %d devices registered at the issuer within %v", len(iss.Devices()), n, timeout)
	}
	out.say("issuer   pinned %d device keys", n)
	return nil
}

// waitEpoch waits until every device accepted epoch and the issuer
// verified every device's confirm tag for it.
func waitEpoch(ctx context.Context, iss *issuer.Issuer, agents []*device.Agent, epoch uint64, timeout time.Duration) error {
	done := func() bool {
		for _, a := range agents {
			if a.Epoch() != epoch {
				return false
			}
		}
		for _, d := range iss.Devices() {
			if d.ConfirmedEpoch != epoch {
				return false
			}
		}
		return true
	}
	if err := poll(ctx, timeout, done); err != nil {
		return fmt.Errorf("epoch %d not confirmed by every device within %v", epoch, timeout)
	}
	return nil
}

// checkRotation checks that every device's ticket of this epoch was
// encapsulated to a KEM key never used before (from epoch 2 on, the key the
// device announced in its previous Status).
func checkRotation(iss *issuer.Issuer, keys map[string]string, epoch uint64) (string, error) {
	for _, d := range iss.Devices() {
		k := hex.EncodeToString(d.KeyHash)
		for id, old := range keys {
			if old == k && (id != d.ID || epoch > 1) {
				return "", fmt.Errorf("epoch %d: %s's ticket reused a device KEM key of an earlier epoch", epoch, d.ID)
			}
		}
	}
	for _, d := range iss.Devices() {
		keys[d.ID] = hex.EncodeToString(d.KeyHash)
	}
	if epoch == 1 {
		return "tickets encapsulated to the registered keys", nil
	}
	return "every ticket encapsulated to a fresh device KEM key", nil
}

func finalCheck(iss *issuer.Issuer, agents []*device.Agent, view *fleetView, epochs uint64, out *printer) error {
	ok := 0
	for _, a := range agents {
		d, found := iss.Device(a.ID())
		if a.Epoch() == epochs && found && d.ConfirmedEpoch == epochs && len(view.accepted[a.ID()]) == int(epochs) {
			ok++
		}
	}
	if ok != len(agents) {
		return report(view, agents, fmt.Errorf("%d/%d devices on epoch %d", ok, len(agents), epochs))
	}
	out.say("%d/%d devices on epoch %d", ok, len(agents), epochs)
	return nil
}

func report(view *fleetView, agents []*device.Agent, err error) error {
	view.mu.Lock()
	defer view.mu.Unlock()
	msg := err.Error()
	for _, a := range agents {
		if p, bad := view.problems[a.ID()]; bad {
			msg += fmt.Sprintf("\n  %s: on epoch %d, %s", a.ID(), a.Epoch(), p)
		} else {
			msg += fmt.Sprintf("\n  %s: on epoch %d, accepted %v", a.ID(), a.Epoch(), view.accepted[a.ID()])
		}
	}
	return errors.New(msg)
}

func poll(ctx context.Context, timeout time.Duration, done func() bool) error {
	deadline := time.Now().Add(timeout)
	for !done() {
		if time.Now().After(deadline) {
			return context.DeadlineExceeded
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// printer serialises progress lines from many goroutines.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) say(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}
