package issuer

import (
	"crypto/rand"
	"fmt"

	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Cohort membership (schema/PROTOCOL.md §7.7). A cohort is a set of
// devices that share one cohort secret; the issuer's configuration, kept
// in each device's record, names the cohort a device is a member of. Each
// epoch the issuer draws a fresh group seed per cohort and seals it into
// the ticket of every member it issues to. It keeps no seed: it could not
// use one, since the group key also needs the cohort secret.
//
// Membership changes through the admin actions like any other operator
// action, audited ("cohort"), online through the running issuer's admin
// socket or on a stopped store. A change takes effect at the next epoch:
// a member removed (or revoked) derives no group key from then on.

// CohortAdmin sets device cohort membership. The running issuer
// (Issuer.Admin), a stopped store (StoreAdmin) and the admin socket's
// client implement it.
type CohortAdmin interface {
	// SetCohort makes device id a member of cohort, or of none if cohort
	// is empty. ErrUnknownDevice if the issuer has no record of id (it
	// registered or was enrolled).
	SetCohort(id, cohort string, op Operator) error
}

var _ CohortAdmin = StoreAdmin{}

// setCohort is the audited change, shared by both admins.
func setCohort(cohort string) func(*record) (string, error) {
	return func(r *record) (string, error) {
		before := r.Cohort
		r.Cohort = cohort
		return fmt.Sprintf("cohort %s -> %s", cohortName(before), cohortName(cohort)), nil
	}
}

func cohortName(c string) string {
	if c == "" {
		return "(none)"
	}
	return c
}

func checkCohort(cohort string) error {
	if cohort == "" {
		return nil
	}
	if err := wire.ValidateLabel(cohort); err != nil {
		return fmt.Errorf("issuer: cohort %q: %w", cohort, err)
	}
	return nil
}

// SetCohort changes a stopped store's cohort membership.
func (a StoreAdmin) SetCohort(id, cohort string, op Operator) error {
	if err := checkCohort(cohort); err != nil {
		return err
	}
	return applyAdmin(a.Store, a.now(), "cohort", id, op, setCohort(cohort))
}

// SetCohort changes device id's cohort membership from the next epoch on.
func (a OnlineAdmin) SetCohort(id, cohort string, op Operator) error {
	if err := checkCohort(cohort); err != nil {
		return err
	}
	a.i.mu.Lock()
	err := applyAdmin(a.i.store, a.i.cfg.Now(), "cohort", id, op, setCohort(cohort))
	a.i.mu.Unlock()
	if err != nil {
		return err
	}
	a.i.log.Warn("operator changed cohort membership", "device", id, "cohort", cohortName(cohort), "actor", op.Actor, "reason", clip(op.Reason))
	return nil
}

// groupSeeds draws a fresh group seed for every cohort that devs name.
func groupSeeds(cohorts map[string]bool) (map[string][]byte, error) {
	seeds := make(map[string][]byte, len(cohorts))
	for c := range cohorts {
		g := make([]byte, keyschedule.GroupSeedSize)
		if _, err := rand.Read(g); err != nil {
			return nil, fmt.Errorf("issuer: group seed: %w", err)
		}
		seeds[c] = g
	}
	return seeds, nil
}
