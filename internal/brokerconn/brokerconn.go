// Package brokerconn is how every client of the project names and secures
// its broker connection: the broker URL's check and the TLS configuration
// built from PEM files, one of each for the issuer, the device, the
// monitor and the conformance kit.
package brokerconn

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
)

// Schemes are the broker URL schemes paho dials; Secure ones use TLS.
var schemes = map[string]bool{"tcp": false, "mqtt": false, "ws": false, "ssl": true, "tls": true, "mqtts": true, "wss": true}

// CheckURL checks that u is scheme://host:port with a scheme paho dials
// (tcp, mqtt, ssl, tls, mqtts, ws, wss) and no path, except for the
// WebSocket schemes.
func CheckURL(u string) error {
	p, err := url.Parse(u)
	if err != nil || p.Hostname() == "" || p.Port() == "" || p.User != nil || p.RawQuery != "" || p.Fragment != "" {
		return fmt.Errorf("%q is not a broker URL scheme://host:port, like tcp://host:1883", u)
	}
	_, ok := schemes[p.Scheme]
	if !ok {
		return fmt.Errorf("unsupported scheme %q (tcp, mqtt, ssl, tls, mqtts, ws, wss)", p.Scheme)
	}
	if p.Path != "" && p.Path != "/" && p.Scheme != "ws" && p.Scheme != "wss" {
		return fmt.Errorf("%q is not a broker URL scheme://host:port, like tcp://host:1883 (a path is for ws:// and wss:// only)", u)
	}
	return nil
}

// Secure reports whether u's scheme is one of TLS (ssl, tls, mqtts, wss).
func Secure(u string) bool {
	p, err := url.Parse(u)
	return err == nil && schemes[p.Scheme]
}

// Files names the PEM files of a client's TLS configuration, and how the
// caller calls each in its messages (a flag, or the environment variable
// it came from).
type Files struct {
	CA, Cert, Key             string
	CAName, CertName, KeyName string
}

// maxPEM bounds a CA file.
const maxPEM = 1 << 20

// TLS returns the client TLS configuration of f: the CA file's
// certificates as the roots (none: the system's), the client certificate
// and key (both or neither), TLS 1.2 at least. With no file named it
// returns nil (a plain connection), unless tlsAnyway (a TLS scheme), which
// gets the defaults.
func TLS(f Files, tlsAnyway bool) (*tls.Config, error) {
	if f.CA == "" && f.Cert == "" && f.Key == "" && !tlsAnyway {
		return nil, nil
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, fmt.Errorf("%s and %s go together", f.CertName, f.KeyName)
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.CA != "" {
		pem, err := readLimited(f.CA, maxPEM)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.CAName, err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: %s holds no PEM certificate", f.CAName, f.CA)
		}
	}
	if f.Cert != "" {
		pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, fmt.Errorf("%s/%s: %w", f.CertName, f.KeyName, err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, errors.New(path + ": larger than 1 MiB")
	}
	return b, nil
}
