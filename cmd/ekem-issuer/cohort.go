package main

import (
	"fmt"
	"io"
	"slices"

	"github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/wire"
)

const cohortHelp = `Usage: ekem-issuer cohort [-store FILE] [-admin-socket PATH] [-reason TEXT] ID COHORT
       ekem-issuer cohort [-store FILE] [-admin-socket PATH] [-reason TEXT] -leave ID

Makes device ID a member of cohort COHORT (a label: 1-64 printable ASCII
characters other than ';'), or, with -leave, of no cohort. From the next
epoch on, ID's tickets carry (or stop carrying) the cohort's group seed
(schema/PROTOCOL.md §7.7): every member derives the cohort's group key, which
needs the cohort secret the members share; the issuer cannot. Goes through
the running issuer's admin socket when one answers, else to the stopped
store; audited as "cohort" either way.
`

func init() { commandHelp["cohort"] = cohortHelp }

// cmdCohort sets or clears one device's cohort membership.
func cmdCohort(args []string, stdout io.Writer) error {
	leave := slices.Contains(args, "-leave") || slices.Contains(args, "--leave")
	args = slices.DeleteFunc(slices.Clone(args), func(a string) bool { return a == "-leave" || a == "--leave" })
	f, rest, err := parseAdmin("cohort", args, true, false)
	if err != nil {
		return err
	}
	var id, cohort string
	switch {
	case leave && len(rest) == 1:
		id = rest[0]
	case !leave && len(rest) == 2:
		id, cohort = rest[0], rest[1]
		if err := wire.ValidateLabel(cohort); err != nil {
			return fmt.Errorf("%w: cohort: %v", errUsage, err)
		}
	default:
		return fmt.Errorf("%w: cohort needs ID and COHORT, or -leave and ID", errUsage)
	}
	if err := wire.ValidateDeviceID(id); err != nil {
		return fmt.Errorf("%w: cohort: %v", errUsage, err)
	}
	a, done, err := openAdmin(f, true)
	if err != nil {
		return err
	}
	defer done()
	ca, ok := a.(issuer.CohortAdmin)
	if !ok {
		return fmt.Errorf("ekem-issuer: this admin does not manage cohorts")
	}
	if err := ca.SetCohort(id, cohort, issuer.Operator{Actor: issuer.LocalActor(), Reason: f.reason}); err != nil {
		return err
	}
	if cohort == "" {
		fmt.Fprintf(stdout, "%s: left its cohort (from the next epoch)\n", id)
	} else {
		fmt.Fprintf(stdout, "%s: member of cohort %s (from the next epoch)\n", id, cohort)
	}
	return nil
}

// cohortName shows a device's cohort, "-" for none.
func cohortName(c string) string {
	if c == "" {
		return "-"
	}
	return c
}
