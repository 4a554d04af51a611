// Package keyapi is the device agent's local key API: it serves the
// device's keys to applications on the same machine, in any language, over
// HTTP/1.1 on a Unix socket, in the spirit of the SPIFFE Workload API and
// ssh-agent. Keys never leave the machine; the socket file's owner, mode
// and group decide who may connect, and every request is logged with the
// caller's uid and pid (SO_PEERCRED, internal/peercred), never with key
// material.
//
// JSON bodies; byte strings are standard base64 (RFC 4648 §4, padded):
//
//	GET  /v1/status      {"device_id", "epoch", "expires_at", "stale", "next_ctr",
//	                      "cohort", "group_epochs"}
//	POST /v1/keys/next   {"epoch", "ctr", "key"}: a fresh ratchet key
//	                     (schema/PROTOCOL.md §8.3), persisted as handed out
//	                     before it is returned, so never returned twice, across
//	                     restarts too
//	POST /v1/seal        {"plaintext"} → {"envelope", "epoch", "ctr"}: a device
//	                     envelope (§8.4) under a fresh ratchet key
//	POST /v1/open        {"envelope"} → {"plaintext", "device_id", "epoch", "ctr"}:
//	                     an envelope this agent sealed since it started, once
//	POST /v1/group/seal  {"plaintext"} → {"envelope", "cohort", "epoch", "sender",
//	                     "ctr"}: a group envelope (§7.8) under the cohort's
//	                     newest group key
//	POST /v1/group/open  {"envelope"} → {"plaintext", "cohort", "epoch", "sender",
//	                     "ctr"}: a group envelope of the device's cohort, each
//	                     (sender, epoch, ctr) once
//
// Errors are {"error": "…", "code": "…"} with code one of: no_ticket (503:
// no ticket accepted yet), stale (503: the last ticket expired), not_member
// (409: the device is in no cohort), unknown_key (404: the key the envelope
// names is not held), replay (409), too_old (409), too_many_senders (409),
// auth_failed (400: the envelope does not authenticate), bad_request (400),
// closed (503), failed (500).
package keyapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/internal/unixsock"
	"github.com/entropykem/entropykem/pkg/envelope"
	"github.com/entropykem/entropykem/pkg/groupenv"
	"github.com/entropykem/entropykem/pkg/ratchet"
)

// Keys is what the API serves: a *device.Agent.
type Keys interface {
	Info() device.Info
	NextKey() (ratchet.Key, error)
	SealKept(plaintext []byte) ([]byte, error)
	Open(env []byte) (envelope.Header, []byte, error)
	GroupSeal(plaintext []byte) ([]byte, error)
	GroupOpen(env []byte) (groupenv.Header, []byte, error)
}

var _ Keys = (*device.Agent)(nil)

// Errors of Listen.
var (
	// ErrForeignPath: the socket path, or its directory, belongs to
	// another user; the agent never serves keys on a file someone else
	// controls.
	ErrForeignPath = unixsock.ErrForeignPath
	// ErrInUse: another process serves the socket path.
	ErrInUse = unixsock.ErrInUse
)

// maxBody bounds a request: a base64 envelope of envelope.MaxEnvelopeSize
// bytes (87382 characters) and its JSON.
const maxBody = 96 << 10

// Options configure Listen.
type Options struct {
	// Mode is the socket file's permission bits (default 0600: only the
	// agent's user). 0660 with Group lets a group of applications in.
	Mode os.FileMode
	// SetGroup gives the socket file the group GID; without it the file
	// keeps the agent's group.
	SetGroup bool
	GID      int
	// Logger logs every request (default slog.Default()).
	Logger *slog.Logger
}

// Server serves Keys on a Unix socket.
type Server struct {
	srv  *unixsock.Server
	keys Keys
	log  *slog.Logger
}

