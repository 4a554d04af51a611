// Package conformance is a conformance kit for other implementations of
// schema/PROTOCOL.md, run over a real MQTT broker:
//
//   - RunDevice plays the issuer, and an attacker, against one device under
//     test: it signs crafted tickets and roots with its own issuer key (which
//     the device pins) and checks every acceptance rule of §8.2 through the
//     Statuses the device publishes (§5.6) and what it does next.
//   - RunIssuer plays devices against an issuer under test: registrations,
//     Statuses, refused Statuses, re-keys in both topic orders and hostile
//     input, checking the tickets and roots the issuer publishes (§6, §7,
//     §10).
//
// Both return a Report: one Result per rule, printed as a pass/fail table.
// A rule that fails does not stop the run, but later rules may then fail
// as a consequence; the first failure is the one to read.
package conformance

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/entropykem/entropykem/internal/mqttc"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Broker is how the kit reaches the broker.
type Broker struct {
	URL      string // tcp://host:1883 or ssl://host:8883
	Username string
	Password string
	TLS      *tls.Config
	// ClientID defaults to Username with a "-conformance" suffix.
	ClientID string
	// Prefix is the topic prefix (default wire.DefaultPrefix).
	Prefix string
}

// Timing bounds every wait of a run.
type Timing struct {
	// Status is how long to wait for an expected message (default 10 s).
	Status time.Duration
	// Quiet is how long nothing must arrive where the spec says the
	// implementation publishes nothing (default 1.5 s).
	Quiet time.Duration
}

func (t Timing) withDefaults() Timing {
	if t.Status <= 0 {
		t.Status = 10 * time.Second
	}
	if t.Quiet <= 0 {
		t.Quiet = 1500 * time.Millisecond
	}
	return t
}

// Result is the outcome of one rule.
type Result struct {
	Rule    string // short name
	Section string // where PROTOCOL.md states it
	Pass    bool
	Skipped bool
	Detail  string // why it failed or was skipped
}

// Report is every rule's Result, in the order run.
type Report struct {
	Mode    string
	Results []Result
}

// Failed returns how many rules failed (skipped ones do not count).
func (r *Report) Failed() int {
	n := 0
	for _, x := range r.Results {
		if !x.Pass && !x.Skipped {
			n++
		}
	}
	return n
}

// Result returns the result of the rule named rule, if it ran.
func (r *Report) Result(rule string) (Result, bool) {
	for _, x := range r.Results {
		if x.Rule == rule {
			return x, true
		}
	}
	return Result{}, false
}

// Print writes the pass/fail table.
func (r *Report) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "RULE\tSPEC\tRESULT\tDETAIL\n")
	for _, x := range r.Results {
		res := "PASS"
		switch {
		case x.Skipped:
			res = "SKIP"
		case !x.Pass:
			res = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", x.Rule, x.Section, res, oneLine(x.Detail))
	}
	tw.Flush()
	pass, skip := 0, 0
	for _, x := range r.Results {
		switch {
		case x.Skipped:
			skip++
		case x.Pass:
			pass++
		}
	}
	fmt.Fprintf(w, "%s conformance: %d passed, %d failed, %d skipped\n", r.Mode, pass, r.Failed(), skip)
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", "; ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// add runs check and records its outcome.
func (r *Report) add(rule, section string, check func() error) {
	err := check()
	res := Result{Rule: rule, Section: section, Pass: err == nil}
	var skip skipError
	if errors.As(err, &skip) {
		res.Pass, res.Skipped, res.Detail = false, true, skip.why
	} else if err != nil {
		res.Detail = err.Error()
	}
	r.Results = append(r.Results, res)
}

type skipError struct{ why string }

func (s skipError) Error() string { return "skipped: " + s.why }

func skip(format string, a ...any) error { return skipError{fmt.Sprintf(format, a...)} }

// dial connects one kit client; the caller closes it.
func dial(ctx context.Context, b Broker, clientID string, log *slog.Logger) (*mqttc.Client, error) {
	if clientID == "" {
		clientID = b.Username + "-conformance"
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return mqttc.Dial(dctx, mqttc.Options{Broker: b.URL, ClientID: clientID, Username: b.Username,
		Password: b.Password, TLS: b.TLS, Timeout: 10 * time.Second, Logger: log})
}

func topicsOf(prefix string) (wire.Topics, error) {
	if prefix == "" {
		prefix = wire.DefaultPrefix
	}
	return wire.NewTopics(prefix)
}

func quietLogger(l *slog.Logger) *slog.Logger {
	if l != nil {
		return l
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}
