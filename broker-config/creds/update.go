package creds

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/entropykem/entropykem/internal/atomicfile"
)

// Errors of AddDevices and RemoveDevices.
var (
	// ErrAccountExists: a device to add already has an account.
	ErrAccountExists = errors.New("creds: account exists")
	// ErrNoAccount: a device to remove has no account.
	ErrNoAccount = errors.New("creds: no such account")
	// ErrBadPasswordFile: the password file is not what Generate writes.
	ErrBadPasswordFile = errors.New("creds: malformed password file")
)

// maxPasswordFileSize bounds the password file read by AddDevices and
// RemoveDevices (one ~170-byte line per account: over a million accounts).
const maxPasswordFileSize = 256 << 20

// AddDevices adds device accounts to dir, a directory written by Generate:
// for each id a random password, accounts/ID.env and, when dir holds the CA
// key (certs/ca.key), a client certificate issued by that CA. The password
// file gets one line per new account and keeps every existing line as is.
// It refuses ids that already have an account (ErrAccountExists) and never
// overwrites a file; the password file is replaced atomically, last, so a
// failure leaves the broker's view unchanged.
func AddDevices(dir string, ids []string) ([]Account, error) {
	if err := checkDevices(ids); err != nil {
		return nil, err
	}
	lines, err := readPasswordLines(dir)
	if err != nil {
		return nil, err
	}
	have := usernames(lines)
	for _, id := range ids {
		if have[id] {
			return nil, fmt.Errorf("%w: %q is in %s", ErrAccountExists, id, PasswordFile(dir))
		}
		if _, err := os.Lstat(AccountFile(dir, id)); err == nil {
			return nil, fmt.Errorf("%w: %s exists", ErrAccountExists, AccountFile(dir, id))
		}
	}
	ca, err := LoadCA(dir)
	if err != nil {
		return nil, err
	}
	var added []Account
	var written []string
	undo := func() {
		for _, p := range written {
			os.Remove(p)
		}
	}
	write := func(path string, data []byte, mode os.FileMode) error {
		if err := writeNew(path, data, mode); err != nil {
			return err
		}
		written = append(written, path)
		return nil
	}
	var newLines []string
	for _, id := range ids {
		a, err := NewAccount(id)
		if err != nil {
			undo()
			return nil, err
		}
		h, err := HashPassword(a.Password)
		if err != nil {
			undo()
			return nil, err
		}
		if err := os.MkdirAll(filepath.Join(dir, AccountsDir), 0o700); err != nil {
			undo()
			return nil, fmt.Errorf("creds: %w", err)
		}
		if err := write(AccountFile(dir, id), a.Marshal(), 0o600); err != nil {
			undo()
			return nil, err
		}
		if ca != nil {
			pair, err := ca.IssueClient(id)
			if err == nil {
				err = os.MkdirAll(filepath.Join(CertDir(dir), ClientsDir), 0o700)
			}
			certFile, keyFile := ClientCertFiles(dir, id)
			if err == nil {
				err = write(certFile, pair.CertPEM, 0o644)
			}
			if err == nil {
				err = write(keyFile, pair.KeyPEM, 0o600)
			}
			if err != nil {
				undo()
				return nil, err
			}
		}
		newLines = append(newLines, id+":"+h)
		added = append(added, a)
	}
	if err := writePasswordLines(dir, append(lines, newLines...)); err != nil {
		undo()
		return nil, err
	}
	return added, nil
}

// RemoveDevices removes device accounts from dir: their lines in the
// password file (replaced atomically, first), then accounts/ID.env and
// their client certificate and key. Every id must have an account
// (ErrNoAccount); the service accounts cannot be removed. A removed
// device's client certificate stays valid for the TLS listener until it is
// revoked: removing the files does not revoke it.
func RemoveDevices(dir string, ids []string) error {
	if err := checkDevices(ids); err != nil {
		return err
	}
	lines, err := readPasswordLines(dir)
	if err != nil {
		return err
	}
	have := usernames(lines)
	drop := map[string]bool{}
	for _, id := range ids {
		if !have[id] {
			return fmt.Errorf("%w: %q is not in %s", ErrNoAccount, id, PasswordFile(dir))
		}
		drop[id] = true
	}
	var keep []string
	for _, l := range lines {
		if u, _, _ := strings.Cut(l, ":"); !drop[u] {
			keep = append(keep, l)
		}
	}
	if err := writePasswordLines(dir, keep); err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		certFile, keyFile := ClientCertFiles(dir, id)
		for _, p := range []string{AccountFile(dir, id), certFile, keyFile} {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("creds: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// LoadCA reads the CA that Generate wrote into dir (certs/ca.crt and
// certs/ca.key). It returns nil and no error if dir has no CA key.
func LoadCA(dir string) (*CA, error) {
	keyPEM, err := os.ReadFile(filepath.Join(CertDir(dir), CAKeyName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("creds: %w", err)
	}
	certPEM, err := os.ReadFile(filepath.Join(CertDir(dir), "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("creds: %w", err)
	}
	return ParseCA(certPEM, keyPEM)
}

// ParseCA parses a CA certificate and its PKCS #8 ECDSA key, as CertPEM and
// KeyPEM write them, and checks that they belong together.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || cb.Type != "CERTIFICATE" || kb == nil || kb.Type != "PRIVATE KEY" {
		return nil, errors.New("creds: ca: want a CERTIFICATE and a PRIVATE KEY PEM block")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("creds: ca certificate: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("creds: ca key: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || !cert.IsCA || !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("creds: ca key does not match ca certificate")
	}
	return &CA{Cert: cert, key: key}, nil
}

// readPasswordLines reads dir's password file: non-empty "user:$7$…" lines.
func readPasswordLines(dir string) ([]string, error) {
	b, err := os.ReadFile(PasswordFile(dir))
	if err != nil {
		return nil, fmt.Errorf("creds: %w (hint: make the directory with mkcreds first)", err)
	}
	if len(b) > maxPasswordFileSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrBadPasswordFile, maxPasswordFileSize)
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 4096), 4096)
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		if l == "" {
			continue
		}
		u, h, ok := strings.Cut(l, ":")
		if !ok || ValidateAccountName(u) != nil {
			return nil, fmt.Errorf("%w: line %d", ErrBadPasswordFile, n)
		}
		if _, _, _, err := parseHash(h); err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", ErrBadPasswordFile, n, err)
		}
		lines = append(lines, l)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadPasswordFile, err)
	}
	return lines, nil
}

func usernames(lines []string) map[string]bool {
	m := make(map[string]bool, len(lines))
	for _, l := range lines {
		u, _, _ := strings.Cut(l, ":")
		m[u] = true
	}
	return m
}

// writePasswordLines replaces dir's password file atomically (a temporary
// file in the same directory, synced, renamed over it), mode 0600.
func writePasswordLines(dir string, lines []string) error {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
	return ReplaceFile(PasswordFile(dir), []byte(b.String()), 0o600)
}

// ReplaceFile writes data to path crash-safely (internal/atomicfile): a
// reader sees the old or the new content, never a mix.
func ReplaceFile(path string, data []byte, mode os.FileMode) error {
	if err := atomicfile.Write(path, data, atomicfile.Options{Mode: mode}); err != nil {
		return fmt.Errorf("creds: %w", err)
	}
	return nil
}
