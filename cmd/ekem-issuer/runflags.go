package main

import (
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/entropykem/entropykem/internal/cliflag"
	"github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/wire"
)

// runFlag is one setting of run (and recover), declared once: the flag
// (name, default, where it is stored), its placeholder and help in the
// usage, and through cliflag's table its environment variable.
type runFlag struct {
	name string // the flag and its key in cliflag's table
	arg  string // the value's placeholder in the usage; "" for a setting that is no flag
	help string // its usage; "\n" starts a continuation line
	bind func(fs *flag.FlagSet, name, help string)
}

func stringFlag(p *string, def string) func(*flag.FlagSet, string, string) {
	return func(fs *flag.FlagSet, name, help string) { fs.StringVar(p, name, def, help) }
}

func intFlag(p *int, def int) func(*flag.FlagSet, string, string) {
	return func(fs *flag.FlagSet, name, help string) { fs.IntVar(p, name, def, help) }
}

func durationFlag(p *time.Duration, def time.Duration) func(*flag.FlagSet, string, string) {
	return func(fs *flag.FlagSet, name, help string) { fs.DurationVar(p, name, def, help) }
}

// runFlagTable declares the settings of run in the order the usage lists
// them, bound to f.
func runFlagTable(f *runFlags) []runFlag {
	return []runFlag{
		{"broker", "URL", "tcp://host:1883 or ssl://host:8883 (required)", stringFlag(&f.broker, "")},
		{"username", "NAME", "broker account (usually ekem-issuer)", stringFlag(&f.username, "")},
		{"password-file", "FILE", "the broker password: a file holding it, or an\naccount file from mkcreds (accounts/NAME.env)",
			stringFlag(&f.passwordFile, "")},
		{"password", "", "the password itself (never a flag: argv is public)", nil},
		{cliflag.SigningKey, "FILE", "issuer secret key PEM from keygen (required)", stringFlag(&f.key, "")},
		{cliflag.NextSigningKey, "FILE", "the secret key announced by rotate-key; it signs\nfrom the announced epoch on",
			stringFlag(&f.nextKey, "")},
		{"store", "FILE|URL", "bbolt store; it and its directory are created\nif missing; or a PostgreSQL database\n" +
			"postgres://user@host/db that several instances\nshare, one leading (required)", stringFlag(&f.store, "")},
		{"lease-ttl", "DURATION", "PostgreSQL: the leader lease, renewed 4 times per\nttl; a standby takes over about ttl after the\n" +
			"leader stops (default period/3, at most 15s)", durationFlag(&f.leaseTTL, 0)},
		{"nudge", "DURATION", "republish the latest root and the unconfirmed\ntickets this long after an epoch, then after 3,\n" +
			"7, ... times it (at most 8 times): for a NATS\ncluster (broker-config/nats); default 0, off", durationFlag(&f.nudge, 0)},
		{"period", "DURATION", "epoch period, 1s..744h (default 1h)", durationFlag(&f.period, time.Hour)},
		{"ttl", "DURATION", "ticket lifetime, whole seconds (default 2 x period)", durationFlag(&f.ttl, 0)},
		{"prefix", "PREFIX", "topic prefix (default ekem/v1)", stringFlag(&f.prefix, wire.DefaultPrefix)},
		{"purpose", "LABEL", `ticket purpose label (default "default")`, stringFlag(&f.purpose, issuer.DefaultLabel)},
		{"group", "LABEL", `ticket group label (default "default")`, stringFlag(&f.group, issuer.DefaultLabel)},
		{"keep-roots", "N", "root topics kept retained, at least 2 (default 4)", intFlag(&f.keepRoots, issuer.DefaultKeepRoots)},
		{"chunk-leaves", "N", "smallest chunk of a streamed epoch, a power of two (default 512)",
			intFlag(&f.chunkLeaves, issuer.DefaultChunkLeaves)},
		{"reenroll", "POLICY", "a device's re-enrollment: hold (for approve,\ndefault) or auto (pinned at once)",
			stringFlag(&f.reenroll, string(issuer.ReenrollHold))},
		{"client-id", "ID", "MQTT client id (default ekem-issuer; the reference\nbroker replaces it with the username)",
			stringFlag(&f.clientID, issuer.DefaultClientID)},
		{"enrollment", "POLICY", "open: pin a new id's first registration (trust on\nfirst use, default); allowlist: pin only ids\n" +
			"imported with enroll, hold any other for approve\nor deny", stringFlag(&f.enrollment, issuer.EnrollmentOpen)},
		{cliflag.TLSCA, "FILE", "CA certificates for a TLS broker", stringFlag(&f.ca, "")},
		{cliflag.TLSCert, "FILE", "TLS client certificate (with -tls-key)", stringFlag(&f.cert, "")},
		{cliflag.TLSKey, "FILE", "TLS client key (with -tls-cert)", stringFlag(&f.keyfile, "")},
		{"metrics", "ADDR", "serve /metrics, /healthz, /readyz on ADDR (default off)", stringFlag(&f.metrics, "")},
		{"admin-socket", "PATH", "operator commands' Unix socket (default STORE.sock; off: none)", stringFlag(&f.adminSocket, "")},
		{"log-level", "LEVEL", "debug, info, warn or error (default info)", stringFlag(&f.logLevel, "info")},
		{"log-format", "FORMAT", "text or json (default text)", stringFlag(&f.logFormat, "text")},
	}
}

// runFlagNames are the flags of run that the environment can set.
func runFlagNames() []string {
	var names []string
	for _, d := range runFlagTable(&runFlags{}) {
		if d.bind != nil {
			names = append(names, d.name)
		}
	}
	return names
}

// runUsage is the "run flags" section of the usage, one line per setting
// (and its continuation lines): the flag, its environment variable, its help.
func runUsage() string {
	var b strings.Builder
	b.WriteString("run flags (each also read from the environment variable named after it;\na flag on the command line wins):\n")
	for _, d := range runFlagTable(&runFlags{}) {
		name := ""
		if d.bind != nil {
			name = "-" + d.name + " " + d.arg
		}
		lines := strings.Split(d.help, "\n")
		fmt.Fprintf(&b, "  %-24s %-22s %s\n", name, cliflag.Var(d.name), lines[0])
		for _, l := range lines[1:] {
			fmt.Fprintf(&b, "%50s%s\n", "", l)
		}
	}
	b.WriteString("\n")
	return b.String()
}
