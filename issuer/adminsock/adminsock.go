// Package adminsock is the running issuer's local admin socket: operator
// commands (devices, device, reset, revoke, release, approve, audit) reach
// a running ekem-issuer through it, so administering the fleet never stops
// issuance.
//
// The socket is a Unix socket created with mode 0600. Every connection's
// peer credentials (SO_PEERCRED) are read when it is accepted: only the
// issuer's own user and root are served; any other user is refused and
// logged, even if the file mode was loosened. The peer's uid and pid
// become the actor of the audit entry of every action it asks for.
//
// The protocol is HTTP/1.1 with JSON bodies over that socket, so it can
// also be driven with curl --unix-socket:
//
//	GET  /v1/devices               every device, sorted by id
//	GET  /v1/devices/{id}          one device (404: unknown_device)
//	GET  /v1/epoch                 {"last_epoch": N}
//	GET  /v1/audit                 the audit log, oldest first
//	GET  /v1/backup                a consistent copy of the store file
//	POST /v1/devices/{id}/{action} action: reset, revoke, release, approve;
//	                               body {"reason": "…"}
//	POST /v1/devices/{id}/cohort   body {"cohort": "…", "reason": "…"} (cohort.go)
//
// Errors are {"error": "…", "code": "…"}, with code one of unknown_device,
// nothing_to_approve, bad_request, failed.
package adminsock

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/entropykem/entropykem/internal/peercred"
	"github.com/entropykem/entropykem/internal/unixsock"
	"github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Errors of the admin socket.
var (
	// ErrInUse: another process serves the socket path.
	ErrInUse = unixsock.ErrInUse
	// ErrRefused: the issuer refused this connection (another user).
	ErrRefused = errors.New("adminsock: refused by the issuer")
)

// maxBody bounds a request body.
const maxBody = 4096

// Server serves an issuer.Admin on a Unix socket.
type Server struct {
	srv   *unixsock.Server
	admin issuer.Admin
	log   *slog.Logger
}

// Listen creates the socket at path (mode 0600) and serves admin on it
// until Close. A stale socket file left by a dead issuer is replaced; a
// path another issuer serves gives ErrInUse, and a path that is not a
// socket is refused.
func Listen(path string, admin issuer.Admin, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	ln, err := unixsock.Listen(path, unixsock.Options{Name: "adminsock", Flag: "-admin-socket", Mode: 0o600, Log: log,
		Unreadable: "admin socket: peer credentials unreadable; connection refused", UnreadableReason: "admin_peer_unknown",
		Accept: func(c net.Conn, cr peercred.Cred) bool {
			if cr.UID != os.Getuid() && cr.UID != 0 {
				log.Warn("admin socket: connection from another user refused", "reason", "admin_peer_refused",
					"peer_uid", cr.UID, "peer_pid", cr.PID, "issuer_uid", os.Getuid())
				go refuse(c, cr)
				return false
			}
			return true
		}})
	if err != nil {
		return nil, err
	}
	s := &Server{admin: admin, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/devices", s.devices)
	mux.HandleFunc("GET /v1/devices/{id}", s.device)
	mux.HandleFunc("GET /v1/epoch", s.epoch)
	mux.HandleFunc("GET /v1/audit", s.audit)
	mux.HandleFunc("GET /v1/backup", s.backup)
	mux.HandleFunc("POST /v1/devices/{id}/{action}", s.act)
	mux.HandleFunc("POST /v1/enroll", s.enroll)
	mux.HandleFunc("POST /v1/devices/{id}/cohort", s.cohort)
	s.srv = unixsock.Serve(ln, &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second})
	return s, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.srv.Path() }

// Close stops serving and removes the socket file.
func (s *Server) Close() error { return s.srv.Close() }

// refuse answers a refused peer's first request with 403 and the code
// "refused", so that its client says why, then closes the connection. The
// request is read first (bounded), so the answer is not lost to a reset.
func refuse(c net.Conn, p peercred.Cred) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := http.ReadRequest(bufio.NewReader(io.LimitReader(c, maxBody))); err != nil {
		return
	}
	b, _ := json.Marshal(errorBody{Code: "refused",
		Error: fmt.Sprintf("uid %d is neither the issuer's user (uid %d) nor root", p.UID, os.Getuid())})
	fmt.Fprintf(c, "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(b), b)
}

