package keyapi_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/device/keyapi"
	"github.com/entropykem/entropykem/internal/logbuf"
	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/groupenv"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// chanTransport feeds the agent messages through a channel.
type chanTransport struct {
	in        chan device.Message
	connected chan struct{}
}

func newTransport() *chanTransport {
	t := &chanTransport{in: make(chan device.Message, 16), connected: make(chan struct{}, 1)}
	t.connected <- struct{}{}
	return t
}

func (t *chanTransport) Publish(string, []byte, bool) error { return nil }
func (t *chanTransport) Subscribe(string) error             { return nil }
func (t *chanTransport) Connected() <-chan struct{}         { return t.connected }
func (t *chanTransport) Receive(ctx context.Context) (device.Message, bool) {
	select {
	case m := <-t.in:
		return m, true
	case <-ctx.Done():
		return device.Message{}, false
	}
}

// world is one device agent, its issuer and its key API.
type world struct {
	t      *testing.T
	dir    string
	iss    *signature.PrivateKey
	pins   *signature.KeySet
	cohort cohort.Secret
	now    atomic.Int64
	agent  *device.Agent
	stop   func()
	srv    *keyapi.Server
	sock   string
	logs   *logbuf.Buffer
	prev   []byte
	// deliverTo is the running agent's transport; idle an agent for
	// Listen calls that serve nothing.
	deliverTo *chanTransport
	idle      *device.Agent
}

func newWorld(t *testing.T) *world {
	iss, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		t.Fatal(err)
	}
	pins, _ := signature.NewKeySet(iss.Public())
	c, _ := cohort.NewSoftware(bytes.Repeat([]byte{0xc0}, 32))
	w := &world{t: t, dir: t.TempDir(), iss: iss, pins: pins, cohort: c, logs: &logbuf.Buffer{}}
	w.now.Store(1767225600)
	w.sock = filepath.Join(w.dir, "keys.sock")
	w.start()
	t.Cleanup(w.shutdown)
	return w
}

func (w *world) clock() time.Time { return time.Unix(w.now.Load(), 0) }

// start opens the agent on its state directory, serves it and its key API.
func (w *world) start() {
	w.t.Helper()
	a, err := device.New(device.Config{ID: "dev-a", StateDir: filepath.Join(w.dir, "state"), Cohort: w.cohort,
		IssuerKeys: w.pins, KEM: kem.MLKEM768, Now: w.clock, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		w.t.Fatal(err)
	}
	tr := newTransport()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Serve(ctx, tr); close(done) }()
	srv, err := keyapi.Listen(w.sock, a, keyapi.Options{Mode: 0o600,
		Logger: slog.New(slog.NewTextHandler(w.logs, nil))})
	if err != nil {
		w.t.Fatal(err)
	}
	w.agent, w.srv = a, srv
	w.stop = func() { cancel(); <-done }
	w.deliverTo = tr
}

func (w *world) shutdown() {
	if w.srv == nil {
		return
	}
	w.srv.Close()
	w.stop()
	w.agent.Close()
	w.srv = nil
}

// issue issues epoch e to the agent (in cohort fleet-a if member) and
// waits until it accepted it.
func (w *world) issue(e uint64, member bool) {
	w.t.Helper()
	var reg wire.Registration
	r, err := wire.ParseRegistration(w.agent.Registration())
	if err != nil {
		w.t.Fatal(err)
	}
	reg = *r
	key := reg.PublicKey
	if s := w.agent.Status(); s.NextPK != nil {
		key = s.NextPK
	}
	sch, _ := kem.Lookup(reg.KEMAlg)
	pk, err := sch.ParsePublicKey(key)
	if err != nil {
		w.t.Fatal(err)
	}
	d := batch.Device{ID: "dev-a", Key: pk, Prev: w.prev, Purpose: "telemetry", Group: "plant-7"}
	if member {
		d.Cohort, d.GroupSeed = "fleet-a", bytes.Repeat([]byte{byte(e)}, keyschedule.GroupSeedSize)
	}
	ep, err := batch.Issue(w.iss, batch.Params{Epoch: e, IssuedAt: uint64(w.now.Load()), TTL: 600}, []batch.Device{d})
	if err != nil {
		w.t.Fatal(err)
	}
	w.prev = ep.Tickets[0].TicketHash
	topics, _ := wire.NewTopics(wire.DefaultPrefix)
	w.deliverTo.in <- device.Message{Topic: topics.Root(e), Payload: ep.Root}
	w.deliverTo.in <- device.Message{Topic: topics.Ticket("dev-a"), Payload: ep.Tickets[0].Ticket}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.agent.WaitEpoch(ctx, e); err != nil {
		w.t.Fatal(err)
	}
}

