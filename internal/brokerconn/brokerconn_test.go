package brokerconn

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckURL(t *testing.T) {
	for _, ok := range []string{"tcp://h:1883", "ssl://10.0.0.1:8883", "mqtts://[::1]:8883", "ws://h:80/mqtt", "wss://h:443/", "mqtt://h:1/"} {
		if err := CheckURL(ok); err != nil {
			t.Errorf("CheckURL(%q): %v", ok, err)
		}
	}
	for bad, want := range map[string]string{
		"http://h:1": "unsupported scheme", "nohost": "not a broker URL", "tcp://h": "not a broker URL",
		"tcp://:1883": "not a broker URL", "tcp://h:1/x": "a path is for ws", "tcp://u:p@h:1": "not a broker URL",
		"tcp://h:1?x=1": "not a broker URL", "": "not a broker URL",
	} {
		if err := CheckURL(bad); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckURL(%q) = %v, want %q", bad, err, want)
		}
	}
	if !Secure("ssl://h:1") || !Secure("wss://h:1/m") || Secure("tcp://h:1") || Secure("::") {
		t.Error("Secure")
	}
}

func TestTLS(t *testing.T) {
	names := Files{CAName: "-tls-ca", CertName: "-tls-cert", KeyName: "-tls-key"}
	if c, err := TLS(names, false); c != nil || err != nil {
		t.Fatalf("no files: %v %v", c, err)
	}
	if c, err := TLS(names, true); c == nil || err != nil || c.MinVersion == 0 {
		t.Fatalf("no files, TLS scheme: %v %v", c, err)
	}
	f := names
	f.Cert = "c.pem"
	if _, err := TLS(f, false); err == nil || err.Error() != "-tls-cert and -tls-key go together" {
		t.Fatalf("cert without key: %v", err)
	}
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	f = names
	f.CA = notPEM
	if _, err := TLS(f, false); err == nil || err.Error() != "-tls-ca: "+notPEM+" holds no PEM certificate" {
		t.Fatalf("CA without certificates: %v", err)
	}
	f.CA = notPEM + ".missing"
	if _, err := TLS(f, false); err == nil || !strings.HasPrefix(err.Error(), "-tls-ca: ") {
		t.Fatalf("missing CA: %v", err)
	}
}
