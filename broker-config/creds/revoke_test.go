package creds

import (
	"crypto/x509"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readAll(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	for _, p := range []string{PasswordFile(dir), ACLFile(dir), CRLFile(dir)} {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(data)
	}
	return b.String()
}

func TestRevoke(t *testing.T) {
	dir := t.TempDir()
	set, err := Generate(dir, Options{Devices: []string{"dev-1", "dev-2"}, Monitors: 2, ClientCerts: true})
	if err != nil {
		t.Fatal(err)
	}
	r, err := Revoke(dir, "dev-1")
	if err != nil || !r.Password || !r.Certificate || !r.ACL {
		t.Fatalf("Revoke(dev-1) = %+v, %v", r, err)
	}
	crl, err := ReadCRL(CRLFile(dir), set.CA.Cert)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := ClientCertFiles(dir, "dev-1")
	c, err := ReadCertificate(cert)
	if err != nil {
		t.Fatal(err)
	}
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(c.SerialNumber) != 0 || crl.Number.Int64() != 2 {
		t.Fatalf("CRL %+v, want dev-1's serial with number 2", crl.RevokedCertificateEntries)
	}
	if !crl.NextUpdate.Equal(set.CA.Cert.NotAfter) {
		t.Errorf("CRL next update %v, want the CA's expiry %v (a lapsed CRL refuses every client)", crl.NextUpdate, set.CA.Cert.NotAfter)
	}
	if r, err := Revoke(dir, "ekem-monitor-2"); err != nil || !r.Changed() {
		t.Fatalf("Revoke(ekem-monitor-2) = %+v, %v", r, err)
	}
	before := readAll(t, dir)
	if r, err := Revoke(dir, "dev-1"); err != nil || r.Changed() {
		t.Fatalf("second Revoke(dev-1) = %+v, %v; want no change", r, err)
	}
	if _, err := Revoke(dir, "dev-9"); !errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("Revoke(dev-9) = %v, want ErrUnknownAccount", err)
	}
	if _, err := Revoke(dir, "a/b"); !errors.Is(err, ErrInvalidDeviceID) {
		t.Fatalf("Revoke(a/b) = %v, want ErrInvalidDeviceID", err)
	}
	// Without the CA key a certificate cannot be revoked, and then nothing
	// is changed: not even the password.
	if err := os.Rename(filepath.Join(CertDir(dir), CAKeyName), filepath.Join(dir, "offline.key")); err != nil {
		t.Fatal(err)
	}
	if _, err := Revoke(dir, "dev-2"); err == nil || !strings.Contains(err.Error(), "needs the CA") {
		t.Fatalf("Revoke without the CA key = %v", err)
	}
	if got := readAll(t, dir); got != before {
		t.Fatal("a refused Revoke changed the files")
	}
	// A CRL from another CA is refused.
	other, _ := NewCA("other")
	foreign, err := other.CRL([]x509.RevocationListEntry{}, big.NewInt(1))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "offline.key"), filepath.Join(CertDir(dir), CAKeyName)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(CRLFile(dir), foreign, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Revoke(dir, "dev-2"); err == nil || !strings.Contains(err.Error(), "not signed by the CA") {
		t.Fatalf("Revoke with a foreign CRL = %v", err)
	}
	pw, _ := os.ReadFile(PasswordFile(dir))
	if !strings.Contains(string(pw), "dev-2:") {
		t.Fatal("a refused Revoke removed the password")
	}
}