// operator is the audited actor of a request, with its reason.
func operator(r *http.Request, reason string) issuer.Operator {
	p, _ := unixsock.CredOf(r.Context())
	return issuer.Operator{Actor: issuer.ActorOf(p.UID, p.PID) + " via admin socket", Reason: reason}
}

type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

func (s *Server) fail(w http.ResponseWriter, err error) {
	status, code := http.StatusInternalServerError, "failed"
	switch {
	case errors.Is(err, issuer.ErrUnknownDevice):
		status, code = http.StatusNotFound, "unknown_device"
	case errors.Is(err, issuer.ErrNothingToApprove):
		status, code = http.StatusConflict, "nothing_to_approve"
	case errors.Is(err, errBadRequest):
		status, code = http.StatusBadRequest, "bad_request"
	}
	reply(w, status, errorBody{Error: err.Error(), Code: code})
}

var errBadRequest = errors.New("adminsock: bad request")

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (s *Server) devices(w http.ResponseWriter, r *http.Request) {
	d, err := s.admin.Devices()
	if err != nil {
		s.fail(w, err)
		return
	}
	if d == nil {
		d = []issuer.DeviceInfo{}
	}
	reply(w, http.StatusOK, d)
}

func (s *Server) device(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := wire.ValidateDeviceID(id); err != nil {
		s.fail(w, fmt.Errorf("%w: %w", errBadRequest, err))
		return
	}
	d, err := s.admin.Device(id)
	if err != nil {
		s.fail(w, err)
		return
	}
	reply(w, http.StatusOK, d)
}

type epochBody struct {
	LastEpoch uint64 `json:"last_epoch"`
}

func (s *Server) epoch(w http.ResponseWriter, r *http.Request) {
	e, err := s.admin.LastEpoch()
	if err != nil {
		s.fail(w, err)
		return
	}
	reply(w, http.StatusOK, epochBody{e})
}

func (s *Server) audit(w http.ResponseWriter, r *http.Request) {
	a, err := s.admin.Audit()
	if err != nil {
		s.fail(w, err)
		return
	}
	if a == nil {
		a = []issuer.AuditEntry{}
	}
	reply(w, http.StatusOK, a)
}

// backup streams the store's copy. An error before the first byte is an
// error reply; after it, the stream is cut (the client then gets an
// unexpected EOF, and its check of the copy fails too).
func (s *Server) backup(w http.ResponseWriter, r *http.Request) {
	sw := &streamWriter{w: w}
	err := s.admin.Backup(sw)
	switch {
	case err != nil && sw.n == 0:
		s.fail(w, err)
		return
	case err != nil:
		s.log.Error("admin backup cut short", "reason", "backup_failed", "bytes", sw.n, "err", err)
		panic(http.ErrAbortHandler)
	}
	p, _ := unixsock.CredOf(r.Context())
	s.log.Info("admin backup", "bytes", sw.n, "actor", issuer.ActorOf(p.UID, p.PID))
}

// streamWriter sets the content type before the first byte and counts.
type streamWriter struct {
	w http.ResponseWriter
	n int64
}

func (sw *streamWriter) Write(b []byte) (int, error) {
	if sw.n == 0 {
		sw.w.Header().Set("Content-Type", "application/octet-stream")
	}
	n, err := sw.w.Write(b)
	sw.n += int64(n)
	return n, err
}

type actBody struct {
	Reason string `json:"reason"`
}

func (s *Server) act(w http.ResponseWriter, r *http.Request) {
	id, action := r.PathValue("id"), r.PathValue("action")
	if err := wire.ValidateDeviceID(id); err != nil {
		s.fail(w, fmt.Errorf("%w: %w", errBadRequest, err))
		return
	}
	fn := map[string]func(string, issuer.Operator) error{"reset": s.admin.Reset, "revoke": s.admin.Revoke,
		"release": s.admin.Release, "approve": s.admin.Approve, "deny": s.admin.Deny}[action]
	if fn == nil {
		s.fail(w, fmt.Errorf("%w: unknown action %q", errBadRequest, action))
		return
	}
	var body actBody
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil && !errors.Is(err, io.EOF) {
		s.fail(w, fmt.Errorf("%w: body: %w", errBadRequest, err))
		return
	}
	op := operator(r, body.Reason)
	if err := fn(id, op); err != nil {
		s.fail(w, err)
		return
	}
	s.log.Info("admin action", "action", action, "device", id, "actor", op.Actor)
	reply(w, http.StatusOK, struct {
		Done string `json:"done"`
	}{action})
}

