package tpmcohort_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/cryptotest"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/entropykem/entropykem/internal/swtpmtest"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/tpmcohort"
)

// vector is one entry of schema/testdata/cohort_mac.json.
type vector struct {
	Comment string `json:"comment"`
	Secret  string `json:"secret"`
	Msg     string `json:"msg"`
	MAC     string `json:"mac"`
}

func loadVectors(t testing.TB) []vector {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "schema", "testdata", "cohort_mac.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Vectors []vector `json:"vectors"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Vectors) == 0 {
		t.Fatal("no vectors")
	}
	return doc.Vectors
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newSecret(t testing.TB) []byte {
	t.Helper()
	s := make([]byte, cohort.SecretSize)
	rand.Read(s)
	return s
}

func softMAC(t testing.TB, secret, msg []byte) []byte {
	t.Helper()
	sw, err := cohort.NewSoftware(secret)
	if err != nil {
		t.Fatal(err)
	}
	m, err := sw.MAC(msg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// noSecret fails if err's text contains secret in any usual spelling.
func noSecret(t testing.TB, err error, secret []byte) {
	t.Helper()
	if err == nil {
		return
	}
	msg := err.Error()
	for _, form := range []string{
		string(secret),
		hex.EncodeToString(secret),
		strings.ToUpper(hex.EncodeToString(secret)),
		base64.StdEncoding.EncodeToString(secret),
		base64.RawURLEncoding.EncodeToString(secret),
	} {
		if strings.Contains(msg, form) {
			t.Fatalf("error contains the secret: %q", msg)
		}
	}
	// Any 8-byte window of the secret, in hex, is also a leak.
	for i := 0; i+8 <= len(secret); i++ {
		if strings.Contains(strings.ToLower(msg), hex.EncodeToString(secret[i:i+8])) {
			t.Fatalf("error contains part of the secret: %q", msg)
		}
	}
}

// assertNoHandles fails if any transient object or session is loaded.
func assertNoHandles(t testing.TB, tpm transport.TPM) {
	t.Helper()
	for _, first := range []uint32{0x80000000, 0x02000000, 0x03000000} {
		rsp, err := tpm2.GetCapability{
			Capability:    tpm2.TPMCapHandles,
			Property:      first,
			PropertyCount: 64,
		}.Execute(tpm)
		if err != nil {
			t.Fatalf("get capability handles %#x: %v", first, err)
		}
		hs, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range hs.Handle {
			if uint32(h)&0xff000000 == first {
				t.Errorf("handle %#x still loaded", uint32(h))
			}
		}
	}
}

func provision(t testing.TB, tpm transport.TPM, secret []byte, opts tpmcohort.Options) tpmcohort.Blob {
	t.Helper()
	blob, err := tpmcohort.Provision(tpm, secret, opts)
	noSecret(t, err, secret)
	if err != nil {
		t.Fatalf("provision: %v", err)
	}
	return blob
}

func open(t testing.TB, tpm transport.TPM, blob tpmcohort.Blob) *tpmcohort.Secret {
	t.Helper()
	s, err := tpmcohort.Open(tpm, blob)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestVectorsBothProviders(t *testing.T) {
	sw := swtpmtest.Start(t)
	tpm := sw.Open()
	secrets := map[string]*tpmcohort.Secret{}
	for _, v := range loadVectors(t) {
		secret, msg, want := unhex(t, v.Secret), unhex(t, v.Msg), unhex(t, v.MAC)
		if got := softMAC(t, secret, msg); !bytes.Equal(got, want) {
			t.Errorf("%s: software MAC %x, want %x", v.Comment, got, want)
		}
		s, ok := secrets[v.Secret]
		if !ok {
			s = open(t, tpm, provision(t, tpm, secret, tpmcohort.Options{}))
			secrets[v.Secret] = s
		}
		got, err := s.MAC(msg)
		if err != nil {
			t.Fatalf("%s: tpm MAC: %v", v.Comment, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: TPM MAC %x, want %x", v.Comment, got, want)
		}
	}
	assertNoHandles(t, tpm)
}

func TestMACEqualsSoftware(t *testing.T) {
	cryptotest.SetGlobalRandom(t, 1)
	sw := swtpmtest.Start(t)
	tpm := sw.Open()
	secret := newSecret(t)
	s := open(t, tpm, provision(t, tpm, secret, tpmcohort.Options{}))
	for _, n := range []int{0, 1, 31, 32, 46, 63, 64, 65, 500, 1023, 1024} {
		msg := make([]byte, n)
		rand.Read(msg)
		got, err := s.MAC(msg)
		noSecret(t, err, secret)
		if err != nil {
			t.Fatalf("MAC(%d bytes): %v", n, err)
		}
		if want := softMAC(t, secret, msg); !bytes.Equal(got, want) {
			t.Errorf("MAC(%d bytes) = %x, software %x", n, got, want)
		}
	}
	_, err := s.MAC(make([]byte, cohort.MaxMessage+1))
	if !errors.Is(err, tpmcohort.ErrMessageTooLarge) || !strings.Contains(err.Error(), "1025") {
		t.Errorf("MAC(1025 bytes) error = %v, want ErrMessageTooLarge naming the size", err)
	}
	if _, err := cohort.Secret(s).MAC(nil); err != nil {
		t.Errorf("MAC(nil) through cohort.Secret: %v", err)
	}
	assertNoHandles(t, tpm)
}

func TestProvisionTwice(t *testing.T) {
	sw := swtpmtest.Start(t)
	tpm := sw.Open()
	secret := newSecret(t)
	b1 := provision(t, tpm, secret, tpmcohort.Options{})
	b2 := provision(t, tpm, secret, tpmcohort.Options{})
	if bytes.Equal(b1.Private, b2.Private) {
		t.Error("two provisionings gave the same private area (no fresh wrapping)")
	}
	// The public unique value is H(seedValue ‖ secret) with a fresh random
	// seedValue (TPM 2.0 Part 1 §27.2.4), so public areas do not reveal
	// whether two blobs hold the same secret.
	if bytes.Equal(b1.Public, b2.Public) {
		t.Error("the same secret gave identical public areas")
	}
	msg := []byte("ekem/v1 cohort twice")
	m1, err1 := open(t, tpm, b1).MAC(msg)
	m2, err2 := open(t, tpm, b2).MAC(msg)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if !bytes.Equal(m1, m2) || !bytes.Equal(m1, softMAC(t, secret, msg)) {
		t.Errorf("MACs differ: %x %x", m1, m2)
	}
	assertNoHandles(t, tpm)
}

func TestBlobSurvivesRestart(t *testing.T) {
	sw := swtpmtest.Start(t)
	tpm := sw.Open()
	secret := newSecret(t)
	blob := provision(t, tpm, secret, tpmcohort.Options{})
	s := open(t, tpm, blob)
	sw.Restart()
	msg := []byte("after restart")
	got, err := s.MAC(msg) // same Secret: nothing was cached in the TPM
	if err != nil {
		t.Fatalf("MAC after restart: %v", err)
	}
	if !bytes.Equal(got, softMAC(t, secret, msg)) {
		t.Error("MAC after restart differs")
	}
	open(t, tpm, blob)
	assertNoHandles(t, tpm)
}

func TestBlobFromAnotherTPM(t *testing.T) {
	a, b := swtpmtest.Start(t), swtpmtest.Start(t)
	tpmA, tpmB := a.Open(), b.Open()
	secret := newSecret(t)
	for _, opts := range []tpmcohort.Options{{}, {PCRs: []uint{16}}} {
		blob := provision(t, tpmA, secret, opts)
		_, err := tpmcohort.Open(tpmB, blob)
		noSecret(t, err, secret)
		if !errors.Is(err, tpmcohort.ErrBlobMismatch) {
			t.Fatalf("open on another TPM: %v, want ErrBlobMismatch", err)
		}
		if !strings.Contains(err.Error(), "another TPM") || !strings.Contains(err.Error(), "re-provision") {
			t.Errorf("unclear mismatch message: %v", err)
		}
		// Forge the parent name to B's SRK: the TPM itself must refuse the
		// private area (it is integrity-protected under A's SRK seed).
		blobB := provision(t, tpmB, newSecret(t), tpmcohort.Options{})
		forged := blob
		forged.Parent = blobB.Parent
		_, err = tpmcohort.Open(tpmB, forged)
		if !errors.Is(err, tpmcohort.ErrBadBlob) || !errors.Is(err, tpm2.TPMRCIntegrity) {
			t.Errorf("open with forged parent: %v, want ErrBadBlob from TPM_RC_INTEGRITY", err)
		}
	}
	assertNoHandles(t, tpmA)
	assertNoHandles(t, tpmB)
}

// TestCorruptedBlob flips every byte of a blob's encoding: each flip must be
// refused by UnmarshalBlob or by Open, never give a working Secret.
func TestCorruptedBlob(t *testing.T) {
	sw := swtpmtest.Start(t)
	tpm := sw.Open()
	secret := newSecret(t)
	for _, opts := range []tpmcohort.Options{{}, {PCRs: []uint{16, 23}}} {
		blob := provision(t, tpm, secret, opts)
		enc, err := blob.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		parentAt := bytes.Index(enc, blob.Parent)
		if parentAt < 0 {
			t.Fatal("parent name not found in encoding")
		}
		var atDecode, atOpen int
		for i := range enc {
			bad := bytes.Clone(enc)
			bad[i] ^= 0x01
			dec, err := tpmcohort.UnmarshalBlob(bad)
			if err != nil {
				if !errors.Is(err, tpmcohort.ErrBadBlob) {
					t.Fatalf("byte %d: decode error %v does not wrap ErrBadBlob", i, err)
				}
				atDecode++
				continue
			}
			_, err = tpmcohort.Open(tpm, dec)
			noSecret(t, err, secret)
			inParent := i >= parentAt && i < parentAt+len(blob.Parent)
			switch {
			case err == nil:
				t.Fatalf("byte %d: corrupted blob opened", i)
			case inParent && errors.Is(err, tpmcohort.ErrBlobMismatch):
			case !errors.Is(err, tpmcohort.ErrBadBlob):
				t.Fatalf("byte %d: open error %v, want ErrBadBlob", i, err)
			}
			atOpen++
		}
		t.Logf("pcrs %v: %d bytes, %d refused by UnmarshalBlob, %d by Open", opts.PCRs, len(enc), atDecode, atOpen)
		for n := range len(enc) {
			if _, err := tpmcohort.UnmarshalBlob(enc[:n]); !errors.Is(err, tpmcohort.ErrBadBlob) {
				t.Fatalf("truncated to %d bytes: %v", n, err)
			}
		}
		// A corrupted private area that still parses reaches the TPM,
		// which refuses it.
		bad := blob
		bad.Private = bytes.Clone(blob.Private)
		bad.Private[len(bad.Private)-1] ^= 0x80
		_, err = tpmcohort.Open(tpm, bad)
		if !errors.Is(err, tpmcohort.ErrBadBlob) || !errors.Is(err, tpm2.TPMRCIntegrity) {
			t.Errorf("corrupted private area: %v, want ErrBadBlob from TPM_RC_INTEGRITY", err)
		}
	}
	assertNoHandles(t, tpm)
}

func TestBlobRoundTrip(t *testing.T) {
	sw := swtpmtest.Start(t)
	tpm := sw.Open()
	for _, opts := range []tpmcohort.Options{{}, {PCRs: []uint{23, 16, 16, 0}}} {
		blob := provision(t, tpm, newSecret(t), opts)
		enc, err := blob.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		dec, err := tpmcohort.UnmarshalBlob(enc)
		if err != nil {
			t.Fatal(err)
		}
		enc2, err := dec.MarshalBinary()
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("round trip: %v", err)
		}
		if len(opts.PCRs) > 0 && (len(dec.PCRs) != 3 || dec.PCRs[0] != 0 || dec.PCRs[2] != 23) {
			t.Errorf("pcrs not normalized: %v", dec.PCRs)
		}
		if _, err := tpmcohort.Open(tpm, dec); err != nil {
			t.Fatal(err)
		}
	}
}

func TestBadInputs(t *testing.T) {
	sw := swtpmtest.Start(t)
	tpm := sw.Open()
	secret := newSecret(t)
	long := append(bytes.Clone(secret), 0x42)
	_, err := tpmcohort.Provision(tpm, long, tpmcohort.Options{})
	noSecret(t, err, long)
	if !errors.Is(err, cohort.ErrBadSecret) {
		t.Errorf("33-byte secret: %v", err)
	}
	_, err = tpmcohort.Provision(tpm, secret, tpmcohort.Options{PCRs: []uint{24}})
	noSecret(t, err, secret)
	if err == nil {
		t.Error("pcr 24 accepted")
	}
	if _, err := tpmcohort.Open(tpm, tpmcohort.Blob{}); !errors.Is(err, tpmcohort.ErrBadBlob) {
		t.Errorf("empty blob: %v", err)
	}
	if _, err := (tpmcohort.Blob{}).MarshalBinary(); !errors.Is(err, tpmcohort.ErrBadBlob) {
		t.Errorf("marshal empty blob: %v", err)
	}
	s := open(t, tpm, provision(t, tpm, secret, tpmcohort.Options{}))
	s.Close()
	if _, err := s.MAC(nil); !errors.Is(err, tpmcohort.ErrClosed) {
		t.Errorf("MAC after Close: %v", err)
	}
	assertNoHandles(t, tpm)
}

func extendPCR(t testing.TB, tpm transport.TPM, pcr uint) {
	t.Helper()
	d := sha256.Sum256([]byte("measurement"))
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{
			{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]},
		}},
	}.Execute(tpm)
	if err != nil {
		t.Fatalf("extend pcr %d: %v", pcr, err)
	}
}

