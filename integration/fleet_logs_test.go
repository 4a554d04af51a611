package integration

// No secret in any log line: a demo-like flow (in-process issuer and
// devices over the embedded broker, as cmd/ekemctl/demo.go wires them),
// every log line of the broker, the issuer and the devices captured as
// JSON at debug level, then searched for every secret the test can reach.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/internal/embedbroker"
	ekissuer "github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// secretForms returns the encodings of secret a log could carry: the raw
// bytes, hex (lower and upper case), base64 (standard, URL, unpadded) and
// the same for every 8-byte window, so a truncated secret is found too.
func secretForms(secret []byte) []string {
	enc := func(b []byte) []string {
		return []string{string(b), hex.EncodeToString(b), strings.ToUpper(hex.EncodeToString(b)),
			base64.StdEncoding.EncodeToString(b), base64.RawStdEncoding.EncodeToString(b),
			base64.URLEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b)}
	}
	out := enc(secret)
	for k := 0; k+8 <= len(secret); k++ {
		w := secret[k : k+8]
		out = append(out, string(w), hex.EncodeToString(w), strings.ToUpper(hex.EncodeToString(w)))
	}
	return out
}

func TestNoSecretsInLogs(t *testing.T) {
	logs := &logBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b, err := embedbroker.Start("127.0.0.1:0", wire.DefaultPrefix, log.With("role", "broker"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	secrets := map[string][]byte{}
	password := func(name string) string {
		p := make([]byte, 18)
		rand.Read(p)
		pw := hex.EncodeToString(p)
		if err := b.AddUser(name, pw); err != nil {
			t.Fatal(err)
		}
		secrets["broker password of "+name] = []byte(pw)
		return pw
	}

	key, err := signature.GenerateKey(signature.MLDSA87)
	if err != nil {
		t.Fatal(err)
	}
	secrets["issuer signing key seed"] = key.Seed()
	secrets["issuer secret key PEM body"] = pemBody(signature.MarshalPrivateKeyPEM(key))
	pins, err := signature.NewKeySet(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	cohortSecret := make([]byte, cohort.SecretSize)
	rand.Read(cohortSecret)
	secrets["cohort secret"] = cohortSecret
	coh, err := cohort.NewSoftware(cohortSecret)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	iss, err := ekissuer.New(ekissuer.Config{
		Broker: b.URL(), Username: embedbroker.IssuerUser, Password: password(embedbroker.IssuerUser),
		Key: key, StorePath: filepath.Join(dir, "issuer.db"), Period: time.Minute, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { iss.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 4*sysTimeout)
	defer cancel()
	if err := iss.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var agents []*device.Agent
	for k := 1; k <= 3; k++ {
		id := fmt.Sprintf("dev-%d", k)
		a, err := device.New(device.Config{
			ID: id, Broker: b.URL(), Password: password(id), StateDir: filepath.Join(dir, id),
			Cohort: coh, IssuerKeys: pins, Logger: log.With("role", "device", "device", id),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		go a.Run(ctx)
		agents = append(agents, a)
		if _, err := iss.WaitRegistered(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	for e := uint64(1); e <= 3; e++ {
		if _, err := iss.IssueEpoch(ctx); err != nil {
			t.Fatal(err)
		}
		for _, a := range agents {
			if err := a.WaitEpoch(ctx, e); err != nil {
				t.Fatal(err)
			}
			if _, err := iss.WaitConfirmed(ctx, a.ID(), e); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Message keys and sealed envelopes: the keys are secrets the test
	// holds.
	for _, a := range agents {
		for k := range 3 {
			mk, err := a.NextKey()
			if err != nil {
				t.Fatal(err)
			}
			secrets[fmt.Sprintf("message key %d of %s", k, a.ID())] = bytes.Clone(mk.Bytes)
		}
		if _, err := a.Seal([]byte("reading")); err != nil {
			t.Fatal(err)
		}
	}
	// An operator path and a refused message add warning and error lines.
	if err := iss.Admin().Revoke("dev-3", ekissuer.Operator{Actor: "test", Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	iss.HandleMessage(wire.Topics{Prefix: wire.DefaultPrefix}.Status("dev-1"), []byte{0xa1, 0x00, 0x01})
	if err := iss.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		a.Close()
	}
	iss.Close()

	out := logs.String()
	lines := logs.records(t)
	if len(lines) < 20 {
		t.Fatalf("only %d log lines: the flow did not run", len(lines))
	}
	searched := 0
	for what, s := range secrets {
		forms := secretForms(s)
		if strings.Contains(what, "PEM") {
			forms = forms[:1] // base64 text already: no windows
		}
		for _, form := range forms {
			searched++
			if strings.Contains(out, form) {
				t.Errorf("the logs contain the %s (as %q)", what, form)
			}
		}
	}
	// The search sees attribute values: the public key hashes the issuer
	// logs are there.
	if !strings.Contains(out, `"pk_hash":"`) {
		t.Errorf("no pk_hash attribute in the logs: the search may not see attribute values")
	}
	t.Logf("searched %d log lines for %d secrets in %d forms", len(lines), len(secrets), searched)
}

// pemBody returns the base64 body of a PEM block (without headers and
// line breaks).
func pemBody(p []byte) []byte {
	var body []string
	for _, l := range strings.Split(string(p), "\n") {
		if l != "" && !strings.HasPrefix(l, "-----") {
			body = append(body, l)
		}
	}
	return []byte(strings.Join(body, ""))
}
