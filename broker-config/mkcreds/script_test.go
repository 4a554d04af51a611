package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestMain makes this test binary the mkcreds command of the scripts in
// testdata/script (testscript re-executes it).
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){"mkcreds": main})
}

// TestScripts runs the CLI scripts: version, usage, init, add, remove and
// render-config as an operator types them.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"hasprefix": cmdHasPrefix,
			"issuedby":  cmdIssuedBy,
		},
	})
}

// hasprefix FILE PREFIX-FILE: FILE starts with PREFIX-FILE's bytes.
func cmdHasPrefix(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: hasprefix FILE PREFIX-FILE")
	}
	f := []byte(ts.ReadFile(args[0]))
	p := []byte(ts.ReadFile(args[1]))
	if bytes.HasPrefix(f, p) == neg {
		ts.Fatalf("%s starts with %s: %v", args[0], args[1], !neg)
	}
}

// issuedby CA-CERT CERT: CERT verifies under CA-CERT as a client
// certificate.
func cmdIssuedBy(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: issuedby CA-CERT CERT")
	}
	parse := func(name string) *x509.Certificate {
		b, _ := pem.Decode([]byte(ts.ReadFile(name)))
		if b == nil {
			ts.Fatalf("%s: no PEM", name)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		ts.Check(err)
		return c
	}
	pool := x509.NewCertPool()
	pool.AddCert(parse(args[0]))
	_, err := parse(args[1]).Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if (err == nil) == neg {
		ts.Fatalf("%s issued by %s: %v", args[1], args[0], err)
	}
}
