package brokerconfig

import (
	"errors"
	"strings"
	"testing"
)

func TestRenderZeroOptionsIsShipped(t *testing.T) {
	got, err := RenderConfig(RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got != MosquittoConf() {
		t.Fatal("RenderConfig with zero options differs from the shipped file")
	}
}

// Rendering for a test changes exactly the placeholder lines and keeps every
// other line, security settings included, byte for byte.
func TestRenderChangesOnlyPlaceholderLines(t *testing.T) {
	o := RenderOptions{
		ConfigDir: "/tmp/x/config", CertDir: "/tmp/x/certs", DataDir: "/tmp/x/data",
		PasswordPort: 40001, TLSPort: 40002, TLSHost: "127.0.0.1", User: "root",
	}
	got, err := RenderConfig(o)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"listener 8883":                          "listener 40002 127.0.0.1",
		"listener 1883 127.0.0.1":                "listener 40001 127.0.0.1",
		"password_file /mosquitto/config/passwd": "password_file /tmp/x/config/passwd",
		"acl_file /mosquitto/config/acl":         "acl_file /tmp/x/config/acl",
		"cafile /mosquitto/certs/ca.crt":         "cafile /tmp/x/certs/ca.crt",
		"certfile /mosquitto/certs/server.crt":   "certfile /tmp/x/certs/server.crt",
		"keyfile /mosquitto/certs/server.key":    "keyfile /tmp/x/certs/server.key",
		"crlfile /mosquitto/certs/crl.pem":       "crlfile /tmp/x/certs/crl.pem",
		"persistence_location /mosquitto/data/":  "persistence_location /tmp/x/data/",
	}
	shipped := strings.Split(MosquittoConf(), "\n")
	rendered := strings.Split(got, "\n")
	if len(rendered) < len(shipped) {
		t.Fatalf("rendered file has %d lines, shipped %d", len(rendered), len(shipped))
	}
	for i, line := range shipped {
		w, replaced := want[line]
		if !replaced {
			w = line
		}
		if rendered[i] != w {
			t.Errorf("line %d: got %q, want %q", i+1, rendered[i], w)
		}
		delete(want, line)
	}
	for line := range want {
		t.Errorf("shipped file lacks %q", line)
	}
	extra := strings.Join(rendered[len(shipped):], "\n")
	if !strings.Contains(extra, "\nuser root\n") || strings.Count(extra, "\n") != 2 {
		t.Errorf("appended text = %q, want a comment and \"user root\"", extra)
	}
}

// The shipped security settings, stated once more so that a change to them
// is a deliberate edit of this test as well.
func TestShippedSecuritySettings(t *testing.T) {
	must := []string{
		"per_listener_settings false",
		"allow_anonymous false",
		"password_file /mosquitto/config/passwd",
		"acl_file /mosquitto/config/acl",
		"check_retain_source true",
		"persistence true",
		"autosave_interval 10",
		"message_size_limit 16384",
		"max_packet_size 16640",
		"max_queued_messages 10000000",
		"retain_available true",
		"sys_interval 10",
		"require_certificate true",
		"use_identity_as_username true",
		"tls_version tlsv1.2",
		"crlfile /mosquitto/certs/crl.pem",
	}
	lines := directives(MosquittoConf())
	for _, m := range must {
		if lines[m] != 1 {
			t.Errorf("mosquitto.conf: %q appears %d times, want once", m, lines[m])
		}
	}
	// Client ids bound to usernames on both listeners (it is a listener
	// option): no account takes over another account's session.
	if n := lines["use_username_as_clientid true"]; n != 2 {
		t.Errorf("mosquitto.conf: use_username_as_clientid true appears %d times, want once per listener", n)
	}
	for l := range lines {
		for _, bad := range []string{"allow_anonymous true", "use_username_as_clientid false", "clientid_prefixes", "acl_file ", "password_file ", "max_queued_messages "} {
			if strings.HasPrefix(l, bad) && !contains(must, l) {
				t.Errorf("mosquitto.conf: unexpected %q", l)
			}
		}
	}
}

