package monitor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/broker-config/creds"
	"github.com/entropykem/entropykem/internal/brokerconn"
	"github.com/entropykem/entropykem/internal/cliflag"
	"github.com/entropykem/entropykem/internal/mqttc"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Exit codes of Command.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
	// ExitAlarm: the one-shot status saw an alarm (a root that failed
	// verification, a clone, reported equivocation).
	ExitAlarm = 3
)

// Usage is the help text of "ekemctl fleet".
const Usage = `usage: ekemctl fleet status -broker URL -issuer-pub FILE[,FILE] [flags]

Connects with the read-only monitor account, reads every device's retained
Status and registration (a re-enrollment awaits approval), the epoch roots (verifying each signature under the pinned issuer
keys: a root that fails is an ALARM on stderr), the tickets, the announced
epoch and the broker's $SYS figures, and prints the fleet: device, epoch,
lag, last seen, state, reason, then totals.

States: revoked, quarantined, equivocation, awaiting_approval, rejected,
stale, lagging, current, pending (most severe first; defined once in
pkg/standing).

flags:
  -broker URL          tcp://host:1883 or ssl://host:8883 (required)
  -username NAME       broker account (default $EKEM_USERNAME, else ekem-monitor;
                       not needed with -tls-cert)
  -password-file FILE  file holding the broker password, or the monitor's account
                       file from mkcreds (default: $EKEM_PASSWORD; never a flag)
  -tls-ca FILE         CA certificate(s) for ssl:// brokers
  -tls-cert FILE, -tls-key FILE
                       client certificate and key (TLS listener)
  -issuer-pub FILES    pinned issuer public key(s), comma separated (required)
  -prefix P            topic prefix (default ekem/v1)
  -json                print one JSON document instead of the table
  -watch               redraw the table every -interval until interrupted
  -interval D          refresh period with -watch (default 2s)
  -prometheus ADDR     serve /metrics (fleet and broker $SYS figures) and
                       /healthz on ADDR until interrupted, e.g. 127.0.0.1:7742
  -limit N             table rows (most severe first; default 0 = all)
  -settle D            one-shot: print once no message came for D (default 1s)
  -timeout D           one-shot: print after D at the latest (default 60s)
  -connect-timeout D   give up when the broker cannot be reached within D
                       (default 5s; -watch and -prometheus keep trying for -timeout)
  -tickets             also read ticket/+ to tell quarantined and revoked
                       devices and ticket expiry (default true)

Every flag also reads its environment variable when not given: EKEM_BROKER,
EKEM_USERNAME, EKEM_PASSWORD_FILE, EKEM_TLS_CA, EKEM_TLS_CERT, EKEM_TLS_KEY,
EKEM_ISSUER_PUB, EKEM_PREFIX. The old names -ca, -cert, -key (EKEM_CA,
EKEM_CERT, EKEM_KEY) still work and warn. -watch redraws the screen only
when stdout is a terminal; otherwise it prints one table per -interval.

exit status: 0 ok, 1 error (the broker unreachable), 2 usage, 3 (one-shot)
an alarm was seen.

examples:
  ekemctl fleet status -broker ssl://broker:8883 -tls-ca ca.crt -tls-cert ekem-monitor.crt \
      -tls-key ekem-monitor.key -issuer-pub issuer.pub
  ekemctl fleet status -broker tcp://127.0.0.1:1883 \
      -password-file creds/accounts/ekem-monitor.env -issuer-pub issuer.pub -json
  ekemctl fleet status ... -prometheus 127.0.0.1:7742
`

// Options are the parsed flags of "fleet status".
type Options struct {
	Broker, Username, PasswordFile, CA, Cert, Key, IssuerPub, Prefix, Prometheus string
	JSON, Watch, Tickets                                                         bool
	Interval, Settle, Timeout, ConnectTimeout                                    time.Duration
	Limit                                                                        int
	// Password is the broker password when there is no -password-file:
	// the environment's EKEM_PASSWORD (never a flag: argv is public).
	Password string
	// Now is the clock that judges ticket expiry and last-seen ages (not a
	// flag; default time.Now).
	Now func() time.Time
}

