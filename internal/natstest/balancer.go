package natstest

import (
	"net"
	"sync"
	"time"
)

// balancer is a loopback TCP load balancer: each accepted connection goes
// to the next target (round robin) that accepts a connection within
// dialTimeout. It copies bytes and never looks at them.
type balancer struct {
	ln      net.Listener
	targets []string

	mu     sync.Mutex
	next   int
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

const dialTimeout = time.Second

func newBalancer(targets []string) (*balancer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &balancer{ln: ln, targets: targets, conns: map[net.Conn]struct{}{}}
	b.wg.Add(1)
	go b.accept()
	return b, nil
}

// Addr is the balancer's address.
func (b *balancer) Addr() string { return b.ln.Addr().String() }

// Close stops accepting and closes every connection.
func (b *balancer) Close() {
	b.mu.Lock()
	b.closed = true
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.ln.Close()
	b.wg.Wait()
}

func (b *balancer) accept() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.wg.Add(1)
		go b.serve(c)
	}
}

func (b *balancer) track(c net.Conn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		c.Close()
		return false
	}
	b.conns[c] = struct{}{}
	return true
}

func (b *balancer) untrack(c net.Conn) {
	b.mu.Lock()
	delete(b.conns, c)
	b.mu.Unlock()
	c.Close()
}

func (b *balancer) serve(client net.Conn) {
	defer b.wg.Done()
	if !b.track(client) {
		return
	}
	defer b.untrack(client)
	b.mu.Lock()
	start := b.next
	b.next = (b.next + 1) % len(b.targets)
	b.mu.Unlock()
	var server net.Conn
	for k := range b.targets {
		c, err := net.DialTimeout("tcp", b.targets[(start+k)%len(b.targets)], dialTimeout)
		if err == nil {
			server = c
			break
		}
	}
	if server == nil || !b.track(server) {
		return
	}
	defer b.untrack(server)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		done <- struct{}{}
	}
	go pipe(server, client)
	go pipe(client, server)
	<-done // either side ended: end both, as a dead node's RST would
}