func resetPCR(t testing.TB, tpm transport.TPM, pcr uint) {
	t.Helper()
	_, err := tpm2.PCRReset{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
	}.Execute(tpm)
	if err != nil {
		t.Fatalf("reset pcr %d: %v", pcr, err)
	}
}

func TestPCRPolicy(t *testing.T) {
	sw := swtpmtest.Start(t)
	tpm := sw.Open()
	secret := newSecret(t)
	msg := []byte("ekem/v1 cohort pcr")
	want := softMAC(t, secret, msg)
	blob := provision(t, tpm, secret, tpmcohort.Options{PCRs: []uint{16}})
	if len(blob.PCRs) != 1 || blob.PCRs[0] != 16 {
		t.Fatalf("blob pcrs %v", blob.PCRs)
	}
	s := open(t, tpm, blob)

	macOK := func(when string) {
		t.Helper()
		got, err := s.MAC(msg)
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: wrong MAC", when)
		}
		assertNoHandles(t, tpm)
	}
	macOK("before extend")

	extendPCR(t, tpm, 16)
	for i := range 3 { // repeated failures must not leak or poison state
		_, err := s.MAC(msg)
		noSecret(t, err, secret)
		if !errors.Is(err, tpmcohort.ErrPolicy) {
			t.Fatalf("after extend, try %d: %v, want ErrPolicy", i, err)
		}
		assertNoHandles(t, tpm)
	}
	// Open only loads the key, which needs no policy.
	if _, err := tpmcohort.Open(tpm, blob); err != nil {
		t.Fatalf("open while policy unsatisfied: %v", err)
	}

	resetPCR(t, tpm, 16)
	macOK("after reset")

	// A key without a policy ignores PCR 16.
	plain := open(t, tpm, provision(t, tpm, secret, tpmcohort.Options{}))
	extendPCR(t, tpm, 16)
	if got, err := plain.MAC(msg); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("key without policy after extend: %v", err)
	}
	// A policy on the extended value is satisfied now and not after reset.
	s2 := open(t, tpm, provision(t, tpm, secret, tpmcohort.Options{PCRs: []uint{16}}))
	if _, err := s2.MAC(msg); err != nil {
		t.Fatalf("policy on extended value: %v", err)
	}
	resetPCR(t, tpm, 16)
	if _, err := s2.MAC(msg); !errors.Is(err, tpmcohort.ErrPolicy) {
		t.Fatalf("policy on extended value after reset: %v", err)
	}
	assertNoHandles(t, tpm)
}