// ParseOptions parses the flags of "fleet status" (args after "status").
func ParseOptions(args []string, stderr io.Writer) (Options, error) {
	var o Options
	fs := flag.NewFlagSet("ekemctl fleet status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, Usage) }
	fs.StringVar(&o.Broker, "broker", "", "")
	fs.StringVar(&o.Username, "username", "", "")
	fs.StringVar(&o.PasswordFile, "password-file", "", "")
	fs.StringVar(&o.CA, cliflag.TLSCA, "", "")
	fs.StringVar(&o.Cert, cliflag.TLSCert, "", "")
	fs.StringVar(&o.Key, cliflag.TLSKey, "", "")
	fs.StringVar(&o.IssuerPub, "issuer-pub", "", "")
	fs.StringVar(&o.Prefix, "prefix", wire.DefaultPrefix, "")
	fs.StringVar(&o.Prometheus, "prometheus", "", "")
	fs.BoolVar(&o.JSON, "json", false, "")
	fs.BoolVar(&o.Watch, "watch", false, "")
	fs.BoolVar(&o.Tickets, "tickets", true, "")
	fs.DurationVar(&o.Interval, "interval", 2*time.Second, "")
	fs.DurationVar(&o.Settle, "settle", time.Second, "")
	fs.DurationVar(&o.Timeout, "timeout", time.Minute, "")
	fs.IntVar(&o.Limit, "limit", 0, "")
	fs.DurationVar(&o.ConnectTimeout, "connect-timeout", 5*time.Second, "")
	warn := cliflag.WarnTo(stderr, "ekemctl fleet")
	for old, name := range map[string]string{"ca": cliflag.TLSCA, "cert": cliflag.TLSCert, "key": cliflag.TLSKey} {
		cliflag.Alias(fs, old, name, warn)
	}
	if err := cliflag.RefuseSecrets(args, "password"); err != nil {
		return o, err
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if err := cliflag.CheckAliases(fs); err != nil {
		return o, err
	}
	if _, err := cliflag.FillFromEnv(fs, statusEnv, os.Getenv, warn); err != nil {
		return o, err
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case o.Broker == "":
		return o, errors.New("-broker is required")
	case o.IssuerPub == "":
		return o, errors.New("-issuer-pub is required: the issuer public key(s) every root must verify under")
	case (o.Cert == "") != (o.Key == ""):
		return o, errors.New("-tls-cert and -tls-key go together")
	case o.PasswordFile == "" && o.Cert == "" && os.Getenv("EKEM_PASSWORD") == "":
		return o, errors.New("a credential is required: -password-file or EKEM_PASSWORD (with -username), or -tls-cert/-tls-key")
	case o.JSON && o.Watch:
		return o, errors.New("-json and -watch exclude each other")
	case o.Interval < 100*time.Millisecond || o.Settle <= 0 || o.Timeout <= 0 || o.ConnectTimeout <= 0 || o.Limit < 0:
		return o, errors.New("-interval must be at least 100ms; -settle, -timeout and -connect-timeout positive; -limit not negative")
	}
	if _, err := wire.NewTopics(o.Prefix); err != nil {
		return o, fmt.Errorf("-prefix: %w", err)
	}
	if o.PasswordFile == "" {
		o.Password = os.Getenv("EKEM_PASSWORD")
	}
	if o.Username == "" && o.Cert == "" {
		o.Username = brokerconfig.MonitorAccount
	}
	return o, nil
}

// statusEnv are the environment variables of "fleet status" flags.
var statusEnv = cliflag.EnvOf(map[string][]string{cliflag.TLSCA: {"EKEM_CA"}, cliflag.TLSCert: {"EKEM_CERT"}, cliflag.TLSKey: {"EKEM_KEY"}},
	"broker", "username", "password-file", "issuer-pub", "prefix", cliflag.TLSCA, cliflag.TLSCert, cliflag.TLSKey)

// IsTerminal reports whether w is a character device (a terminal), where
// -watch may clear the screen; a file, pipe or journal gets plain tables.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// Command runs "ekemctl fleet ARGS" and returns its exit status. ctx ends
// -watch and -prometheus.
func Command(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "status" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprint(stdout, Usage)
			return ExitOK
		}
		if len(args) == 0 {
			fmt.Fprintf(stderr, "ekemctl fleet: missing subcommand (the only one is status)\nhint: ekemctl fleet status -h\n")
		} else {
			fmt.Fprintf(stderr, "ekemctl fleet: unknown subcommand %q (the only one is status)\nhint: ekemctl fleet status -h\n", args[0])
		}
		return ExitUsage
	}
	o, err := ParseOptions(args[1:], stderr)
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "ekemctl fleet: %v\nhint: ekemctl fleet -h\n", err)
		return ExitUsage
	}
	code, err := Run(ctx, o, stdout, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "ekemctl fleet: %v\n", err)
	}
	return code
}

