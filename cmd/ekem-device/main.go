// Command ekem-device runs entropykem devices: one agent (run), a fleet of
// simulated agents in one process (fleet), or hands out the next message
// key of a device from its state directory (next-key). See the usage text
// (ekem-device -h) for flags, environment variables and examples.
package main

import "os"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }
