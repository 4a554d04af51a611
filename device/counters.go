package device

import "github.com/entropykem/entropykem/pkg/accept"

// counter is one of the agent's event counters: a value, so that a
// misspelt counter does not compile. Its String is its key in Counters.
type counter uint8

const (
	cAccepted counter = iota
	cDuplicate
	cStale
	cFailed
	cPublishFailed
	cNextKeyNotTaken
	cIssuerKeyLearned
	cIssuerKeyConflict
	cIssuerKeyRejected
	cIssuerKeyStoreFailed
	cStatusResent // run.go: onDuplicate
	cResubscribed // behind.go
	numCounters
)

func (c counter) String() string {
	return [numCounters]string{
		cAccepted: "accepted", cDuplicate: "duplicate", cStale: "stale", cFailed: "failed",
		cPublishFailed: "publish_failed", cNextKeyNotTaken: "next_key_not_taken",
		cIssuerKeyLearned: "issuer_key_learned", cIssuerKeyConflict: "issuer_key_conflict",
		cIssuerKeyRejected: "issuer_key_rejected", cIssuerKeyStoreFailed: "issuer_key_store_failed",
		cStatusResent: "status_resent", cResubscribed: "resubscribed",
	}[c]
}

// counters are the agent's counters; the agent guards them with a.mu.
type counters struct {
	plain    [numCounters]uint64
	rejected map[accept.Reason]uint64 // by the rejection's reason
}

// names renders the counters under the names Counters documents.
func (c *counters) names() map[string]uint64 {
	out := make(map[string]uint64, len(c.plain)+len(c.rejected))
	for k, v := range c.plain {
		if v > 0 {
			out[counter(k).String()] = v
		}
	}
	for r, v := range c.rejected {
		out["rejected:"+r.String()] = v
	}
	return out
}
