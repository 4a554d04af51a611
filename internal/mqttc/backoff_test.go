package mqttc

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

func TestBackoffWindowsAndJitter(t *testing.T) {
	b := Backoff{Min: time.Second, Max: 30 * time.Second}
	want := []time.Duration{1, 2, 4, 8, 16, 30, 30}
	for n, w := range want {
		if got := b.Window(n); got != w*time.Second {
			t.Fatalf("Window(%d) = %v, want %v", n, got, w*time.Second)
		}
	}
	// Full jitter: every draw lies in [0, window], and the draws spread
	// over it (not all in one tenth of it).
	var lo, hi int
	for range 1000 {
		d := b.Delay(2)
		if d < 0 || d > 4*time.Second {
			t.Fatalf("Delay(2) = %v, outside [0, 4s]", d)
		}
		if d < 400*time.Millisecond {
			lo++
		}
		if d > 3600*time.Millisecond {
			hi++
		}
	}
	if lo == 0 || hi == 0 || lo > 200 || hi > 200 {
		t.Fatalf("draws not spread over the window: %d in the lowest tenth, %d in the highest", lo, hi)
	}
	if (Backoff{}).orDefault() != DefaultBackoff || (Backoff{Min: 2, Max: 1}).orDefault() != DefaultBackoff {
		t.Fatal("invalid backoff not replaced by the default")
	}
}

func TestClassify(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("network Error : %w", err) }
	for _, c := range []struct {
		name      string
		err       error
		permanent bool
		hint      string
	}{
		{"nil", nil, false, ""},
		{"unknown host", wrap(&net.DNSError{Name: "x.invalid", Err: "no such host", IsNotFound: true}), false, "unknown host x.invalid"},
		{"bad port", wrap(&net.AddrError{Err: "invalid port", Addr: "99999"}), true, "port"},
		{"not TLS", wrap(tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}), true, "does not speak TLS"},
		{"unknown CA", wrap(x509.UnknownAuthorityError{}), true, "CA this client trusts"},
		{"certificate required", wrap(tls.AlertError(116)), true, "requires a TLS client certificate"},
		{"bad certificate", wrap(tls.AlertError(42)), true, "refuses this client certificate"},
		{"refused", wrap(errors.New("dial tcp 127.0.0.1:1: connect: connection refused")), false, "is the broker running"},
		{"other", errors.New("i/o timeout"), false, ""},
	} {
		p, h := Classify(c.err)
		if p != c.permanent || (c.hint == "") != (h == "") || (c.hint != "" && !strings.Contains(h, c.hint)) {
			t.Errorf("%s: permanent %v hint %q; want %v, %q", c.name, p, h, c.permanent, c.hint)
		}
	}
}