func TestShippedACLShape(t *testing.T) {
	lines := directives(ACL())
	// No rule may come before the first "user" line: such rules would apply
	// to anonymous clients.
	for _, l := range strings.Split(ACL(), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if !strings.HasPrefix(l, "user ") {
			t.Errorf("acl: rule %q before the first user line applies to anonymous clients", l)
		}
		break
	}
	for l := range lines {
		if strings.Contains(l, "readwrite") || strings.HasPrefix(l, "topic ") && !strings.HasPrefix(l, "topic read ") &&
			!strings.HasPrefix(l, "topic write ") && !strings.HasPrefix(l, "topic deny ") {
			t.Errorf("acl: %q grants both directions or has no explicit access", l)
		}
		if strings.HasPrefix(l, "pattern write ") && !strings.HasSuffix(l, "/%u") {
			t.Errorf("acl: device write rule %q is not confined to the device's own topic", l)
		}
	}
	for _, name := range []string{IssuerAccount, MonitorAccount} {
		if lines["user "+name] != 1 {
			t.Errorf("acl: no section for %s", name)
		}
	}
}

func TestRenderRejectsBadOptions(t *testing.T) {
	bad := []RenderOptions{
		{ConfigDir: "relative/dir"},
		{DataDir: "/with space"},
		{CertDir: "/new\nline"},
		{CertDir: "/x#comment"},
		{PasswordPort: 70000},
		{PasswordPort: 4000, TLSPort: 4000},
		{TLSHost: "0.0.0.0 1883"},
		{User: "root\nallow_anonymous true"},
	}
	for _, o := range bad {
		if _, err := RenderConfig(o); !errors.Is(err, ErrRender) {
			t.Errorf("RenderConfig(%+v) err = %v, want ErrRender", o, err)
		}
	}
}

func directives(text string) map[string]int {
	out := map[string]int{}
	for _, l := range strings.Split(text, "\n") {
		l = strings.Join(strings.Fields(l), " ")
		if l != "" && !strings.HasPrefix(l, "#") {
			out[l]++
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// RenderACL adds each further instance with the first instance's rules under
// its own name, and a deny-all section per revoked account.
func TestRenderACL(t *testing.T) {
	same, err := RenderACL(ACLOptions{Issuers: 1, Monitors: 1})
	if err != nil || same != ACL() {
		t.Fatalf("RenderACL(1, 1) = %v, differs from the shipped acl: %v", err, same != ACL())
	}
	got, err := RenderACL(ACLOptions{Issuers: 3, Monitors: 2, Revoked: []string{"dev-9"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got, ACL()) {
		t.Fatal("rendered acl does not start with the shipped acl")
	}
	lines := directives(got)
	for _, want := range []string{
		"user ekem-issuer-2", "user ekem-issuer-3", "user ekem-monitor-2",
		"topic deny ekem/v1/reg/ekem-issuer-3", "topic deny ekem/v1/status/ekem-monitor-2",
		"user dev-9", "topic deny #", "topic deny $SYS/#",
	} {
		if lines[want] == 0 {
			t.Errorf("rendered acl lacks %q", want)
		}
	}
	if lines["user ekem-monitor-3"] != 0 || lines["user ekem-issuer-4"] != 0 {
		t.Error("rendered acl has more instances than asked for")
	}
	// Each instance gets exactly the first instance's grants.
	if lines["topic write ekem/v1/ticket/+"] != 3 || lines["topic read $SYS/#"] != 2 {
		t.Errorf("grants per instance: ticket writes %d (want 3), $SYS reads %d (want 2)",
			lines["topic write ekem/v1/ticket/+"], lines["topic read $SYS/#"])
	}
	if _, err := RenderACL(ACLOptions{Issuers: MaxInstances + 1}); !errors.Is(err, ErrRender) {
		t.Errorf("RenderACL(%d issuers) = %v, want ErrRender", MaxInstances+1, err)
	}
}

func TestServiceRole(t *testing.T) {
	for name, want := range map[string]string{
		"ekem-issuer": IssuerAccount, "ekem-issuer-2": IssuerAccount, "ekem-issuer-99": IssuerAccount,
		"ekem-monitor": MonitorAccount, "ekem-monitor-12": MonitorAccount,
		"ekem-issuer-1": "", "ekem-issuer-100": "", "ekem-issuer-02": "", "EKEM-ISSUER": "", "dev-1": "", "ekem-issuer2": "",
	} {
		if got := ServiceRole(name); got != want {
			t.Errorf("ServiceRole(%q) = %q, want %q", name, got, want)
		}
	}
}
