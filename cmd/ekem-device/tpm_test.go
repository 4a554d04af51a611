package main

// Tests of the TPM cohort provider of the CLI (provision-cohort, and -tpm of
// run and next-key) against a real software TPM (swtpm). Without swtpm they
// skip, unless EKEM_REQUIRE_SWTPM=1 makes that a failure.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/internal/dirsnap"
	"github.com/entropykem/entropykem/internal/logbuf"
	"github.com/entropykem/entropykem/internal/swtpmtest"
	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/tpmcohort"
	"github.com/entropykem/entropykem/pkg/wire"
)

// tpmNewSecret returns a fresh random cohort secret.
func tpmNewSecret(t *testing.T) []byte {
	t.Helper()
	s := make([]byte, cohort.SecretSize)
	rand.Read(s)
	return s
}

// tpmSecretFile writes secret in hex (with a newline) to a 0600 file.
func tpmSecretFile(t *testing.T, secret []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cohort.key")
	if err := os.WriteFile(p, []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// tpmCLI runs the CLI and returns its exit status, stdout and stderr. It
// fails the test if either output contains the secret in hex.
func tpmCLI(t *testing.T, secret []byte, args ...string) (int, string, string) {
	t.Helper()
	var out, errb logbuf.Buffer
	code := execute(t.Context(), args, env(nil), &out, &errb)
	if secret != nil {
		for _, s := range []string{out.String(), errb.String()} {
			if strings.Contains(strings.ToLower(s), hex.EncodeToString(secret[:8])) || bytes.Contains([]byte(s), secret) {
				t.Fatalf("%v printed the secret", args[0])
			}
		}
	}
	return code, out.String(), errb.String()
}

// tpmProvision runs provision-cohort and requires success.
func tpmProvision(t *testing.T, secret []byte, dir, sock string, extra ...string) {
	t.Helper()
	args := append([]string{"provision-cohort", "-state", dir, "-tpm", sock, "-secret-file", tpmSecretFile(t, secret)}, extra...)
	if code, _, errb := tpmCLI(t, secret, args...); code != 0 {
		t.Fatalf("provision-cohort: exit %d: %s", code, errb)
	}
}

// tpmBlob reads and decodes dir/cohort.blob.
func tpmBlob(t *testing.T, dir string) ([]byte, tpmcohort.Blob) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, blobFileName))
	if err != nil {
		t.Fatal(err)
	}
	b, err := tpmcohort.UnmarshalBlob(data)
	if err != nil {
		t.Fatal(err)
	}
	return data, b
}

// tpmMACs returns the MACs of a few messages computed by the key of blob
// in the TPM, and checks them against the software HMAC of secret.
func tpmMACs(t *testing.T, tpm transport.TPM, blob tpmcohort.Blob, secret []byte) [][]byte {
	t.Helper()
	s, err := tpmcohort.Open(tpm, blob)
	if err != nil {
		t.Fatalf("open blob: %v", err)
	}
	defer s.Close()
	sw, _ := cohort.NewSoftware(secret)
	var macs [][]byte
	for _, m := range []string{"ekem/v1 state-keydev-0001", "ekem/v1 cohort" + strings.Repeat("\x42", 32)} {
		got, err := s.MAC([]byte(m))
		if err != nil {
			t.Fatalf("tpm mac: %v", err)
		}
		want, _ := sw.MAC([]byte(m))
		if !bytes.Equal(got, want) {
			t.Fatalf("TPM MAC of %q differs from the software HMAC of the secret", m)
		}
		macs = append(macs, got)
	}
	return macs
}

