package mosquittotest

import (
	"errors"
	"fmt"
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
			// Mosquitto logs the line and re-reads its files in the same
			// pass of its single-threaded main loop, so a packet sent
			// from now on is handled under the reloaded files.
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("mosquittotest: broker did not log %q within %v of SIGHUP", line, startTimeout)
}
