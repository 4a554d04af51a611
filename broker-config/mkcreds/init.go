package main

import (
	"io"
	"strings"

	"fmt"

	"github.com/entropykem/entropykem/broker-config/creds"
)

const initHelp = `usage: mkcreds init -out DIR [-devices N] [-prefix dev-] [-ids a,b,...] [-issuers N] [-monitors N] [-ca] [-hosts h1,h2] [-nats-nodes n1,n2,n3]
       mkcreds -out DIR ...     (the same)

Makes a fleet's credentials in DIR (created if missing), without
overwriting anything: the password file, the ACL (the shipped one with a
section per issuer and monitor instance), accounts/NAME.env for ekem-issuer,
ekem-monitor (and ekem-issuer-2 … with -issuers, ekem-monitor-2 … with
-monitors: the broker binds the client id to the username, so every
instance needs its own account) and every device, and with -ca a test CA,
its empty CRL, the broker's certificate for -hosts and a client
certificate per account. With -nats-nodes also DIR/nats/accounts.conf and
NODE.conf for each node of a NATS JetStream cluster (broker-config/nats;
device ids without '.').
`

// cmdInit makes a new credentials directory.
func cmdInit(args []string, stdout, _ io.Writer) error {
	fs := newFlagSet("init", initHelp, stdout)
	out := fs.String("out", "", "output directory (required)")
	listed := deviceFlags(fs, "make", "comma-separated device ids (in addition to -devices)")
	issuers := fs.Int("issuers", 1, "issuer instances, each with its own account: ekem-issuer, ekem-issuer-2, …")
	monitors := fs.Int("monitors", 1, "monitor instances, each with its own account: ekem-monitor, ekem-monitor-2, …")
	ca := fs.Bool("ca", false, "also make a test CA, a server certificate and client certificates")
	hosts := fs.String("hosts", strings.Join(creds.DefaultServerHosts, ","), "server certificate DNS names and IPs, with -ca")
	natsOpts := addNATSFlags(fs) // nats.go
	if err := parse(fs, args); err != nil {
		return err
	}
	devices, err := listed()
	switch {
	case err != nil:
		return err
	case *out == "":
		return usageErr("-out is required")
	case fs.NArg() != 0:
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	if err := natsOpts.check(devices); err != nil {
		return usageErr("%v", err)
	}
	set, err := creds.Generate(*out, creds.Options{Devices: devices, Issuers: *issuers, Monitors: *monitors, CA: *ca, ClientCerts: *ca, ServerHosts: splitList(*hosts)})
	if err != nil {
		return err
	}
	if err := natsOpts.write(*out, set, *ca, stdout); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "mkcreds: wrote %d accounts to %s\n", len(set.Accounts()), *out)
	fmt.Fprintf(stdout, "hint: install the broker's files with: mkcreds render-config -layout debian|docker -creds %s -install\n", *out)
	fmt.Fprintf(stdout, "hint: give each account its own %s/accounts/NAME.env (and certs/clients/NAME.*) only; keep certs/ca.key offline\n", *out)
	return nil
}
