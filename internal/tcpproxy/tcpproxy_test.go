package tcpproxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// wait bounds every positive wait of these tests; quiet is how long a test
// listens for bytes that must not arrive (a negative check: a correct proxy
// passes whatever the machine's speed).
const (
	wait  = 5 * time.Second
	quiet = 200 * time.Millisecond
)

// echoServer accepts connections on 127.0.0.1 and echoes every byte back.
func echoServer(t *testing.T) (addr string, accepted func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	n := 0
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			n++
			conns = append(conns, c)
			mu.Unlock()
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return n }
}

func newProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes msg and reads the echo, bounded by wait.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo of %q: %v", msg, err)
	}
	if string(got) != msg {
		t.Fatalf("echo %q, want %q", got, msg)
	}
}

// mustStayQuiet checks that nothing arrives on c for quiet.
func mustStayQuiet(t *testing.T, c net.Conn, why string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(quiet))
	var b [1]byte
	n, err := c.Read(b[:])
	if n > 0 {
		t.Fatalf("%s: received %q", why, b[:n])
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s: read ended with %v, want a deadline (connection kept open)", why, err)
	}
}

// mustEnd checks that c is closed by the proxy (EOF or reset) within wait.
func mustEnd(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection still open %v after CutAll", wait)
	}
}

// waitForwarded waits until the proxy counted exactly want bytes. The count
// is added just after each write, so a reader may be a moment ahead of it.
func waitForwarded(t *testing.T, p *Proxy, want uint64) {
	t.Helper()
	for deadline := time.Now().Add(wait); p.Forwarded() != want; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) || p.Forwarded() > want {
			t.Fatalf("Forwarded %d bytes, want %d", p.Forwarded(), want)
		}
	}
}

func TestNewRejectsNonLoopbackTarget(t *testing.T) {
	for _, target := range []string{"192.0.2.1:1883", "example.com:1883", "1883", ""} {
		if p, err := New(target); err == nil {
			p.Close()
			t.Errorf("New(%q) accepted a target that is not a loopback IP", target)
		}
	}
	p := newProxy(t, "127.0.0.1:1")
	if host, _, _ := net.SplitHostPort(p.Addr()); host != "127.0.0.1" {
		t.Fatalf("proxy listens on %s, want 127.0.0.1", p.Addr())
	}
}

