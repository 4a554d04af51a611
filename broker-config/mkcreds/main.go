// Command mkcreds makes broker credentials for an entropykem fleet: a
// Mosquitto 2 password file, one credentials file per account and, with -ca,
// a test CA with a broker certificate and one client certificate per account
// (subject CN = account name, for use_identity_as_username).
//
// Usage:
//
//	go run ./broker-config/mkcreds -out DIR -devices N [-prefix dev-] [-ca] [-hosts localhost,127.0.0.1]
//	go run ./broker-config/mkcreds -out DIR -ids sensor-a,sensor-b
//
// The layout of DIR is described in package creds and broker-config/README.md.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/entropykem/entropykem/broker-config/creds"
)

const usage = `usage: mkcreds -out DIR [-devices N] [-prefix dev-] [-ids a,b,...] [-ca] [-hosts h1,h2]

Writes, without overwriting anything:
  DIR/passwd               Mosquitto password file (ekem-issuer, ekem-monitor, devices)
  DIR/accounts/NAME.env    EKEM_MQTT_USERNAME / EKEM_MQTT_PASSWORD, mode 0600
  DIR/certs/...            with -ca: ca.crt, ca.key, server.crt, server.key,
                           clients/NAME.crt and clients/NAME.key (CN = NAME)

Examples:
  mkcreds -out ./creds -devices 3                 # dev-1, dev-2, dev-3
  mkcreds -out ./creds -ids boiler-7,meter.12 -ca
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mkcreds", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	out := fs.String("out", "", "output directory")
	n := fs.Int("devices", 0, "number of device accounts to make, named PREFIX1..PREFIXN")
	prefix := fs.String("prefix", "dev-", "device id prefix for -devices")
	ids := fs.String("ids", "", "comma-separated device ids (in addition to -devices)")
	ca := fs.Bool("ca", false, "also make a test CA, a server certificate and client certificates")
	hosts := fs.String("hosts", strings.Join(creds.DefaultServerHosts, ","), "server certificate DNS names and IPs, with -ca")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	devices, err := deviceIDs(*n, *prefix, *ids)
	if err == nil && *out == "" {
		err = errors.New("-out is required")
	}
	if err == nil && fs.NArg() != 0 {
		err = fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err != nil {
		fmt.Fprintf(stderr, "mkcreds: %v\nhint: run mkcreds -h for usage\n", err)
		return 2
	}
	set, err := creds.Generate(*out, creds.Options{Devices: devices, CA: *ca, ClientCerts: *ca, ServerHosts: splitList(*hosts)})
	if err != nil {
		fmt.Fprintf(stderr, "mkcreds: %v\n", err)
		if errors.Is(err, os.ErrExist) {
			fmt.Fprintln(stderr, "hint: choose an empty -out directory; mkcreds never overwrites credentials")
		}
		return 1
	}
	fmt.Fprintf(stdout, "mkcreds: wrote %d accounts to %s\n", len(set.Accounts()), *out)
	fmt.Fprintf(stdout, "hint: install %s as /mosquitto/config/passwd (owned by the mosquitto user, mode 0600)\n", creds.PasswordFile(*out))
	if *ca {
		fmt.Fprintf(stdout, "hint: install ca.crt, server.crt and server.key from %s into /mosquitto/certs/; keep ca.key offline\n", creds.CertDir(*out))
	}
	return 0
}

// deviceIDs lists PREFIX1..PREFIXn followed by the explicit ids, each checked
// by creds.ValidateDeviceID (which also refuses the reserved names).
func deviceIDs(n int, prefix, ids string) ([]string, error) {
	if n < 0 {
		return nil, fmt.Errorf("-devices %d is negative", n)
	}
	var out []string
	for i := 1; i <= n; i++ {
		out = append(out, fmt.Sprintf("%s%d", prefix, i))
	}
	out = append(out, splitList(ids)...)
	for _, id := range out {
		if err := creds.ValidateDeviceID(id); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
