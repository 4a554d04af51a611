package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/pkg/wire"
)

// rawWindow is the raw publisher's in-flight bound (the issuer's is the
// same order: issuer/publish.go).
const rawWindow = 1000

// benchPublish measures the broker floor: Devices retained QoS 1
// publishes of a ticket-sized payload with one paho connection and a
// sliding window of rawWindow in flight, on ticket topics the issuer
// account may write (ekem/v1/ticket/raw-N). The first repetition inserts
// retained messages, the others replace them, as the issuer's first and
// later epochs do.
func benchPublish(ctx context.Context, c Config, b *broker, size int, rep *Report, logf func(string, ...any)) error {
	logf("publish: %d retained QoS 1 messages of %d B with paho, %d reps", c.Devices, size, c.Reps)
	cl, err := dialPaho(b, "ekem-bench-raw")
	if err != nil {
		return err
	}
	defer cl.Disconnect(250)
	payload := make([]byte, size)
	rand.Read(payload)
	topics := make([]string, c.Devices)
	for i := range topics {
		topics[i] = fmt.Sprintf("%s/ticket/raw-%07d", wire.DefaultPrefix, i)
	}
	var rates []float64
	for range c.Reps {
		if err := ctx.Err(); err != nil {
			return err
		}
		t := time.Now()
		if err := publishWindowed(cl, topics, payload); err != nil {
			return err
		}
		rates = append(rates, float64(c.Devices)/time.Since(t).Seconds())
	}
	rep.add(Row{Key: "publish.raw_rate", Label: "broker floor: paho QoS 1 retained publish, 1 connection", Value: median(rates), Unit: "msg/s",
		Samples: rates, Note: fmt.Sprintf("%d msgs, window %d; rep 1 inserts, later reps replace", c.Devices, rawWindow)})
	rep.add(Row{Key: "publish.ticket_bytes", Label: "ticket payload size", Value: float64(size), Unit: "B"})
	return nil
}

// dialPaho connects a plain paho client as the issuer account.
func dialPaho(b *broker, clientID string) (mqtt.Client, error) {
	o := mqtt.NewClientOptions().AddBroker(b.url()).SetClientID(clientID).
		SetUsername(brokerconfig.IssuerAccount).SetPassword(b.password(brokerconfig.IssuerAccount)).
		SetCleanSession(true).SetAutoReconnect(false).SetKeepAlive(30 * time.Second).
		SetConnectTimeout(10 * time.Second).SetWriteTimeout(10 * time.Second)
	cl := mqtt.NewClient(o)
	tok := cl.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("bench: paho connect: %v", tok.Error())
	}
	return cl, nil
}

// publishWindowed publishes payload to every topic, keeping at most
// rawWindow publishes in flight (waiting on the oldest), and returns the
// first failure.
func publishWindowed(cl mqtt.Client, topics []string, payload []byte) error {
	ring := make([]mqtt.Token, rawWindow)
	wait := func(t mqtt.Token) error {
		if !t.WaitTimeout(30 * time.Second) {
			return fmt.Errorf("bench: publish timed out")
		}
		if err := t.Error(); err != nil {
			return fmt.Errorf("bench: publish: %w", err)
		}
		return nil
	}
	for i, topic := range topics {
		slot := i % rawWindow
		if ring[slot] != nil {
			if err := wait(ring[slot]); err != nil {
				return err
			}
		}
		ring[slot] = cl.Publish(topic, 1, true, payload)
	}
	for k := range ring {
		if ring[k] != nil {
			if err := wait(ring[k]); err != nil {
				return err
			}
		}
	}
	return nil
}