// Bytes cross in both directions, on several connections at once, and a
// large transfer arrives intact.
func TestForwardsBothWays(t *testing.T) {
	addr, _ := echoServer(t)
	p := newProxy(t, addr)
	a, b := dial(t, p.Addr()), dial(t, p.Addr())
	roundTrip(t, a, "hello")
	roundTrip(t, b, "world")
	roundTrip(t, a, "again")

	big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB, many buffers
	errc := make(chan error, 1)
	go func() { _, err := a.Write(big); errc <- err }()
	a.SetReadDeadline(time.Now().Add(wait))
	got := make([]byte, len(big))
	if _, err := io.ReadFull(a, got); err != nil {
		t.Fatalf("read 1 MiB echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, big) {
		t.Fatal("1 MiB echo differs")
	}
	if p.Conns() != 2 || p.Accepted() != 2 {
		t.Fatalf("Conns %d Accepted %d, want 2 and 2", p.Conns(), p.Accepted())
	}
	waitForwarded(t, p, uint64(2*(len("hello")+len("world")+len("again")+len(big))))
}

// While paused, nothing crosses in either direction and nothing is closed;
// after Resume the held-back bytes arrive in order and traffic flows again.
// A connection made while paused is accepted and starts flowing on Resume.
func TestPauseHoldsTrafficResumeReleasesIt(t *testing.T) {
	addr, serverConns := echoServer(t)
	p := newProxy(t, addr)
	c := dial(t, p.Addr())
	roundTrip(t, c, "before")
	waitForwarded(t, p, 2*uint64(len("before")))

	p.Pause()
	if !p.Paused() {
		t.Fatal("Paused() false after Pause")
	}
	before := p.Forwarded()
	if _, err := c.Write([]byte("held-1")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("held-2")); err != nil {
		t.Fatal(err)
	}
	late := dial(t, p.Addr())
	if _, err := late.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	mustStayQuiet(t, c, "paused proxy")
	mustStayQuiet(t, late, "paused proxy (connection made while paused)")
	if got := p.Forwarded(); got != before {
		t.Fatalf("paused proxy forwarded %d bytes", got-before)
	}
	if p.Conns() != 2 {
		t.Fatalf("paused proxy has %d connections, want 2 (none closed)", p.Conns())
	}

	p.Resume()
	if p.Paused() {
		t.Fatal("Paused() true after Resume")
	}
	c.SetReadDeadline(time.Now().Add(wait))
	got := make([]byte, len("held-1held-2"))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("held-back bytes after Resume: %v", err)
	}
	if string(got) != "held-1held-2" {
		t.Fatalf("after Resume got %q, want the held-back bytes in order", got)
	}
	late.SetReadDeadline(time.Now().Add(wait))
	got = make([]byte, 4)
	if _, err := io.ReadFull(late, got); err != nil || string(got) != "late" {
		t.Fatalf("connection made while paused: got %q, %v", got, err)
	}
	roundTrip(t, c, "after")
	if serverConns() != 2 {
		t.Fatalf("server saw %d connections, want 2", serverConns())
	}
	// Pause and Resume are idempotent.
	p.Resume()
	p.Pause()
	p.Pause()
	p.Resume()
	roundTrip(t, c, "idempotent")
}

// CutAll closes every connection (also one that is paused), and the proxy
// accepts and forwards new connections afterwards.
func TestCutAllClosesEveryConnection(t *testing.T) {
	addr, _ := echoServer(t)
	p := newProxy(t, addr)
	a, b := dial(t, p.Addr()), dial(t, p.Addr())
	roundTrip(t, a, "a")
	roundTrip(t, b, "b")
	if n := p.CutAll(); n != 2 {
		t.Fatalf("CutAll closed %d connections, want 2", n)
	}
	mustEnd(t, a)
	mustEnd(t, b)

	c := dial(t, p.Addr())
	roundTrip(t, c, "new connection after the cut")

	p.Pause()
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	if n := p.CutAll(); n != 1 {
		t.Fatalf("CutAll while paused closed %d connections, want 1", n)
	}
	mustEnd(t, c)
	p.Resume()
	d := dial(t, p.Addr())
	roundTrip(t, d, "after a cut while paused")
	if p.CutAll(); p.Conns() != 0 {
		t.Fatalf("%d connections left after CutAll", p.Conns())
	}
}

// A server that closes the connection closes the client side too.
func TestServerCloseEndsClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("bye\n"))
		c.Close()
	}()
	p := newProxy(t, ln.Addr().String())
	c := dial(t, p.Addr())
	c.SetReadDeadline(time.Now().Add(wait))
	line, err := bufio.NewReader(c).ReadString('\n')
	if line != "bye\n" {
		t.Fatalf("got %q, %v", line, err)
	}
	mustEnd(t, c)
}

// An unreachable target closes the client's connection.
func TestUnreachableTargetClosesClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	ln.Close() // nothing listens there now
	p := newProxy(t, target)
	mustEnd(t, dial(t, p.Addr()))
}

// Close ends every connection and the listener; it is idempotent.
func TestClose(t *testing.T) {
	addr, _ := echoServer(t)
	p, err := New(addr)
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, p.Addr())
	roundTrip(t, c, "x")
	p.Pause() // Close must not hang on a paused link
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	mustEnd(t, c)
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if c, err := net.DialTimeout("tcp", p.Addr(), wait); err == nil {
		c.Close()
		t.Fatal("closed proxy still accepts connections")
	}
}
