package creds

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestValidateDeviceID(t *testing.T) {
	valid := []string{"a", "Z", "0", "dev-1", "a.b_c-d", "Dev.4", strings.Repeat("x", 64), "issuer", "ekem-device", "my-ekem-issuer"}
	for _, id := range valid {
		if err := ValidateDeviceID(id); err != nil {
			t.Errorf("ValidateDeviceID(%q) = %v, want nil", id, err)
		}
	}
	invalid := []string{"", strings.Repeat("x", 65), "-a", ".a", "_a", "a/b", "a+b", "a#", "#", "+", "a b", "a:b", "ä", "a\x00", "$SYS", "a%u"}
	for _, id := range invalid {
		if err := ValidateDeviceID(id); !errors.Is(err, ErrInvalidDeviceID) {
			t.Errorf("ValidateDeviceID(%q) = %v, want ErrInvalidDeviceID", id, err)
		}
	}
	// Every name a service instance has or could be confused with.
	for _, id := range []string{"ekem-issuer", "ekem-monitor", "EKEM-Issuer", "Ekem-Monitor", "ekem-issuer2", "ekem-issuer-2", "EKEM-MONITOR-7", "ekem-monitor.x"} {
		if err := ValidateDeviceID(id); !errors.Is(err, ErrReservedName) {
			t.Errorf("ValidateDeviceID(%q) = %v, want ErrReservedName", id, err)
		}
	}
	for _, name := range []string{"ekem-issuer", "ekem-monitor", "dev-1", "ekem-issuer-2", "ekem-monitor-99"} {
		if err := ValidateAccountName(name); err != nil {
			t.Errorf("ValidateAccountName(%q) = %v", name, err)
		}
	}
	for _, name := range []string{"ekem-issuer-1", "ekem-issuer-02", "ekem-issuer-100", "ekem-issuer-", "Ekem-issuer-2"} {
		if err := ValidateAccountName(name); !errors.Is(err, ErrReservedName) {
			t.Errorf("ValidateAccountName(%q) = %v, want ErrReservedName", name, err)
		}
	}
	if err := ValidateAccountName("EKEM-ISSUER"); !errors.Is(err, ErrReservedName) {
		t.Errorf("ValidateAccountName(EKEM-ISSUER) = %v, want ErrReservedName", err)
	}
}

// mosquittoPasswdVector was written by mosquitto_passwd 2.0.11
// (`mosquitto_passwd -c -b FILE alice secret`).
const mosquittoPasswdVector = "$7$101$SnbU7q1Ox54i7SMg$R2vBat0CKK3mPUv3Fc0gjYyPxsN1yOnwUXkrN8H6uh3+nJCgkT82b8NN4+tVZ8LP4dFgZh5iPdDnHreouOqdgQ=="

func TestVerifyMosquittoPasswdVector(t *testing.T) {
	ok, err := VerifyPassword(mosquittoPasswdVector, "secret")
	if err != nil || !ok {
		t.Fatalf("VerifyPassword(vector, secret) = %v, %v; want true", ok, err)
	}
	if ok, _ := VerifyPassword(mosquittoPasswdVector, "secreT"); ok {
		t.Fatal("wrong password verified")
	}
	// Recomputing with the vector's salt reproduces mosquitto_passwd's line.
	salt := []byte{0x4a, 0x76, 0xd4, 0xee, 0xad, 0x4e, 0xc7, 0x9e, 0x22, 0xed, 0x23, 0x20}
	got, err := hashWithSalt("secret", salt, 101)
	if err != nil || got != mosquittoPasswdVector {
		t.Fatalf("hashWithSalt = %q, %v; want %q", got, err, mosquittoPasswdVector)
	}
}

// If mosquitto_passwd is installed, hashes it writes now verify too.
func TestVerifyLiveMosquittoPasswd(t *testing.T) {
	bin, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		t.Skip("mosquitto_passwd not installed; TestVerifyMosquittoPasswdVector covers its format")
	}
	file := filepath.Join(t.TempDir(), "pw")
	if out, err := exec.Command(bin, "-c", "-b", file, "dev-1", "p4ss:word with spaces").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd: %v\n%s", err, out)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	user, hash, _ := strings.Cut(strings.TrimSpace(string(data)), ":")
	if user != "dev-1" {
		t.Fatalf("user = %q", user)
	}
	if ok, err := VerifyPassword(hash, "p4ss:word with spaces"); err != nil || !ok {
		t.Fatalf("VerifyPassword(live hash) = %v, %v", ok, err)
	}
}

