package issuer

import (
	"sync"

	"github.com/entropykem/entropykem/pkg/wire"
)

// counter is one of the issuer's plain event counters: a value, so that a
// misspelt counter does not compile. Its String is its key in Counters.
type counter uint8

// The plain counters. Those with a metric of their own are exported by
// issuerCollector (metrics.go).
const (
	cRegistrationsPinned counter = iota
	cRegistrationsSame
	cRegistrationsRekeyed
	cRegistrationsReenrolled
	cStatusesVerified
	cStatusesDuplicate
	cStatusesOlder
	cStatusesGap // a verified Status of state gap
	cEquivocationReported
	cCloneDetected
	cStatusConflictUnauthenticated
	cLogLinesSuppressed
	cTicketsIssued
	cEpochs
	cIssueFailures
	cEpochsAbandoned
	cSigningKeyMissing
	cStoreFailures
	cStoreBehind
	cStoreBadKey
	cFencedStarts
	cRepublished
	cPublishRetries
	cPublishFailures
	cPublishFenced
	cNudged      // nudge.go
	cStatusPeeks // nudge.go
	cResubscribed
	numCounters
)

// String is the counter's key in Counters (unchanged since counters were
// kept by name).
func (c counter) String() string {
	return [numCounters]string{
		cRegistrationsPinned: "registrations_pinned", cRegistrationsSame: "registrations_same",
		cRegistrationsRekeyed: "registrations_rekeyed", cRegistrationsReenrolled: "registrations_reenrolled",
		cStatusesVerified: "statuses_verified", cStatusesDuplicate: "statuses_duplicate",
		cStatusesOlder: "statuses_older", cStatusesGap: "device_reported:gap",
		cEquivocationReported: "equivocation_reported", cCloneDetected: "clone_detected",
		cStatusConflictUnauthenticated: "status_conflict_unauthenticated", cLogLinesSuppressed: "log_lines_suppressed",
		cTicketsIssued: "tickets_issued", cEpochs: "epochs", cIssueFailures: "issue_failures", cEpochsAbandoned: "epochs_abandoned",
		cSigningKeyMissing: "signing_key_missing", cStoreFailures: "store_failures", cStoreBehind: "store_behind",
		cStoreBadKey: "store_bad_key", cFencedStarts: "fenced_starts", cRepublished: "republished",
		cPublishRetries: "publish_retries", cPublishFailures: "publish_failures", cPublishFenced: "publish_fenced",
		cNudged: "nudged", cStatusPeeks: "status_peeks", cResubscribed: "resubscribed",
	}[c]
}

// rejectKind is what a refused message was: ekem_rejects_total's kind.
type rejectKind uint8

const (
	rejectMessage rejectKind = iota // on an unexpected topic
	rejectRegistration
	rejectStatus
)

func (k rejectKind) String() string {
	return [...]string{rejectMessage: "message", rejectRegistration: "registration", rejectStatus: "status"}[k]
}

// counterPrefix is the kind's key prefix in Counters.
func (k rejectKind) counterPrefix() string {
	return [...]string{rejectMessage: "messages_rejected", rejectRegistration: "registrations_rejected", rejectStatus: "status_rejected"}[k]
}

// rejectKey counts refused messages by kind and the issuer's own reason.
type rejectKey struct {
	kind   rejectKind
	reason string
}

// reportKey counts the problem reports devices sent (rejected,
// equivocation, stale) by state and the name of the device's reason code.
type reportKey struct {
	state  wire.State
	reason string
}

// counters are the issuer's event counters. The zero value is ready.
type counters struct {
	mu      sync.Mutex
	plain   [numCounters]uint64
	rejects map[rejectKey]uint64
	reports map[reportKey]uint64
}

func (c *counters) add(k counter, n uint64) {
	c.mu.Lock()
	c.plain[k] += n
	c.mu.Unlock()
}

func (c *counters) reject(k rejectKind, reason string) {
	c.mu.Lock()
	if c.rejects == nil {
		c.rejects = make(map[rejectKey]uint64)
	}
	c.rejects[rejectKey{k, reason}]++
	c.mu.Unlock()
}

func (c *counters) report(state wire.State, reason string) {
	c.mu.Lock()
	if c.reports == nil {
		c.reports = make(map[reportKey]uint64)
	}
	c.reports[reportKey{state, reason}]++
	c.mu.Unlock()
}

// counterSnap is a copy of the counters, for Collect.
type counterSnap struct {
	plain   [numCounters]uint64
	rejects map[rejectKey]uint64
	reports map[reportKey]uint64
}

func (c *counters) snapshot() counterSnap {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := counterSnap{plain: c.plain, rejects: make(map[rejectKey]uint64, len(c.rejects)), reports: make(map[reportKey]uint64, len(c.reports))}
	for k, v := range c.rejects {
		s.rejects[k] = v
	}
	for k, v := range c.reports {
		s.reports[k] = v
	}
	return s
}

// names renders s under the names Counters documents: a plain counter
// once it moved, <kind prefix>:<reason> and device_reported:<state>:<reason>.
func (s counterSnap) names() map[string]uint64 {
	out := make(map[string]uint64, len(s.plain)+len(s.rejects)+len(s.reports))
	for k, v := range s.plain {
		if v > 0 {
			out[counter(k).String()] = v
		}
	}
	for k, v := range s.rejects {
		out[k.kind.counterPrefix()+":"+k.reason] = v
	}
	for k, v := range s.reports {
		out["device_reported:"+k.state.String()+":"+k.reason] = v
	}
	return out
}

// reset zeroes every counter.
func (c *counters) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.plain, c.rejects, c.reports = [numCounters]uint64{}, nil, nil
}
