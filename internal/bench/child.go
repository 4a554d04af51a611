package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/signature"
)

// ChildEnv names the environment variable that turns a re-executed
// ekemctl (or test binary) into a device agent process. Its value is the
// path of the agents' JSON configuration (a file, since a fleet's share
// does not fit in the environment).
const ChildEnv = "EKEM_BENCH_CHILD"

// childConfig is what the parent hands an agent process: one agent (for
// the RSS measurement) or a share of the fleet (when one process would run
// out of file descriptors). Passwords and cohort secrets are
// benchmark-only throwaway values.
type childConfig struct {
	Broker    string       `json:"broker"`
	IssuerPEM []byte       `json:"issuer_pem"`
	Agents    []childAgent `json:"agents"`
}

type childAgent struct {
	ID       string `json:"id"`
	Password string `json:"password"`
	StateDir string `json:"state_dir"`
	Cohort   []byte `json:"cohort"`
}

// IsChild reports whether this process was started as a benchmark agent.
func IsChild() bool { return os.Getenv(ChildEnv) != "" }

// RunChild runs one device agent as configured by ChildEnv, prints "ready"
// once the agent exists, and runs until standard input closes or SIGTERM.
// It returns the process exit code.
func RunChild(stdout, stderr io.Writer) int {
	var c childConfig
	data, err := os.ReadFile(os.Getenv(ChildEnv))
	if err == nil {
		err = json.Unmarshal(data, &c)
	}
	if err != nil {
		fmt.Fprintf(stderr, "bench child: %v\n", err)
		return 2
	}
	if err := runChild(c, stdout); err != nil {
		fmt.Fprintf(stderr, "bench child: %v\n", err)
		return 1
	}
	return 0
}

func runChild(c childConfig, stdout io.Writer) error {
	pub, err := signature.ParsePublicKeyPEM(c.IssuerPEM)
	if err != nil {
		return err
	}
	pins, err := signature.NewKeySet(pub)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for n, ca := range c.Agents {
		if n > 0 && n%wave == 0 {
			time.Sleep(250 * time.Millisecond) // pace connections like the parent's waves
		}
		co, err := cohort.NewSoftware(ca.Cohort)
		if err != nil {
			return err
		}
		a, err := device.New(device.Config{ID: ca.ID, Broker: c.Broker, Password: ca.Password, StateDir: ca.StateDir,
			Cohort: co, IssuerKeys: pins, Timeout: 60 * time.Second, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			return err
		}
		defer a.Close()
		wg.Go(func() { _ = a.Run(ctx) })
	}
	go func() { // the parent closing our stdin (or dying) ends the agents
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	fmt.Fprintln(stdout, "ready")
	<-ctx.Done()
	return nil
}

// childProc is a running agent process.
type childProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
}

// startChild re-executes this binary as a process of device agents, with
// its configuration in a file in dir.
func startChild(c childConfig, dir string) (*childProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	js, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(dir, "agents-*.json")
	if err != nil {
		return nil, err
	}
	if _, err := f.Write(js); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "bench")
	cmd.Env = append(os.Environ(), ChildEnv+"="+f.Name())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &childProc{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := sc.Scan() && sc.Text() == "ready"
		ready <- ok
		_, _ = io.Copy(io.Discard, out)
	}()
	go func() { _ = cmd.Wait(); close(p.done) }()
	select {
	case ok := <-ready:
		if ok {
			return p, nil
		}
	case <-time.After(5 * time.Minute):
	}
	p.stop()
	return nil, errors.New("bench: agent process did not start")
}

// stop closes the child's stdin (it exits cleanly), then kills it if it
// is still running after 10 s.
func (p *childProc) stop() {
	p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// procMemory returns VmRSS and VmHWM (peak RSS) of pid in bytes.
func procMemory(pid string) (rss, hwm float64, err error) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			rss = n * 1024
		case "VmHWM":
			hwm = n * 1024
		}
	}
	if rss == 0 {
		return 0, 0, fmt.Errorf("bench: no VmRSS for %s", pid)
	}
	return rss, hwm, nil
}
