package unixsock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/internal/peercred"
)

func TestListen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	var seen peercred.Cred
	l, err := Listen(path, Options{Name: "test", Flag: "-sock", Mode: 0o660, Accept: func(c net.Conn, cr peercred.Cred) bool {
		seen = cr
		return true
	}})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket: %v %v", fi.Mode(), err)
	}
	if _, err := Listen(path, Options{Name: "test"}); !errors.Is(err, ErrInUse) || !strings.HasPrefix(err.Error(), "test: ") {
		t.Fatalf("second listener on a served path: %v", err)
	}
	done := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- nil
			return
		}
		done <- c
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc := <-done
	if sc == nil {
		t.Fatal("accept failed")
	}
	defer sc.Close()
	if seen.PID != os.Getpid() || seen.UID != os.Getuid() {
		t.Fatalf("peer credentials %+v, want this process", seen)
	}
	if cr, ok := CredOf(ConnContext(t.Context(), sc)); !ok || cr != seen {
		t.Fatalf("CredOf: %+v %v", cr, ok)
	}
	l.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Close left the socket: %v", err)
	}
}

func TestListenReplacesStaleRefusesFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close() // the file stays, nobody serves it
	l, err := Listen(path, Options{Name: "test"})
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	// Another socket put in its place is not removed by Close.
	os.Remove(path)
	other, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	l.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("Close removed a socket it did not make: %v", err)
	}

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(file, Options{Name: "test", Flag: "-sock"}); err == nil || !strings.Contains(err.Error(), "not a socket; remove it or choose another -sock") {
		t.Fatalf("a regular file: %v", err)
	}
	if _, err := Listen(filepath.Join(dir, "x"), Options{Name: "test", Mode: 0o606}); err == nil {
		t.Fatal("a mode with bits for others was accepted")
	}
}

func TestServe(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := Listen(path, Options{Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	s := Serve(l, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cr, ok := CredOf(r.Context())
		fmt.Fprintf(w, "%v %d", ok, cr.PID)
	})})
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://sock/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("true %d", os.Getpid()); string(b) != want {
		t.Fatalf("handler saw %q, want %q", b, want)
	}
	if s.Path() != path {
		t.Fatalf("Path %q", s.Path())
	}
	s.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Close left the socket: %v", err)
	}
}
