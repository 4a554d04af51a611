package monitor

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteTable writes s as an aligned table (device, epoch, lag, last seen,
// state, reason), at most limit rows (0: all; the most severe come first),
// followed by the fleet totals, the broker's figures and any root that
// failed verification.
func WriteTable(w io.Writer, s Snapshot, limit int) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tEPOCH\tLAG\tLAST SEEN\tSTATE\tREASON")
	rows := s.Devices
	if limit > 0 && len(rows) > limit {
		rows = rows[:limit]
	}
	for _, r := range rows {
		seen := "-"
		if r.LastSeen != nil {
			seen = age(s.At.Sub(*r.LastSeen)) + " ago"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\n", r.ID, r.Epoch, r.Lag, seen, r.State, r.Reason)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(rows) < len(s.Devices) {
		fmt.Fprintf(w, "... %d more devices (use -limit 0 for all)\n", len(s.Devices)-len(rows))
	}
	fmt.Fprintln(w)
	epoch := "none verified yet"
	if s.Epoch > 0 {
		epoch = fmt.Sprintf("%d (root signature verified", s.Epoch)
		if s.EpochIssuedAt != nil {
			epoch += ", issued " + s.EpochIssuedAt.Format(time.RFC3339)
		}
		epoch += ")"
	}
	fmt.Fprintf(w, "fleet    %d devices, epoch %s, max lag %d\n", len(s.Devices), epoch, s.MaxLag)
	parts := make([]string, 0, len(States))
	for _, st := range States {
		parts = append(parts, fmt.Sprintf("%s %d", st, s.Totals[st]))
	}
	fmt.Fprintf(w, "states   %s\n", strings.Join(parts, ", "))
	fmt.Fprintf(w, "alarms   roots failing verification %d, clones %d, equivocation reports %d, suspicious reports %d\n",
		s.Counters[CountRootFailures], s.Counters[CountClones], s.Counters[CountEquivocation], s.Counters[CountSuspicious])
	if len(s.Broker) > 0 {
		fmt.Fprintf(w, "broker   %s clients connected, %s retained messages, %s subscriptions, up %s\n",
			figure(s.Broker, "clients_connected"), figure(s.Broker, "retained_messages"),
			figure(s.Broker, "subscriptions"), ageOf(s.Broker, "uptime_seconds"))
	}
	for _, f := range s.RootFailures {
		fmt.Fprintf(w, "ALARM    root %s FAILED VERIFICATION: %s\n", f.Topic, f.Error)
	}
	return nil
}

// WriteJSON writes s as one indented JSON document.
func WriteJSON(w io.Writer, s Snapshot) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

func figure(m map[string]float64, k string) string {
	if v, ok := m[k]; ok {
		return fmt.Sprintf("%.0f", v)
	}
	return "?"
}

func ageOf(m map[string]float64, k string) string {
	if v, ok := m[k]; ok {
		return age(time.Duration(v) * time.Second)
	}
	return "?"
}

// age is a short human duration: 45s, 12m3s, 5h2m, 3d4h.
func age(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	d = d.Round(time.Second)
	switch {
	case d < time.Hour:
		return d.String()
	case d < 48*time.Hour:
		return d.Truncate(time.Minute).String()
	}
	days := d / (24 * time.Hour)
	return fmt.Sprintf("%dd%dh", days, (d-days*24*time.Hour)/time.Hour)
}
