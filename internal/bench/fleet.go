package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"syscall"
	"time"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/signature"
)

// wave is how many agents connect at once: more would overflow the
// broker's listen backlog and cost SYN retransmits (1 s each).
const wave = 250

// fleet is the simulated devices: agent 0 in its own process (for its
// RSS) unless Config.SkipChild, as many others in this process as its file
// descriptor limit allows (two per agent: the MQTT socket and the state
// directory lock), and the rest in further agent processes. Each agent has
// its own MQTT connection, state directory and root cache.
type fleet struct {
	agents   []*device.Agent
	child    *childProc   // the one-agent process
	children []*childProc // processes holding the overflow
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// benchFleet registers Fleet agents with a fresh issuer through the
// broker, issues one epoch and records when 50 %, 99 % and 100 % of the
// agents' Statuses had been verified by the issuer, counted from the start
// of IssueEpoch.
func benchFleet(ctx context.Context, c Config, b *broker, ids []string, dir string, rep *Report, logf func(string, ...any)) error {
	key, err := signature.GenerateKey(signature.MLDSA87)
	if err != nil {
		return err
	}
	iss, err := issuer.New(issuer.Config{
		Broker: b.url(), Username: brokerconfig.IssuerAccount, Password: b.password(brokerconfig.IssuerAccount),
		ClientID: "ekem-bench-fleet-issuer", Key: key, StorePath: filepath.Join(dir, "fleet-issuer.db"),
		Period: time.Hour, Timeout: 60 * time.Second, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return err
	}
	defer iss.Close()
	if err := iss.Start(ctx); err != nil {
		return err
	}
	stateRoot := ""
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		stateRoot = "/dev/shm"
	}
	states, err := os.MkdirTemp(stateRoot, "ekem-bench-fleet-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(states)
	runtime.GC()
	debug.FreeOSMemory()
	rss0, _, _ := procMemory("self")
	f := &fleet{}
	defer f.close()
	logf("fleet: starting %d device agents (at most %d in this process, in waves of %d)", len(ids), inProcessCapacity(), wave)
	t := time.Now()
	if err := f.start(ctx, c, b, iss, key.Public(), ids, states); err != nil {
		return err
	}
	logf("fleet: %d agents registered in %v", len(ids), time.Since(t).Round(time.Millisecond))
	marks, issued, err := rotate(ctx, c, iss, len(ids))
	if err != nil {
		return err
	}
	rss1, _, _ := procMemory("self")
	labels := []string{"50%", "99%", "100%"}
	for k, key := range []string{"fleet.ack_50", "fleet.ack_99", "fleet.ack_100"} {
		row := Row{Key: key, Label: fmt.Sprintf("fleet of %d: %s of Statuses verified by the issuer", len(ids), labels[k]), Value: marks[k].Seconds(), Unit: "s"}
		if marks[k] < 0 {
			row.Value, row.Note = -1, fmt.Sprintf("not reached within %v", c.FleetTimeout)
		}
		rep.add(row)
	}
	rep.add(Row{Key: "fleet.issue_time", Label: fmt.Sprintf("fleet of %d: IssueEpoch returned", len(ids)), Value: issued.Seconds(), Unit: "s"})
	if f.child != nil {
		rss, hwm, err := procMemory(strconv.Itoa(f.child.cmd.Process.Pid))
		if err == nil {
			rep.add(Row{Key: "device.rss_process", Label: "device agent process RSS (one agent, after its ticket)", Value: rss / 1e6, Unit: "MB",
				Note: fmt.Sprintf("peak (VmHWM) %.1f MB", hwm/1e6)})
		}
	}
	if n := len(f.agents); n > 0 {
		rep.add(Row{Key: "device.rss_fleet_per_agent", Label: "fleet process RSS growth per in-process agent", Value: (rss1 - rss0) / float64(n) / 1e6, Unit: "MB",
			Note: fmt.Sprintf("(%.0f - %.0f MB) / %d agents; excludes the Go runtime's fixed cost", rss1/1e6, rss0/1e6, n)})
	}
	if _, ok := rep.Row("device.rss_process"); !ok {
		rep.add(Row{Key: "device.rss_process", Label: "device agent process RSS", Value: -1, Unit: "MB", Note: "not measured (no agent process)"})
	}
	return nil
}

// inProcessCapacity is how many agents fit this process's descriptor limit.
func inProcessCapacity() int {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) != nil {
		return 1000
	}
	return max(int(l.Cur)-2048, 0) / 2
}

func newChildAgent(id, password, states string) childAgent {
	secret := make([]byte, cohort.SecretSize)
	rand.Read(secret)
	return childAgent{ID: id, Password: password, StateDir: filepath.Join(states, id), Cohort: secret}
}

// start creates and runs the agents: the in-process ones in waves, each
// wave waiting until the issuer has pinned every registration so far, then
// the overflow processes (which pace themselves), and waits until every
// registration is pinned.
func (f *fleet) start(ctx context.Context, c Config, b *broker, iss *issuer.Issuer, pub *signature.PublicKey, ids []string, states string) error {
	pins, err := signature.NewKeySet(pub)
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	pem := signature.MarshalPublicKeyPEM(pub)
	first := 0
	if !c.SkipChild {
		p, err := startChild(childConfig{Broker: b.url(), IssuerPEM: pem, Agents: []childAgent{newChildAgent(ids[0], b.password(ids[0]), states)}}, states)
		if err != nil {
			return err
		}
		f.child = p
		first = 1
	}
	capacity := inProcessCapacity()
	local := ids[first:min(first+capacity, len(ids))]
	pinned := first
	for lo := 0; lo < len(local); lo += wave {
		for _, id := range local[lo:min(lo+wave, len(local))] {
			ca := newChildAgent(id, b.password(id), states)
			co, err := cohort.NewSoftware(ca.Cohort)
			if err != nil {
				return err
			}
			a, err := device.New(device.Config{ID: id, Broker: b.url(), Password: ca.Password, StateDir: ca.StateDir,
				Cohort: co, IssuerKeys: pins, Timeout: 60 * time.Second, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				return err
			}
			f.agents = append(f.agents, a)
			f.wg.Go(func() { _ = a.Run(runCtx) })
		}
		pinned = first + min(lo+wave, len(local))
		if err := waitCounter(ctx, iss, "registrations_pinned", uint64(pinned), 60*time.Second); err != nil {
			return fmt.Errorf("bench: fleet registration: %w", err)
		}
	}
	for rest := ids[first+len(local):]; len(rest) > 0; {
		n := min(max(capacity, 1), len(rest))
		cc := childConfig{Broker: b.url(), IssuerPEM: pem}
		for _, id := range rest[:n] {
			cc.Agents = append(cc.Agents, newChildAgent(id, b.password(id), states))
		}
		p, err := startChild(cc, states)
		if err != nil {
			return err
		}
		f.children = append(f.children, p)
		rest = rest[n:]
	}
	if err := waitCounter(ctx, iss, "registrations_pinned", uint64(len(ids)), 120*time.Second); err != nil {
		return fmt.Errorf("bench: fleet registration: %w", err)
	}
	return nil
}

func (f *fleet) close() {
	if f.cancel != nil {
		f.cancel()
	}
	f.wg.Wait()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, a := range f.agents {
		sem <- struct{}{}
		wg.Go(func() { _ = a.Close(); <-sem })
	}
	wg.Wait()
	for _, p := range append(f.children, f.child) {
		if p != nil {
			p.stop()
		}
	}
}

// waitCounter polls an issuer counter until it reaches want.
func waitCounter(ctx context.Context, iss *issuer.Issuer, name string, want uint64, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		got := iss.Counters()[name]
		if got >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s is %d, want %d after %v", name, got, want, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// rotate issues one epoch and returns, counted from its start, when 50 %,
// 99 % and 100 % of n Statuses were verified (-1: not within the
// timeout), and when IssueEpoch returned.
func rotate(ctx context.Context, c Config, iss *issuer.Issuer, n int) ([3]time.Duration, time.Duration, error) {
	marks := [3]time.Duration{-1, -1, -1}
	targets := [3]uint64{uint64((n + 1) / 2), uint64((99*n + 99) / 100), uint64(n)}
	base := iss.Counters()["statuses_verified"]
	start := time.Now()
	issued := make(chan error, 1)
	var issuedAt time.Duration
	go func() {
		_, err := iss.IssueEpoch(ctx)
		issuedAt = time.Since(start)
		issued <- err
	}()
	deadline := start.Add(c.FleetTimeout)
	var issueErr error
	issueDone := false
	for marks[2] < 0 && time.Now().Before(deadline) {
		got := iss.Counters()["statuses_verified"] - base
		for k := range targets {
			if marks[k] < 0 && got >= targets[k] {
				marks[k] = time.Since(start)
			}
		}
		select {
		case issueErr = <-issued:
			issueDone = true
		case <-ctx.Done():
			return marks, 0, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	if !issueDone {
		issueErr = <-issued
	}
	if issueErr != nil {
		return marks, 0, fmt.Errorf("bench: fleet epoch: %w", issueErr)
	}
	return marks, issuedAt, nil
}
