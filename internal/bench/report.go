package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"text/tabwriter"
)

// Goal thresholds (issue 7).
const (
	GoalCryptoRatio   = 1.3  // issuer crypto per ticket ≤ 1.3× the primitive floor
	GoalPublishRatio  = 0.8  // issuer epoch throughput ≥ 0.8× the raw publish rate
	GoalEpoch1MSecs   = 60.0 // a 1M-device epoch within 60 s
	GoalFleetSecs     = 60.0 // every device of a 10k fleet acknowledged within 60 s
	GoalFleetSize     = 10000
	GoalAgentRSSMB    = 20.0 // a device agent within 20 MB RSS
	GoalPostgresRatio = 1.5  // an issuer epoch on PostgreSQL ≤ 1.5× the bbolt epoch (issue 12)
	goalProjectFromAt = 100000
)

func goals(r *Report) []Goal {
	var out []Goal
	ip, is := r.value("crypto.issue_parse"), r.value("crypto.issue_parsed")
	rp, rs := ip/r.value("crypto.floor_parse"), is/r.value("crypto.floor_parsed")
	out = append(out, Goal{Name: "issuer crypto per ticket", Target: fmt.Sprintf("≤ %.1f× floor (parse+encaps+leaf hash)", GoalCryptoRatio),
		Measured: fmt.Sprintf("%.1f µs = %.2f× (parse keys + batch.Issue, 1 core)", ip, rp),
		Pass:     rp <= GoalCryptoRatio,
		Note:     fmt.Sprintf("with keys parsed beforehand %.1f µs = %.2f× of encaps+leaf hash: the key schedule (3 HKDF + HMAC), pk and ticket hashes, CBOR and proofs are not in that floor", is, rs)})
	raw, rate, pub := r.value("publish.raw_rate"), r.value("issuer.epoch_rate"), r.value("issuer.publish_rate")
	ins, repl := r.value("issuer.epoch_rate_insert"), r.value("issuer.epoch_rate_replace")
	insRaw, replRaw := r.value("publish.raw_rate_insert"), r.value("publish.raw_rate_replace")
	g := Goal{Name: "issuer epoch throughput through Mosquitto", Target: fmt.Sprintf("≥ %.1f× raw publish rate, inserting and replacing", GoalPublishRatio),
		Measured: fmt.Sprintf("%.0f tickets/s end to end = %.2f× of %.0f msg/s; inserting %.2f×", rate, rate/raw, raw, ins/insRaw),
		Pass:     rate/raw >= GoalPublishRatio && ins/insRaw >= GoalPublishRatio,
		Note:     fmt.Sprintf("streamed phase alone %.0f msg/s = %.2f×; before it only the plan", pub, pub/raw)}
	if repl > 0 && replRaw > 0 {
		g.Measured += fmt.Sprintf(", replacing %.2f×", repl/replRaw)
		g.Pass = g.Pass && repl/replRaw >= GoalPublishRatio
	}
	out = append(out, g)
	proj := r.value("issuer.projection_1m")
	g = Goal{Name: "1M-device epoch", Target: fmt.Sprintf("≤ %.0f s", GoalEpoch1MSecs),
		Measured: fmt.Sprintf("%.1f s projected from N=%d", proj, r.Config.Devices), Pass: proj <= GoalEpoch1MSecs}
	if r.Config.Devices >= 1_000_000 {
		e := r.value("issuer.epoch_time_first")
		g.Measured = fmt.Sprintf("%.1f s measured (epoch 1, N=%d); issuer process peak RSS %.0f MB, Mosquitto %.0f MB",
			e, r.Config.Devices, r.value("issuer.rss_peak"), r.value("broker.rss_after_epochs"))
		g.Pass = e <= GoalEpoch1MSecs
	} else if r.Config.Devices < goalProjectFromAt {
		g.Note = fmt.Sprintf("projected from fewer than %d devices; run -devices %d for the stated check", goalProjectFromAt, goalProjectFromAt)
	}
	out = append(out, g)
	if pe, ok := r.Row("issuer.pg.epoch_time"); ok {
		out = append(out, Goal{Name: "issuer epoch on PostgreSQL", Target: fmt.Sprintf("≤ %.1f× the bbolt epoch, same run", GoalPostgresRatio),
			Measured: fmt.Sprintf("%.2f s = %.2f× of %.2f s (N=%d)", pe.Value, pe.Ratio, r.value("issuer.epoch_time"), r.Config.Devices),
			Pass:     pe.Ratio > 0 && pe.Ratio <= GoalPostgresRatio})
	}
	all := r.value("fleet.ack_100")
	g = Goal{Name: "fleet rotation, all acknowledged", Target: fmt.Sprintf("≤ %.0f s for %d devices", GoalFleetSecs, GoalFleetSize),
		Measured: fmt.Sprintf("%.2f s for %d devices", all, r.Config.Fleet), Pass: all >= 0 && all <= GoalFleetSecs}
	if all < 0 {
		g.Measured = fmt.Sprintf("not all of %d acknowledged within %v", r.Config.Fleet, r.Config.FleetTimeout)
	}
	if r.Config.Fleet < GoalFleetSize {
		g.Note = fmt.Sprintf("measured at %d devices; run -fleet %d for the stated check", r.Config.Fleet, GoalFleetSize)
	}
	out = append(out, g)
	rss := r.value("device.rss_process")
	g = Goal{Name: "device agent memory", Target: fmt.Sprintf("≤ %.0f MB RSS", GoalAgentRSSMB),
		Measured: fmt.Sprintf("%.1f MB (one agent process)", rss), Pass: rss > 0 && rss <= GoalAgentRSSMB}
	if rss <= 0 {
		per := r.value("device.rss_fleet_per_agent")
		g.Measured = fmt.Sprintf("%.2f MB per agent in the fleet process (no agent process measured)", per)
		g.Pass = per > 0 && per <= GoalAgentRSSMB
	}
	out = append(out, g)
	return out
}

