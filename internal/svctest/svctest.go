// Package svctest holds what the packages that start real services for
// tests (mosquittotest, natstest, pgtest, swtpmtest) share: finding the
// service's binary, picking free ports, and the rule that a missing
// service skips a test unless its EKEM_REQUIRE_* variable is "1" (as
// .ci/run sets), where it fails it.
package svctest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"
)

// ErrNotFound is wrapped by FindBinary's error when there is no binary.
var ErrNotFound = errors.New("not found")

// FindBinary returns the path in the environment variable env (which must
// exist), else name in PATH, else name in the first of dirs that has it.
func FindBinary(env, name string, dirs ...string) (string, error) {
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", env, p, err)
		}
		return p, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range dirs {
		p := d + "/" + name
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: no %s binary in PATH or %v (or set %s)", ErrNotFound, name, dirs, env)
}

// Unavailable ends t because its service cannot run (why): a failure when
// the environment variable require is "1", else a skip that says how to
// get the service (hint) or make this a failure.
func Unavailable(t testing.TB, require, why, hint string) {
	t.Helper()
	if os.Getenv(require) == "1" {
		t.Fatalf("%s (%s=1)", why, require)
	}
	if hint != "" {
		hint += ", or "
	}
	t.Skipf("%s; %sset %s=1 to make this a failure", why, hint, require)
}

// FreePorts returns n distinct TCP ports that were free on 127.0.0.1 a
// moment ago (all are held until the last is found).
func FreePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		ls = append(ls, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

// ErrIgnoredSignal is wrapped by Stop's error when the process had to be
// killed.
var ErrIgnoredSignal = errors.New("ignored the signal; killed")

// Stop sends sig to cmd's process, whose exit closes done, and waits at
// most timeout for it to exit; then it kills it (ErrIgnoredSignal). A
// process that already exited is not an error.
func Stop(cmd *exec.Cmd, done <-chan struct{}, sig os.Signal, timeout time.Duration) error {
	select {
	case <-done:
		return nil
	default:
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal: %w", err)
	}
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("%w: %v for %v", ErrIgnoredSignal, sig, timeout)
	}
}
