package brokerconfig

import (
	"fmt"
	"strings"
)

// CohortTopicRoot is where a cohort's application topics live: each member
// publishes on {CohortTopicRoot}/{cohort}/{device_id}, and the cohort's
// members read {CohortTopicRoot}/{cohort}/+ (the payloads are group
// envelopes, schema/PROTOCOL.md §7.8).
const CohortTopicRoot = "ekem/v1/app"

// CohortSection is the ACL section that keeps cohort's application topics
// to its members: every member may read every member's topic and write
// only its own. Nobody else has a rule for them (the monitor is denied
// them in the shipped file), so the broker refuses every other account.
// Membership is the issuer's configuration ("ekem-issuer cohort"): render
// the section again when it changes, and reload the broker.
func CohortSection(cohort string, members []string) (string, error) {
	if cohort == "" || strings.ContainsAny(cohort, "/+#; \t\n") {
		return "", fmt.Errorf("%w: cohort %q is not usable in a topic", ErrRender, cohort)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# --- cohort %s: application topics (rendered) ---\n", cohort)
	for _, m := range members {
		if m == "" || strings.ContainsAny(m, "/+#; \t\n") || IsReservedName(m) {
			return "", fmt.Errorf("%w: member %q", ErrRender, m)
		}
		fmt.Fprintf(&b, "user %s\ntopic read %s/%s/+\ntopic write %s/%s/%s\n", m, CohortTopicRoot, cohort, CohortTopicRoot, cohort, m)
	}
	return b.String(), nil
}