// WriteTable prints the report as aligned text: machine, rows, goals.
func (r *Report) WriteTable(w io.Writer) error {
	m := r.Machine
	fmt.Fprintf(w, "machine: %d CPUs, %s, %s, %s\nload average: start %s, end %s\n", m.NumCPU, m.CPU, m.GoVersion, m.Mosquitto, m.LoadAvgStart, m.LoadAvgEnd)
	fmt.Fprintf(w, "config: devices=%d fleet=%d crypto-devices=%d reps=%d; took %v\n\n", r.Config.Devices, r.Config.Fleet, r.Config.CryptoDevices, r.Config.Reps, r.Duration.Round(1e9))
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "measurement\tmedian\tunit\tratio\tnote")
	for _, x := range r.Rows {
		ratio := ""
		if x.Ratio != 0 {
			ratio = fmt.Sprintf("%.2f× %s", x.Ratio, x.RatioTo)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", x.Label, formatValue(x.Value), x.Unit, ratio, x.Note)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "goal\ttarget\tresult\tmeasured\tnote")
	for _, g := range r.Goals {
		res := "MISS"
		if g.Pass {
			res = "PASS"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", g.Name, g.Target, res, g.Measured, g.Note)
	}
	return tw.Flush()
}

func formatValue(v float64) string {
	switch {
	case v < 0:
		return "n/a"
	case v >= 1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

// WriteJSON writes the report as indented JSON to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

var mosqVersionRE = regexp.MustCompile(`mosquitto version [0-9.]+`)

func mosquittoVersion() string {
	bin, err := mosquittoBinary()
	if err != nil {
		return "mosquitto ?"
	}
	out, _ := exec.Command(bin, "-h").CombinedOutput() // -h exits non-zero
	if v := mosqVersionRE.Find(out); v != nil {
		return strings.TrimSpace(string(v))
	}
	return "mosquitto ?"
}