// client speaks HTTP over the socket.
func client(sock string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
}

// call does one request and decodes the reply into out; it returns the
// status and the error code (empty on success).
func (w *world) call(method, path string, in any, out any) (int, string) {
	w.t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://device"+path, body)
	resp, err := client(w.sock).Do(req)
	if err != nil {
		w.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error, Code string }
		if err := json.Unmarshal(raw, &e); err != nil || e.Code == "" {
			w.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
		}
		return resp.StatusCode, e.Code
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			w.t.Fatalf("%s %s: %v: %s", method, path, err, raw)
		}
	}
	return resp.StatusCode, ""
}

type keyReply struct {
	Epoch, Ctr uint64
	Key        []byte
}

type sealReply struct {
	Envelope []byte
	Epoch    uint64
	Ctr      uint64
	Cohort   string
	Sender   string
}

type openReply struct {
	Plaintext []byte
	DeviceID  string `json:"device_id"`
	Epoch     uint64
	Ctr       uint64
	Cohort    string
	Sender    string
}

func TestEndpoints(t *testing.T) {
	w := newWorld(t)
	var st map[string]any
	if code, _ := w.call("GET", "/v1/status", nil, &st); code != 200 || st["epoch"] != float64(0) || st["device_id"] != "dev-a" {
		t.Fatalf("status before a ticket: %v", st)
	}
	for _, p := range []string{"/v1/keys/next", "/v1/seal", "/v1/group/seal"} {
		var in any
		if p != "/v1/keys/next" {
			in = map[string]any{"plaintext": []byte("x")}
		}
		if code, c := w.call("POST", p, in, nil); code != 503 || c != "no_ticket" {
			t.Fatalf("%s before a ticket: %d %s", p, code, c)
		}
	}
	w.issue(1, true)
	w.call("GET", "/v1/status", nil, &st)
	if st["epoch"] != float64(1) || st["cohort"] != "fleet-a" || st["stale"] != false {
		t.Fatalf("status: %v", st)
	}
	var k0, k1 keyReply
	w.call("POST", "/v1/keys/next", nil, &k0)
	w.call("POST", "/v1/keys/next", nil, &k1)
	if k0.Epoch != 1 || k0.Ctr != 0 || k1.Ctr != 1 || len(k0.Key) != 32 || bytes.Equal(k0.Key, k1.Key) {
		t.Fatalf("keys %+v %+v", k0, k1)
	}
	var sealed sealReply
	w.call("POST", "/v1/seal", map[string]any{"plaintext": []byte("reading 21.5")}, &sealed)
	if sealed.Ctr != 2 {
		t.Fatalf("seal used ctr %d", sealed.Ctr)
	}
	var opened openReply
	w.call("POST", "/v1/open", map[string]any{"envelope": sealed.Envelope}, &opened)
	if string(opened.Plaintext) != "reading 21.5" || opened.DeviceID != "dev-a" || opened.Ctr != 2 {
		t.Fatalf("open: %+v", opened)
	}
	if code, c := w.call("POST", "/v1/open", map[string]any{"envelope": sealed.Envelope}, nil); code != 404 || c != "unknown_key" {
		t.Fatalf("open twice: %d %s", code, c)
	}
	var gs sealReply
	w.call("POST", "/v1/group/seal", map[string]any{"plaintext": []byte("to the cohort")}, &gs)
	if gs.Cohort != "fleet-a" || gs.Epoch != 1 || gs.Sender != "dev-a" || gs.Ctr != 0 {
		t.Fatalf("group seal: %+v", gs)
	}
	var gs2 sealReply
	w.call("POST", "/v1/group/seal", map[string]any{"plaintext": []byte("again")}, &gs2)
	if gs2.Ctr != 1 {
		t.Fatalf("second group seal ctr %d", gs2.Ctr)
	}
	var gopen openReply
	w.call("POST", "/v1/group/open", map[string]any{"envelope": gs.Envelope}, &gopen)
	if string(gopen.Plaintext) != "to the cohort" || gopen.Sender != "dev-a" {
		t.Fatalf("group open: %+v", gopen)
	}
	if code, c := w.call("POST", "/v1/group/open", map[string]any{"envelope": gs.Envelope}, nil); code != 409 || c != "replay" {
		t.Fatalf("group replay: %d %s", code, c)
	}
	bad := bytes.Clone(gs2.Envelope)
	bad[len(bad)-1] ^= 1
	if code, c := w.call("POST", "/v1/group/open", map[string]any{"envelope": bad}, nil); code != 400 || c != "auth_failed" {
		t.Fatalf("tampered: %d %s", code, c)
	}
	other, _ := groupenv.Seal(bytes.Repeat([]byte{1}, 32), groupenv.Header{Cohort: "fleet-a", Epoch: 9, Sender: "dev-b"}, nil)
	if code, c := w.call("POST", "/v1/group/open", map[string]any{"envelope": other}, nil); code != 404 || c != "unknown_key" {
		t.Fatalf("unknown epoch: %d %s", code, c)
	}
	for _, body := range []string{`{"plaintext": 5}`, `{"nope": ""}`, `{"plaintext": ""} {}`, `not json`} {
		req, _ := http.NewRequest("POST", "http://device/v1/seal", strings.NewReader(body))
		resp, err := client(w.sock).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Fatalf("%s: %d", body, resp.StatusCode)
		}
	}
	// Leaving the cohort: the next ticket has no seed.
	w.now.Add(300)
	w.issue(2, false)
	if code, c := w.call("POST", "/v1/group/seal", map[string]any{"plaintext": []byte("x")}, nil); code != 409 || c != "not_member" {
		t.Fatalf("group seal after leaving: %d %s", code, c)
	}
	// Stale: past the ticket's ttl and the skew.
	w.now.Add(600 + 31)
	w.call("GET", "/v1/status", nil, &st)
	if st["stale"] != true {
		t.Fatalf("status when stale: %v", st)
	}
	if code, c := w.call("POST", "/v1/keys/next", nil, nil); code != 503 || c != "stale" {
		t.Fatalf("next key when stale: %d %s", code, c)
	}
	// Every request is logged with the caller's uid and pid, and no key.
	logs := w.logs.String()
	if !strings.Contains(logs, fmt.Sprintf("peer_uid=%d", os.Getuid())) || !strings.Contains(logs, fmt.Sprintf("peer_pid=%d", os.Getpid())) {
		t.Fatalf("requests not logged with the peer:\n%s", logs)
	}
	for _, secret := range [][]byte{k0.Key, k1.Key} {
		if strings.Contains(logs, base64.StdEncoding.EncodeToString(secret)) || strings.Contains(logs, fmt.Sprintf("%x", secret)) {
			t.Fatal("a key appears in the log")
		}
	}
	if strings.Contains(logs, "reading 21.5") || strings.Contains(logs, "to the cohort") {
		t.Fatal("a plaintext appears in the log")
	}
}

