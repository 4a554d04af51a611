package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/entropykem/entropykem/broker-config/creds"
	"github.com/entropykem/entropykem/internal/embedbroker"
	"github.com/entropykem/entropykem/pkg/wire"
)

// demoBroker is where the demo's clients connect: the embedded broker, with
// accounts made on the fly, or an external one whose accounts come from a
// mkcreds directory.
type demoBroker struct {
	url      string
	describe string
	account  func(name string) (password string, err error)
	close    func() error
}

func openBroker(ctx context.Context, c demoConfig, run demoRun, log *slog.Logger) (*demoBroker, error) {
	if c.broker != "" {
		if err := checkNoLiveFleet(ctx, c.broker, c.creds, wire.DefaultPrefix, run.clientID("check")); err != nil {
			return nil, err
		}
		return &demoBroker{
			url:      c.broker,
			describe: fmt.Sprintf("external broker %s, accounts from %s", c.broker, c.creds),
			account: func(name string) (string, error) {
				a, err := creds.ReadAccountFile(filepath.Join(c.creds, "accounts", name+".env"))
				if err != nil {
					return "", fmt.Errorf("account %s: %w (hint: make it with mkcreds -devices %d)", name, err, c.devices)
				}
				return a.Password, nil
			},
			close: func() error { return nil },
		}, nil
	}
	b, err := embedbroker.Start(c.listen, run.prefix, log)
	if err != nil {
		return nil, err
	}
	return &demoBroker{
		url:      b.URL(),
		describe: "embedded MQTT broker on " + b.URL(),
		account: func(name string) (string, error) {
			pw := randomPassword()
			return pw, b.AddUser(name, pw)
		},
		close: b.Close,
	}, nil
}

func randomPassword() string {
	b := make([]byte, 18)
	rand.Read(b)
	return hex.EncodeToString(b)
}
