package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRunWritesNATSCluster(t *testing.T) {
	out := filepath.Join(t.TempDir(), "c")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-out", out, "-devices", "2", "-nats-nodes", "nats-1,nats-2,nats-3", "-ca", "-hosts", "nats-1,nats-2,nats-3"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	acc, err := os.ReadFile(filepath.Join(out, NATSDir, "accounts.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"ekem-issuer", "ekem-monitor", "dev-1", "dev-2"} {
		if !strings.Contains(string(acc), `user: "`+u+`"`) {
			t.Errorf("accounts.conf lacks %s", u)
		}
	}
	var route string
	for _, n := range []string{"nats-1", "nats-2", "nats-3"} {
		b, err := os.ReadFile(filepath.Join(out, NATSDir, n+".conf"))
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		if !strings.Contains(s, "server_name: "+n+"\n") || !strings.Contains(s, natsCertFile) {
			t.Errorf("%s.conf: wrong server name or no TLS", n)
		}
		// One route password, shared by the three nodes.
		i := strings.Index(s, "nats-route://")
		r := s[i : i+strings.Index(s[i:], "@")]
		if route == "" {
			route = r
		} else if r != route {
			t.Errorf("%s.conf has another route password", n)
		}
		if fi, _ := os.Stat(filepath.Join(out, NATSDir, n+".conf")); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s.conf mode %v, want 0600", n, fi.Mode().Perm())
		}
	}
}

// A device id with '.' is refused before anything is written.
func TestRunNATSRefusesDotID(t *testing.T) {
	out := filepath.Join(t.TempDir(), "c")
	var stdout, stderr bytes.Buffer
	code := run([]string{"-out", out, "-ids", "meter.12", "-nats-nodes", "a,b,c"}, &stdout, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), "meter.12") || !strings.Contains(stderr.String(), "meter-12") {
		t.Fatalf("exit %d, stderr %q: want 2 and an error naming the id and a replacement", code, stderr.String())
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("mkcreds wrote %s although it refused the id", out)
	}
	// Without -nats-nodes the same id is fine for Mosquitto.
	if code := run([]string{"-out", out, "-ids", "meter.12"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d without -nats-nodes: %s", code, stderr.String())
	}
}

func TestRunNATSNeedsThreeNodes(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-out", t.TempDir() + "/c", "-nats-nodes", "a,b"}, &stdout, &stderr); code != 2 {
		t.Fatalf("exit %d for two nodes, want 2", code)
	}
	if code := run([]string{"-out", t.TempDir() + "/c", "-nats-nodes", "a,b,a"}, &stdout, &stderr); code != 2 {
		t.Fatalf("exit %d for a repeated node, want 2", code)
	}
}
