// Command ekem-issuer runs entropykem's issuer: it pins device keys, verifies
// device Status messages and issues a signed epoch of tickets every period
// (schema/PROTOCOL.md §6, §10). Run "ekem-issuer help" for usage.
package main

import (
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}
