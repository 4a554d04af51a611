package creds

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/internal/atomicfile"
)

// ErrUnknownAccount: Revoke found the name neither in the password file nor
// among the client certificates.
var ErrUnknownAccount = errors.New("creds: unknown account")

// Revocation says what Revoke changed in a credentials directory. Each
// field is true only if that file changed: revoking twice changes nothing
// the second time.
type Revocation struct {
	// Password: the account's line left the password file, so its password
	// no longer logs in. Mosquitto checks connected password clients again
	// when it reloads and disconnects this one.
	Password bool
	// Certificate: the serial of certs/clients/NAME.crt was added to
	// certs/crl.pem. Mosquitto re-reads the CRL on reload and refuses the
	// certificate at its next CONNECT; it does not close a TLS connection
	// that is already open, which the ACL section below neutralises.
	Certificate bool
	Serial      *big.Int
	// ACL: a deny-all section for the account was appended to the ACL
	// (brokerconfig.RevokedSection), so a connection that stays open reads
	// and writes nothing once the broker reloads.
	ACL bool
}

// Changed reports whether Revoke changed any file.
func (r Revocation) Changed() bool { return r.Password || r.Certificate || r.ACL }

// Revoke revokes account name in the credentials directory dir (the layout
// Generate writes): it removes the account from the password file, adds its
// client certificate, if there is one, to the CA's CRL, and denies it every
// topic in the ACL. The broker must then reload (SIGHUP) for the change to
// take effect; no restart is needed.
//
// Every file is replaced atomically (a temporary file renamed over it,
// keeping its mode), and nothing is written unless every check passed: an
// unknown name, a malformed file or a missing CA key changes nothing.
func Revoke(dir, name string) (Revocation, error) {
	var r Revocation
	if err := ValidateAccountName(name); err != nil {
		return r, err
	}
	pwPath := PasswordFile(dir)
	pw, err := readLimited(pwPath, 1<<30)
	if err != nil {
		return r, err
	}
	newPW, inPW := withoutAccount(pw, name)
	var newCRL []byte
	var crlSeen bool
	certFile, _ := ClientCertFiles(dir, name)
	if _, err := os.Stat(certFile); err == nil {
		newCRL, r.Serial, crlSeen, err = revokeCert(dir, certFile)
		if err != nil {
			return Revocation{}, err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return r, fmt.Errorf("creds: %w", err)
	}
	aclPath := ACLFile(dir)
	acl, err := readLimited(aclPath, 1<<30)
	if err != nil {
		return Revocation{}, err
	}
	section := brokerconfig.RevokedSection(name)
	inACL := bytes.Contains(acl, []byte(section))
	if !inPW && r.Serial == nil && !inACL {
		return Revocation{}, fmt.Errorf("%w: %q has no password, no client certificate and no ACL entry under %s", ErrUnknownAccount, name, dir)
	}
	if inPW {
		if err := replaceFile(pwPath, newPW); err != nil {
			return Revocation{}, err
		}
		r.Password = true
	}
	if newCRL != nil && !crlSeen {
		if err := replaceFile(CRLFile(dir), newCRL); err != nil {
			return r, err
		}
		r.Certificate = true
	}
	if !inACL {
		if len(acl) > 0 && acl[len(acl)-1] != '\n' {
			acl = append(acl, '\n')
		}
		if err := replaceFile(aclPath, append(acl, section...)); err != nil {
			return r, err
		}
		r.ACL = true
	}
	return r, nil
}

// withoutAccount returns the password file without name's line and whether
// there was one.
func withoutAccount(pw []byte, name string) ([]byte, bool) {
	var out []byte
	found := false
	for _, line := range strings.SplitAfter(string(pw), "\n") {
		if user, _, ok := strings.Cut(line, ":"); ok && user == name {
			found = true
			continue
		}
		out = append(out, line...)
	}
	return out, found
}

// revokeCert returns the CA's CRL with certFile's serial added, the serial,
// and whether the CRL already listed it.
func revokeCert(dir, certFile string) (crl []byte, serial *big.Int, already bool, err error) {
	cert, err := ReadCertificate(certFile)
	if err != nil {
		return nil, nil, false, err
	}
	ca, err := LoadCA(dir)
	if err == nil && ca == nil {
		err = fmt.Errorf("%s is missing", filepath.Join(CertDir(dir), CAKeyName))
	}
	if err != nil {
		return nil, nil, false, fmt.Errorf("creds: revoking a certificate needs the CA: %w", err)
	}
	if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
		return nil, nil, false, fmt.Errorf("creds: %s was not issued by this CA: %w", certFile, err)
	}
	old, err := ReadCRL(CRLFile(dir), ca.Cert)
	if err != nil {
		return nil, nil, false, err
	}
	entries := old.RevokedCertificateEntries
	for _, e := range entries {
		if e.SerialNumber.Cmp(cert.SerialNumber) == 0 {
			return nil, cert.SerialNumber, true, nil
		}
	}
	entries = append(entries, x509.RevocationListEntry{SerialNumber: cert.SerialNumber, RevocationTime: time.Now().UTC()})
	number := big.NewInt(1)
	if old.Number != nil {
		number.Add(old.Number, big.NewInt(1))
	}
	crl, err = ca.CRL(entries, number)
	return crl, cert.SerialNumber, false, err
}

// replaceFile replaces path with data crash-safely (internal/atomicfile),
// keeping its mode (and its owner where it may).
func replaceFile(path string, data []byte) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("creds: %w", err)
	}
	err = atomicfile.Write(path, data, atomicfile.Options{Mode: fi.Mode().Perm(), Prepare: func(f *os.File) error {
		keepOwner(f, fi)
		return nil
	}})
	if err != nil {
		return fmt.Errorf("creds: replace %s: %w", path, err)
	}
	return nil
}