func TestUnreachable(t *testing.T) {
	sw := swtpmtest.Start(t)
	tpm := sw.Open()
	secret := newSecret(t)
	blob := provision(t, tpm, secret, tpmcohort.Options{PCRs: []uint{16}})
	s := open(t, tpm, blob)
	plain := open(t, tpm, provision(t, tpm, secret, tpmcohort.Options{}))
	sw.Stop()

	for name, err := range map[string]error{
		"mac":        errOf(s.MAC([]byte("x"))),
		"mac plain":  errOf(plain.MAC([]byte("x"))),
		"open":       errOf(tpmcohort.Open(tpm, blob)),
		"provision":  errOf(tpmcohort.Provision(tpm, secret, tpmcohort.Options{})),
		"nil tpm":    errOf(tpmcohort.Open(nil, blob)),
		"opendevice": errOf(tpmcohort.OpenDevice(sw.Socket())),
	} {
		noSecret(t, err, secret)
		if !errors.Is(err, tpmcohort.ErrUnreachable) {
			t.Errorf("%s with swtpm stopped: %v, want ErrUnreachable", name, err)
		}
	}

	sw.Restart()
	if got, err := s.MAC([]byte("x")); err != nil || !bytes.Equal(got, softMAC(t, secret, []byte("x"))) {
		t.Fatalf("MAC after the TPM came back: %v", err)
	}
	assertNoHandles(t, tpm)
}