var hashRE = regexp.MustCompile(`^\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==$`)

func TestHashPassword(t *testing.T) {
	h1, err := HashPassword("pw")
	if err != nil {
		t.Fatal(err)
	}
	h2, _ := HashPassword("pw")
	if !hashRE.MatchString(h1) {
		t.Fatalf("hash %q does not have mosquitto 2's shape", h1)
	}
	if h1 == h2 {
		t.Fatal("two hashes of one password are equal: salt is not random")
	}
	if ok, err := VerifyPassword(h1, "pw"); err != nil || !ok {
		t.Fatalf("VerifyPassword = %v, %v", ok, err)
	}
	if ok, _ := VerifyPassword(h1, "pW"); ok {
		t.Fatal("wrong password verified")
	}
}

func TestVerifyPasswordMalformed(t *testing.T) {
	bad := []string{
		"", "$6$101$c2FsdA==$aGFzaA==", "$7$", "$7$101$c2FsdA==", "$7$x$c2FsdA==$aGFzaA==",
		"$7$0$c2FsdA==$aGFzaA==", "$7$99999999$c2FsdA==$aGFzaA==", "$7$101$!!$aGFzaA==",
		"$7$101$c2FsdA==$aGFzaA==", // hash not 64 bytes
		"$7$101$$" + strings.Repeat("A", 86) + "==",
	}
	for _, h := range bad {
		if _, err := VerifyPassword(h, "pw"); !errors.Is(err, ErrBadHash) {
			t.Errorf("VerifyPassword(%q) err = %v, want ErrBadHash", h, err)
		}
	}
}

func TestMarshalPasswordFile(t *testing.T) {
	a, _ := NewAccount("dev-1")
	iss, _ := NewAccount("ekem-issuer")
	data, err := MarshalPasswordFile([]Account{iss, a})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines", len(lines))
	}
	for i, acct := range []Account{iss, a} {
		user, hash, _ := strings.Cut(lines[i], ":")
		if user != acct.Username {
			t.Errorf("line %d user %q, want %q", i, user, acct.Username)
		}
		if ok, err := VerifyPassword(hash, acct.Password); err != nil || !ok {
			t.Errorf("line %d does not verify: %v", i, err)
		}
	}
	if _, err := MarshalPasswordFile([]Account{a, a}); err == nil {
		t.Error("duplicate account accepted")
	}
	if _, err := MarshalPasswordFile([]Account{{Username: "a:b", Password: "x"}}); !errors.Is(err, ErrInvalidDeviceID) {
		t.Errorf("username with ':' accepted: %v", err)
	}
}

func TestAccountRoundTrip(t *testing.T) {
	a, err := NewAccount("dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Password) != 43 || strings.ContainsAny(a.Password, "+/=") {
		t.Fatalf("password %d chars, want 43 of base64url", len(a.Password))
	}
	b, _ := NewAccount("dev-1")
	if a.Password == b.Password {
		t.Fatal("two accounts got the same password")
	}
	got, err := ParseAccount(a.Marshal())
	if err != nil || got != a {
		t.Fatalf("ParseAccount(Marshal) = %+v, %v", got, err)
	}
	if _, err := NewAccount("ekem-Monitor"); !errors.Is(err, ErrReservedName) {
		t.Errorf("NewAccount(ekem-Monitor) = %v, want ErrReservedName", err)
	}
}

func TestParseAccountRejects(t *testing.T) {
	const secret = "s3cretpassword"
	bad := []string{
		"",
		"EKEM_USERNAME=dev-1\n",
		"EKEM_PASSWORD=" + secret + "\n",
		"EKEM_USERNAME=dev-1\nEKEM_PASSWORD=\n",
		"EKEM_USERNAME=dev-1\nEKEM_USERNAME=dev-2\nEKEM_PASSWORD=" + secret + "\n",
		"EKEM_USERNAME=a/b\nEKEM_PASSWORD=" + secret + "\n",
		"EKEM_USERNAME=dev-1\nEKEM_PASSWORD=" + secret + "\nOTHER=1\n",
		"EKEM_USERNAME=dev-1\n" + secret + "\n",
		strings.Repeat("#", maxAccountFile+1),
	}
	for _, in := range bad {
		_, err := ParseAccount([]byte(in))
		if !errors.Is(err, ErrBadAccountFile) {
			t.Errorf("ParseAccount(%.60q) = %v, want ErrBadAccountFile", in, err)
		}
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("error %q reveals the password", err)
		}
	}
	ok := "# comment\n\nEKEM_PASSWORD=" + secret + "\nEKEM_USERNAME=dev-1\n"
	if a, err := ParseAccount([]byte(ok)); err != nil || a.Username != "dev-1" || a.Password != secret {
		t.Errorf("ParseAccount(comments, any order) = %+v, %v", a, err)
	}
}

func TestGenerateLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	set, err := Generate(dir, Options{Devices: []string{"dev-1", "dev-2"}, CA: true, ClientCerts: true})
	if err != nil {
		t.Fatal(err)
	}
	modes := map[string]os.FileMode{
		"passwd":                         0o600,
		"accounts/ekem-issuer.env":       0o600,
		"accounts/ekem-monitor.env":      0o600,
		"accounts/dev-1.env":             0o600,
		"accounts/dev-2.env":             0o600,
		"certs/ca.crt":                   0o644,
		"certs/ca.key":                   0o600,
		"certs/server.crt":               0o644,
		"certs/server.key":               0o600,
		"certs/clients/dev-1.crt":        0o644,
		"certs/clients/dev-1.key":        0o600,
		"certs/clients/ekem-issuer.key":  0o600,
		"certs/clients/ekem-monitor.crt": 0o644,
	}
	for name, want := range modes {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode().Perm(), want)
		}
	}
	a, err := ReadAccountFile(AccountFile(dir, "dev-2"))
	if err != nil || a != set.Devices[1] {
		t.Errorf("ReadAccountFile(dev-2) = %+v, %v; want %+v", a, err, set.Devices[1])
	}
	if _, err := Generate(dir, Options{}); !errors.Is(err, os.ErrExist) {
		t.Errorf("second Generate into the same directory: %v, want os.ErrExist", err)
	}
}

func TestNewSetRejects(t *testing.T) {
	for _, devices := range [][]string{{"ekem-issuer"}, {"EKEM-MONITOR"}, {"a/b"}, {"dev-1", "dev-1"}, {""}} {
		if _, err := NewSet(Options{Devices: devices}); err == nil {
			t.Errorf("NewSet(%q) accepted", devices)
		}
	}
}

func TestCertificates(t *testing.T) {
	set, err := NewSet(Options{Devices: []string{"dev-1"}, ClientCerts: true})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(set.CA.Cert)
	server := parseCert(t, set.Server.CertPEM)
	for _, host := range DefaultServerHosts {
		if _, err := server.Verify(x509.VerifyOptions{DNSName: host, Roots: roots}); err != nil {
			t.Errorf("server certificate for %s: %v", host, err)
		}
	}
	client := parseCert(t, set.Clients["dev-1"].CertPEM)
	if client.Subject.CommonName != "dev-1" {
		t.Errorf("client CN = %q, want dev-1", client.Subject.CommonName)
	}
	opts := x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if _, err := client.Verify(opts); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	if _, err := client.Verify(opts); err == nil {
		t.Error("client certificate is valid for server authentication")
	}
	if len(set.Clients) != 3 {
		t.Errorf("got %d client certificates, want 3 (issuer, monitor, dev-1)", len(set.Clients))
	}
	if _, err := set.CA.IssueClient("ekem-Issuer"); !errors.Is(err, ErrReservedName) {
		t.Errorf("IssueClient(ekem-Issuer) = %v, want ErrReservedName", err)
	}
	if _, err := set.CA.IssueClient("a/b"); !errors.Is(err, ErrInvalidDeviceID) {
		t.Errorf("IssueClient(a/b) = %v, want ErrInvalidDeviceID", err)
	}
}

func parseCert(t *testing.T, data []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatal("no PEM block")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func FuzzParseAccount(f *testing.F) {
	a := Account{Username: "dev-1", Password: "pw"}
	f.Add(a.Marshal())
	f.Add([]byte("# x\nEKEM_PASSWORD=a=b\nEKEM_USERNAME=ekem-issuer\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := ParseAccount(data)
		if err != nil {
			return
		}
		if ValidateAccountName(got.Username) != nil || got.Password == "" {
			t.Fatalf("accepted %+v", got)
		}
		again, err := ParseAccount(got.Marshal())
		if err != nil || again != got {
			t.Fatalf("round trip: %+v, %v", again, err)
		}
	})
}

func FuzzVerifyPassword(f *testing.F) {
	f.Add(mosquittoPasswdVector, "secret")
	f.Add("$7$1$AA==$"+strings.Repeat("A", 86)+"==", "")
	f.Fuzz(func(t *testing.T, hash, password string) {
		_, _ = VerifyPassword(hash, password) // must not panic or run unbounded
	})
}
