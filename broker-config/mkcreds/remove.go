package main

import (
	"fmt"
	"io"

	"github.com/entropykem/entropykem/broker-config/creds"
)

const removeHelp = `usage: mkcreds remove -dir DIR ID...

Removes device accounts from DIR: their lines in DIR/passwd, accounts/ID.env
and certs/clients/ID.*. Then install the new password file on the broker
and reload it (SIGHUP): the device can no longer log in with its password.
A client certificate stays valid on the TLS listener until it is revoked
(a CRL in the broker's crlfile); removing its files does not revoke it.
To take a device off the broker, use "mkcreds revoke" instead: it removes
the password, lists the certificate in the CRL (it reads the serial from
certs/clients/ID.crt, so revoke before deleting that file) and denies the
account in the ACL.
Tell the issuer too: ekem-issuer revoke -store FILE ID.
`

// cmdRemove removes device accounts from a credentials directory.
func cmdRemove(args []string, stdout, _ io.Writer) error {
	fs := newFlagSet("remove", removeHelp, stdout)
	dir := fs.String("dir", "", "credentials directory made by mkcreds init (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	ids := fs.Args()
	switch {
	case *dir == "":
		return usageErr("-dir is required")
	case len(ids) == 0:
		return usageErr("no device to remove: name one or more ids")
	}
	for _, id := range ids {
		if err := creds.ValidateDeviceID(id); err != nil {
			return usageErr("%v", err)
		}
	}
	hadCert := map[string]bool{}
	for _, id := range ids {
		if c, _ := creds.ClientCertFiles(*dir, id); fileExists(c) {
			hadCert[id] = true
		}
	}
	if err := creds.RemoveDevices(*dir, ids); err != nil {
		return err
	}
	for _, id := range ids {
		fmt.Fprintf(stdout, "mkcreds: removed %s\n", id)
		if hadCert[id] {
			fmt.Fprintf(stdout, "warning: %s's client certificate stays valid on the TLS listener until it is revoked (crlfile); mkcreds revoke does both, and needs the certificate file to read its serial\n", id)
		}
	}
	fmt.Fprintf(stdout, "hint: install %s on the broker and reload it (SIGHUP); stop tickets with: ekem-issuer revoke -store FILE ID\n", creds.PasswordFile(*dir))
	return nil
}
