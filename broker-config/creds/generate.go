package creds

import (
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
)

// Layout of a directory written by Generate:
//
//	passwd                      Mosquitto password file, every account (0600)
//	acl                         the shipped ACL, rendered with every service instance
//	accounts/<name>.env         one credentials file per account (0600)
//	certs/ca.crt, ca.key        test CA (with Options.CA; key 0600)
//	certs/crl.pem               its CRL, empty until "mkcreds revoke" (with Options.CA)
//	certs/server.crt, .key      broker certificate (with Options.CA)
//	certs/clients/<name>.crt    client certificate, CN = name (with Options.ClientCerts)
//	certs/clients/<name>.key    its key (0600)
//
// WriteBroker writes only what the broker reads: passwd, acl, ca.crt,
// crl.pem, server.crt and server.key.
const (
	AccountsDir = "accounts"
	CertsDir    = "certs"
	ClientsDir  = "clients"
	CAKeyName   = "ca.key"
)

// DefaultServerHosts are the names in the broker certificate when
// Options.ServerHosts is empty.
var DefaultServerHosts = []string{"localhost", "127.0.0.1", "::1"}

// Options says what NewSet makes. The first issuer and monitor accounts are
// always made.
type Options struct {
	Devices []string // device ids; each must pass ValidateDeviceID
	// Issuers and Monitors are how many instances of each service to make
	// accounts for (0 or 1: ekem-issuer and ekem-monitor only; n: also
	// ekem-issuer-2 … ekem-issuer-n). Each instance needs its own account:
	// the broker binds the client id to the username.
	Issuers, Monitors int
	CA                bool     // also make a CA and a server certificate
	ClientCerts       bool     // also make a client certificate per account (implies CA)
	ServerHosts       []string // DNS names and IPs of the server certificate
}

// Set is a fleet's broker credentials, in memory until written.
type Set struct {
	Issuer  Account
	Monitor Account
	// Services are the issuer and monitor instances after the first
	// (ekem-issuer-2, …, ekem-monitor-2, …), in that order.
	Services []Account
	Devices  []Account // in Options.Devices order
	CA       *CA       // nil without Options.CA or Options.ClientCerts
	Server   PEMPair   // the broker's certificate, with CA
	Clients  map[string]PEMPair

	issuers, monitors int // instances of each service, at least 1
}

// Generate makes a Set (NewSet) and writes all of it into dir, created if
// needed, in the layout above. It never overwrites a file: if one exists it
// fails, so production credentials cannot be clobbered by a second run.
func Generate(dir string, o Options) (*Set, error) {
	s, err := NewSet(o)
	if err != nil {
		return nil, err
	}
	if err := s.WriteBroker(dir); err != nil {
		return nil, err
	}
	if err := s.WriteClients(dir); err != nil {
		return nil, err
	}
	return s, nil
}

