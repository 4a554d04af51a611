package creds

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"time"
)

// Certificate lifetimes of the test CA and its leaves.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	LeafValidity = 825 * 24 * time.Hour
	// clockSkew back-dates NotBefore so a host whose clock runs a little
	// behind still accepts a certificate made a moment ago.
	clockSkew = time.Hour
)

// CA is a small ECDSA P-256 certificate authority for brokers and clients.
// For production, a fleet's own PKI may replace it; what the broker needs is
// a client certificate whose subject CN is the account name.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// PEMPair is a certificate and its private key (PKCS #8), PEM-encoded.
type PEMPair struct {
	CertPEM []byte
	KeyPEM  []byte
}

// NewCA makes a self-signed CA named name that may only sign leaves.
func NewCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("creds: ca key: %w", err)
	}
	tmpl, err := template(name, CAValidity)
	if err != nil {
		return nil, err
	}
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.MaxPathLenZero = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creds: ca certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("creds: ca certificate: %w", err)
	}
	return &CA{Cert: cert, key: key}, nil
}

// CertPEM returns the CA certificate, PEM-encoded (Mosquitto's cafile).
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// KeyPEM returns the CA private key (PKCS #8), PEM-encoded.
func (ca *CA) KeyPEM() ([]byte, error) {
	return marshalKey(ca.key)
}

// IssueClient issues a client certificate with subject CN = username, the
// identity Mosquitto's use_identity_as_username turns into the broker
// username. username must pass ValidateAccountName: a CN with '/', '+' or '#'
// would escape the ACL's %u patterns.
func (ca *CA) IssueClient(username string) (PEMPair, error) {
	if err := ValidateAccountName(username); err != nil {
		return PEMPair{}, err
	}
	return ca.issue(username, x509.ExtKeyUsageClientAuth, nil, nil)
}

// IssueServer issues a broker certificate for the given DNS names and IP
// addresses (for example "localhost" and "127.0.0.1").
func (ca *CA) IssueServer(hosts []string) (PEMPair, error) {
	if len(hosts) == 0 {
		return PEMPair{}, fmt.Errorf("creds: server certificate needs at least one host")
	}
	var dns []string
	var ips []net.IP
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, h)
		}
	}
	return ca.issue(hosts[0], x509.ExtKeyUsageServerAuth, dns, ips)
}

func (ca *CA) issue(cn string, eku x509.ExtKeyUsage, dns []string, ips []net.IP) (PEMPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return PEMPair{}, fmt.Errorf("creds: key: %w", err)
	}
	tmpl, err := template(cn, LeafValidity)
	if err != nil {
		return PEMPair{}, err
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{eku}
	tmpl.BasicConstraintsValid = true
	tmpl.DNSNames, tmpl.IPAddresses = dns, ips
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return PEMPair{}, fmt.Errorf("creds: certificate %q: %w", cn, err)
	}
	keyPEM, err := marshalKey(key)
	if err != nil {
		return PEMPair{}, err
	}
	return PEMPair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  keyPEM,
	}, nil
}

func template(cn string, validity time.Duration) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("creds: serial: %w", err)
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     now.Add(validity),
	}, nil
}

func marshalKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("creds: private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
