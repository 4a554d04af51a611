package main

import (
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestMain makes this test binary the ekem-issuer command of the scripts in
// testdata/script (testscript re-executes it).
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){"ekem-issuer": main})
}

// TestScripts runs the CLI scripts: version, help, unknown commands, the
// flag vocabulary and its deprecated aliases, account files as password
// files.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{Dir: "testdata/script"})
}
