// Command ekemctl is the operator's tool: the quickstart demo, and (see
// its usage) fleet monitoring and benchmarks.
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/entropykem/entropykem/internal/buildinfo"
)

const usage = `usage: ekemctl <command> [flags]

commands:
  demo     run an issuer and a fleet of devices end to end on an embedded broker
  bench    measure broker floor, issuer epoch, crypto, device and fleet rotation on Mosquitto
  fleet    fleet status: every device's epoch, lag and state, read-only (-json, -watch, -prometheus)
  conformance  check another implementation against schema/PROTOCOL.md over a real broker
           (conformance device: the kit plays the issuer; conformance issuer: it plays devices)
  version  print the version, commit, Go version and protocol version

Run 'ekemctl <command> -h' for a command's flags.

examples:
  ekemctl demo
  ekemctl demo -devices 20 -epochs 5 -period 1s
`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "demo":
		return demo(args[1:], stdout, stderr)
	case "bench":
		return runBench(args[1:], stdout, stderr)
	case "fleet":
		return fleet(args[1:], stdout, stderr)
	case "conformance":
		return conformanceCmd(args[1:], stdout, stderr)
	case "version", "-version", "--version":
		if len(args) > 1 {
			fmt.Fprintf(stderr, "ekemctl: version takes no arguments\n")
			return 2
		}
		fmt.Fprintln(stdout, buildinfo.Read().String("ekemctl"))
		return 0
	case "-h", "-help", "--help", "help":
		if len(args) > 1 {
			return run([]string{args[1], "-h"}, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "ekemctl: unknown command %q (commands: demo, bench, fleet, conformance, version, help)\nhint: run \"ekemctl -h\" for usage\n", args[0])
	return 2
}
