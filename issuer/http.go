// The issuer's HTTP surface: /metrics, /healthz and /readyz
// (ekem-issuer -metrics), for an embedder to mount.

package issuer

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// MetricsHandler serves the issuer's metrics in the Prometheus exposition
// formats. Every name starts with ekem_, counters end in _total, durations
// are in seconds, and no label ever holds a device id (labels are bounded:
// results, reasons, states). See issuerCollector for the list.
func (i *Issuer) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(i.registry(), promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// HealthHandler is the liveness probe (/healthz): 200 "ok" while the issuer
// is not closed, else 503. A broker outage does not make it fail (the
// issuer reconnects by itself; restarting it would not help): that is
// ReadyHandler's job.
func (i *Issuer) HealthHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if i.isClosed() {
			http.Error(w, "closed", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
}

// ReadyHandler is the readiness probe (/readyz): 200 "ready" when the
// issuer is started and connected to the broker, its store answers a read
// and the key that signs the next epoch is loaded; else 503 with one line
// per failed check ("broker: not connected", "store: ...", "key: not
// loaded", "key: epoch N needs key ...").
func (i *Issuer) ReadyHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if problems := i.readiness(); len(problems) > 0 {
			http.Error(w, strings.Join(problems, "\n"), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
}

// AdminHandler serves /metrics, /healthz and /readyz.
func (i *Issuer) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", i.MetricsHandler())
	mux.Handle("/healthz", i.HealthHandler())
	mux.Handle("/readyz", i.ReadyHandler())
	return mux
}

// readiness returns the failed readiness checks.
func (i *Issuer) readiness() []string {
	var out []string
	if i.isClosed() {
		out = append(out, "issuer: closed")
	}
	if !i.brokerConnected() {
		out = append(out, "broker: not connected")
	}
	last, err := readLastEpoch(i.store)
	if err != nil {
		out = append(out, "store: not readable")
	}
	if i.cfg.Key == nil {
		out = append(out, "key: not loaded")
	} else if _, kid, err := signerFor(i.cfg, i.chain, last+1); err != nil {
		out = append(out, fmt.Sprintf("key: epoch %d needs key %x, which is not configured", last+1, kid))
	}
	return out
}

func (i *Issuer) brokerConnected() bool {
	c := i.client.Load()
	return c != nil && c.Connected() && !i.isClosed()
}