func errOf[T any](_ T, err error) error { return err }

func TestOpenDevice(t *testing.T) {
	sw := swtpmtest.Start(t)
	tpm, err := tpmcohort.OpenDevice(sw.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	secret := newSecret(t)
	s := open(t, tpm, provision(t, tpm, secret, tpmcohort.Options{}))
	if got, err := s.MAC(nil); err != nil || !bytes.Equal(got, softMAC(t, secret, nil)) {
		t.Fatalf("MAC via OpenDevice: %v", err)
	}
	file := filepath.Join(t.TempDir(), "plain")
	os.WriteFile(file, nil, 0o600)
	if _, err := tpmcohort.OpenDevice(file); err == nil || !strings.Contains(err.Error(), "regular file") {
		t.Errorf("regular file: %v", err)
	}
	if _, err := tpmcohort.OpenDevice(filepath.Join(t.TempDir(), "none")); !errors.Is(err, tpmcohort.ErrUnreachable) {
		t.Errorf("missing path: %v", err)
	}
}

func TestConcurrentMAC(t *testing.T) {
	sw := swtpmtest.Start(t)
	tpm := sw.Open()
	secret := newSecret(t)
	s := open(t, tpm, provision(t, tpm, secret, tpmcohort.Options{PCRs: []uint{16}}))
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 5 {
				msg := []byte{byte(g), byte(i)}
				got, err := s.MAC(msg)
				if err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(got, softMAC(t, secret, msg)) {
					t.Error("wrong MAC")
				}
			}
		})
	}
	wg.Wait()
	assertNoHandles(t, tpm)
}

