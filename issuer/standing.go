// Standings: the one word per device that the issuer exports and the
// operator commands show, judged from the issuer's record alone
// (pkg/standing is the vocabulary).

package issuer

import (
	"time"

	"github.com/entropykem/entropykem/pkg/standing"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Fleet standings exported as ekem_devices{standing=...}: the words of
// pkg/standing (one vocabulary with the monitor and the docs). Every device
// in the store is in exactly one, judged from the issuer's record at scrape
// time (t = Config.Now()) and only from authenticated evidence, so a
// device's own unauthenticated reports (rejected, equivocation) are the
// monitor's to show, never the issuer's:
//
//   - revoked: an operator revoked it (Admin.Revoke); it gets no tickets.
//   - quarantined: two different Status messages with one seq were seen
//     (schema/PROTOCOL.md §10, a clone); it gets no tickets until an
//     operator acts (Reset, Release).
//   - awaiting_approval: a re-enrollment (schema/PROTOCOL.md §7.6) of the
//     device is held for an operator's Approve.
//   - pending: active with a pinned key, but no ticket yet (it registered
//     after the last epoch, or an operator reset it).
//   - stale: active, and its latest ticket has expired (t ≥ issued_at +
//     ttl_s of that ticket), confirmed or not: the device holds no fresh
//     key (it refuses to hand out keys, device.ErrStale). Either the
//     issuer stopped issuing or the device missed everything since.
//   - current: active, it confirmed its latest ticket in a verified Status
//     (ConfirmedEpoch = LastEpoch) and that ticket has not expired. Active
//     devices get a ticket every epoch, so this is "confirmed the latest
//     epoch".
//   - lagging: active, its latest ticket has not expired, but it has not
//     confirmed it: it confirmed an earlier epoch or none (offline, slow,
//     or rejecting tickets). Right after an epoch is issued every device is
//     lagging until its Status arrives.
const (
	StandingCurrent          = string(standing.Current)
	StandingLagging          = string(standing.Lagging)
	StandingStale            = string(standing.Stale)
	StandingPending          = string(standing.Pending)
	StandingAwaitingApproval = string(standing.AwaitingApproval)
	StandingQuarantined      = string(standing.Quarantined)
	StandingRevoked          = string(standing.Revoked)
)

// JudgedStandings returns every standing the issuer judges, in the order
// they are exported.
func JudgedStandings() []string {
	return []string{StandingCurrent, StandingLagging, StandingStale, StandingPending, StandingAwaitingApproval, StandingQuarantined, StandingRevoked}
}

// Standings counts the devices in the store by standing at time now (see
// StandingCurrent and the others). It reads every record once: O(devices).
func (i *Issuer) Standings(now time.Time) (map[string]int, error) { return i.standings(now) }

func (i *Issuer) standings(now time.Time) (map[string]int, error) {
	out := make(map[string]int, 7)
	for _, s := range JudgedStandings() {
		out[s] = 0
	}
	j := judge(now, i.awaitingApproval())
	err := i.store.View(func(tx ReadTx) error {
		return tx.Devices(func(r *record) error {
			out[j(r)]++
			return nil
		})
	})
	return out, err
}

// standingOf classifies one record at Unix time t; expiry caches each
// epoch's ticket expiry (0: its ticket did not decode, treated as expired).
func standingOf(r *record, t uint64, expiry map[uint64]uint64) string {
	switch {
	case r.State == stateRevoked:
		return StandingRevoked
	case r.State == stateQuarantined:
		return StandingQuarantined
	case r.Epoch == 0 || r.Ticket == nil:
		return StandingPending
	}
	exp, ok := expiry[r.Epoch]
	if !ok {
		if _, body, err := wire.ParseTicket(r.Ticket); err == nil {
			exp = body.IssuedAt + body.TTL
		}
		expiry[r.Epoch] = exp
	}
	switch {
	case t >= exp:
		return StandingStale
	case r.ConfirmedEpoch == r.Epoch:
		return StandingCurrent
	default:
		return StandingLagging
	}
}

// judge returns the standing of a record at now: awaiting_approval for
// an active device whose re-enrollment is held (awaiting), else standingOf.
// Every ticket of one epoch has the epoch's issued_at and ttl_s
// (IssueEpoch), so it decodes one ticket per epoch.
func judge(now time.Time, awaiting map[string]bool) func(*record) string {
	t, expiry := unixSeconds(now), map[uint64]uint64{}
	return func(r *record) string {
		if awaiting[r.ID] && r.State == stateActive {
			return StandingAwaitingApproval
		}
		return standingOf(r, t, expiry)
	}
}

// judge is judge at the issuer's clock, with its held re-enrollments.
func (i *Issuer) judge() func(*record) string { return judge(i.cfg.Now(), i.awaitingApproval()) }