// Listen creates the socket at path, with opts.Mode and its group set
// before any client can reach it (it is made in a private directory beside
// path and renamed into place), and serves keys on it until Close. It
// refuses (ErrForeignPath) a path, or a directory of it, owned by another
// user than the agent's (root's directories are fine), a path that is not
// a socket, and a path another process serves (ErrInUse); a stale socket
// of its own user is replaced.
func Listen(path string, keys Keys, opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Mode == 0 {
		opts.Mode = 0o600
	}
	ln, err := unixsock.Listen(path, unixsock.Options{Name: "keyapi", Flag: "-api path", Mode: opts.Mode,
		SetGroup: opts.SetGroup, GID: opts.GID, CheckOwner: true, Log: opts.Logger,
		Unreadable: "key API: peer credentials unreadable; connection refused", UnreadableReason: "keyapi_peer_unknown"})
	if err != nil {
		return nil, err
	}
	s := &Server{keys: keys, log: opts.Logger}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.status)
	mux.HandleFunc("POST /v1/keys/next", s.nextKey)
	mux.HandleFunc("POST /v1/seal", s.seal)
	mux.HandleFunc("POST /v1/open", s.open)
	mux.HandleFunc("POST /v1/group/seal", s.groupSeal)
	mux.HandleFunc("POST /v1/group/open", s.groupOpen)
	s.srv = unixsock.Serve(ln, &http.Server{Handler: s.logged(mux), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second})
	gid := -1
	if opts.SetGroup {
		gid = opts.GID
	}
	opts.Logger.Info("local key API listening", "socket", ln.Path(), "mode", fmt.Sprintf("%#o", opts.Mode), "gid", gid)
	return s, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.srv.Path() }

// Close stops serving and removes the socket file if it is still the one
// Listen made.
func (s *Server) Close() error { return s.srv.Close() }

// statusWriter remembers the status code for the request log.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// logged logs every request with the caller's uid and pid and the outcome
// (its status and error code; never a body).
func (s *Server) logged(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cr, _ := unixsock.CredOf(r.Context())
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		r.Body = http.MaxBytesReader(sw, r.Body, maxBody)
		h.ServeHTTP(sw, r)
		lvl := slog.LevelInfo
		if sw.code >= 400 {
			lvl = slog.LevelWarn
		}
		s.log.Log(r.Context(), lvl, "key API request", "method", r.Method, "path", r.URL.Path,
			"peer_uid", cr.UID, "peer_gid", cr.GID, "peer_pid", cr.PID, "status", sw.code, "code", sw.Header().Get("X-Ekem-Code"))
	})
}

type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

var errBadRequest = errors.New("keyapi: bad request")

// codeOf maps an error to its HTTP status and code.
func codeOf(err error) (int, string) {
	switch {
	case errors.Is(err, device.ErrNoKey):
		return http.StatusServiceUnavailable, "no_ticket"
	case errors.Is(err, device.ErrStale):
		return http.StatusServiceUnavailable, "stale"
	case errors.Is(err, device.ErrClosed):
		return http.StatusServiceUnavailable, "closed"
	case errors.Is(err, device.ErrNoGroup):
		return http.StatusConflict, "not_member"
	case errors.Is(err, device.ErrUnknownKey), errors.Is(err, groupenv.ErrUnknownKey):
		return http.StatusNotFound, "unknown_key"
	case errors.Is(err, groupenv.ErrReplay), errors.Is(err, envelope.ErrReplay):
		return http.StatusConflict, "replay"
	case errors.Is(err, groupenv.ErrTooOld), errors.Is(err, envelope.ErrTooOld):
		return http.StatusConflict, "too_old"
	case errors.Is(err, groupenv.ErrTooManySenders):
		return http.StatusConflict, "too_many_senders"
	case errors.Is(err, groupenv.ErrAuth), errors.Is(err, envelope.ErrAuth):
		return http.StatusBadRequest, "auth_failed"
	case errors.Is(err, errBadRequest), errors.Is(err, groupenv.ErrMalformed), errors.Is(err, envelope.ErrMalformed),
		errors.Is(err, groupenv.ErrBadInput), errors.Is(err, envelope.ErrBadInput):
		return http.StatusBadRequest, "bad_request"
	}
	return http.StatusInternalServerError, "failed"
}

func (s *Server) fail(w http.ResponseWriter, err error) {
	status, code := codeOf(err)
	w.Header().Set("X-Ekem-Code", code)
	reply(w, status, errorBody{Error: err.Error(), Code: code})
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// decode reads a JSON body strictly (no unknown fields, one value).
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: body: %w", errBadRequest, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: body: trailing data", errBadRequest)
	}
	return nil
}

