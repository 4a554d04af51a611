package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/entropykem/entropykem/pkg/signature"
)

// TestMain makes this test binary the ekem-device command of the scripts in
// testdata/script (testscript re-executes it).
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){"ekem-device": main})
}

// TestScripts runs the CLI scripts: version, help, unknown commands, the
// flag vocabulary and its deprecated aliases, no password in argv, account
// files as password files.
func TestScripts(t *testing.T) {
	key, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		t.Fatal(err)
	}
	pub := signature.MarshalPublicKeyPEM(key.Public())
	testscript.Run(t, testscript.Params{Dir: "testdata/script", Setup: func(e *testscript.Env) error {
		// A real pinned issuer key, so the checks after it are reached.
		return os.WriteFile(filepath.Join(e.WorkDir, "issuer.pub"), pub, 0o644)
	}})
}
