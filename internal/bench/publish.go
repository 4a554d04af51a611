package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/internal/mqttc"
	"github.com/entropykem/entropykem/pkg/wire"
)

// rawWindow is the raw publisher's in-flight bound (the issuer's is the
// same order: issuer/publish.go).
const rawWindow = 1000

// benchPublish measures the broker floor: Devices retained QoS 1
// publishes of a ticket-sized payload with one plain paho connection
// (mqttc.PahoFloor) and a sliding window of rawWindow in flight, on ticket
// topics the issuer account may write (ekem/v1/ticket/raw-N). The first
// repetition inserts retained messages, the others replace them, as the
// issuer's first and later epochs do.
func benchPublish(ctx context.Context, c Config, b *broker, size int, rep *Report, logf func(string, ...any)) error {
	logf("publish: %d retained QoS 1 messages of %d B with paho, %d reps", c.Devices, size, c.Reps)
	payload := make([]byte, size)
	rand.Read(payload)
	topics := make([]string, c.Devices)
	for i := range topics {
		topics[i] = fmt.Sprintf("%s/ticket/raw-%07d", wire.DefaultPrefix, i)
	}
	o := mqttc.Options{Broker: b.url(), ClientID: "ekem-bench-raw", Username: brokerconfig.IssuerAccount,
		Password: b.password(brokerconfig.IssuerAccount), Timeout: 30 * time.Second}
	var rates []float64
	for range c.Reps {
		if err := ctx.Err(); err != nil {
			return err
		}
		d, err := mqttc.PahoFloor(ctx, o, topics, payload, rawWindow)
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		rates = append(rates, float64(c.Devices)/d.Seconds())
	}
	rep.add(Row{Key: "publish.raw_rate", Label: "broker floor: paho QoS 1 retained publish, 1 connection", Value: median(rates), Unit: "msg/s",
		Samples: rates, Note: fmt.Sprintf("%d msgs, window %d; rep 1 inserts, later reps replace", c.Devices, rawWindow)})
	rep.add(Row{Key: "publish.raw_rate_insert", Label: "broker floor, rep 1 (inserts retained topics)", Value: rates[0], Unit: "msg/s"})
	if len(rates) > 1 {
		rep.add(Row{Key: "publish.raw_rate_replace", Label: "broker floor, later reps (replace)", Value: median(rates[1:]), Unit: "msg/s", Samples: rates[1:]})
	}
	rep.add(Row{Key: "publish.ticket_bytes", Label: "ticket payload size", Value: float64(size), Unit: "B"})
	return nil
}