func tpmSameSnapshot(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	for p, v := range before {
		if after[p] != v {
			t.Errorf("%s changed %s", what, p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s created %s", what, p)
		}
	}
}

// tpmRunEpoch runs 'run -tpm sock' for device id in dir against an
// in-process broker, issues epoch 1 to its registration, waits until the
// device accepted it and its Status confirms it, then stops the device.
func tpmRunEpoch(t *testing.T, f files, dir, sock, id string) {
	t.Helper()
	url := startBroker(t)
	topics, _ := wire.NewTopics(wire.DefaultPrefix)
	iss := dialRecorder(t, url, "ekem-issuer", topics.AllRegistrations(), topics.AllStatuses())
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out, errb logbuf.Buffer
	done := make(chan int, 1)
	go func() {
		done <- execute(ctx, []string{"run", "-id", id, "-broker", url, "-password-file", f.password, "-state", dir,
			"-issuer-pub", f.issuerPub, "-tpm", sock}, env(nil), &out, &errb)
	}()
	var reg []byte
	select {
	case code := <-done:
		t.Fatalf("run exited early with %d: %s", code, errb.String())
	default:
		reg = iss.Wait(topics.Registration(id), 1)
	}
	ep := issueFor(t, f, 1, []batch.Device{regDevice(t, reg)})
	iss.Put(topics.Root(1), ep.Root)
	iss.Put(topics.Ticket(id), ep.Tickets[0].Ticket)
	waitFor(t, &errb, `msg="ticket accepted" device=`+id+` epoch=1 state=ok prev_epoch=0 key=[0-9a-f]{16}`)
	s, err := wire.ParseStatus(iss.Wait(topics.Status(id), 1))
	if err != nil || s.Epoch != 1 || !ep.Tickets[0].Secrets.CheckConfirm(s.Confirm) {
		t.Fatalf("status %+v %v", s, err)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("run exit %d: %s", code, errb.String())
	}
	if strings.Contains(errb.String(), "WARNING: cohort secret held in a file") {
		t.Fatal("the file-backed warning with -tpm")
	}
}

// provision-cohort stores only the blob (0600, no temporary file left, not
// the secret), run -tpm opens it and accepts a ticket whose Status the
// issuer's side verifies, and the state it wrote is the one a software
// cohort of the same secret derives (the providers agree): next-key works
// with either provider, one after the other.
func TestProvisionCohortThenRun(t *testing.T) {
	sw := swtpmtest.Start(t)
	f := provision(t)
	secret := tpmNewSecret(t)
	dir := filepath.Join(t.TempDir(), "dev-0001")
	code, out, errb := tpmCLI(t, secret, "provision-cohort", "-state", dir, "-tpm", sw.Socket(), "-secret-file", tpmSecretFile(t, secret))
	if code != 0 {
		t.Fatalf("provision-cohort: exit %d: %s", code, errb)
	}
	if !strings.Contains(out, "blob written to "+filepath.Join(dir, blobFileName)) {
		t.Fatalf("stdout %q", out)
	}
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 1 || ents[0].Name() != blobFileName {
		t.Fatalf("state dir holds %v (%v), want only %s", ents, err, blobFileName)
	}
	if fi, _ := os.Stat(filepath.Join(dir, blobFileName)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("blob mode %v", fi.Mode().Perm())
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir mode %v", fi.Mode().Perm())
	}
	data, blob := tpmBlob(t, dir)
	if bytes.Contains(data, secret) || len(blob.PCRs) != 0 {
		t.Fatal("blob holds the secret in the clear, or a policy nobody asked for")
	}
	tpmMACs(t, sw.Open(), blob, secret)

	tpmRunEpoch(t, f, dir, sw.Socket(), "dev-0001")

	nk := func(cohortFlag, value string) string {
		t.Helper()
		code, out, errb := tpmCLI(t, secret, "next-key", "-id", "dev-0001", "-state", dir, cohortFlag, value)
		if code != 0 {
			t.Fatalf("next-key %s: exit %d: %s", cohortFlag, code, errb)
		}
		return out
	}
	if out := nk("-tpm", sw.Socket()); !strings.HasPrefix(out, "dev-0001 epoch=1 ctr=0 ") {
		t.Fatalf("next-key -tpm: %q", out)
	}
	if out := nk("-cohort-file", tpmSecretFile(t, secret)); !strings.HasPrefix(out, "dev-0001 epoch=1 ctr=1 ") {
		t.Fatalf("next-key -cohort-file: %q", out)
	}
	if out := nk("-tpm", sw.Socket()); !strings.HasPrefix(out, "dev-0001 epoch=1 ctr=2 ") {
		t.Fatalf("next-key -tpm after the software provider: %q", out)
	}
}

// A second provision-cohort is refused without -force and leaves the blob
// as it was; with -force (here reading raw bytes from standard input) it
// writes a new blob of the same key: different bytes, the same MACs.
func TestProvisionCohortTwice(t *testing.T) {
	sw := swtpmtest.Start(t)
	tpm := sw.Open()
	secret := tpmNewSecret(t)
	dir := t.TempDir()
	tpmProvision(t, secret, dir, sw.Socket(), "-pcrs", "16")
	first, blob1 := tpmBlob(t, dir)
	macs1 := tpmMACs(t, tpm, blob1, secret)

	code, _, errb := tpmCLI(t, secret, "provision-cohort", "-state", dir, "-tpm", sw.Socket(), "-secret-file", tpmSecretFile(t, secret))
	if code != 1 || !strings.Contains(errb, "already exists") || !strings.Contains(errb, "-force") {
		t.Fatalf("second provision without -force: exit %d: %s", code, errb)
	}
	if again, _ := tpmBlob(t, dir); !bytes.Equal(again, first) {
		t.Fatal("a refused provision changed the blob")
	}

	stdin = bytes.NewReader(secret) // 32 raw bytes
	t.Cleanup(func() { stdin = os.Stdin })
	code, _, errb = tpmCLI(t, secret, "provision-cohort", "-state", dir, "-tpm", sw.Socket(), "-secret-stdin", "-pcrs", "16", "-force")
	if code != 0 {
		t.Fatalf("provision -force: exit %d: %s", code, errb)
	}
	second, blob2 := tpmBlob(t, dir)
	if bytes.Equal(second, first) {
		t.Fatal("-force wrote the same blob bytes (Provision makes a new blob every time)")
	}
	macs2 := tpmMACs(t, tpm, blob2, secret)
	for i := range macs1 {
		if !bytes.Equal(macs1[i], macs2[i]) {
			t.Fatal("the re-provisioned key gives other MACs")
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("state dir holds %d entries, want the blob only", len(ents))
	}
}

// tpmNewDevice creates device id's state in dir with the TPM cohort (as run
// does before connecting) and closes it.
func tpmNewDevice(t *testing.T, dir, sock, id string) {
	t.Helper()
	tpm, err := tpmcohort.OpenDevice(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	_, blob := tpmBlob(t, dir)
	s, err := tpmcohort.Open(tpm, blob)
	if err != nil {
		t.Fatal(err)
	}
	a, err := device.New(device.Config{ID: id, StateDir: dir, Cohort: s, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
}

// tpmRunArgs are run's flags for device dev-0001 in dir with -tpm sock; the
// broker is never reached because the cohort fails first.
func tpmRunArgs(f files, dir, sock string) []string {
	return []string{"run", "-id", "dev-0001", "-broker", "tcp://127.0.0.1:1", "-password-file", f.password,
		"-state", dir, "-issuer-pub", f.issuerPub, "-tpm", sock}
}

// A blob made by one TPM is refused by another with an error that says to
// re-provision, and nothing in the state directory changes.
func TestProvisionCohortBlobFromAnotherTPM(t *testing.T) {
	a, b := swtpmtest.Start(t), swtpmtest.Start(t)
	f := provision(t)
	secret := tpmNewSecret(t)
	dir := t.TempDir()
	tpmProvision(t, secret, dir, a.Socket())
	tpmNewDevice(t, dir, a.Socket(), "dev-0001")
	before := dirsnap.Take(t, dir)
	code, _, errb := tpmCLI(t, secret, tpmRunArgs(f, dir, b.Socket())...)
	if code != 1 || !strings.HasPrefix(errb, "ekem-device: cohort blob "+filepath.Join(dir, blobFileName)+" was made by a different TPM than the one at "+b.Socket()) ||
		!strings.Contains(errb, "re-provision") || !strings.Contains(errb, tpmcohort.ErrBlobMismatch.Error()) {
		t.Fatalf("run with another TPM's blob: exit %d: %s", code, errb)
	}
	tpmSameSnapshot(t, "run with another TPM's blob", before, dirsnap.Take(t, dir))
	// next-key goes through the same path.
	code, _, errb = tpmCLI(t, secret, "next-key", "-id", "dev-0001", "-state", dir, "-tpm", b.Socket())
	if code != 1 || !strings.Contains(errb, "re-provision") {
		t.Fatalf("next-key with another TPM's blob: exit %d: %s", code, errb)
	}
	tpmSameSnapshot(t, "next-key with another TPM's blob", before, dirsnap.Take(t, dir))
}

// With the TPM gone (swtpm stopped), run and provision-cohort fail with
// "TPM at PATH unreachable" and write nothing: the state directory is
// unchanged, a new one is not created, a forced re-provision keeps the old
// blob.
func TestProvisionCohortTPMUnreachable(t *testing.T) {
	sw := swtpmtest.Start(t)
	f := provision(t)
	secret := tpmNewSecret(t)
	dir := t.TempDir()
	tpmProvision(t, secret, dir, sw.Socket())
	tpmNewDevice(t, dir, sw.Socket(), "dev-0001")
	before := dirsnap.Take(t, dir)
	sw.Stop()

	want := "ekem-device: TPM at " + sw.Socket() + " unreachable: "
	code, _, errb := tpmCLI(t, secret, tpmRunArgs(f, dir, sw.Socket())...)
	if code != 1 || !strings.HasPrefix(errb, want) {
		t.Fatalf("run with the TPM stopped: exit %d: %s", code, errb)
	}
	code, _, errb = tpmCLI(t, secret, "provision-cohort", "-state", dir, "-tpm", sw.Socket(), "-force", "-secret-file", tpmSecretFile(t, secret))
	if code != 1 || !strings.HasPrefix(errb, want) {
		t.Fatalf("provision -force with the TPM stopped: exit %d: %s", code, errb)
	}
	tpmSameSnapshot(t, "commands with the TPM stopped", before, dirsnap.Take(t, dir))

	fresh := filepath.Join(t.TempDir(), "new")
	code, _, errb = tpmCLI(t, secret, "provision-cohort", "-state", fresh, "-tpm", sw.Socket(), "-secret-file", tpmSecretFile(t, secret))
	if code != 1 || !strings.HasPrefix(errb, want) {
		t.Fatalf("provision with the TPM stopped: exit %d: %s", code, errb)
	}
	if _, err := os.Stat(fresh); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a failed provision created the state directory: %v", err)
	}

	// The TPM back (same owner seed, as after a reboot): the device opens.
	sw.Restart()
	code, _, errb = tpmCLI(t, secret, "next-key", "-id", "dev-0001", "-state", dir, "-tpm", sw.Socket())
	if code != 1 || !strings.Contains(errb, device.ErrNoKey.Error()) {
		t.Fatalf("next-key after the TPM came back: exit %d: %s (want the device's no-ticket error)", code, errb)
	}
}

// tpmExtendPCR extends a PCR of the SHA-256 bank with a measurement, through
// its own connection (the device's transport is not in use meanwhile).
func tpmExtendPCR(t *testing.T, tpm transport.TPM, pcr uint) {
	t.Helper()
	d := sha256.Sum256([]byte("another boot"))
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
	}.Execute(tpm)
	if err != nil {
		t.Fatalf("extend PCR %d: %v", pcr, err)
	}
}

// A key bound with -pcrs 16 works while PCR 16 holds its provisioning
// value; once PCR 16 is extended the device's derivation fails with an
// error naming the PCR policy and nothing changes; after a PCR reset it
// works again. A key without a policy ignores PCR 16.
func TestProvisionCohortPCRPolicy(t *testing.T) {
	sw := swtpmtest.Start(t)
	f := provision(t)
	secret := tpmNewSecret(t)
	dir := t.TempDir()
	tpmProvision(t, secret, dir, sw.Socket(), "-pcrs", "16")
	if _, blob := tpmBlob(t, dir); len(blob.PCRs) != 1 || blob.PCRs[0] != 16 {
		t.Fatalf("blob PCRs %v, want [16]", blob.PCRs)
	}
	tpmRunEpoch(t, f, dir, sw.Socket(), "dev-0001")

	ctl := sw.Open()
	tpmExtendPCR(t, ctl, 16)
	before := dirsnap.Take(t, dir)
	for _, args := range [][]string{
		{"next-key", "-id", "dev-0001", "-state", dir, "-tpm", sw.Socket()},
		tpmRunArgs(f, dir, sw.Socket()),
	} {
		code, _, errb := tpmCLI(t, secret, args...)
		if code != 1 || !strings.Contains(errb, "TPM at "+sw.Socket()+" refuses the cohort key: it is bound to PCRs 16") ||
			!strings.Contains(errb, tpmcohort.ErrPolicy.Error()) {
			t.Fatalf("%s with PCR 16 extended: exit %d: %s", args[0], code, errb)
		}
	}
	tpmSameSnapshot(t, "derivation with PCR 16 extended", before, dirsnap.Take(t, dir))

	if _, err := (tpm2.PCRReset{PCRHandle: tpm2.AuthHandle{Handle: 16, Auth: tpm2.PasswordAuth(nil)}}).Execute(ctl); err != nil {
		t.Fatal(err)
	}
	code, out, errb := tpmCLI(t, secret, "next-key", "-id", "dev-0001", "-state", dir, "-tpm", sw.Socket())
	if code != 0 || !strings.HasPrefix(out, "dev-0001 epoch=1 ctr=0 ") {
		t.Fatalf("next-key after PCR reset: exit %d: %s %s", code, out, errb)
	}

	plain := t.TempDir()
	tpmProvision(t, secret, plain, sw.Socket())
	tpmNewDevice(t, plain, sw.Socket(), "dev-0002")
	tpmExtendPCR(t, ctl, 16)
	code, _, errb = tpmCLI(t, secret, "next-key", "-id", "dev-0002", "-state", plain, "-tpm", sw.Socket())
	if code != 1 || !strings.Contains(errb, device.ErrNoKey.Error()) {
		t.Fatalf("key without a policy after extend: exit %d: %s (want the device's no-ticket error)", code, errb)
	}
}

// A state directory copied to another device whose TPM holds a different
// cohort secret is useless there: the state does not decrypt
// (device.ErrStateKey) and is not replaced. The same secret in the other
// TPM would open it; that is by design (the key is the cohort secret's, the
// TPM only guards it), so it is the secret that protects a copied state.
func TestProvisionCohortStateCopiedToAnotherTPM(t *testing.T) {
	a, b := swtpmtest.Start(t), swtpmtest.Start(t)
	f := provision(t)
	secret, other := tpmNewSecret(t), tpmNewSecret(t)
	dir := t.TempDir()
	tpmProvision(t, secret, dir, a.Socket())
	tpmRunEpoch(t, f, dir, a.Socket(), "dev-0001")

	copyDir := func(name string) string {
		dst := filepath.Join(t.TempDir(), name)
		if err := os.CopyFS(dst, os.DirFS(dir)); err != nil {
			t.Fatal(err)
		}
		return dst
	}
	stolen := copyDir("stolen")
	tpmProvision(t, other, stolen, b.Socket(), "-force")
	stateBefore, _ := os.ReadFile(filepath.Join(stolen, "state.bin"))
	code, _, errb := tpmCLI(t, other, "next-key", "-id", "dev-0001", "-state", stolen, "-tpm", b.Socket())
	if code != 1 || !strings.Contains(errb, device.ErrStateKey.Error()) {
		t.Fatalf("copied state on a TPM with another secret: exit %d: %s", code, errb)
	}
	code, _, errb = tpmCLI(t, other, tpmRunArgs(f, stolen, b.Socket())...)
	if code != 1 || !strings.Contains(errb, device.ErrStateKey.Error()) {
		t.Fatalf("run on copied state with another secret: exit %d: %s", code, errb)
	}
	if after, _ := os.ReadFile(filepath.Join(stolen, "state.bin")); !bytes.Equal(after, stateBefore) {
		t.Fatal("the undecryptable state was replaced")
	}
	// The library reports the sentinel.
	tpm, err := tpmcohort.OpenDevice(b.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	_, blob := tpmBlob(t, stolen)
	s, err := tpmcohort.Open(tpm, blob)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := device.New(device.Config{ID: "dev-0001", StateDir: stolen, Cohort: s, MustExist: true, Logger: discardLogger()}); !errors.Is(err, device.ErrStateKey) {
		t.Fatalf("device.New on copied state: %v, want ErrStateKey", err)
	}

	same := copyDir("same-secret")
	tpmProvision(t, secret, same, b.Socket(), "-force")
	code, out, errb := tpmCLI(t, secret, "next-key", "-id", "dev-0001", "-state", same, "-tpm", b.Socket())
	if code != 0 || !strings.HasPrefix(out, "dev-0001 epoch=1 ctr=0 ") {
		t.Fatalf("copied state on a TPM with the same secret: exit %d: %s %s", code, out, errb)
	}
}

// Flag errors of the cohort providers and of provision-cohort: exit 2, a
// message naming the flags or the size, nothing created, the secret never
// printed. None of them needs a TPM.
func TestProvisionCohortUsageErrors(t *testing.T) {
	f := provision(t)
	secret := tpmNewSecret(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "s")
	good := tpmSecretFile(t, secret)
	short := filepath.Join(dir, "short")
	os.WriteFile(short, secret[:10], 0o600)
	notHex := filepath.Join(dir, "nothex")
	os.WriteFile(notHex, []byte(hex.EncodeToString(secret)[:62]+"zz"), 0o600)
	long := filepath.Join(dir, "long")
	os.WriteFile(long, []byte(hex.EncodeToString(secret)+"00"), 0o600)
	run := []string{"run", "-id", "dev-0001", "-broker", "tcp://127.0.0.1:1", "-password-file", f.password,
		"-state", state, "-issuer-pub", f.issuerPub}
	pc := func(extra ...string) []string {
		return append([]string{"provision-cohort", "-state", state, "-tpm", filepath.Join(dir, "no-tpm")}, extra...)
	}
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"tpm and cohort file", append(run, "-tpm", "/dev/tpmrm0", "-cohort-file", f.cohort), nil,
			"-tpm and -cohort-file are exclusive"},
		{"tpm env and cohort file", append(run, "-cohort-file", f.cohort), map[string]string{"EKEM_TPM": "/dev/tpmrm0"},
			"EKEM_TPM and -cohort-file are exclusive"},
		{"no cohort", run, nil, "a cohort secret is required: -tpm PATH (EKEM_TPM)"},
		{"next-key no cohort", []string{"next-key", "-id", "dev-0001", "-state", state}, nil, "or, for development only, -cohort-file FILE"},
		{"provision no tpm", []string{"provision-cohort", "-state", state, "-secret-file", good}, nil, "-tpm is required"},
		{"provision no state", []string{"provision-cohort", "-tpm", "/dev/tpmrm0", "-secret-file", good}, nil, "-state is required"},
		{"provision no secret", pc(), nil, "the cohort secret is required: -secret-file FILE or -secret-stdin"},
		{"provision two secrets", pc("-secret-file", good, "-secret-stdin"), nil, "-secret-file and -secret-stdin are exclusive"},
		{"provision short secret", pc("-secret-file", short), nil, "-secret-file " + short + " holds 10 bytes"},
		{"provision long secret", pc("-secret-file", long), nil, "holds 66 bytes (66 without surrounding white space)"},
		{"provision not hex", pc("-secret-file", notHex), nil, "holds 64 characters that are not all hex digits"},
		{"provision missing file", pc("-secret-file", filepath.Join(dir, "none")), nil, "-secret-file: open"},
		{"provision pcr range", pc("-secret-file", good, "-pcrs", "16,24"), nil, `-pcrs: "24" is not a PCR index 0-23`},
		{"provision pcr junk", pc("-secret-file", good, "-pcrs", "x"), nil, `-pcrs: "x" is not a PCR index 0-23`},
		{"provision argument", pc("-secret-file", good, "extra"), nil, `unexpected argument "extra"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errb logbuf.Buffer
			code := execute(t.Context(), c.args, env(c.env), &out, &errb)
			if code != 2 || !strings.HasPrefix(errb.String(), "ekem-device: ") || !strings.Contains(errb.String(), c.want) {
				t.Fatalf("exit %d, stderr %q, want 2 and %q", code, errb.String(), c.want)
			}
			low := strings.ToLower(out.String() + errb.String())
			for i := 0; i+4 <= len(secret); i++ {
				if strings.Contains(low, hex.EncodeToString(secret[i:i+4])) {
					t.Fatal("output contains part of the secret")
				}
			}
			if _, err := os.Stat(state); err == nil {
				t.Fatal("a usage error created the state directory")
			}
		})
	}

	// Not usage errors (exit 1): a missing blob says how to provision; a
	// path that is no TPM says what it is.
	os.Mkdir(state, 0o700)
	code, _, errb := tpmCLI(t, secret, append(run, "-tpm", "/dev/tpmrm0")...)
	if code != 1 || !strings.Contains(errb, "no cohort blob "+filepath.Join(state, blobFileName)) ||
		!strings.Contains(errb, "ekem-device provision-cohort -state "+state+" -tpm /dev/tpmrm0") {
		t.Fatalf("run without a blob: exit %d: %s", code, errb)
	}
	code, _, errb = tpmCLI(t, secret, "provision-cohort", "-state", state, "-tpm", good, "-secret-file", good)
	if code != 1 || !strings.Contains(errb, "ekem-device: TPM at "+good+": ") || !strings.Contains(errb, "regular file") {
		t.Fatalf("provision into a regular file: exit %d: %s", code, errb)
	}
	os.WriteFile(filepath.Join(state, blobFileName), []byte("junk"), 0o600)
	code, _, errb = tpmCLI(t, secret, append(run, "-tpm", "/dev/tpmrm0")...)
	if code != 1 || !strings.Contains(errb, "cohort blob "+filepath.Join(state, blobFileName)+" is corrupt or not a cohort key") {
		t.Fatalf("run with a junk blob: exit %d: %s", code, errb)
	}
	if ents, _ := os.ReadDir(state); len(ents) != 1 {
		t.Fatalf("state dir holds %d entries after failures, want the junk blob only", len(ents))
	}
}

func TestProvisionCohortHelp(t *testing.T) {
	var out, errb logbuf.Buffer
	if code := execute(t.Context(), []string{"provision-cohort", "-h"}, env(nil), &out, &errb); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, w := range []string{"examples:\n  ekem-device provision-cohort", "-secret-stdin", "-pcrs", "-force", "EKEM_TPM"} {
		if !strings.Contains(errb.String(), w) {
			t.Fatalf("help lacks %q:\n%s", w, errb.String())
		}
	}
	out.Reset()
	execute(t.Context(), []string{"-h"}, env(nil), &out, &errb)
	if !strings.Contains(out.String(), "provision-cohort") || !strings.Contains(out.String(), "-tpm") {
		t.Fatal("top-level usage does not mention provision-cohort and -tpm")
	}
}

// fleet -tpm: the simulated devices share the cohort key opened once from
// -state/cohort.blob; both accept epoch 1 and confirm it.
func TestProvisionCohortFleet(t *testing.T) {
	sw := swtpmtest.Start(t)
	f := provision(t)
	secret := tpmNewSecret(t)
	base := filepath.Join(t.TempDir(), "fleet")
	tpmProvision(t, secret, base, sw.Socket())
	url := startBroker(t)
	topics, _ := wire.NewTopics(wire.DefaultPrefix)
	iss := dialRecorder(t, url, "ekem-issuer", topics.AllRegistrations(), topics.AllStatuses())
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out, errb logbuf.Buffer
	done := make(chan int, 1)
	go func() {
		done <- execute(ctx, []string{"fleet", "-n", "2", "-broker", url, "-passwords", f.passwords, "-state", base,
			"-issuer-pub", f.issuerPub, "-tpm", sw.Socket()}, env(nil), &out, &errb)
	}()
	ids := []string{"dev-0001", "dev-0002"}
	var devs []batch.Device
	for _, id := range ids {
		devs = append(devs, regDevice(t, iss.Wait(topics.Registration(id), 1)))
	}
	ep := issueFor(t, f, 1, devs)
	iss.Put(topics.Root(1), ep.Root)
	for _, tk := range ep.Tickets {
		iss.Put(topics.Ticket(tk.DeviceID), tk.Ticket)
	}
	for i, id := range ids {
		waitFor(t, &errb, `msg="ticket accepted" fleet_index=\d device=`+id+` epoch=1 state=ok`)
		s, err := wire.ParseStatus(iss.Wait(topics.Status(id), 1))
		if err != nil || s.Epoch != 1 || !ep.Tickets[i].Secrets.CheckConfirm(s.Confirm) {
			t.Fatalf("%s status %+v %v", id, s, err)
		}
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("fleet exit %d: %s", code, errb.String())
	}
	// Each device's state decrypts under the cohort secret (the software
	// provider agrees with the TPM's).
	for _, id := range ids {
		code, out, errb := tpmCLI(t, secret, "next-key", "-id", id, "-state", filepath.Join(base, id), "-cohort-file", tpmSecretFile(t, secret))
		if code != 0 || !strings.HasPrefix(out, id+" epoch=1 ctr=0 ") {
			t.Fatalf("next-key %s: exit %d: %s %s", id, code, out, errb)
		}
	}
}