// TestNoKeyTwiceAcrossRestart: keys handed out before a restart are never
// handed out again after it, and the group counter goes on.
func TestNoKeyTwiceAcrossRestart(t *testing.T) {
	w := newWorld(t)
	w.issue(1, true)
	seen := map[string]bool{}
	names := map[[2]uint64]bool{}
	take := func(n int) {
		for range n {
			var k keyReply
			if code, c := w.call("POST", "/v1/keys/next", nil, &k); code != 200 {
				t.Fatalf("next: %s", c)
			}
			if seen[string(k.Key)] || names[[2]uint64{k.Epoch, k.Ctr}] {
				t.Fatalf("key (%d, %d) handed out twice", k.Epoch, k.Ctr)
			}
			seen[string(k.Key)], names[[2]uint64{k.Epoch, k.Ctr}] = true, true
		}
	}
	take(5)
	var g sealReply
	w.call("POST", "/v1/group/seal", map[string]any{"plaintext": []byte("a")}, &g)
	w.shutdown()
	w.start()
	take(5)
	var g2 sealReply
	w.call("POST", "/v1/group/seal", map[string]any{"plaintext": []byte("b")}, &g2)
	if g2.Ctr <= g.Ctr {
		t.Fatalf("group counter went from %d to %d across a restart", g.Ctr, g2.Ctr)
	}
	if len(seen) != 10 {
		t.Fatalf("%d distinct keys", len(seen))
	}
}

