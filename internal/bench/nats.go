package bench

// The clustered broker side by side with Mosquitto (Config.Broker "nats",
// `ekemctl bench -broker nats`): the same publish floor and issuer epoch on
// a 3-node NATS JetStream cluster started with broker-config/nats on
// loopback (internal/natstest), and the memory each broker process holds
// per retained ticket.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/entropykem/entropykem/internal/natstest"
)

// Brokers Config.Broker accepts.
const (
	BrokerMosquitto = "mosquitto"
	BrokerNATS      = "nats"
)

// NATSRowKeys are the rows a run with Config.Broker "nats" adds, each the
// counterpart of a Mosquitto row.
var NATSRowKeys = []string{
	"broker.mem_per_ticket", "nats.publish.raw_rate", "nats.issuer.epoch_rate", "nats.issuer.epoch_time", "nats.mem_per_ticket_node",
}

// rssOf returns the resident set size of pid in bytes (0 if unknown).
func rssOf(pid int) float64 {
	rss, _, err := procMemory(strconv.Itoa(pid))
	if err != nil {
		return 0
	}
	return rss
}

// memPerTicket runs publish (which leaves n retained tickets in the broker)
// and returns, per process, how many bytes of RSS it grew by per ticket.
func memPerTicket(pids []int, n int, publish func() error) ([]float64, error) {
	before := make([]float64, len(pids))
	for i, p := range pids {
		before[i] = rssOf(p)
	}
	if err := publish(); err != nil {
		return nil, err
	}
	out := make([]float64, len(pids))
	for i, p := range pids {
		out[i] = (rssOf(p) - before[i]) / float64(n)
	}
	return out, nil
}

// benchNATS starts the cluster and measures the publish floor, the
// issuer's epoch and the memory per retained ticket per node on it, adding
// rows prefixed "nats." next to the Mosquitto ones.
func benchNATS(ctx context.Context, c Config, keys *keyPool, size int, dir string, rep *Report, logf func(string, ...any)) error {
	logf("nats: starting a 3-node JetStream cluster with broker-config/nats")
	cl, err := natstest.New(natstest.Options{Dir: filepath.Join(dir, "nats"), Logf: logf})
	if err != nil {
		return fmt.Errorf("bench: nats: %w", err)
	}
	b := &broker{dir: cl.Dir(), creds: cl.Creds(), nats: cl}
	defer b.stop()
	var pids []int
	for i := 0; i < natstest.Nodes; i++ {
		pids = append(pids, cl.PID(i))
	}
	sub := &Report{}
	per, err := memPerTicket(pids, c.Devices, func() error { return benchPublish(ctx, c, b, size, sub, logf) })
	if err != nil {
		return fmt.Errorf("bench: nats: %w", err)
	}
	issDir := filepath.Join(dir, "nats-issuer")
	if err := os.MkdirAll(issDir, 0o700); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := benchIssuer(ctx, c, b, keys, issDir, sub, logf); err != nil {
		return fmt.Errorf("bench: nats: %w", err)
	}
	for _, k := range []string{"publish.raw_rate", "issuer.epoch_rate", "issuer.epoch_time"} {
		r, ok := sub.Row(k)
		if !ok {
			continue
		}
		r.Key, r.Label = "nats."+k, "NATS cluster: "+r.Label
		if _, ok := sub.Row(r.RatioTo); ok {
			r.RatioTo = "nats." + r.RatioTo // a ratio between NATS rows
		}
		rep.add(r)
	}
	var kb []string
	for _, p := range per {
		kb = append(kb, fmt.Sprintf("%.0f", p))
	}
	rep.add(Row{Key: "nats.mem_per_ticket_node", Label: "NATS cluster: RSS per retained ticket, per node (max of 3)", Value: maxOf(per), Unit: "B",
		Samples: per, Note: "nodes " + strings.Join(kb, ", ") + " B; each node keeps every retained message (replica + its own retained cache)"})
	return nil
}

func maxOf(xs []float64) float64 {
	m := 0.0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}