// Run connects, feeds a Fleet and prints or serves it as o says.
func Run(ctx context.Context, o Options, stdout, stderr io.Writer) (int, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	pins, err := loadPins(o.IssuerPub)
	if err != nil {
		return ExitUsage, err
	}
	tlsConf, err := brokerconn.TLS(brokerconn.Files{CA: o.CA, Cert: o.Cert, Key: o.Key,
		CAName: "-" + cliflag.TLSCA, CertName: "-" + cliflag.TLSCert, KeyName: "-" + cliflag.TLSKey}, false)
	if err != nil {
		return ExitUsage, err
	}
	password := o.Password
	if o.PasswordFile != "" {
		a, err := creds.ReadPasswordFile(o.PasswordFile, o.Username)
		if err != nil {
			return ExitUsage, fmt.Errorf("-password-file: %w", err)
		}
		password = a.Password
		if o.Username == "" {
			o.Username = a.Username
		}
	}
	topics, _ := wire.NewTopics(o.Prefix)
	fleet := NewFleet(Config{Topics: topics, Pins: pins, TrackTickets: o.Tickets})
	id := make([]byte, 4)
	rand.Read(id)
	connect := o.ConnectTimeout
	if o.Watch || o.Prometheus != "" {
		connect = max(connect, o.Timeout) // a service waits longer for its broker
	}
	dialCtx, cancel := context.WithTimeout(ctx, connect)
	defer cancel()
	c, err := mqttc.Dial(dialCtx, mqttc.Options{
		Broker: o.Broker, ClientID: brokerconfig.MonitorAccount + "-" + hex.EncodeToString(id), Username: o.Username, Password: password,
		TLS: tlsConf, Logger: slog.New(slog.DiscardHandler), Timeout: connect, Backoff: mqttc.ServiceBackoff,
	})
	if err != nil {
		if errors.Is(err, mqttc.ErrRefused) || errors.Is(err, mqttc.ErrPermanent) {
			return ExitError, err
		}
		return ExitError, fmt.Errorf("cannot reach the broker at %s within %v: %w\nhint: is the broker running, and is -broker right? (-connect-timeout waits longer)", o.Broker, connect, err)
	}
	defer c.Close()
	// Issuer key rotations first: their retained messages then arrive
	// before the retained roots that a rotated-to key signed.
	filters := []string{topics.AllIssuerKeys(), topics.AllStatuses(), topics.AllRoots(), topics.Epoch(), "$SYS/#"}
	if o.Tickets {
		filters = append(filters, topics.AllTickets())
	}
	for _, f := range filters {
		if err := c.Subscribe(f); err != nil {
			return ExitError, fmt.Errorf("subscribe %s: %w", f, err)
		}
	}
	// Registrations only tell re-enrollments awaiting approval: a broker
	// whose monitor account may not read them costs that, nothing else.
	if err := c.Subscribe(topics.AllRegistrations()); err != nil {
		fmt.Fprintf(stderr, "note: cannot read %s (%v): re-enrollments awaiting approval are not shown\n", topics.AllRegistrations(), err)
	}
	alarms := 0
	feed := func(m mqttc.Message) {
		if a := fleet.Handle(m.Topic, m.Payload, o.Now()); a != nil {
			alarms++
			fmt.Fprintln(stderr, a.String())
		}
	}
	if o.Prometheus == "" && !o.Watch {
		settle(ctx, c.Inbox(), o.Settle, o.Timeout, feed)
		s := fleet.Snapshot(o.Now())
		if o.JSON {
			err = WriteJSON(stdout, s)
		} else {
			err = WriteTable(stdout, s, o.Limit)
		}
		if err != nil {
			return ExitError, err
		}
		if alarms > 0 || len(s.RootFailures) > 0 {
			return ExitAlarm, nil
		}
		return ExitOK, nil
	}
	return serve(ctx, o, c, fleet, feed, stdout, stderr)
}

