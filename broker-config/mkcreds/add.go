package main

import (
	"fmt"
	"io"

	"github.com/entropykem/entropykem/broker-config/creds"
)

const addHelp = `usage: mkcreds add -dir DIR [-devices N -prefix P] [-ids a,b,...]

Adds device accounts to DIR, a directory made by "mkcreds init": a random
password each (a new line in DIR/passwd; every existing line is kept),
accounts/ID.env and, if DIR/certs/ca.key is there, a client certificate
from that CA. An id that already has an account is refused. Then install
the new password file on the broker (mkcreds render-config -install) and
reload it (SIGHUP).
`

// cmdAdd adds device accounts to an existing credentials directory.
func cmdAdd(args []string, stdout, _ io.Writer) error {
	fs := newFlagSet("add", addHelp, stdout)
	dir := fs.String("dir", "", "credentials directory made by mkcreds init (required)")
	listed := deviceFlags(fs, "add", "comma-separated device ids")
	if err := parse(fs, args); err != nil {
		return err
	}
	devices, err := listed()
	switch {
	case err != nil:
		return err
	case *dir == "":
		return usageErr("-dir is required")
	case fs.NArg() != 0:
		return usageErr("unexpected argument %q (device ids go in -ids)", fs.Arg(0))
	case len(devices) == 0:
		return usageErr("no device to add: give -ids or -devices")
	}
	added, err := creds.AddDevices(*dir, devices)
	if err != nil {
		return err
	}
	for _, a := range added {
		fmt.Fprintf(stdout, "mkcreds: added %s (%s)\n", a.Username, creds.AccountFile(*dir, a.Username))
	}
	fmt.Fprintf(stdout, "hint: install %s on the broker and reload it (SIGHUP), e.g. mkcreds render-config -layout debian -creds %s -install\n",
		creds.PasswordFile(*dir), *dir)
	return nil
}
