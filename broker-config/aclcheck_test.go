package brokerconfig

import "testing"

func TestCovers(t *testing.T) {
	for _, c := range []struct {
		rule, f string
		want    bool
	}{
		{"a/b", "a/b", true}, {"a/b", "a/c", false}, {"a/+", "a/b", true}, {"a/+", "a/+", true},
		{"a/+", "a/#", false}, {"a/+", "a", false}, {"a/+", "a/b/c", false}, {"a/#", "a", true},
		{"a/#", "a/b/c", true}, {"a/#", "a/+/c", true}, {"a/#", "a/#", true}, {"a/b", "a/+", false},
		{"#", "a/b", true}, {"#", "$SYS/x", false}, {"$SYS/#", "$SYS/x", true}, {"+/b", "$x/b", false},
		{"a/+/c", "a/b/c", true}, {"a/+/c", "a/b/d", false},
	} {
		if got := Covers(c.rule, c.f); got != c.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", c.rule, c.f, got, c.want)
		}
	}
}

// TestACLRulesOrder: Mosquitto's order: a user's deny rules first, then
// its rules in file order, then the patterns with %u replaced.
func TestACLRulesOrder(t *testing.T) {
	a, err := ParseACL(`# comment
user u
topic read x/#
topic deny x/secret
topic write y
pattern write p/%u
pattern read #
`)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		user, topic string
		access      Access
		want        bool
	}{
		{"u", "x/a", Read, true},
		{"u", "x/secret", Read, false}, // deny before the earlier grant
		{"u", "y", Write, true},        // user rule
		{"u", "y", Read, true},         // passed over, then the pattern "#"
		{"u", "p/u", Write, true},      // pattern with %u
		{"u", "p/v", Write, false},     // another account's
		{"v", "p/v", Write, true},      // an account without a section gets the patterns
		{"v", "x/secret", Read, true},  // u's deny is u's
		{"a+b", "p/a+b", Write, false}, // no pattern for a name with a wildcard
		{"u", "$SYS/x", Read, false},   // '#' does not match $ topics
	} {
		if got := a.Allows(c.user, c.topic, c.access); got != c.want {
			t.Errorf("Allows(%s, %s, %d) = %v, want %v", c.user, c.topic, c.access, got, c.want)
		}
	}
	for _, bad := range []string{"topic read x\n", "user u\ntopic maybe x\n", "user u\nauth x\n", "user\n"} {
		if _, err := ParseACL(bad); err == nil {
			t.Errorf("ParseACL(%q) accepted", bad)
		}
	}
	if _, err := ParseACL(ACL()); err != nil {
		t.Fatalf("shipped acl: %v", err)
	}
}

// TestCohortSectionRules: a cohort section lets each member read the
// cohort's topics and write its own, on top of its device rights; nobody
// else, the monitor included, reaches them.
func TestCohortSectionRules(t *testing.T) {
	sec, err := CohortSection("fleet-a", []string{"dev-1", "dev-2"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := ParseACL(ACL() + sec)
	if err != nil {
		t.Fatal(err)
	}
	app := CohortTopicRoot + "/fleet-a/"
	for _, c := range []struct {
		user, topic string
		access      Access
		want        bool
	}{
		{"dev-1", app + "+", Read, true},
		{"dev-1", app + "dev-2", Read, true},
		{"dev-1", app + "dev-1", Write, true},
		{"dev-1", app + "dev-2", Write, false},
		{"dev-1", "ekem/v1/root/3", Read, true}, // its pattern rights stay
		{"dev-3", app + "dev-1", Read, false},
		{"dev-3", app + "dev-3", Write, false},
		{MonitorAccount, app + "dev-1", Read, false},
		{MonitorAccount, "ekem/v1/status/dev-1", Read, true},
		{IssuerAccount, app + "dev-1", Read, false},
	} {
		if got := a.Allows(c.user, c.topic, c.access); got != c.want {
			t.Errorf("Allows(%s, %s, %d) = %v, want %v", c.user, c.topic, c.access, got, c.want)
		}
	}
}
