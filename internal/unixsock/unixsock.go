// Package unixsock makes the Unix sockets of entropykem's local APIs (the
// issuer's admin socket, issuer/adminsock, and the device's key API,
// device/keyapi): a socket created with its mode and group before any
// client can reach it, on a path that is checked first, whose every
// connection carries its peer's credentials (internal/peercred).
//
// Listen refuses a path that exists and is not a socket, and a path
// another process serves (ErrInUse); a stale socket is replaced. With
// Options.CheckOwner it also refuses (ErrForeignPath) a path, or its
// directory, owned by another user than this process's effective user
// (root's directories are fine), and a directory others can write to
// that is not sticky. Close removes the socket file only if it is still
// the one Listen made.
package unixsock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/entropykem/entropykem/internal/peercred"
)

// Errors of Listen.
var (
	// ErrInUse: another process serves the socket path.
	ErrInUse = errors.New("socket is in use by another process")
	// ErrForeignPath: the socket path, or its directory, belongs to
	// another user (Options.CheckOwner).
	ErrForeignPath = errors.New("socket path is owned by another user")
)

// Options configures Listen.
type Options struct {
	// Name prefixes every error ("keyapi", "adminsock").
	Name string
	// Flag names the setting that chose the path, for the hint of a path
	// that is not a socket ("-api").
	Flag string
	// Mode is the socket's permission bits (default 0600); only owner and
	// group bits may be set.
	Mode os.FileMode
	// SetGroup sets the socket's group to GID.
	SetGroup bool
	GID      int
	// CheckOwner refuses a path or directory another user owns.
	CheckOwner bool
	// Accept, if set, decides on every connection with readable peer
	// credentials: false drops it (Accept then owns and closes c).
	Accept func(c net.Conn, cred peercred.Cred) bool
	// Unreadable is logged, as a warning with reason UnreadableReason,
	// for a connection whose peer credentials cannot be read; it is
	// closed.
	Unreadable, UnreadableReason string
	// Log is the logger of refused connections (default slog.Default()).
	Log *slog.Logger
}

// Listener is a Unix socket listener whose connections carry their
// peer's credentials (CredOf, ConnContext).
type Listener struct {
	net.Listener
	path string
	ino  uint64
	opts Options
}

// Listen creates the socket at path: in a private directory beside path,
// with its mode and group set, then renamed into place, so no client can
// reach it before it has them.
func Listen(path string, opts Options) (*Listener, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Mode == 0 {
		opts.Mode = 0o600
	}
	wrap := func(err error) error { return fmt.Errorf("%s: %w", opts.Name, err) }
	if opts.Mode&^0o777 != 0 || opts.Mode&0o007 != 0 {
		return nil, wrap(fmt.Errorf("socket mode %#o: only owner and group bits may be set", opts.Mode))
	}
	path = filepath.Clean(path)
	if err := checkPath(path, opts); err != nil {
		return nil, wrap(err)
	}
	// A short name: a socket path is limited to 107 bytes, and the
	// temporary one should not be much longer than path itself.
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".ek")
	if err != nil {
		return nil, wrap(err)
	}
	defer os.RemoveAll(tmp)
	made := filepath.Join(tmp, "s")
	ln, err := net.Listen("unix", made)
	if err != nil {
		return nil, wrap(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // Close removes path itself, if still ours
	fail := func(err error) (*Listener, error) {
		ln.Close()
		return nil, wrap(err)
	}
	if opts.SetGroup {
		if opts.GID < 0 {
			return fail(fmt.Errorf("gid %d", opts.GID))
		}
		if err := os.Chown(made, -1, opts.GID); err != nil {
			return fail(err)
		}
	}
	if err := os.Chmod(made, opts.Mode); err != nil {
		return fail(err)
	}
	if err := os.Rename(made, path); err != nil {
		return fail(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	return &Listener{Listener: ln, path: path, ino: fi.Sys().(*syscall.Stat_t).Ino, opts: opts}, nil
}

// checkPath refuses a path that is not a socket or that another process
// serves, and (CheckOwner) a path or directory of another user; it
// removes a stale socket.
func checkPath(path string, opts Options) error {
	uid := os.Geteuid()
	if opts.CheckOwner {
		dir := filepath.Dir(path)
		di, err := os.Stat(dir)
		if err != nil {
			return fmt.Errorf("socket directory: %w", err)
		}
		if !di.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		dst := di.Sys().(*syscall.Stat_t)
		if int(dst.Uid) != uid && dst.Uid != 0 {
			return fmt.Errorf("%w: directory %s belongs to uid %d (this process runs as uid %d)", ErrForeignPath, dir, dst.Uid, uid)
		}
		if di.Mode().Perm()&0o022 != 0 && di.Mode()&os.ModeSticky == 0 {
			return fmt.Errorf("%w: directory %s is writable by others and not sticky: anyone could replace the socket", ErrForeignPath, dir)
		}
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st := fi.Sys().(*syscall.Stat_t); opts.CheckOwner && int(st.Uid) != uid {
		return fmt.Errorf("%w: %s belongs to uid %d (this process runs as uid %d)", ErrForeignPath, path, st.Uid, uid)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket; remove it or choose another %s", path, opts.Flag)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%w: %s", ErrInUse, path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}

// Path is the socket's path.
func (l *Listener) Path() string { return l.path }

// Close stops listening and removes the socket file if it is still the one
// Listen made.
func (l *Listener) Close() error {
	err := l.Listener.Close()
	if fi, lerr := os.Lstat(l.path); lerr == nil && fi.Sys().(*syscall.Stat_t).Ino == l.ino {
		os.Remove(l.path)
	}
	return err
}

// conn is an accepted connection with its peer's credentials.
type conn struct {
	net.Conn
	cred peercred.Cred
}

// Accept returns the next connection whose peer credentials are readable
// and that Options.Accept lets through.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		cr, err := peercred.Of(c)
		if err != nil {
			l.opts.Log.Warn(l.opts.Unreadable, "reason", l.opts.UnreadableReason, "err", err)
			c.Close()
			continue
		}
		if l.opts.Accept != nil && !l.opts.Accept(c, cr) {
			continue
		}
		return &conn{Conn: c, cred: cr}, nil
	}
}

type credKey struct{}

// ConnContext is the http.Server ConnContext that makes a connection's
// peer credentials reachable from its requests' contexts (CredOf).
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if pc, ok := c.(*conn); ok {
		return context.WithValue(ctx, credKey{}, pc.cred)
	}
	return ctx
}

// CredOf returns the peer credentials of the connection ctx belongs to.
func CredOf(ctx context.Context) (peercred.Cred, bool) {
	c, ok := ctx.Value(credKey{}).(peercred.Cred)
	return c, ok
}

// Server is an HTTP server on a Listener.
type Server struct {
	l   *Listener
	srv *http.Server
}

// Serve serves srv on l in the background, each request's context
// carrying its connection's peer credentials (CredOf), until Close.
func Serve(l *Listener, srv *http.Server) *Server {
	srv.ConnContext = ConnContext
	go srv.Serve(l)
	return &Server{l: l, srv: srv}
}

// Path is the socket's path.
func (s *Server) Path() string { return s.l.Path() }

// Close stops serving and removes the socket file at once (even if the
// server had not started accepting yet) if it is still the one Listen
// made.
func (s *Server) Close() error {
	err := s.srv.Close()
	s.l.Close()
	return err
}