// settle feeds messages until none came for quiet, or total passed, or ctx
// ended.
func settle(ctx context.Context, in *mqttc.Inbox, quiet, total time.Duration, feed func(mqttc.Message)) {
	ctx, cancel := context.WithTimeout(ctx, total)
	defer cancel()
	for {
		qctx, qcancel := context.WithTimeout(ctx, quiet)
		m, ok := in.Next(qctx)
		qcancel()
		if !ok {
			return
		}
		feed(m)
	}
}

// serve runs -watch and/or -prometheus until ctx ends.
func serve(ctx context.Context, o Options, c *mqttc.Client, fleet *Fleet, feed func(mqttc.Message), stdout, stderr io.Writer) (int, error) {
	if o.Prometheus != "" {
		reg := NewRegistry(&Collector{Fleet: fleet, Now: o.Now, Connected: c.Connected})
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		ln, err := net.Listen("tcp", o.Prometheus)
		if err != nil {
			return ExitError, fmt.Errorf("-prometheus: %w", err)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		fmt.Fprintf(stderr, "ekemctl fleet: serving /metrics on %s\n", ln.Addr())
	}
	msgs := make(chan struct{})
	go func() {
		defer close(msgs)
		for {
			m, ok := c.Inbox().Next(ctx)
			if !ok {
				return
			}
			feed(m)
		}
	}()
	if !o.Watch {
		<-ctx.Done()
		<-msgs
		return ExitOK, nil
	}
	t := time.NewTicker(o.Interval)
	defer t.Stop()
	clear := IsTerminal(stdout)
	for {
		if clear {
			fmt.Fprint(stdout, "\x1b[H\x1b[2J") // home, clear screen
		} else {
			fmt.Fprintf(stdout, "--- %s\n", o.Now().UTC().Format(time.RFC3339))
		}
		if err := WriteTable(stdout, fleet.Snapshot(o.Now()), o.Limit); err != nil {
			return ExitError, err
		}
		select {
		case <-ctx.Done():
			<-msgs
			return ExitOK, nil
		case <-t.C:
		}
	}
}

// loadPins reads the comma-separated issuer public key files.
func loadPins(list string) (*signature.KeySet, error) {
	var keys []*signature.PublicKey
	for _, p := range strings.Split(list, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		b, err := readSmall(p)
		if err != nil {
			return nil, fmt.Errorf("-issuer-pub: %w", err)
		}
		k, err := signature.ParsePublicKeyPEM(b)
		if err != nil {
			return nil, fmt.Errorf("-issuer-pub %s: %w", p, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("-issuer-pub: no key")
	}
	return signature.NewKeySet(keys...)
}

// readSmall reads a key, certificate or password file of at most 1 MiB.
func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 1<<20+1))
	if err != nil {
		return nil, err
	}
	if len(b) > 1<<20 {
		return nil, fmt.Errorf("%s is larger than 1 MiB", path)
	}
	return b, nil
}
