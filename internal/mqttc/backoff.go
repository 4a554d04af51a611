package mqttc

// Reconnection policy: exponential backoff with full jitter, and connection
// errors classified into the transient (retry) and the permanent (a
// configuration error that no retry can fix), each with a hint.

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/rand/v2"
	"net"
	"strings"
	"time"
)

// Backoff bounds the waits between connection attempts. Before attempt n
// (n = 0 for the first attempt after a connection is lost, or the second
// of Dial) a client waits a duration drawn uniformly from
// [0, min(Max, Min·2^n)] ("full jitter"): a fleet that loses its broker at
// one moment spreads its reconnections over that window instead of
// arriving together, and a broker that stays away costs each client one
// attempt per Max at most.
type Backoff struct {
	Min, Max time.Duration
}

// DefaultBackoff is the backoff of Options with a zero Backoff: the first
// reconnection within 1 s of the loss, then windows of 2 s, 4 s, ... up to
// 30 s.
var DefaultBackoff = Backoff{Min: time.Second, Max: 30 * time.Second}

// ServiceBackoff suits a single service client (the issuer, a monitor):
// there is no herd to spread, and it should be back soon after its broker.
var ServiceBackoff = Backoff{Min: 500 * time.Millisecond, Max: 5 * time.Second}

// Window returns the upper bound of the wait before attempt n.
func (b Backoff) Window(n int) time.Duration {
	w := b.Min
	for i := 0; i < n && w < b.Max; i++ {
		w *= 2
	}
	return min(w, b.Max)
}

// Delay draws the wait before attempt n from [0, Window(n)].
func (b Backoff) Delay(n int) time.Duration {
	w := b.Window(n)
	if w <= 0 {
		return 0
	}
	return rand.N(w + 1)
}

func (b Backoff) orDefault() Backoff {
	if b.Min <= 0 || b.Max < b.Min {
		return DefaultBackoff
	}
	return b
}

// ErrPermanent is wrapped by Dial's error for a connection error that no
// retry can fix: a bad port, TLS to a plain port, a broker certificate this
// client cannot verify, a client certificate the broker requires or
// refuses. The error carries a hint saying what to change.
var ErrPermanent = errors.New("mqttc: permanent connection error")

// Classify tells a connection error apart: permanent (retrying cannot help)
// or not, and a hint for the operator (empty if there is none).
func Classify(err error) (permanent bool, hint string) {
	var (
		dnsErr  *net.DNSError
		addrErr *net.AddrError
		unkCA   x509.UnknownAuthorityError
		hostErr x509.HostnameError
		invErr  x509.CertificateInvalidError
		recErr  tls.RecordHeaderError
		alert   tls.AlertError
	)
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	switch {
	case err == nil:
		return false, ""
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		// Not permanent: at boot the resolver may not be up yet.
		return false, "unknown host " + dnsErr.Name + ": check the host name of the broker URL (-broker)"
	case errors.As(err, &dnsErr):
		return false, "cannot resolve host " + dnsErr.Name + ": check the host name of the broker URL (-broker) and the resolver"
	case errors.As(err, &addrErr) || strings.Contains(msg, "invalid port"):
		return true, "the broker URL's port is not valid: use host:port with a port of 1-65535 (-broker)"
	case errors.As(err, &recErr) || strings.Contains(msg, "does not look like a TLS handshake"):
		return true, "the broker does not speak TLS on this port: use tcp:// for a plain port, or the broker's TLS port with ssl://"
	case errors.As(err, &unkCA) || strings.Contains(msg, "certificate signed by unknown authority"):
		return true, "the broker's certificate is not signed by a CA this client trusts: give the CA that signed it (-tls-ca)"
	case errors.As(err, &hostErr):
		return true, "the broker's certificate does not name the host of the broker URL: connect by a name it holds"
	case errors.As(err, &invErr):
		return true, "the broker's certificate is not valid (expired, or not yet valid; check both clocks)"
	case errors.As(err, &alert) && uint8(alert) == 116, strings.Contains(msg, "certificate required"):
		return true, "the broker requires a TLS client certificate: give -tls-cert and -tls-key"
	case errors.As(err, &alert) && (uint8(alert) == 42 || uint8(alert) == 48 || uint8(alert) == 45 || uint8(alert) == 44),
		strings.Contains(msg, "bad certificate"), strings.Contains(msg, "unknown certificate authority"),
		strings.Contains(msg, "certificate revoked"), strings.Contains(msg, "certificate expired"):
		return true, "the broker refuses this client certificate (unknown CA, revoked or expired): check -tls-cert, -tls-key and the broker's CA and CRL"
	case strings.Contains(msg, "connection refused"):
		return false, "nothing listens at the broker's host and port: is the broker running, and is the port right?"
	}
	return false, ""
}