// TestSocketPermissions: the socket's mode keeps another user out, and the
// agent refuses a path (or a directory) someone else owns.
func TestSocketPermissions(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to act as another user")
	}
	w := newWorld(t)
	if fi, err := os.Stat(w.sock); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v %v", fi.Mode(), err)
	}
	// The directories let anyone reach the socket file: its own mode and
	// group must keep the other user out.
	os.Chmod(w.dir, 0o755)
	os.Chmod(filepath.Dir(w.dir), 0o755)
	if out, ok := dialAs(t, w.sock); ok || !strings.Contains(out, "permission denied") {
		t.Fatalf("another user through a 0600 socket: %s", out)
	}
	// 0660 with root's group: nobody (gid 65534) is still out.
	w.shutdown()
	srv, err := keyapi.Listen(w.sock, w.agentForListen(t), keyapi.Options{Mode: 0o660, SetGroup: true, GID: 0})
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(w.sock); fi.Mode().Perm() != 0o660 || fi.Sys().(*syscall.Stat_t).Gid != 0 {
		t.Fatalf("socket mode %v", fi.Mode())
	}
	if out, ok := dialAs(t, w.sock); ok || !strings.Contains(out, "permission denied") {
		t.Fatalf("another user through a 0660 root-group socket: %s", out)
	}
	srv.Close()
	// ... and with nobody's group it gets in: the mode and group decide.
	srv, err = keyapi.Listen(w.sock, w.agentForListen(t), keyapi.Options{Mode: 0o660, SetGroup: true, GID: 65534})
	if err != nil {
		t.Fatal(err)
	}
	if out, ok := dialAs(t, w.sock); !ok {
		t.Fatalf("a member of the socket's group was refused: %s", out)
	}
	srv.Close()
	if _, err := keyapi.Listen(w.sock, w.agentForListen(t), keyapi.Options{Mode: 0o666}); err == nil {
		t.Fatal("a world-accessible mode was accepted")
	}
	// A path owned by another user, a socket or a file, is refused and
	// left alone.
	for _, kind := range []string{"file", "socket"} {
		p := filepath.Join(w.dir, "foreign-"+kind)
		if kind == "file" {
			os.WriteFile(p, []byte("x"), 0o644)
		} else {
			ln, err := net.Listen("unix", p)
			if err != nil {
				t.Fatal(err)
			}
			ln.(*net.UnixListener).SetUnlinkOnClose(false)
			ln.Close()
		}
		os.Lchown(p, 65534, 65534)
		if _, err := keyapi.Listen(p, w.agentForListen(t), keyapi.Options{}); !errors.Is(err, keyapi.ErrForeignPath) {
			t.Fatalf("%s owned by another user: %v", kind, err)
		}
		if _, err := os.Lstat(p); err != nil {
			t.Fatalf("the foreign %s was removed", kind)
		}
	}
	dir := filepath.Join(w.dir, "theirs")
	os.Mkdir(dir, 0o755)
	os.Chown(dir, 65534, 65534)
	if _, err := keyapi.Listen(filepath.Join(dir, "k.sock"), w.agentForListen(t), keyapi.Options{}); !errors.Is(err, keyapi.ErrForeignPath) {
		t.Fatalf("a directory owned by another user: %v", err)
	}
}

// agentForListen is a closed-over agent for Listen calls that serve nothing.
func (w *world) agentForListen(t *testing.T) keyapi.Keys {
	if w.idle == nil {
		a, err := device.New(device.Config{ID: "dev-idle", StateDir: filepath.Join(w.dir, "idle"), Cohort: w.cohort,
			KEM: kem.MLKEM768, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		w.idle = a
	}
	return w.idle
}

// dialAs runs this test binary as uid/gid 65534 to GET /v1/status on sock;
// ok is whether it got an answer.
func dialAs(t *testing.T, sock string) (string, bool) {
	t.Helper()
	binDir, err := os.MkdirTemp("", "ekem-keyapi-bin-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(binDir)
	os.Chmod(binDir, 0o755)
	bin := filepath.Join(binDir, "keyapi.test")
	self, _ := os.ReadFile(os.Args[0])
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-test.run=^TestHelperDial$")
	cmd.Env = []string{"EKEM_KEYAPI_HELPER_SOCKET=" + sock}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	return string(out), err == nil && strings.Contains(string(out), "ANSWERED")
}

// TestHelperDial is dialAs's child: it asks the socket for the status.
func TestHelperDial(t *testing.T) {
	sock := os.Getenv("EKEM_KEYAPI_HELPER_SOCKET")
	if sock == "" {
		t.Skip("only as dialAs's helper")
	}
	resp, err := client(sock).Get("http://device/v1/status")
	if err != nil {
		fmt.Println("DIAL:", err)
		os.Exit(1)
	}
	resp.Body.Close()
	fmt.Println("ANSWERED", resp.StatusCode)
}