// NewSet makes accounts with random passwords for the issuer, the monitor and
// every device and, as o asks, a CA, a server certificate and client
// certificates. Device ids must pass ValidateDeviceID and be distinct.
func NewSet(o Options) (*Set, error) {
	if err := checkDevices(o.Devices); err != nil {
		return nil, err
	}
	s := &Set{}
	var err error
	if s.Issuer, err = NewAccount(brokerconfig.IssuerAccount); err != nil {
		return nil, err
	}
	if s.Monitor, err = NewAccount(brokerconfig.MonitorAccount); err != nil {
		return nil, err
	}
	if o.Issuers > brokerconfig.MaxInstances || o.Monitors > brokerconfig.MaxInstances || o.Issuers < 0 || o.Monitors < 0 {
		return nil, fmt.Errorf("creds: service instances must be 0 to %d", brokerconfig.MaxInstances)
	}
	s.issuers, s.monitors = max(o.Issuers, 1), max(o.Monitors, 1)
	for _, role := range []struct {
		base string
		n    int
	}{{brokerconfig.IssuerAccount, s.issuers}, {brokerconfig.MonitorAccount, s.monitors}} {
		for k := 2; k <= role.n; k++ {
			a, err := NewAccount(brokerconfig.InstanceName(role.base, k))
			if err != nil {
				return nil, err
			}
			s.Services = append(s.Services, a)
		}
	}
	s.Devices = make([]Account, 0, len(o.Devices))
	for _, id := range o.Devices {
		a, err := NewAccount(id)
		if err != nil {
			return nil, err
		}
		s.Devices = append(s.Devices, a)
	}
	if o.CA || o.ClientCerts {
		if err := s.makeCerts(o.ServerHosts, o.ClientCerts); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func checkDevices(ids []string) error {
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		if err := ValidateDeviceID(id); err != nil {
			return err
		}
		if seen[id] {
			return fmt.Errorf("creds: duplicate device id %q", id)
		}
		seen[id] = true
	}
	return nil
}

func (s *Set) makeCerts(hosts []string, clients bool) error {
	if len(hosts) == 0 {
		hosts = DefaultServerHosts
	}
	ca, err := NewCA("entropykem test CA")
	if err != nil {
		return err
	}
	s.CA = ca
	if s.Server, err = ca.IssueServer(hosts); err != nil {
		return err
	}
	if !clients {
		return nil
	}
	s.Clients = make(map[string]PEMPair)
	for _, a := range s.Accounts() {
		if s.Clients[a.Username], err = ca.IssueClient(a.Username); err != nil {
			return err
		}
	}
	return nil
}

// Accounts returns the issuer, the monitor, the further service instances
// and the devices, in that order.
func (s *Set) Accounts() []Account {
	out := append([]Account{s.Issuer, s.Monitor}, s.Services...)
	return append(out, s.Devices...)
}

// ACL renders the broker's ACL for this set's service instances
// (brokerconfig.RenderACL).
func (s *Set) ACL() (string, error) {
	return brokerconfig.RenderACL(brokerconfig.ACLOptions{Issuers: s.issuers, Monitors: s.monitors})
}

// ACLFile is the path of the rendered ACL under dir.
func ACLFile(dir string) string { return filepath.Join(dir, brokerconfig.ACLFileName) }

// CRLFile is the path of the CA's certificate revocation list under dir.
func CRLFile(dir string) string { return filepath.Join(CertDir(dir), brokerconfig.CRLFileName) }

// PasswordFile is the path of the Mosquitto password file under dir.
func PasswordFile(dir string) string { return filepath.Join(dir, brokerconfig.PasswordFileName) }

// AccountFile is the path of name's credentials file under dir.
func AccountFile(dir, name string) string {
	return filepath.Join(dir, AccountsDir, name+".env")
}

// CertDir is the certificate directory under dir, with ca.crt, server.crt
// and server.key: Mosquitto's /mosquitto/certs/ in the shipped configuration.
func CertDir(dir string) string { return filepath.Join(dir, CertsDir) }

// ClientCertFiles returns the paths of name's client certificate and key
// under dir.
func ClientCertFiles(dir, name string) (certFile, keyFile string) {
	base := filepath.Join(dir, CertsDir, ClientsDir, name)
	return base + ".crt", base + ".key"
}

// WriteBroker writes what the broker reads into dir: the password file, the
// ACL and, if the Set has a CA, ca.crt, an empty crl.pem, server.crt and
// server.key. It never overwrites a file.
func (s *Set) WriteBroker(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creds: %w", err)
	}
	pw, err := MarshalPasswordFile(s.Accounts())
	if err != nil {
		return err
	}
	if err := writeNew(PasswordFile(dir), pw, 0o600); err != nil {
		return err
	}
	acl, err := s.ACL()
	if err != nil {
		return err
	}
	if err := writeNew(ACLFile(dir), []byte(acl), 0o644); err != nil {
		return err
	}
	if s.CA == nil {
		return nil
	}
	crl, err := s.CA.CRL(nil, big.NewInt(1))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(CertDir(dir), 0o700); err != nil {
		return fmt.Errorf("creds: %w", err)
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{brokerconfig.CAFileName, s.CA.CertPEM(), 0o644},
		{brokerconfig.CRLFileName, crl, 0o644},
		{brokerconfig.ServerCertName, s.Server.CertPEM, 0o644},
		{brokerconfig.ServerKeyName, s.Server.KeyPEM, 0o600},
	}
	for _, f := range files {
		if err := writeNew(filepath.Join(CertDir(dir), f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// WriteClients writes what clients and the operator keep into dir: a
// credentials file per account and, if the Set has them, the CA key and the
// client certificates. It never overwrites a file.
func (s *Set) WriteClients(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, AccountsDir), 0o700); err != nil {
		return fmt.Errorf("creds: %w", err)
	}
	for _, a := range s.Accounts() {
		if err := writeNew(AccountFile(dir, a.Username), a.Marshal(), 0o600); err != nil {
			return err
		}
	}
	if s.CA == nil {
		return nil
	}
	caKey, err := s.CA.KeyPEM()
	if err != nil {
		return err
	}
	if err := writeNew(filepath.Join(CertDir(dir), CAKeyName), caKey, 0o600); err != nil {
		return err
	}
	if len(s.Clients) == 0 {
		return nil
	}
	if err := os.MkdirAll(filepath.Join(CertDir(dir), ClientsDir), 0o700); err != nil {
		return fmt.Errorf("creds: %w", err)
	}
	for _, a := range s.Accounts() {
		pair := s.Clients[a.Username]
		certFile, keyFile := ClientCertFiles(dir, a.Username)
		if err := writeNew(certFile, pair.CertPEM, 0o644); err != nil {
			return err
		}
		if err := writeNew(keyFile, pair.KeyPEM, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// writeNew creates path with mode and data; it fails if path exists.
func writeNew(path string, data []byte, mode os.FileMode) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("creds: refusing to overwrite %s: %w", path, err)
		}
		return fmt.Errorf("creds: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("creds: %w", cerr)
		}
	}()
	if err := f.Chmod(mode); err != nil { // exact mode, whatever the umask
		return fmt.Errorf("creds: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("creds: %w", err)
	}
	return nil
}
