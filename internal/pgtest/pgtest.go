// Package pgtest runs a real PostgreSQL server for tests: its own cluster
// (initdb) in a temporary directory, listening on 127.0.0.1 on a free port
// and on a Unix socket in that directory, trust authentication, stopped in
// t.Cleanup. Tests make one database each with NewDatabase.
//
// initdb and postgres refuse to run as root: when the test runs as root,
// both run as the "postgres" user (or EKEM_PG_USER), which must exist (the
// Debian postgresql package creates it); the cluster's directory is then
// owned by that user.
//
// If no PostgreSQL server binaries are found the test is skipped, unless
// the environment sets EKEM_REQUIRE_POSTGRES=1, in which case it fails.
// EKEM_PG_BIN may name the directory holding initdb and postgres.
package pgtest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/svctest"
	"github.com/jackc/pgx/v5"
)

// Environment variables read by Start.
const (
	EnvRequire = "EKEM_REQUIRE_POSTGRES" // "1": missing binaries fail the test
	EnvBin     = "EKEM_PG_BIN"           // directory of initdb and postgres
	EnvUser    = "EKEM_PG_USER"          // the user to run them as when root
)

const (
	startTimeout = 30 * time.Second
	stopTimeout  = 15 * time.Second
	startTries   = 3
)

// Server is a running (or stopped) PostgreSQL child process.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	cred *syscall.Credential
	port int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

var dbSeq atomic.Uint64

// Start makes a new cluster in a temporary directory and starts it.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := findBin(t)
	s := &Server{t: t, bin: bin}
	if os.Geteuid() == 0 {
		name := os.Getenv(EnvUser)
		if name == "" {
			name = "postgres"
		}
		u, err := user.Lookup(name)
		if err != nil {
			skipOrFail(t, fmt.Sprintf("running as root, and no user %q to run PostgreSQL as: %v", name, err))
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	// Not t.TempDir(): its parents are private to this user, and the
	// server may run as another one.
	dir, err := os.MkdirTemp("", "ekem-pgtest-")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	s.dir = dir
	t.Cleanup(s.cleanup)
	if s.cred != nil {
		if err := os.Chown(dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			t.Fatalf("pgtest: %v", err)
		}
	}
	cmd := s.command("initdb", "-D", s.DataDir(), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pgtest: initdb: %v\n%s", err, out)
	}
	var lastErr error
	for range startTries {
		if lastErr = s.launch(); lastErr == nil {
			return s
		}
	}
	t.Fatalf("pgtest: %v\n%s", lastErr, s.Log())
	return nil
}

func skipOrFail(t testing.TB, msg string) {
	t.Helper()
	svctest.Unavailable(t, EnvRequire, "pgtest: "+msg, "")
}

// findBin finds the directory of initdb and postgres.
func findBin(t testing.TB) string {
	t.Helper()
	if d := os.Getenv(EnvBin); d != "" {
		return d
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p)
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(a, b int) bool { return version(dirs[a]) > version(dirs[b]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d
		}
	}
	skipOrFail(t, "no PostgreSQL server binaries (initdb, postgres): install postgresql")
	return ""
}

func version(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// launch starts postgres on a free port and waits until it accepts.
func (s *Server) launch() error {
	port, err := freePort()
	if err != nil {
		return err
	}
	log, err := os.OpenFile(s.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := s.command("postgres", "-D", s.DataDir(), "-p", strconv.Itoa(port), "-k", s.dir,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
		"-c", "full_page_writes=off", "-c", "max_connections=200", "-c", "shared_buffers=32MB")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done, s.port = cmd, done, port
	s.mu.Unlock()
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("postgres exited at start")
		default:
		}
		if s.ping() == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.Stop()
	return fmt.Errorf("postgres did not accept connections within %v", startTimeout)
}

func (s *Server) ping() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	return c.Ping(ctx)
}

func freePort() (int, error) {
	ports, err := svctest.FreePorts(1)
	if err != nil {
		return 0, err
	}
	return ports[0], nil
}

// DataDir is the cluster's data directory.
func (s *Server) DataDir() string { return filepath.Join(s.dir, "data") }

func (s *Server) logPath() string { return filepath.Join(s.dir, "postgres.log") }

// Log is the server's log so far.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.logPath())
	return string(b)
}

// Addr is the server's TCP address, 127.0.0.1:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL is a postgres:// URL of database db on this server (TCP).
func (s *Server) URL(db string) string { return URLAt(s.Addr(), db) }

// URLAt is a postgres:// URL of database db at addr (host:port), for
// reaching the server through a proxy.
func URLAt(addr, db string) string {
	u := url.URL{Scheme: "postgres", User: url.User("postgres"), Host: addr, Path: "/" + db,
		RawQuery: "sslmode=disable&connect_timeout=5"}
	return u.String()
}

// NewDatabase creates a new, empty database and returns its name; it is
// dropped in t.Cleanup (if the server still runs).
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("ekem_%d_%d", os.Getpid(), dbSeq.Add(1))
	if err := s.Exec("postgres", "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if s.Running() {
			_ = s.Exec("postgres", "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		}
	})
	return name
}

// Exec runs SQL statements on database db.
func (s *Server) Exec(db, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, s.URL(db))
	if err != nil {
		return fmt.Errorf("pgtest: connect: %w", err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, sql); err != nil {
		return fmt.Errorf("pgtest: %s: %w", strings.Fields(sql)[0], err)
	}
	return nil
}

// Running reports whether the server process is running.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// Stop stops the server (fast shutdown) and waits for it, killing it if it
// does not exit in time.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-done:
	case <-time.After(stopTimeout):
		_ = cmd.Process.Kill()
		<-done
	}
}

func (s *Server) cleanup() {
	s.Stop()
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}