func BenchmarkMAC(b *testing.B) {
	secret := make([]byte, cohort.SecretSize)
	rand.Read(secret)
	th := sha256.Sum256([]byte("ticket"))
	msg := append([]byte("ekem/v1 cohort"), th[:]...) // the protocol's cohort_mix input
	b.Run("software", func(b *testing.B) {
		s, err := cohort.NewSoftware(secret)
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := s.MAC(msg); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, c := range []struct {
		name string
		opts tpmcohort.Options
	}{{"tpm", tpmcohort.Options{}}, {"tpm-pcr16", tpmcohort.Options{PCRs: []uint{16}}}} {
		b.Run(c.name, func(b *testing.B) {
			sw := swtpmtest.Start(b)
			tpm := sw.Open()
			s := open(b, tpm, provision(b, tpm, secret, c.opts))
			for b.Loop() {
				if _, err := s.MAC(msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// recorder is a transport that keeps every command and response.
type recorder struct {
	tpm  transport.TPM
	mu   sync.Mutex
	wire [][]byte
}

func (r *recorder) Send(cmd []byte) ([]byte, error) {
	rsp, err := r.tpm.Send(cmd)
	r.mu.Lock()
	r.wire = append(r.wire, bytes.Clone(cmd), bytes.Clone(rsp))
	r.mu.Unlock()
	return rsp, err
}

func (r *recorder) contains(b []byte) bool {
	for _, w := range r.wire {
		if bytes.Contains(w, b) {
			return true
		}
	}
	return false
}

// TestBusConfidentiality records the TPM traffic of Provision and MAC: the
// secret never appears in it, and neither does the MAC (key material), with
// or without a PCR policy. The message is public and does appear.
func TestBusConfidentiality(t *testing.T) {
	sw := swtpmtest.Start(t)
	for _, opts := range []tpmcohort.Options{{}, {PCRs: []uint{16}}} {
		rec := &recorder{tpm: sw.Open()}
		secret := newSecret(t)
		s := open(t, rec, provision(t, rec, secret, opts))
		msg := []byte("ekem/v1 cohort on the bus")
		mac, err := s.MAC(msg)
		if err != nil {
			t.Fatal(err)
		}
		if !rec.contains(msg) {
			t.Fatal("recorder did not see the message: the check below would be vacuous")
		}
		if rec.contains(secret[:8]) || rec.contains(secret[len(secret)-8:]) {
			t.Errorf("pcrs %v: the secret is visible on the bus", opts.PCRs)
		}
		if rec.contains(mac[:8]) {
			t.Errorf("pcrs %v: the MAC is visible on the bus", opts.PCRs)
		}
		if len(rec.wire) < 10 {
			t.Errorf("only %d messages recorded", len(rec.wire))
		}
	}
}
