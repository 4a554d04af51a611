package creds

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"time"
)

// ErrBadPEM: a certificate, key or CRL file is not the single PEM block of
// the expected type.
var ErrBadPEM = errors.New("creds: malformed PEM file")

// maxPEMFile bounds the certificate, key and CRL files this package reads.
// A CRL entry is about 40 bytes, so 16 MiB holds several hundred thousand.
const maxPEMFile = 16 << 20

// CRL returns a PEM-encoded certificate revocation list signed by the CA,
// listing revoked, with CRL number number. It is valid until the CA itself
// expires: Mosquitto (OpenSSL with CRL checking) refuses every client
// certificate once its CRL is past nextUpdate, so a CRL that lapsed would
// lock the whole fleet out. Revocation takes effect by replacing the file
// and reloading the broker, not by expiry.
func (ca *CA) CRL(revoked []x509.RevocationListEntry, number *big.Int) ([]byte, error) {
	now := time.Now()
	tmpl := &x509.RevocationList{
		RevokedCertificateEntries: revoked,
		Number:                    number,
		ThisUpdate:                now.Add(-clockSkew),
		NextUpdate:                ca.Cert.NotAfter,
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.key)
	if err != nil {
		return nil, fmt.Errorf("creds: crl: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), nil
}

// ReadCRL parses the CRL at path and checks that ca signed it.
func ReadCRL(path string, ca *x509.Certificate) (*x509.RevocationList, error) {
	der, err := readPEM(path, "X509 CRL")
	if err != nil {
		return nil, err
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("%w: crl: %w", ErrBadPEM, err)
	}
	if err := crl.CheckSignatureFrom(ca); err != nil {
		return nil, fmt.Errorf("creds: crl %s is not signed by the CA: %w", path, err)
	}
	return crl, nil
}

// ReadCertificate parses the PEM certificate at path.
func ReadCertificate(path string) (*x509.Certificate, error) {
	der, err := readPEM(path, "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadPEM, path, err)
	}
	return c, nil
}

// readPEM returns the bytes of the single PEM block of type typ in path.
func readPEM(path, typ string) ([]byte, error) {
	data, err := readLimited(path, maxPEMFile)
	if err != nil {
		return nil, err
	}
	block, rest := pem.Decode(data)
	if block == nil || block.Type != typ || len(bytesTrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: %s: want one %q block", ErrBadPEM, path, typ)
	}
	return block.Bytes, nil
}

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("creds: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("creds: %w", err)
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("creds: %s is larger than %d bytes", path, limit)
	}
	data := make([]byte, fi.Size())
	if _, err := f.ReadAt(data, 0); err != nil && fi.Size() > 0 {
		return nil, fmt.Errorf("creds: %w", err)
	}
	return data, nil
}

func bytesTrimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\n' || b[0] == '\r' || b[0] == '\t') {
		b = b[1:]
	}
	return b
}