// Client is an issuer.Admin that asks a running issuer over its socket.
// The actor of its actions is set by the issuer from the connection's
// peer credentials; Operator.Actor is ignored.
type Client struct {
	path string
	hc   *http.Client
}

// Dial returns a client of the socket at path after checking that an
// issuer answers on it. A missing socket or one nobody serves gives an
// error wrapping syscall.ENOENT or syscall.ECONNREFUSED; a refusal
// (another user) ErrRefused or a permission error.
func Dial(path string) (*Client, error) {
	c := &Client{path: path, hc: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}}}
	if _, err := c.LastEpoch(); err != nil {
		return nil, err
	}
	return c, nil
}

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

func (c *Client) do(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequest(method, "http://issuer"+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && (errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) ||
			errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM)) {
			return fmt.Errorf("adminsock: %s: %w", c.path, oe.Err)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
			strings.Contains(err.Error(), "server closed") {
			return fmt.Errorf("%w: %s closed the connection (run the command as the issuer's user or root)", ErrRefused, c.path)
		}
		return fmt.Errorf("adminsock: %s: %w", c.path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("adminsock: %s: %w", c.path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e errorBody
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			return fmt.Errorf("adminsock: %s: %s", c.path, resp.Status)
		}
		switch e.Code {
		case "refused":
			return fmt.Errorf("%w: %s (run the command as the issuer's user or root)", ErrRefused, e.Error)
		case "unknown_device":
			return fmt.Errorf("%w (%s)", issuer.ErrUnknownDevice, e.Error)
		case "nothing_to_approve":
			return fmt.Errorf("%w (%s)", issuer.ErrNothingToApprove, e.Error)
		}
		return fmt.Errorf("adminsock: the issuer says: %s", e.Error)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("adminsock: %s: reply: %w", c.path, err)
	}
	return nil
}

func (c *Client) Devices() ([]issuer.DeviceInfo, error) {
	var d []issuer.DeviceInfo
	return d, c.do(http.MethodGet, "/v1/devices", nil, &d)
}

func (c *Client) Device(id string) (issuer.DeviceInfo, error) {
	var d issuer.DeviceInfo
	if err := wire.ValidateDeviceID(id); err != nil {
		return d, err
	}
	return d, c.do(http.MethodGet, "/v1/devices/"+id, nil, &d)
}

func (c *Client) LastEpoch() (uint64, error) {
	var e epochBody
	return e.LastEpoch, c.do(http.MethodGet, "/v1/epoch", nil, &e)
}

func (c *Client) Audit() ([]issuer.AuditEntry, error) {
	var a []issuer.AuditEntry
	return a, c.do(http.MethodGet, "/v1/audit", nil, &a)
}

// Backup copies the running issuer's store to w.
func (c *Client) Backup(w io.Writer) error {
	req, err := http.NewRequest(http.MethodGet, "http://issuer/v1/backup", nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("adminsock: %s: %w", c.path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e errorBody
		json.NewDecoder(io.LimitReader(resp.Body, maxBody)).Decode(&e)
		return fmt.Errorf("adminsock: the issuer says: %s (%s)", e.Error, resp.Status)
	}
	n, err := io.Copy(w, resp.Body)
	if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
		err = fmt.Errorf("adminsock: backup cut short: %d of %d bytes", n, resp.ContentLength)
	}
	return err
}

func (c *Client) act(action, id string, op issuer.Operator) error {
	if err := wire.ValidateDeviceID(id); err != nil {
		return err
	}
	return c.do(http.MethodPost, "/v1/devices/"+id+"/"+action, actBody{Reason: op.Reason}, nil)
}

func (c *Client) Reset(id string, op issuer.Operator) error   { return c.act("reset", id, op) }
func (c *Client) Revoke(id string, op issuer.Operator) error  { return c.act("revoke", id, op) }
func (c *Client) Release(id string, op issuer.Operator) error { return c.act("release", id, op) }
func (c *Client) Approve(id string, op issuer.Operator) error { return c.act("approve", id, op) }

var _ issuer.Admin = (*Client)(nil)
