package main

import (
	"fmt"
	"io"
	"os"

	"github.com/entropykem/entropykem/issuer"
)

// cmdEnroll imports an enrollment list (issuer.ParseEnrollmentCSV): through
// the running issuer's admin socket when one answers, else into the stopped
// store. The import is one audited transaction: a list with any error
// imports nothing.
func cmdEnroll(args []string, stdout io.Writer) error {
	f, rest, err := parseAdmin("enroll", args, true, false)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return fmt.Errorf("%w: enroll needs exactly one CSV file (device_id[,key_sha256_hex] per line)", errUsage)
	}
	file, err := os.Open(rest[0])
	if err != nil {
		return err
	}
	entries, err := issuer.ParseEnrollmentCSV(file)
	file.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", rest[0], err)
	}
	a, done, err := openAdmin(f, true)
	if err != nil {
		return err
	}
	defer done()
	res, err := a.Enroll(entries, issuer.Operator{Actor: issuer.LocalActor(), Reason: f.reason})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "enrolled %d devices: %d new, %d already known, %d held registrations pinned\n",
		len(entries), res.Added, res.Updated, res.Pinned)
	return nil
}