type statusBody struct {
	DeviceID    string     `json:"device_id"`
	Epoch       uint64     `json:"epoch"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
	Stale       bool       `json:"stale"`
	NextCtr     uint64     `json:"next_ctr"`
	Cohort      string     `json:"cohort,omitempty"`
	GroupEpochs []uint64   `json:"group_epochs"`
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	in := s.keys.Info()
	b := statusBody{DeviceID: in.DeviceID, Epoch: in.Epoch, Stale: in.Stale, NextCtr: in.NextCtr, Cohort: in.Cohort,
		GroupEpochs: in.GroupEpochs}
	if in.Epoch > 0 {
		b.ExpiresAt = &in.ExpiresAt
	}
	if b.GroupEpochs == nil {
		b.GroupEpochs = []uint64{}
	}
	reply(w, http.StatusOK, b)
}

type keyBody struct {
	Epoch uint64 `json:"epoch"`
	Ctr   uint64 `json:"ctr"`
	Key   []byte `json:"key"`
}

func (s *Server) nextKey(w http.ResponseWriter, r *http.Request) {
	k, err := s.keys.NextKey()
	if err != nil {
		s.fail(w, err)
		return
	}
	defer k.Wipe()
	reply(w, http.StatusOK, keyBody{Epoch: k.Epoch, Ctr: k.Ctr, Key: k.Bytes})
}

type plaintextBody struct {
	Plaintext []byte `json:"plaintext"`
}

type envelopeBody struct {
	Envelope []byte `json:"envelope"`
}

type sealedBody struct {
	Envelope []byte `json:"envelope"`
	Epoch    uint64 `json:"epoch"`
	Ctr      uint64 `json:"ctr"`
}

type openedBody struct {
	Plaintext []byte `json:"plaintext"`
	DeviceID  string `json:"device_id"`
	Epoch     uint64 `json:"epoch"`
	Ctr       uint64 `json:"ctr"`
}

type groupHeader struct {
	Cohort string `json:"cohort"`
	Epoch  uint64 `json:"epoch"`
	Sender string `json:"sender"`
	Ctr    uint64 `json:"ctr"`
}

type groupSealedBody struct {
	Envelope []byte `json:"envelope"`
	groupHeader
}

type groupOpenedBody struct {
	Plaintext []byte `json:"plaintext"`
	groupHeader
}

func headerOf(h groupenv.Header) groupHeader {
	return groupHeader{Cohort: h.Cohort, Epoch: h.Epoch, Sender: h.Sender, Ctr: h.Ctr}
}

func (s *Server) seal(w http.ResponseWriter, r *http.Request) {
	var in plaintextBody
	if err := decode(r, &in); err != nil {
		s.fail(w, err)
		return
	}
	env, err := s.keys.SealKept(in.Plaintext)
	if err != nil {
		s.fail(w, err)
		return
	}
	h, err := envelope.ParseHeader(env)
	if err != nil {
		s.fail(w, err)
		return
	}
	reply(w, http.StatusOK, sealedBody{Envelope: env, Epoch: h.Epoch, Ctr: h.Ctr})
}

func (s *Server) open(w http.ResponseWriter, r *http.Request) {
	var in envelopeBody
	if err := decode(r, &in); err != nil {
		s.fail(w, err)
		return
	}
	h, pt, err := s.keys.Open(in.Envelope)
	if err != nil {
		s.fail(w, err)
		return
	}
	reply(w, http.StatusOK, openedBody{Plaintext: orEmpty(pt), DeviceID: h.DeviceID, Epoch: h.Epoch, Ctr: h.Ctr})
}

func (s *Server) groupSeal(w http.ResponseWriter, r *http.Request) {
	var in plaintextBody
	if err := decode(r, &in); err != nil {
		s.fail(w, err)
		return
	}
	env, err := s.keys.GroupSeal(in.Plaintext)
	if err != nil {
		s.fail(w, err)
		return
	}
	h, err := groupenv.ParseHeader(env)
	if err != nil {
		s.fail(w, err)
		return
	}
	reply(w, http.StatusOK, groupSealedBody{Envelope: env, groupHeader: headerOf(h)})
}

func (s *Server) groupOpen(w http.ResponseWriter, r *http.Request) {
	var in envelopeBody
	if err := decode(r, &in); err != nil {
		s.fail(w, err)
		return
	}
	h, pt, err := s.keys.GroupOpen(in.Envelope)
	if err != nil {
		s.fail(w, err)
		return
	}
	reply(w, http.StatusOK, groupOpenedBody{Plaintext: orEmpty(pt), groupHeader: headerOf(h)})
}

// orEmpty makes an empty plaintext "" in JSON rather than null.
func orEmpty(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
