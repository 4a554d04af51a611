package brokerconfig

import (
	"fmt"
	"strings"
)

// Access is what a client asks of a topic: to read it (receive its
// messages, or subscribe) or to write it (publish).
type Access uint8

// Accesses, as in a Mosquitto ACL rule.
const (
	Read Access = 1 << iota
	Write
)

// ACLRules is an ACL file as Mosquitto 2.0 evaluates it (the header of
// broker-config/acl): for a client, first the rules under "user <name>"
// for its username, deny rules before all others and the rest in file
// order; then the "pattern" rules with %u replaced by the username, in the
// same order; the first rule whose topic matches decides (a deny rule
// denies, a rule that grants the access asked for grants it, any other is
// passed over); when none decides, access is denied. A topic that starts
// with '$' is matched only by rules that start with '$'.
//
// It is the one reading of the ACL: the embedded broker
// (internal/embedbroker) enforces the shipped file through it.
type ACLRules struct {
	users    map[string][]aclRule
	patterns []aclRule
}

type aclRule struct {
	access Access // 0: deny
	topic  string
}

// ParseACL reads an ACL file of the form broker-config/acl uses: "user
// NAME", "topic [read|write|readwrite|deny] TOPIC" and "pattern [...]
// TOPIC" lines, comments and blank lines. Anything else is an error, so
// that a rule this reading does not understand is never silently dropped.
func ParseACL(text string) (*ACLRules, error) {
	a := &ACLRules{users: make(map[string][]aclRule)}
	user, inUser := "", false
	for n, line := range strings.Split(text, "\n") {
		l := strings.TrimSpace(line)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		f := strings.Fields(l)
		switch {
		case f[0] == "user" && len(f) == 2:
			user, inUser = f[1], true
			if _, ok := a.users[user]; !ok {
				a.users[user] = nil
			}
			continue
		case (f[0] == "topic" || f[0] == "pattern") && (len(f) == 2 || len(f) == 3):
		default:
			return nil, fmt.Errorf("acl line %d: %q is not a user, topic or pattern line", n+1, l)
		}
		r := aclRule{access: Read | Write, topic: f[len(f)-1]}
		if len(f) == 3 {
			switch f[1] {
			case "read":
				r.access = Read
			case "write":
				r.access = Write
			case "readwrite":
			case "deny":
				r.access = 0
			default:
				return nil, fmt.Errorf("acl line %d: unknown access %q", n+1, f[1])
			}
		}
		switch {
		case f[0] == "pattern":
			a.patterns = addRule(a.patterns, r)
		case !inUser:
			return nil, fmt.Errorf("acl line %d: a topic rule before any user line", n+1)
		default:
			a.users[user] = addRule(a.users[user], r)
		}
	}
	return a, nil
}

// addRule appends r, or puts it after the deny rules already there if it
// is one (Mosquitto checks deny rules first).
func addRule(rules []aclRule, r aclRule) []aclRule {
	if r.access != 0 {
		return append(rules, r)
	}
	i := 0
	for i < len(rules) && rules[i].access == 0 {
		i++
	}
	return append(rules[:i], append([]aclRule{r}, rules[i:]...)...)
}

// Allows reports whether user may have access to topic. topic is a topic
// name, or a subscription filter: a filter is allowed when a granting
// rule covers every topic it matches and no deny rule does (the embedded
// broker refuses a SUBSCRIBE so; Mosquitto accepts every SUBSCRIBE and
// applies Allows to each message it would deliver).
func (a *ACLRules) Allows(user, topic string, access Access) bool {
	if d, ok := decide(a.users[user], topic, access); ok {
		return d
	}
	if strings.ContainsAny(user, "+#/") {
		return false // Mosquitto applies no pattern to such a name
	}
	for _, r := range a.patterns {
		r.topic = strings.ReplaceAll(r.topic, "%u", user)
		if d, ok := decide([]aclRule{r}, topic, access); ok {
			return d
		}
	}
	return false
}

// decide applies the first rule of rules that decides, if any.
func decide(rules []aclRule, topic string, access Access) (allowed, decided bool) {
	for _, r := range rules {
		if !Covers(r.topic, topic) {
			continue
		}
		if r.access == 0 {
			return false, true
		}
		if r.access&access == access {
			return true, true
		}
	}
	return false, false
}

// Covers reports whether every topic that filter f matches is matched by
// the MQTT filter rule ('+' one level, '#' the rest, the parent level
// included; a topic starting with '$' only by a rule starting with '$').
// For a topic name f it is MQTT matching.
func Covers(rule, f string) bool {
	if strings.HasPrefix(f, "$") != strings.HasPrefix(rule, "$") {
		return false
	}
	rl, fl := strings.Split(rule, "/"), strings.Split(f, "/")
	for i, r := range rl {
		if r == "#" {
			return true
		}
		if i == len(fl) {
			return false
		}
		switch {
		case fl[i] == "#":
			return false
		case r == "+":
		case r != fl[i] || fl[i] == "+":
			return false
		}
	}
	return len(fl) == len(rl)
}

// WithPrefix returns a copy of a whose rules under from (a topic prefix:
// "ekem/v1") are under to instead. Other rules are kept as they are.
func (a *ACLRules) WithPrefix(from, to string) *ACLRules {
	move := func(rules []aclRule) []aclRule {
		out := make([]aclRule, len(rules))
		for i, r := range rules {
			if rest, ok := strings.CutPrefix(r.topic, from+"/"); ok {
				r.topic = to + "/" + rest
			}
			out[i] = r
		}
		return out
	}
	b := &ACLRules{users: make(map[string][]aclRule, len(a.users)), patterns: move(a.patterns)}
	for u, rules := range a.users {
		b.users[u] = move(rules)
	}
	return b
}
