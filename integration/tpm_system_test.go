package integration

// End to end with the cohort secret in TPMs: a real Mosquitto 2 with the
// shipped broker-config, the issuer in-process, and two devices whose cohort
// provider is pkg/tpmcohort against their own software TPM (swtpm), as
// 'ekem-device provision-cohort' and 'ekem-device run -tpm' set them up:
// the secret is imported once, only the blob is stored in the state
// directory, and the device opens the key from that blob. Each device has its
// own swtpm because each is its own machine (and swtpm serves one connection
// at a time). Skips without swtpm or mosquitto unless EKEM_REQUIRE_SWTPM=1 /
// EKEM_REQUIRE_MOSQUITTO=1.

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/internal/mosquittotest"
	"github.com/entropykem/entropykem/internal/swtpmtest"
	ekissuer "github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/tpmcohort"
)

// tpmSysTimeout bounds every wait (a guard against hanging, not a timing
// check).
const tpmSysTimeout = 15 * time.Second

// tpmSysDevice is one device with its TPM.
type tpmSysDevice struct {
	id, dir string
	sw      *swtpmtest.SWTPM
	agent   *device.Agent
	runErr  chan error
	mu      sync.Mutex
	fps     map[uint64]string // accepted epoch → key_epoch fingerprint
}

func (d *tpmSysDevice) onEvent(e device.Event) {
	if e.Kind != device.EventAccepted {
		return
	}
	d.mu.Lock()
	d.fps[e.Epoch] = e.Fingerprint
	d.mu.Unlock()
}

