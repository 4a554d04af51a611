package issuer

import (
	"fmt"
	"net/http"
	"strings"
	"time"
)

// setEpochDuration records how long the last epoch took to build and
// persist.
func (i *Issuer) setEpochDuration(d time.Duration) { i.issueNanos.Store(int64(d)) }

// MetricsHandler serves the counters, the last epoch and the last epoch's
// issue duration in the Prometheus text exposition format. A counter
// "name:reason" is exported as ekem_issuer_events_total{event="name",
// reason="reason"}.
func (i *Issuer) MetricsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		var b strings.Builder
		b.WriteString("# HELP ekem_issuer_events_total Issuer events by name and reason.\n# TYPE ekem_issuer_events_total counter\n")
		c := i.Counters()
		for _, name := range i.counterNames(c) {
			event, reason, _ := strings.Cut(name, ":")
			fmt.Fprintf(&b, "ekem_issuer_events_total{event=%q,reason=%q} %d\n", event, reason, c[name])
		}
		fmt.Fprintf(&b, "# HELP ekem_issuer_epoch Last issued epoch.\n# TYPE ekem_issuer_epoch gauge\nekem_issuer_epoch %d\n", i.LastEpoch())
		fmt.Fprintf(&b, "# HELP ekem_issuer_epoch_issue_seconds Time to build, sign and persist the last epoch.\n# TYPE ekem_issuer_epoch_issue_seconds gauge\nekem_issuer_epoch_issue_seconds %g\n",
			time.Duration(i.issueNanos.Load()).Seconds())
		connected := 0
		if c := i.client.Load(); c != nil && c.Connected() {
			connected = 1
		}
		fmt.Fprintf(&b, "# HELP ekem_issuer_connected Whether the broker connection is up.\n# TYPE ekem_issuer_connected gauge\nekem_issuer_connected %d\n", connected)
		_, _ = w.Write([]byte(b.String()))
	})
}

// HealthHandler answers 200 while connected to the broker, else 503.
func (i *Issuer) HealthHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if c := i.client.Load(); c != nil && c.Connected() && i.ctx.Err() == nil {
			_, _ = w.Write([]byte("ok\n"))
			return
		}
		http.Error(w, "not connected", http.StatusServiceUnavailable)
	})
}
