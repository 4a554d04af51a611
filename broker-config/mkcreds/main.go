// Command mkcreds makes and maintains broker credentials for an entropykem
// fleet: a Mosquitto 2 password file, one account file per account and, with
// -ca, a test CA with a broker certificate and one client certificate per
// account (subject CN = account name, for use_identity_as_username). It
// also renders the shipped mosquitto.conf for any directory layout and
// installs it with the broker's files.
//
// Usage:
//
//	mkcreds [init] -out DIR [-devices N] [-prefix dev-] [-ids a,b] [-ca] [-hosts h1,h2]
//	mkcreds add -dir DIR [-devices N -prefix P] [-ids a,b]
//	mkcreds remove -dir DIR ID...
//	mkcreds render-config [-layout debian|docker] [flags]
//	mkcreds version
//
// One file per command (init.go, add.go, remove.go, render.go). The layout
// of DIR is described in package creds and broker-config/README.md.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/entropykem/entropykem/broker-config/creds"
	"github.com/entropykem/entropykem/internal/buildinfo"
)

const usage = `usage: mkcreds COMMAND [flags]

commands:
  init           make a fleet's credentials in a new directory (the default
                 when the first argument is a flag: "mkcreds -out DIR ...")
  add            add device accounts to an existing directory, reusing its CA
                 and password file
  remove         remove device accounts from a directory
  revoke         revoke accounts without restarting the broker: password,
                 client certificate (CRL) and ACL, then SIGHUP
  render-config  render the shipped mosquitto.conf for a directory layout,
                 port and user; with -install, install it with the broker's files
  version        print the version, commit, Go version and protocol version

A credentials directory holds:
  DIR/passwd               Mosquitto password file (ekem-issuer, ekem-monitor, devices)
  DIR/acl                  the shipped ACL with a section per issuer/monitor instance
                           (and a deny-all section per revoked account)
  DIR/accounts/NAME.env    EKEM_USERNAME=NAME and EKEM_PASSWORD=..., mode 0600: a
                           systemd EnvironmentFile, and accepted by every binary's
                           -password-file
  DIR/certs/...            with -ca: ca.crt, ca.key, crl.pem, server.crt, server.key,
                           clients/NAME.crt and clients/NAME.key (CN = NAME)

Run "mkcreds COMMAND -h" for a command's flags.

examples:
  mkcreds -out ./creds -devices 3 -ca            # dev-1, dev-2, dev-3 and a test CA
  mkcreds add -dir ./creds -ids dev-101          # one more device, same CA
  mkcreds remove -dir ./creds dev-2
  mkcreds revoke -dir ./creds -pidfile /run/mosquitto/mosquitto.pid dev-3
  mkcreds render-config -layout debian -creds ./creds -install
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks errors that exit with status 2 and a hint.
var errUsage = errors.New("usage")

func usageErr(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, a...)...)
}

// commands are mkcreds' commands; each parses its own flags.
var commands = map[string]func(args []string, stdout, stderr io.Writer) error{
	"init":          cmdInit,
	"add":           cmdAdd,
	"remove":        cmdRemove,
	"revoke":        cmdRevoke,
	"render-config": cmdRenderConfig,
	"version":       cmdVersion,
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	name, rest := args[0], args[1:]
	switch {
	case name == "-h" || name == "-help" || name == "--help" || name == "help":
		if len(rest) > 0 {
			return run([]string{rest[0], "-h"}, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return 0
	case name == "-version" || name == "--version":
		name = "version"
	case strings.HasPrefix(name, "-"):
		name, rest = "init", args // "mkcreds -out DIR ..." as before
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "mkcreds: unknown command %q (commands: init, add, remove, revoke, render-config, version)\nhint: run \"mkcreds -h\" for usage\n", name)
		return 2
	}
	err := cmd(rest, stdout, stderr)
	switch {
	case err == nil || errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "mkcreds %s: %s\nhint: run \"mkcreds %s -h\" for usage\n", name, strings.TrimPrefix(err.Error(), "usage: "), name)
		return 2
	default:
		fmt.Fprintf(stderr, "mkcreds %s: %v\n", name, err)
		if errors.Is(err, os.ErrExist) && name == "init" {
			fmt.Fprintln(stderr, "hint: choose an empty -out directory; mkcreds never overwrites credentials (mkcreds add adds devices to it)")
		}
		return 1
	}
}

// newFlagSet returns a flag set for command name whose -h prints help (to
// stdout) and whose errors are returned, not printed.
func newFlagSet(name, help string, stdout io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("mkcreds "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprint(stdout, help)
		fs.SetOutput(stdout)
		fmt.Fprintln(stdout, "\nflags:")
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	return fs
}

// parse parses args into fs; -h returns flag.ErrHelp after printing help.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageErr("%v", err)
	}
	return nil
}

func cmdVersion(args []string, stdout, _ io.Writer) error {
	fs := newFlagSet("version", "usage: mkcreds version\n\nPrints the version, the commit, the Go version and the protocol version.\n", stdout)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	fmt.Fprintln(stdout, buildinfo.Read().String("mkcreds"))
	return nil
}

// deviceFlags defines -devices, -prefix and -ids on fs (verb: what the
// command does with the accounts); after fs.Parse, the returned function
// lists the device ids they name (deviceIDs).
func deviceFlags(fs *flag.FlagSet, verb, idsHelp string) func() ([]string, error) {
	n := fs.Int("devices", 0, "number of device accounts to "+verb+", named PREFIX1..PREFIXN")
	prefix := fs.String("prefix", "dev-", "device id prefix for -devices")
	ids := fs.String("ids", "", idsHelp)
	return func() ([]string, error) { return deviceIDs(*n, *prefix, *ids) }
}

// deviceIDs lists PREFIX1..PREFIXn followed by the explicit ids, each checked
// by creds.ValidateDeviceID (which also refuses the reserved names).
func deviceIDs(n int, prefix, ids string) ([]string, error) {
	if n < 0 {
		return nil, usageErr("-devices %d is negative", n)
	}
	var out []string
	for i := 1; i <= n; i++ {
		out = append(out, fmt.Sprintf("%s%d", prefix, i))
	}
	out = append(out, splitList(ids)...)
	for _, id := range out {
		if err := creds.ValidateDeviceID(id); err != nil {
			return nil, usageErr("%v", err)
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