// tpmProvisionDevice does what provision-cohort does on a device: import
// secret into the device's TPM (bound to pcrs) and store only the blob in
// dir/cohort.blob.
func tpmProvisionDevice(t *testing.T, sw *swtpmtest.SWTPM, dir string, secret []byte, pcrs []uint) {
	t.Helper()
	tpm, err := tpmcohort.OpenDevice(sw.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	blob, err := tpmcohort.Provision(tpm, secret, tpmcohort.Options{PCRs: pcrs})
	if err != nil {
		t.Fatalf("provision: %v", err)
	}
	data, err := blob.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cohort.blob"), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// tpmOpenCohort does what run -tpm does: open the TPM and the key of the
// stored blob. Both are closed at the end of the test.
func tpmOpenCohort(t *testing.T, sw *swtpmtest.SWTPM, dir string) *tpmcohort.Secret {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "cohort.blob"))
	if err != nil {
		t.Fatal(err)
	}
	blob, err := tpmcohort.UnmarshalBlob(data)
	if err != nil {
		t.Fatal(err)
	}
	tpm, err := tpmcohort.OpenDevice(sw.Socket())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	s, err := tpmcohort.Open(tpm, blob)
	if err != nil {
		t.Fatalf("open cohort key: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Two devices of one cohort (one of them with its key bound to PCR 16),
// each with the cohort secret in its own swtpm, register with the issuer
// over Mosquitto and accept epochs 1 and 2; the issuer verifies each
// device's confirm tag for each epoch. The state they persisted is the one
// a software provider of the same secret derives (the providers agree) and
// does not decrypt under another secret.
func TestTPMSystemTwoEpochs(t *testing.T) {
	ids := []string{"tpm-dev-1", "tpm-dev-2"}
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: ids})
	key, err := signature.GenerateKey(signature.MLDSA87)
	if err != nil {
		t.Fatal(err)
	}
	pins, err := signature.NewKeySet(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	secret := make([]byte, cohort.SecretSize)
	rand.Read(secret)
	base := t.TempDir()
	issLog, devLog := &logBuffer{}, &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("issuer log:\n%s", issLog.String())
			t.Logf("device log:\n%s", devLog.String())
		}
	})

	a := b.Issuer()
	iss, err := ekissuer.New(ekissuer.Config{
		Broker: b.URL(), Username: a.Username, Password: a.Password,
		Key: key, StorePath: filepath.Join(base, "issuer.db"), Period: time.Minute,
		Logger: slog.New(slog.NewJSONHandler(issLog, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { iss.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), tpmSysTimeout)
	defer cancel()
	if err := iss.Start(ctx); err != nil {
		t.Fatalf("issuer start: %v", err)
	}

	devs := map[string]*tpmSysDevice{}
	for i, id := range ids {
		d := &tpmSysDevice{id: id, dir: filepath.Join(base, id), sw: swtpmtest.Start(t), runErr: make(chan error, 1), fps: map[uint64]string{}}
		var pcrs []uint
		if i == 0 {
			pcrs = []uint{16}
		}
		tpmProvisionDevice(t, d.sw, d.dir, secret, pcrs)
		d.agent, err = device.New(device.Config{
			ID: id, Broker: b.URL(), Password: b.Account(id).Password, StateDir: d.dir,
			Cohort: tpmOpenCohort(t, d.sw, d.dir), IssuerKeys: pins,
			Logger:  slog.New(slog.NewJSONHandler(devLog, &slog.HandlerOptions{Level: slog.LevelDebug})).With("device", id),
			OnEvent: d.onEvent,
		})
		if err != nil {
			t.Fatalf("device.New(%s): %v", id, err)
		}
		t.Cleanup(func() { d.agent.Close() })
		go func() { d.runErr <- d.agent.Run(context.Background()) }()
		devs[id] = d
	}
	for _, id := range ids {
		if _, err := iss.WaitRegistered(ctx, id); err != nil {
			t.Fatalf("issuer did not pin %s: %v", id, err)
		}
	}

	for e := uint64(1); e <= 2; e++ {
		ctx, cancel := context.WithTimeout(t.Context(), tpmSysTimeout)
		got, err := iss.IssueEpoch(ctx)
		if err != nil || got != e {
			cancel()
			t.Fatalf("IssueEpoch: %d %v, want epoch %d", got, err, e)
		}
		for _, id := range ids {
			if err := devs[id].agent.WaitEpoch(ctx, e); err != nil {
				cancel()
				t.Fatalf("%s did not accept epoch %d: %v (counters %v)", id, e, err, devs[id].agent.Counters())
			}
			info, err := iss.WaitConfirmed(ctx, id, e)
			if err != nil || info.ConfirmedEpoch != e || info.LastEpoch != e {
				cancel()
				t.Fatalf("issuer did not verify %s's confirm tag for epoch %d: %v (%+v)", id, e, err, info)
			}
		}
		cancel()
	}

	// Four epoch keys, all different (one cohort, but each ticket's ss and
	// hash differ), none failed locally.
	seen := map[string]bool{}
	for _, id := range ids {
		d := devs[id]
		if c := d.agent.Counters(); c["failed"] != 0 || c["accepted"] != 2 {
			t.Fatalf("%s counters %v, want 2 accepted and no failure", id, c)
		}
		d.mu.Lock()
		for e := uint64(1); e <= 2; e++ {
			fp := d.fps[e]
			if fp == "" || seen[fp] {
				t.Errorf("%s epoch %d: key fingerprint %q missing or repeated", id, e, fp)
			}
			seen[fp] = true
		}
		d.mu.Unlock()
	}

	// Stop device 1 and reopen its state: with the software provider of
	// the same secret it loads on epoch 2; under another secret it is
	// ErrStateKey.
	d := devs[ids[0]]
	if err := d.agent.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-d.runErr; err != nil {
		t.Fatalf("Run: %v", err)
	}
	soft, _ := cohort.NewSoftware(secret)
	ag, err := device.New(device.Config{ID: d.id, StateDir: d.dir, Cohort: soft, MustExist: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("state written with the TPM provider, opened with the software one: %v", err)
	}
	if ag.Epoch() != 2 {
		t.Fatalf("reopened on epoch %d, want 2", ag.Epoch())
	}
	ag.Close()
	other := bytes.Clone(secret)
	other[0] ^= 1
	wrong, _ := cohort.NewSoftware(other)
	if _, err := device.New(device.Config{ID: d.id, StateDir: d.dir, Cohort: wrong, MustExist: true, Logger: slog.New(slog.DiscardHandler)}); !errors.Is(err, device.ErrStateKey) {
		t.Fatalf("state under another cohort secret: %v, want ErrStateKey", err)
	}
}
