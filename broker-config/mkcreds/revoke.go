package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/entropykem/entropykem/broker-config/creds"
)

const revokeUsage = `usage: mkcreds revoke -dir DIR [-hup PID | -pidfile FILE] NAME...

Revokes broker accounts in a credentials directory made by mkcreds, without
restarting the broker:
  DIR/passwd           NAME's line is removed (its password no longer logs in)
  DIR/certs/crl.pem    NAME's client certificate serial is added (needs DIR/certs/ca.key)
  DIR/acl              a section denying NAME every topic is appended
Then the broker must reload: -hup PID (or -pidfile FILE) sends it SIGHUP.
Mosquitto 2.0 re-reads the password file, the ACL and the CRL on SIGHUP: it
disconnects NAME's password connection at once, refuses NAME's certificate
at its next CONNECT, and an open certificate connection reads and writes
nothing from then on.

Examples:
  mkcreds revoke -dir /etc/ekem/creds -pidfile /run/mosquitto/mosquitto.pid dev-17
  mkcreds revoke -dir ./creds dev-3 && docker compose kill -s HUP mosquitto
`

// cmdRevoke is "mkcreds revoke".
func cmdRevoke(args []string, stdout, _ io.Writer) error {
	fs := newFlagSet("revoke", revokeUsage, stdout)
	dir := fs.String("dir", "", "credentials directory made by mkcreds (its passwd, acl and certs/ are what the broker reads)")
	hup := fs.Int("hup", 0, "send SIGHUP to this broker process id afterwards")
	pidfile := fs.String("pidfile", "", "send SIGHUP to the process id in this file afterwards (mosquitto's pid_file)")
	if err := parse(fs, args); err != nil {
		return err
	}
	switch {
	case *dir == "":
		return usageErr("-dir is required")
	case fs.NArg() == 0:
		return usageErr("name the account(s) to revoke")
	case *hup != 0 && *pidfile != "":
		return usageErr("give -hup or -pidfile, not both")
	case *hup < 0:
		return usageErr("-hup %d is not a process id", *hup)
	}
	for _, name := range fs.Args() {
		r, err := creds.Revoke(*dir, name)
		if err != nil {
			if errors.Is(err, creds.ErrUnknownAccount) {
				return fmt.Errorf("%s: %w\nhint: check the name and -dir; nothing was changed for this account", name, err)
			}
			return fmt.Errorf("%s: %w", name, err)
		}
		fmt.Fprintf(stdout, "mkcreds revoke: %s: %s\n", name, describe(r))
	}
	pid := *hup
	if *pidfile != "" {
		var err error
		if pid, err = readPID(*pidfile); err != nil {
			return fmt.Errorf("%w\nhint: the files are updated; send the broker SIGHUP yourself", err)
		}
	}
	if pid == 0 {
		fmt.Fprintln(stdout, "hint: send the broker SIGHUP now (kill -HUP <pid>, or docker compose kill -s HUP mosquitto); until it reloads, the account still works")
		return nil
	}
	p, err := os.FindProcess(pid)
	if err == nil {
		err = p.Signal(syscall.SIGHUP)
	}
	if err != nil {
		return fmt.Errorf("SIGHUP to %d: %w\nhint: the files are updated; send the broker SIGHUP yourself", pid, err)
	}
	fmt.Fprintf(stdout, "mkcreds revoke: sent SIGHUP to broker process %d\n", pid)
	return nil
}

func describe(r creds.Revocation) string {
	if !r.Changed() {
		return "already revoked (nothing changed)"
	}
	var parts []string
	if r.Password {
		parts = append(parts, "password removed")
	}
	if r.Certificate {
		parts = append(parts, "certificate serial "+r.Serial.Text(16)+" added to the CRL")
	}
	if r.ACL {
		parts = append(parts, "denied every topic in the ACL")
	}
	return strings.Join(parts, ", ")
}

func readPID(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s does not hold a process id", path)
	}
	return pid, nil
}
