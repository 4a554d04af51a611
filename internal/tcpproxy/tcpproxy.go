// Package tcpproxy is a TCP proxy on the loopback interface for fault tests:
// clients connect to the proxy instead of the server, and the test can stop
// the traffic without closing anything (Pause, Resume), as a stalled network
// link does, or close every connection at once (CutAll), as a dropped link or
// a NAT timeout does.
//
// The proxy only listens on 127.0.0.1 and only dials the one target it was
// made for. It copies bytes; it does not look at them.
package tcpproxy

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// dialTimeout bounds the dial to the target for each accepted connection.
const dialTimeout = 5 * time.Second

// bufSize is the copy buffer of each direction of each connection.
const bufSize = 32 << 10

// Proxy forwards every connection accepted on its loopback address to the
// target. Its methods are safe for concurrent use.
type Proxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	paused  bool
	resumed chan struct{} // closed by Resume; replaced by Pause
	conns   map[*link]struct{}
	closed  bool

	accepted  atomic.Uint64
	forwarded atomic.Uint64
	wg        sync.WaitGroup
}

// link is one proxied connection: the client side and the target side.
type link struct {
	client, server net.Conn
	done           chan struct{} // closed when the link is torn down
	once           sync.Once
}

func (l *link) close() {
	l.once.Do(func() {
		close(l.done)
		l.client.Close()
		if l.server != nil {
			l.server.Close()
		}
	})
}

// New listens on 127.0.0.1 (a free port) and forwards every connection to
// target ("host:port"), which must be a loopback address.
func New(target string) (*Proxy, error) {
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		return nil, fmt.Errorf("tcpproxy: target %q: %w", target, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("tcpproxy: target %q is not a loopback IP address", target)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("tcpproxy: listen: %w", err)
	}
	p := &Proxy{ln: ln, target: target, resumed: make(chan struct{}), conns: map[*link]struct{}{}}
	close(p.resumed) // not paused
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr is the proxy's listening address, "127.0.0.1:PORT".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target is the address every connection is forwarded to.
func (p *Proxy) Target() string { return p.target }

// Pause stops forwarding in both directions on every connection, present
// and future, without closing any. New connections are still accepted (and
// dialed through to the target), but no byte crosses until Resume. A write
// that was already under way when Pause was called may still complete.
func (p *Proxy) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.paused {
		p.paused = true
		p.resumed = make(chan struct{})
	}
}

// Resume lets every connection forward again, starting with the bytes held
// back while paused.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused {
		p.paused = false
		close(p.resumed)
	}
}

// Paused reports whether the proxy is paused.
func (p *Proxy) Paused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused
}

// CutAll closes every current connection, both sides, and returns how many
// it closed. Bytes held back by a pause are dropped. The proxy keeps
// accepting new connections (and stays paused if it was).
func (p *Proxy) CutAll() int {
	p.mu.Lock()
	links := make([]*link, 0, len(p.conns))
	for l := range p.conns {
		links = append(links, l)
	}
	clear(p.conns)
	p.mu.Unlock()
	for _, l := range links {
		l.close()
	}
	return len(links)
}

// Conns is the number of open connections.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Accepted is the number of connections accepted so far.
func (p *Proxy) Accepted() uint64 { return p.accepted.Load() }

// Forwarded is the number of bytes written to either side so far.
func (p *Proxy) Forwarded() uint64 { return p.forwarded.Load() }

// Close stops listening, closes every connection and waits for the proxy's
// goroutines. It is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	err := p.ln.Close()
	p.CutAll()
	p.wg.Wait()
	return err
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.accepted.Add(1)
		l := &link{client: c, done: make(chan struct{})}
		if !p.add(l) {
			c.Close()
			return
		}
		p.wg.Add(1)
		go p.serve(l)
	}
}

// add registers l unless the proxy is closed.
func (p *Proxy) add(l *link) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[l] = struct{}{}
	return true
}

func (p *Proxy) remove(l *link) {
	p.mu.Lock()
	delete(p.conns, l)
	p.mu.Unlock()
	l.close()
}

// serve dials the target and copies both ways until either side ends or
// the link is cut.
func (p *Proxy) serve(l *link) {
	defer p.wg.Done()
	defer p.remove(l)
	d := net.Dialer{Timeout: dialTimeout}
	s, err := d.Dial("tcp", p.target)
	if err != nil {
		return
	}
	// CutAll or Close may have run while dialing: then the link is no
	// longer registered (and its client side is closed).
	p.mu.Lock()
	_, live := p.conns[l]
	if live {
		l.server = s
	}
	p.mu.Unlock()
	if !live {
		s.Close()
		return
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(l, s, l.client) }()
	go func() { defer wg.Done(); p.pipe(l, l.client, s) }()
	wg.Wait()
}

// pipe copies from src to dst, holding each chunk back while paused. When
// either direction ends, the whole link is closed (MQTT has no half-close).
func (p *Proxy) pipe(l *link, dst, src net.Conn) {
	defer l.close()
	buf := make([]byte, bufSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.gate(l) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			p.forwarded.Add(uint64(n))
		}
		if err != nil {
			return // io.EOF or a closed connection: either way the link ends
		}
	}
}

// gate waits while the proxy is paused; false if the link was cut meanwhile.
func (p *Proxy) gate(l *link) bool {
	for {
		p.mu.Lock()
		paused, ch := p.paused, p.resumed
		p.mu.Unlock()
		if !paused {
			select {
			case <-l.done:
				return false
			default:
				return true
			}
		}
		select {
		case <-ch:
		case <-l.done:
			return false
		}
	}
}
