// Command ekemctl is the operator's tool: the quickstart demo, and (see
// its usage) fleet monitoring and benchmarks.
package main

import (
	"fmt"
	"io"
	"os"
)

const usage = `usage: ekemctl <command> [flags]

commands:
  demo     run an issuer and a fleet of devices end to end on an embedded broker
  bench    measure broker floor, issuer epoch, crypto, device and fleet rotation on Mosquitto
  fleet    fleet status: every device's epoch, lag and state, read-only (-json, -watch, -prometheus)

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
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "ekemctl: unknown command %q\n%s", args[0], usage)
	return 2
}
