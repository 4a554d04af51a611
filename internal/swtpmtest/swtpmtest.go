// Package swtpmtest runs a software TPM 2.0 (swtpm) for tests.
//
// Each SWTPM is a separate swtpm daemon with its own state directory, so two
// instances are two different TPMs (different owner seeds). The daemon serves
// the TPM command channel on a unix socket, one connection at a time; go-tpm's
// linuxudstpm transport opens one connection per command, which suits it.
//
// If the swtpm binary is missing the test is skipped, unless the environment
// variable EKEM_REQUIRE_SWTPM=1 is set, in which case it fails.
package swtpmtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/svctest"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"
)

// RequireEnv is the environment variable that turns a missing swtpm from a
// skip into a failure (set it to "1" in CI).
const RequireEnv = "EKEM_REQUIRE_SWTPM"

// startTimeout bounds how long Start waits for the daemon's socket.
const startTimeout = 10 * time.Second

// SWTPM is one running swtpm daemon.
type SWTPM struct {
	t      testing.TB
	bin    string
	dir    string
	socket string
	pid    int
}

// Start launches a fresh swtpm in a new state directory and waits until its
// command socket exists. The daemon is stopped and the directory removed in
// t.Cleanup.
func Start(t testing.TB) *SWTPM {
	t.Helper()
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		svctest.Unavailable(t, RequireEnv, "swtpmtest: swtpm not found in PATH", "install it (Debian: apt-get install swtpm swtpm-tools)")
	}
	// A short directory: a unix socket path is limited to 108 bytes, and
	// t.TempDir embeds the (possibly long) test name.
	dir, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		t.Fatalf("swtpmtest: state dir: %v", err)
	}
	s := &SWTPM{t: t, bin: bin, dir: dir, socket: filepath.Join(dir, "tpm.sock")}
	t.Cleanup(func() {
		s.Stop()
		os.RemoveAll(dir)
	})
	s.launch()
	return s
}

// Socket returns the path of the TPM command socket.
func (s *SWTPM) Socket() string { return s.socket }

// Dir returns the state directory.
func (s *SWTPM) Dir() string { return s.dir }

// Open connects to the TPM with go-tpm's linuxudstpm transport. The
// transport is closed in t.Cleanup.
func (s *SWTPM) Open() transport.TPMCloser {
	s.t.Helper()
	tpm, err := linuxudstpm.Open(s.socket)
	if err != nil {
		s.t.Fatalf("swtpmtest: open %s: %v", s.socket, err)
	}
	s.t.Cleanup(func() { tpm.Close() })
	return tpm
}

// Stop kills the daemon (SIGTERM, then SIGKILL) and waits until it is gone.
// It is idempotent; the state directory is kept.
func (s *SWTPM) Stop() {
	if s.pid == 0 {
		return
	}
	pid := s.pid
	s.pid = 0
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return // already gone
	}
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			deadline = time.Now().Add(5 * time.Second)
		}
		time.Sleep(5 * time.Millisecond)
	}
	os.Remove(s.socket)
	os.Remove(filepath.Join(s.dir, "ctrl.sock"))
	os.Remove(filepath.Join(s.dir, "pid"))
}

// Restart stops the daemon and starts a new one on the same state
// directory: persistent state (the owner seed) survives, transient objects
// and sessions do not, as after a reboot.
func (s *SWTPM) Restart() {
	s.t.Helper()
	s.Stop()
	s.launch()
}

func (s *SWTPM) launch() {
	s.t.Helper()
	d := s.dir
	pidFile := filepath.Join(d, "pid")
	cmd := exec.Command(s.bin, "socket", "--tpm2",
		"--tpmstate", "dir="+d,
		"--server", "type=unixio,path="+s.socket,
		"--ctrl", "type=unixio,path="+filepath.Join(d, "ctrl.sock"),
		"--flags", "not-need-init,startup-clear",
		"--daemon", "--pid", "file="+pidFile)
	// No --log: swtpm logs a line per command even at level 0.
	if out, err := cmd.CombinedOutput(); err != nil {
		s.t.Fatalf("swtpmtest: %s: %v: %s", cmd, err, out)
	}
	deadline := time.Now().Add(startTimeout)
	for {
		pid, perr := readPID(pidFile)
		fi, serr := os.Stat(s.socket)
		if perr == nil && serr == nil && fi.Mode()&os.ModeSocket != 0 {
			s.pid = pid
			return
		}
		if time.Now().After(deadline) {
			if perr == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			s.t.Fatalf("swtpmtest: swtpm did not come up within %v (pid file: %v, socket: %v)",
				startTimeout, perr, serr)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("swtpmtest: bad pid file %q", b)
	}
	return pid, nil
}

// alive reports whether pid exists and is not a zombie. The daemon is
// reparented away from us, so we cannot wait(2) for it; a zombie whose new
// parent has not reaped it yet counts as gone.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// Format: pid (comm) state ...; comm may contain spaces and parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return true
	}
	return b[i+2] != 'Z'
}
