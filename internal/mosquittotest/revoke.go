package mosquittotest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/entropykem/entropykem/broker-config/creds"
)

// Revoke revokes account name exactly as "mkcreds revoke" does
// (creds.Revoke on the broker's credentials directory) and then reloads the
// broker with SIGHUP, without restarting it. For a certificate account
// (Options.TLS) it first puts the CA key and name's client certificate where
// mkcreds keeps them, which the harness otherwise leaves in memory.
func (b *Broker) Revoke(name string) creds.Revocation {
	b.t.Helper()
	if pair, ok := b.creds.Clients[name]; ok {
		certFile, _ := creds.ClientCertFiles(b.configDir(), name)
		if err := os.MkdirAll(filepath.Dir(certFile), 0o700); err != nil {
			b.t.Fatalf("mosquittotest: %v", err)
		}
		if err := os.WriteFile(certFile, pair.CertPEM, 0o644); err != nil {
			b.t.Fatalf("mosquittotest: %v", err)
		}
		keyPath := filepath.Join(creds.CertDir(b.configDir()), creds.CAKeyName)
		if _, err := os.Stat(keyPath); errors.Is(err, os.ErrNotExist) {
			key, err := b.creds.CA.KeyPEM()
			if err == nil {
				err = os.WriteFile(keyPath, key, 0o600)
			}
			if err != nil {
				b.t.Fatalf("mosquittotest: %v", err)
			}
		}
	}
	r, err := creds.Revoke(b.configDir(), name)
	if err != nil {
		b.t.Fatalf("mosquittotest: revoke %s: %v", name, err)
	}
	if err := b.Reload(); err != nil {
		b.t.Fatal(err)
	}
	return r
}

// Reload sends the broker SIGHUP, as an operator does after changing the
// password file, the ACL or the CRL, and waits until the broker logged that
// it reloaded its configuration.
func (b *Broker) Reload() error {
	b.mu.Lock()
	cmd := b.cmd
	b.mu.Unlock()
	if cmd == nil || !b.Running() {
		return errors.New("mosquittotest: Reload of a stopped broker")
	}
	const line = "Reloading config."
	before := strings.Count(b.Log(), line)
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("mosquittotest: SIGHUP: %w", err)
	}
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		if strings.Count(b.Log(), line) > before {
			// Mosquitto logs the line, re-reads its files and only then
			// clears its reload flag, in one pass of its single-threaded
			// main loop: a SIGHUP arriving meanwhile is lost (2.0.11). A
			// CONNECT sent now is answered after that pass, so its answer
			// says the reload is complete.
			return b.probe(time.Until(deadline))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("mosquittotest: broker did not log %q within %v of SIGHUP", line, startTimeout)
}

// connectProbe is an MQTT 3.1.1 CONNECT with client id "probe" and no
// credentials: the broker answers it with a refusal (allow_anonymous false).
var connectProbe = []byte{0x10, 17, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 10, 0, 5, 'p', 'r', 'o', 'b', 'e'}

// probe sends connectProbe to the password listener and waits for the
// broker to answer (any byte, or the connection closed by the broker).
func (b *Broker) probe(within time.Duration) error {
	c, err := net.DialTimeout("tcp", b.Addr(), within)
	if err != nil {
		return fmt.Errorf("mosquittotest: probe: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(within))
	if _, err := c.Write(connectProbe); err != nil {
		return fmt.Errorf("mosquittotest: probe: %w", err)
	}
	var buf [4]byte
	if _, err := c.Read(buf[:]); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("mosquittotest: the broker did not answer after reloading: %w", err)
	}
	return nil
}
