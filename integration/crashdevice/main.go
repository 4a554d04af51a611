// Command crashdevice is a test-only device process for the crash tests of
// package integration (fault_device_test.go). It loads an existing device
// state directory with the device library, optionally follows tickets from
// the broker, and hands out ratchet keys in a loop, printing the name of
// every key it hands out on its own line, written with one system call
// (so a line that reached the pipe survived a SIGKILL of this process):
//
//	loaded epoch=E            the state loaded; E is the last accepted epoch
//	key E C FP                NextKey returned key (E, C); FP its fingerprint
//	accepted E FP gap=G       a ticket was accepted (OnEvent, after persisting)
//	event KIND ticket=T reason=R
//	error WHAT: ERR           then exit status 3
//
// The test kills it with SIGKILL at random moments and checks across all
// runs that the state always loads, that no (E, C) is printed twice and
// that no accepted epoch is lost. It never prints a key, only fingerprints.
//
// Flags: -id, -state, -cohort-file (64 hex characters), -keys N (stop after
// N keys; 0: until killed), and, to follow tickets, -broker and -issuer-pub
// with the broker password in the environment variable EKEM_PASSWORD.
package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/signature"
)

// noKeyRetry is how long the key loop waits before asking again while no
// ticket is accepted yet (only when following the broker).
const noKeyRetry = 5 * time.Millisecond

func main() {
	id := flag.String("id", "", "device id")
	state := flag.String("state", "", "state directory (must hold a device state)")
	cohortFile := flag.String("cohort-file", "", "file with the cohort secret as 64 hex characters")
	broker := flag.String("broker", "", "broker URL; empty: no network")
	issuerPub := flag.String("issuer-pub", "", "pinned issuer public key PEM (with -broker)")
	keys := flag.Int("keys", 0, "stop after this many keys (0: until killed)")
	flag.Parse()
	if err := run(*id, *state, *cohortFile, *broker, *issuerPub, *keys); err != nil {
		line("error %v", err)
		os.Exit(3)
	}
}

// line writes one line to stdout with a single write.
func line(format string, args ...any) {
	os.Stdout.WriteString(fmt.Sprintf(format, args...) + "\n")
}

func run(id, state, cohortFile, broker, issuerPub string, keys int) error {
	raw, err := os.ReadFile(cohortFile)
	if err != nil {
		return fmt.Errorf("cohort: %w", err)
	}
	secret, err := hex.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil {
		return fmt.Errorf("cohort: %w", err)
	}
	coh, err := cohort.NewSoftware(secret)
	if err != nil {
		return err
	}
	cfg := device.Config{
		ID: id, StateDir: state, Cohort: coh, MustExist: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnEvent: func(e device.Event) {
			switch e.Kind {
			case device.EventAccepted:
				line("accepted %d %s gap=%v", e.Epoch, e.Fingerprint, e.Gap)
			case device.EventDuplicate:
			default:
				line("event %s ticket=%d reason=%s", e.Kind, e.TicketEpoch, e.Reason)
			}
		},
	}
	if broker != "" {
		pemBytes, err := os.ReadFile(issuerPub)
		if err != nil {
			return fmt.Errorf("issuer-pub: %w", err)
		}
		pub, err := signature.ParsePublicKeyPEM(pemBytes)
		if err != nil {
			return fmt.Errorf("issuer-pub: %w", err)
		}
		if cfg.IssuerKeys, err = signature.NewKeySet(pub); err != nil {
			return err
		}
		cfg.Broker, cfg.Password = broker, os.Getenv("EKEM_PASSWORD")
	}
	a, err := device.New(cfg)
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	defer a.Close()
	line("loaded epoch=%d", a.Epoch())
	if broker != "" {
		go a.Run(context.Background())
	}
	for n := 0; keys == 0 || n < keys; n++ {
		k, err := a.NextKey()
		if errors.Is(err, device.ErrNoKey) && broker != "" {
			time.Sleep(noKeyRetry)
			n--
			continue
		}
		if err != nil {
			return fmt.Errorf("next key: %w", err)
		}
		line("key %d %d %s", k.Epoch, k.Ctr, device.Fingerprint(k.Bytes))
		k.Wipe()
	}
	return nil
}
