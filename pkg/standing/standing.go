// Package standing is the one vocabulary for a device's standing in the
// fleet (DESIGN.md "Device lifecycle"): the issuer's metrics
// (ekem_devices{standing=...}) and device listings, the read-only monitor
// (ekemctl fleet status, its -json output and metrics) and the README all
// use these words, with these meanings. Each observer judges from what it
// sees (the issuer from its store, the monitor from the broker), so two
// observers may briefly disagree, never in what a word means.
//
// A device's own report on the wire (wire.State: ok, gap, rejected,
// equivocation, stale) is what it says about one ticket; a standing is what
// an observer concludes about the device.
package standing

// Standing is a device's standing, one of the constants below.
type Standing string

// The standings, from most to least severe (All). Every device is in
// exactly one at a time.
const (
	// Revoked: an operator stopped its tickets (its retained ticket is
	// cleared). It gets no tickets until released or reset.
	Revoked Standing = "revoked"
	// Quarantined: two different Status messages with one seq were seen
	// (a clone, schema/PROTOCOL.md §10), or the issuer withholds its
	// tickets for that reason. It gets no tickets until an operator acts.
	Quarantined Standing = "quarantined"
	// Equivocation: the device reports two different tickets for one
	// epoch (an alarm about the issuer or the broker).
	Equivocation Standing = "equivocation"
	// AwaitingApproval: the device re-enrolled with a new key (PROTOCOL.md
	// §7.6) and the issuer holds it until an operator approves it.
	AwaitingApproval Standing = "awaiting_approval"
	// Rejected: the device reports that it rejects the tickets it gets,
	// with a reason (for example wrong_device_key); it repeats the report
	// at most once per epoch while the rejection persists.
	Rejected Standing = "rejected"
	// Stale: its latest ticket expired (issued_at + ttl_s is past) and no
	// newer one was accepted: the device holds no fresh key and refuses
	// to hand out keys.
	Stale Standing = "stale"
	// Lagging: on an earlier epoch than the latest, with no problem
	// reported and its latest ticket not expired (offline, slow, or the
	// latest epoch is still arriving).
	Lagging Standing = "lagging"
	// Current: it accepted (and, at the issuer, confirmed) the latest
	// epoch's ticket, which has not expired.
	Current Standing = "current"
	// Pending: known, but no ticket accepted yet (it registered after the
	// last epoch, or no epoch was issued yet).
	Pending Standing = "pending"
)

// All lists every standing, most severe first.
var All = []Standing{Revoked, Quarantined, Equivocation, AwaitingApproval, Rejected, Stale, Lagging, Current, Pending}

// Strings returns All as strings (metric label values, table columns).
func Strings() []string {
	out := make([]string, len(All))
	for i, s := range All {
		out[i] = string(s)
	}
	return out
}

// Severity orders standings: lower is more severe; an unknown word sorts
// last.
func (s Standing) Severity() int {
	for i, x := range All {
		if x == s {
			return i
		}
	}
	return len(All)
}

// Valid reports whether s is one of All.
func (s Standing) Valid() bool { return s.Severity() < len(All) }
