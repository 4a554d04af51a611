package device

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/dirsnap"
	"github.com/entropykem/entropykem/pkg/wire"
)

func sameSnapshot(t testing.TB, before, after map[string]string) {
	t.Helper()
	for p, v := range before {
		if w, ok := after[p]; !ok {
			t.Errorf("%s was removed", p)
		} else if w != v {
			t.Errorf("%s changed", p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s was created", p)
		}
	}
}

// TestLostStateRefused: a state directory that shows an earlier identity
// (any of registration.cbor, status.cbor, issuer-keys.cbor) without its
// state.bin is refused with ErrIdentityLost, an error that names the cause
// and the command to run, and nothing in the directory changes, not even a
// crash's leftover temporary file.
func TestLostStateRefused(t *testing.T) {
	for _, keep := range [][]string{
		{regFileName, statusFileName},
		{regFileName},
		{statusFileName},
		{issuerKeysFileName},
	} {
		t.Run(strings.Join(keep, "+"), func(t *testing.T) {
			e := newEnv(t, nil)
			e.first()
			// A rejection writes status.cbor.
			iss, ep := e.is.issue(2, e.clock.Now(), regDevice(t, e.a.Registration()))
			iss.Ticket[len(iss.Ticket)-1] ^= 1
			e.deliver(iss, ep)
			if err := e.a.Close(); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(e.dir, issuerKeysFileName), []byte{0xa1, 0x00, 0x01}, 0o600); err != nil {
				t.Fatal(err)
			}
			for _, n := range []string{stateFileName, regFileName, statusFileName, issuerKeysFileName} {
				if !contains(keep, n) {
					if err := os.Remove(filepath.Join(e.dir, n)); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := os.WriteFile(filepath.Join(e.dir, stateFileName+tmpInfix+"1"), []byte("crash"), 0o600); err != nil {
				t.Fatal(err)
			}
			before := dirsnap.Take(t, e.dir)
			for _, mustExist := range []bool{false, true} {
				c := e.config()
				c.MustExist = mustExist
				_, err := New(c)
				if !errors.Is(err, ErrIdentityLost) {
					t.Fatalf("New: %v, want ErrIdentityLost", err)
				}
				for _, want := range append([]string{"ekem-device reenroll", "backup", e.dir}, keep...) {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error does not say %q: %v", want, err)
					}
				}
			}
			sameSnapshot(t, before, dirsnap.Take(t, e.dir))
		})
	}
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// TestForeignStateRefused: a state.bin that does not decrypt (another
// cohort secret or id) or does not decode is refused and nothing in the
// directory changes; a directory without state.bin for another id does
// not count as an identity of this one only if it holds no identity file.
func TestForeignStateRefused(t *testing.T) {
	e := newEnv(t, nil)
	e.first()
	if err := e.a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.dir, statusFileName+tmpInfix+"9"), []byte("crash"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := dirsnap.Take(t, e.dir)
	c := e.config()
	c.Cohort = newCohort(t, 8)
	if _, err := New(c); !errors.Is(err, ErrStateKey) {
		t.Fatalf("other cohort: %v, want ErrStateKey", err)
	}
	sameSnapshot(t, before, dirsnap.Take(t, e.dir))

	b := e.stateFile()
	b[len(b)-1] ^= 1
	if err := os.WriteFile(filepath.Join(e.dir, stateFileName), b, 0o600); err != nil {
		t.Fatal(err)
	}
	before = dirsnap.Take(t, e.dir)
	if _, err := New(e.config()); !errors.Is(err, ErrStateKey) {
		t.Fatalf("damaged state: %v, want ErrStateKey", err)
	}
	sameSnapshot(t, before, dirsnap.Take(t, e.dir))
}

// TestReenroll: Config.Reenroll replaces a lost identity with a new key
// whose registration is marked as a re-enrollment; the learned issuer keys
// stay, the old Status goes (sequence numbers restart with the new key),
// and the re-enrolled state then loads like any other.
func TestReenroll(t *testing.T) {
	e := newEnv(t, nil)
	e.first()
	oldReg := e.a.Registration()
	if err := e.a.Close(); err != nil {
		t.Fatal(err)
	}
	keys := []byte{0xa1, 0x00, 0x01}
	if err := os.WriteFile(filepath.Join(e.dir, issuerKeysFileName), keys, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(e.dir, stateFileName)); err != nil {
		t.Fatal(err)
	}
	c := e.config()
	c.Reenroll = true
	a, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := wire.ParseRegistration(a.Registration())
	if err != nil {
		t.Fatal(err)
	}
	old, _ := wire.ParseRegistration(oldReg)
	if !reg.Reenroll || bytes.Equal(reg.PublicKey, old.PublicKey) {
		t.Fatalf("re-enrollment: marked %v, same key %v", reg.Reenroll, bytes.Equal(reg.PublicKey, old.PublicKey))
	}
	if a.Epoch() != 0 || a.StatusBytes() != nil {
		t.Fatalf("re-enrolled device at epoch %d with a status", a.Epoch())
	}
	if got, _ := os.ReadFile(filepath.Join(e.dir, issuerKeysFileName)); !bytes.Equal(got, keys) {
		t.Fatal("issuer-keys.cbor changed")
	}
	onDisk, _ := os.ReadFile(filepath.Join(e.dir, regFileName))
	if !bytes.Equal(onDisk, a.Registration()) {
		t.Fatal("registration.cbor is not the published registration")
	}
	a.Close()
	c.Reenroll = false
	b, err := New(c)
	if err != nil {
		t.Fatalf("reopen after re-enrollment: %v", err)
	}
	defer b.Close()
	if !bytes.Equal(b.Registration(), onDisk) {
		t.Fatal("reopened registration differs")
	}
}

// TestPersistentRejectionReportedOncePerEpoch: a device that keeps
// rejecting (here, tickets to a key it does not hold: its registration was
// re-pinned from a stale copy) reports the rejection again for each new
// ticket epoch, never twice for one (retained re-delivery, reconnect,
// restart).
func TestPersistentRejectionReportedOncePerEpoch(t *testing.T) {
	e := newEnv(t, nil)
	e.first()
	other := newEnv(t, nil) // a key this device does not hold
	stranger := regDevice(t, other.a.Registration())
	stranger.ID = devID
	n := e.pub.n()
	var seqs []uint64
	for ep := uint64(2); ep <= 4; ep++ {
		iss, epoch := e.is.issue(ep, e.clock.Now(), stranger)
		for range 3 { // retained re-deliveries of one ticket
			e.deliver(iss, epoch)
		}
		s, _ := e.pub.lastStatus(t)
		if s.State != wire.StateRejected || s.Reason != uint64(6) || s.Epoch != 1 {
			t.Fatalf("epoch %d: status %v reason %d epoch %d", ep, s.State, s.Reason, s.Epoch)
		}
		seqs = append(seqs, s.Seq)
		if ep == 3 {
			e.reopen() // after a restart the same ticket is not reported again
			e.deliver(iss, epoch)
		}
	}
	if got := e.pub.n() - n; got != 3 {
		t.Fatalf("%d Statuses for three rejected epochs, want 3", got)
	}
	if seqs[0]+1 != seqs[1] || seqs[1]+1 != seqs[2] {
		t.Fatalf("seqs %v", seqs)
	}
}

// TestReenrolledSeqAboveEarlierIdentity: a re-enrolled device numbers its
// Statuses above its re-enrollment's created_at, so it never repeats a seq
// of its earlier identity (which the issuer and the monitor would take for
// a clone), also after a restart.
func TestReenrolledSeqAboveEarlierIdentity(t *testing.T) {
	e := newEnv(t, nil)
	e.first()
	if err := e.a.Close(); err != nil {
		t.Fatal(err)
	}
	e.mod = func(c *Config) { c.Reenroll = true }
	e.open()
	e.mod = nil
	e.reopen()
	reg, _ := wire.ParseRegistration(e.a.Registration())
	if !reg.Reenroll {
		t.Fatal("not a re-enrollment")
	}
	iss, ep := e.is.issue(5, e.clock.Now(), regDevice(t, e.a.Registration()))
	e.deliver(iss, ep)
	s, _ := e.pub.lastStatus(t)
	if s.State != wire.StateGap && s.State != wire.StateOK {
		t.Fatalf("re-enrolled device did not accept: %v reason %d", s.State, s.Reason)
	}
	if s.Seq != reg.CreatedAt+1 {
		t.Fatalf("first Status seq %d, want created_at+1 = %d", s.Seq, reg.CreatedAt+1)
	}
	e.reopen()
	iss2, ep2 := e.is.issue(6, e.clock.Now(), nextDevice(t, s, iss))
	e.deliver(iss2, ep2)
	if s2, _ := e.pub.lastStatus(t); s2.Seq != s.Seq+1 || s2.Epoch != 6 {
		t.Fatalf("after restart: seq %d epoch %d, want %d, 6", s2.Seq, s2.Epoch, s.Seq+1)
	}
}

// selfSigned returns a TLS certificate with subject CN cn.
func selfSigned(t *testing.T, cn string) tls.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

// TestClientCertificateForAnotherID: Run refuses a client certificate
// whose CN is not the broker username before it connects.
func TestClientCertificateForAnotherID(t *testing.T) {
	for cn, ok := range map[string]bool{devID: true, "dev-2": false} {
		e := newEnv(t, func(c *Config) { c.TLS = &tls.Config{Certificates: []tls.Certificate{selfSigned(t, cn)}} })
		err := e.a.cfg.checkRun()
		if ok != (err == nil) || (!ok && (!errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), `"dev-2"`))) {
			t.Fatalf("CN %q: %v", cn, err)
		}
	}
}
