package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/broker-config/creds"
	"github.com/entropykem/entropykem/internal/mqttc"
	"github.com/entropykem/entropykem/pkg/wire"
)

// The demo never touches a fleet: it runs under its own topic tree,
// DemoPrefixRoot/<random>, with client ids of its own (so it cannot take
// over a live client's session), and against an external broker it first
// refuses if a fleet's issuer has left its retained online message under
// the live prefix.
const (
	DemoPrefixRoot = "ekem-demo"
	// liveCheckWait is how long the demo waits for a retained
	// issuer/online message; retained messages arrive right after the
	// subscription is acknowledged.
	liveCheckWait = 2 * time.Second
)

// ErrLiveFleet reports that the broker carries a fleet's retained
// issuer/online message: the demo refuses to run there.
var ErrLiveFleet = errors.New("the broker carries a live fleet")

// demoRun names one demo run: its topic prefix and client id stem.
type demoRun struct {
	prefix string // ekem-demo/<16 hex>
	id     string // ekem-demo-<16 hex>
}

func newDemoRun() demoRun {
	b := make([]byte, 8)
	rand.Read(b)
	h := hex.EncodeToString(b)
	return demoRun{prefix: DemoPrefixRoot + "/" + h, id: DemoPrefixRoot + "-" + h}
}

// clientID is the MQTT client id of one of the demo's clients.
func (r demoRun) clientID(name string) string { return r.id + "-" + name }

// checkNoLiveFleet connects to broker as the read-only monitor account of
// credsDir and fails with ErrLiveFleet if a retained message is on
// livePrefix/issuer/online. Not being able to look is an error too: the
// demo never runs against a broker it could not check.
func checkNoLiveFleet(ctx context.Context, broker, credsDir, livePrefix, clientID string) error {
	topics, err := wire.NewTopics(livePrefix)
	if err != nil {
		return err
	}
	mon, err := creds.ReadAccountFile(creds.AccountFile(credsDir, brokerconfig.MonitorAccount))
	if err != nil {
		return fmt.Errorf("checking for a live fleet needs the monitor account: %w", err)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := mqttc.Dial(dctx, mqttc.Options{Broker: broker, ClientID: clientID, Username: mon.Username,
		Password: mon.Password, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return fmt.Errorf("checking for a live fleet: %w", err)
	}
	defer c.Close()
	if err := c.Subscribe(topics.Online()); err != nil {
		return fmt.Errorf("checking for a live fleet: subscribe %s: %w", topics.Online(), err)
	}
	wctx, wcancel := context.WithTimeout(ctx, liveCheckWait)
	defer wcancel()
	for {
		m, ok := c.Inbox().Next(wctx)
		if !ok {
			return nil
		}
		if m.Topic == topics.Online() && m.Retained && len(m.Payload) > 0 {
			return fmt.Errorf("%w: %s is retained (an issuer runs, or ran, on this broker); the demo refuses to run here "+
				"(hint: run it on a broker of its own, or without -broker on the embedded one)", ErrLiveFleet, topics.Online())
		}
	}
}

// clearRetained removes the retained messages the demo left under its
// prefix on an external broker, each with the account allowed to write it
// (schema: an empty retained publish deletes the retained message).
// Failures are reported, not fatal: the demo's topics are its own.
func clearRetained(ctx context.Context, b *demoBroker, run demoRun, devices []string, epochs int) error {
	topics, err := wire.NewTopics(run.prefix)
	if err != nil {
		return err
	}
	issuerTopics := []string{topics.Epoch(), topics.Online()}
	for e := 1; e <= epochs; e++ {
		issuerTopics = append(issuerTopics, topics.Root(uint64(e)))
	}
	for _, id := range devices {
		issuerTopics = append(issuerTopics, topics.Ticket(id))
	}
	var errs []error
	errs = append(errs, clearAs(ctx, b, run, brokerconfig.IssuerAccount, issuerTopics))
	for _, id := range devices {
		errs = append(errs, clearAs(ctx, b, run, id, []string{topics.Registration(id), topics.Status(id)}))
	}
	return errors.Join(errs...)
}

func clearAs(ctx context.Context, b *demoBroker, run demoRun, account string, topics []string) error {
	pw, err := b.account(account)
	if err != nil {
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := mqttc.Dial(dctx, mqttc.Options{Broker: b.url, ClientID: run.clientID("clear-" + account), Username: account,
		Password: pw, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return fmt.Errorf("clear %s's retained messages: %w", account, err)
	}
	defer c.Close()
	for _, t := range topics {
		if err := c.Publish(t, nil, true); err != nil {
			return fmt.Errorf("clear %s: %w", t, err)
		}
	}
	return nil
}
