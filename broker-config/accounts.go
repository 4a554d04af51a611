package brokerconfig

import (
	"fmt"
	"strconv"
	"strings"
)

// Service roles. Every issuer instance and every monitor instance has its
// own broker account (DESIGN.md "Identity on the broker"): with
// use_username_as_clientid the account is also the MQTT client id, so two
// instances sharing one account would take each other's session over.
//
// The first instance of a role is named by the role's account name
// (ekem-issuer, ekem-monitor); instance n ≥ 2 is "<role>-n", for example
// ekem-issuer-2 or ekem-monitor-3.
const (
	// MaxInstances bounds the instances per role that RenderACL and mkcreds
	// make.
	MaxInstances = 99
)

// InstanceName returns the account name of instance n (1-based) of a role
// whose first account is base (IssuerAccount or MonitorAccount).
func InstanceName(base string, n int) string {
	if n <= 1 {
		return base
	}
	return base + "-" + strconv.Itoa(n)
}

// ServiceRole reports which service role name belongs to: IssuerAccount or
// MonitorAccount for the role's first account or one of its instances
// "<role>-2" … "<role>-99" (exact spelling, lowercase, no leading zero),
// and "" for any other name.
func ServiceRole(name string) string {
	for _, base := range []string{IssuerAccount, MonitorAccount} {
		if name == base {
			return base
		}
		rest, ok := strings.CutPrefix(name, base+"-")
		if !ok || rest == "" || rest[0] == '0' || len(rest) > 2 {
			continue
		}
		n, err := strconv.Atoi(rest)
		if err == nil && n >= 2 && n <= MaxInstances {
			return base
		}
	}
	return ""
}

// IsReservedName reports whether name is kept from devices: any name that
// starts, in any letter case, with "ekem-issuer" or "ekem-monitor". That
// covers every service instance and every spelling a CA or a log reader
// could confuse with one.
func IsReservedName(name string) bool {
	l := strings.ToLower(name)
	return strings.HasPrefix(l, IssuerAccount) || strings.HasPrefix(l, MonitorAccount)
}

// ACLOptions says what RenderACL adds to the shipped ACL.
type ACLOptions struct {
	// Issuers and Monitors are the numbers of instances of each role (0 and
	// 1 both mean the shipped first instance only). Instances 2…n get the
	// same rules as the first, under their own names.
	Issuers, Monitors int
	// Revoked accounts are denied every topic: "mkcreds revoke" adds them so
	// that a connection open at the moment of revocation (which a CRL
	// reload does not close) can neither read nor write after the broker's
	// reload.
	Revoked []string
}

// RenderACL returns the shipped ACL followed by a section for every issuer
// and monitor instance after the first and a deny-all section for every
// revoked account. RenderACL(ACLOptions{}) is the shipped file.
func RenderACL(o ACLOptions) (string, error) {
	if o.Issuers > MaxInstances || o.Monitors > MaxInstances || o.Issuers < 0 || o.Monitors < 0 {
		return "", fmt.Errorf("%w: instances must be 0 to %d", ErrRender, MaxInstances)
	}
	var b strings.Builder
	b.WriteString(aclFile)
	for _, role := range []struct {
		base string
		n    int
	}{{IssuerAccount, o.Issuers}, {MonitorAccount, o.Monitors}} {
		if role.n < 2 {
			continue
		}
		rules, err := sectionOf(aclFile, role.base)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "\n# --- %s instances 2 to %d (rendered: the rules of %s) ---\n", role.base, role.n, role.base)
		for k := 2; k <= role.n; k++ {
			name := InstanceName(role.base, k)
			b.WriteString("user " + name + "\n")
			for _, r := range rules {
				// The deny rules name the account's own reg and status topics.
				b.WriteString(strings.ReplaceAll(r, "/"+role.base, "/"+name) + "\n")
			}
		}
	}
	if len(o.Revoked) > 0 {
		b.WriteString("\n")
		for _, name := range o.Revoked {
			b.WriteString(RevokedSection(name))
		}
	}
	return b.String(), nil
}

// RevokedSection is the ACL section that denies name every topic, $SYS
// included ('#' does not match topics starting with '$'). Deny rules are
// checked before any grant and before the patterns, so it overrides every
// other rule for name, wherever it stands in the file.
func RevokedSection(name string) string {
	return "# revoked\nuser " + name + "\ntopic deny #\ntopic deny $SYS/#\n"
}

// sectionOf returns the rule lines of the "user <name>" section of acl.
func sectionOf(acl, name string) ([]string, error) {
	var rules []string
	in := false
	for _, line := range strings.Split(acl, "\n") {
		l := strings.TrimSpace(line)
		switch {
		case l == "user "+name:
			in = true
		case strings.HasPrefix(l, "user ") || strings.HasPrefix(l, "pattern "):
			in = false
		case in && strings.HasPrefix(l, "topic "):
			rules = append(rules, l)
		}
	}
	if len(rules) == 0 {
		return nil, fmt.Errorf("%w: shipped acl has no rules for %s", ErrRender, name)
	}
	return rules, nil
}
