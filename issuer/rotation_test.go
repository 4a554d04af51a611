package issuer

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/entropykem/entropykem/internal/logbuf"
	"github.com/entropykem/entropykem/internal/mqttc"
	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/trust"
	"github.com/entropykem/entropykem/pkg/wire"
)

// testKey returns a fixed issuer key; env's Key is testKey(t, 7).
func testKey(t testing.TB, seed byte) *signature.PrivateKey {
	t.Helper()
	k, err := signature.NewKeyFromSeed(signature.MLDSA65, bytes.Repeat([]byte{seed}, signature.SeedSize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func kidHex(k *signature.PrivateKey) string { return hex.EncodeToString(k.Public().KID()) }

func readStoreFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// announce stops the issuer and stores a rotation from cur to next.
func (e *env) announce(cur, next *signature.PrivateKey, overlap uint64) RotationInfo {
	e.t.Helper()
	if err := e.iss.Close(); err != nil {
		e.t.Fatal(err)
	}
	info, err := AnnounceKeyRotation(e.cfg.StorePath, cur, next.Public(), overlap, e.clock.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	return info
}

// restart reopens the issuer with these signing keys.
func (e *env) restart(key, next *signature.PrivateKey) {
	e.t.Helper()
	e.iss.Close()
	e.cfg.Key, e.cfg.NextKey = key, next
	e.open()
}

// newWithKeys tries to open the issuer with these signing keys.
func (e *env) newWithKeys(key, next *signature.PrivateKey) error {
	cfg := e.cfg
	cfg.Key, cfg.NextKey = key, next
	iss, err := New(cfg)
	if err == nil {
		iss.Close()
	}
	return err
}

// signedOnlyBy checks that root verifies under want alone, for epoch, and
// not under other.
func signedOnlyBy(t testing.TB, root []byte, epoch uint64, want, other *signature.PrivateKey) {
	t.Helper()
	only := func(k *signature.PrivateKey) *signature.KeySet {
		s, err := signature.NewKeySet(k.Public())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	payload, _, err := signature.Verify1(root, only(want))
	if err != nil {
		t.Fatalf("root of epoch %d does not verify under key %s: %v", epoch, kidHex(want), err)
	}
	if r, err := wire.ParseEpochRoot(payload); err != nil || r.Epoch != epoch {
		t.Fatalf("root payload %+v %v, want epoch %d", r, err, epoch)
	}
	if _, _, err := signature.Verify1(root, only(other)); err == nil {
		t.Fatalf("root of epoch %d verifies under key %s too", epoch, kidHex(other))
	}
}

// TestKeyRotationSwitch: after rotate-key with an overlap of 2 at epoch 2,
// epochs 3 and 4 are signed by the old key alone and epochs 5 on by the
// new key alone; a device that learned the announcement accepts every one
// with the keys its trust gives for that epoch. After the switch the old
// key is refused at startup, and the new key runs alone.
func TestKeyRotationSwitch(t *testing.T) {
	e := newEnv(t)
	k0, k1 := e.cfg.Key, testKey(t, 0x11)
	d := newDevice(t, "dev-1")
	e.register(d)
	e.issue()
	e.issue()
	info := e.announce(k0, k1, 2)
	if info.From != 5 || info.LastEpoch != 2 || !bytes.Equal(info.OldKID, k0.Public().KID()) || !bytes.Equal(info.NewKID, k1.Public().KID()) {
		t.Fatalf("rotation info %+v", info)
	}
	e.restart(k0, k1)

	tr, err := trust.Load(e.pins, [][]byte{info.Signed})
	if err != nil {
		t.Fatal(err)
	}
	for epoch := uint64(3); epoch <= 7; epoch++ {
		e.clock.Set(e.clock.Now().Add(time.Hour))
		if got := e.issue(); got != epoch {
			t.Fatalf("issued %d, want %d", got, epoch)
		}
		tk, root, _ := e.latest("dev-1")
		if epoch < info.From {
			signedOnlyBy(t, root, epoch, k0, k1)
		} else {
			signedOnlyBy(t, root, epoch, k1, k0)
		}
		res := d.accept(tk, root, tr.KeysAt(epoch), e.clock.Now().Add(time.Second))
		e.iss.handle(e.iss.topics.Status("dev-1"), d.status(res))
		if dev, _ := e.iss.Device("dev-1"); dev.ConfirmedEpoch != epoch {
			t.Fatalf("epoch %d not confirmed: %+v", epoch, dev)
		}
	}
	// After the switch the old key is retired: an issuer still given it
	// does not start, whatever the next key.
	e.iss.Close()
	for _, next := range []*signature.PrivateKey{k1, nil} {
		if err := e.newWithKeys(k0, next); !errors.Is(err, ErrSigningKey) || !strings.Contains(err.Error(), "retired") {
			t.Fatalf("old key after the switch (next %v): %v", next != nil, err)
		}
	}
	e.restart(k1, nil)
	if got := e.issue(); got != 8 {
		t.Fatal(got)
	}
	_, root, _ := e.latest("dev-1")
	signedOnlyBy(t, root, 8, k1, k0)
}

// TestKeyRotationRefusedWithoutNextKey: an issuer started without the
// announced next key signs the overlap with the old key, then refuses the
// first epoch of the new key (no fallback to the old one): ErrSigningKey
// naming the kid and the epoch, counted, logged with its reason, and the
// store file not changed by one byte. A restart then fails fast, and one
// with the next key issues that epoch with it.
func TestKeyRotationRefusedWithoutNextKey(t *testing.T) {
	logs := &logbuf.Buffer{}
	e := newEnv(t, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(logs, nil)) })
	k0, k1 := e.cfg.Key, testKey(t, 0x11)
	e.register(newDevice(t, "dev-1"))
	e.issue()
	info := e.announce(k0, k1, 1)
	if info.From != 3 {
		t.Fatalf("from %d", info.From)
	}
	e.restart(k0, nil)
	if !strings.Contains(logs.String(), "reason=next_key_missing") {
		t.Fatalf("no warning that the next key is missing:\n%s", logs)
	}
	if got := e.issue(); got != 2 {
		t.Fatal(got)
	}
	_, root, _ := e.latest("dev-1")
	signedOnlyBy(t, root, 2, k0, k1)

	before := readStoreFile(t, e.cfg.StorePath)
	ep, err := e.iss.IssueEpoch(context.Background())
	if ep != 0 || !errors.Is(err, ErrSigningKey) {
		t.Fatalf("epoch 3 without the next key: %d %v", ep, err)
	}
	if msg := err.Error(); !strings.Contains(msg, "epoch 3") || !strings.Contains(msg, kidHex(k1)) {
		t.Fatalf("error does not name the epoch and the kid: %v", err)
	}
	if e.counter("signing_key_missing") != 1 || e.iss.LastEpoch() != 2 {
		t.Fatalf("counters %v, last epoch %d", e.iss.Counters(), e.iss.LastEpoch())
	}
	if !strings.Contains(logs.String(), "reason=signing_key_missing") || !strings.Contains(logs.String(), "kid="+kidHex(k1)) {
		t.Fatalf("refusal not logged with its reason:\n%s", logs)
	}
	if !bytes.Equal(readStoreFile(t, e.cfg.StorePath), before) {
		t.Fatal("the refused epoch changed the store file")
	}
	if problems := strings.Join(e.iss.readiness(), "\n"); !strings.Contains(problems, "key: epoch 3 needs key "+kidHex(k1)) {
		t.Fatalf("readiness %q", problems)
	}
	// A restart without the next key now fails at once, and opening the
	// store to find out writes nothing either.
	e.iss.Close()
	if err := e.newWithKeys(k0, nil); !errors.Is(err, ErrSigningKey) || !strings.Contains(err.Error(), "epoch 3") {
		t.Fatalf("restart without the next key: %v", err)
	}
	if !bytes.Equal(readStoreFile(t, e.cfg.StorePath), before) {
		t.Fatal("a refused start changed the store file")
	}
	e.restart(k0, k1)
	if got := e.issue(); got != 3 {
		t.Fatal(got)
	}
	_, root, _ = e.latest("dev-1")
	signedOnlyBy(t, root, 3, k1, k0)
}

// TestRotateKeyRefusals: every refusal of AnnounceKeyRotation wraps
// ErrKeyRotation, says why, and leaves the store file byte-identical.
func TestRotateKeyRefusals(t *testing.T) {
	e := newEnv(t)
	k0, k1, k2 := e.cfg.Key, testKey(t, 0x11), testKey(t, 0x22)
	e.register(newDevice(t, "dev-1"))
	e.issue()
	e.issue()
	e.iss.Close()
	path := e.cfg.StorePath
	refused := func(cur, next *signature.PrivateKey, overlap uint64, want string) {
		t.Helper()
		before := readStoreFile(t, path)
		_, err := AnnounceKeyRotation(path, cur, next.Public(), overlap, e.clock.Now())
		if !errors.Is(err, ErrKeyRotation) || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s -> %s: got %v, want ErrKeyRotation containing %q", kidHex(cur), kidHex(next), err, want)
		}
		if !bytes.Equal(readStoreFile(t, path), before) {
			t.Fatalf("refusal %q changed the store file", want)
		}
	}
	// k2 signed nothing: the last root is k0's.
	refused(k2, k1, 1, "the root of epoch 2 is signed by key "+kidHex(k0))
	refused(k0, k0, 1, "the new key is the current key")
	refused(k0, k1, 0, "overlap must be at least 1")

	info, err := AnnounceKeyRotation(path, k0, k1.Public(), 3, e.clock.Now())
	if err != nil || info.From != 6 {
		t.Fatalf("rotation: %+v %v", info, err)
	}
	// Pending until epoch 6 is issued: no second rotation, from either key.
	refused(k1, k2, 1, "has not taken effect yet")
	refused(k0, k2, 1, "has not taken effect yet")

	e.restart(k0, k1)
	for range 4 {
		e.issue()
	}
	e.iss.Close()
	refused(k0, k2, 1, "epoch 7 is to be signed by key "+kidHex(k1))
	refused(k1, k0, 1, "was the issuer's key before")
	refused(k1, k1, 1, "the new key is the current key")
	if info, err := AnnounceKeyRotation(path, k1, k2.Public(), 1, e.clock.Now()); err != nil || info.From != 8 {
		t.Fatalf("second rotation: %+v %v", info, err)
	}

	// No store: refused, and none is created.
	none := filepath.Join(t.TempDir(), "none.db")
	if _, err := AnnounceKeyRotation(none, k0, k1.Public(), 1, e.clock.Now()); err == nil {
		t.Fatal("rotation on a missing store")
	}
	if _, err := os.Stat(none); !os.IsNotExist(err) {
		t.Fatalf("a store was created: %v", err)
	}
	// The store is locked while an issuer runs.
	e.restart(k1, k2)
	if _, err := AnnounceKeyRotation(path, k1, k2.Public(), 1, e.clock.Now()); !errors.Is(err, ErrStoreLocked) {
		t.Fatalf("rotation while the issuer runs: %v", err)
	}
}

func storeVersionOf(t testing.TB, path string) uint64 {
	t.Helper()
	st, err := OpenStore(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var v uint64
	st.(*boltStore).db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta).Get(keyVersion)
		for _, c := range b {
			v = v<<8 | uint64(c)
		}
		return nil
	})
	return v
}

// TestRotationsStored: announcements survive reopening, in order, byte
// for byte; the first one raises the store to layout version 2; a store
// holding anything but a valid chain of KeyRotation COSE_Sign1 messages is
// refused as corrupt.
func TestRotationsStored(t *testing.T) {
	e := newEnv(t)
	k0, k1, k2 := e.cfg.Key, testKey(t, 0x11), testKey(t, 0x22)
	e.register(newDevice(t, "dev-1"))
	e.issue()
	e.iss.Close()
	path := e.cfg.StorePath
	if v := storeVersionOf(t, path); v != storeVersion1 {
		t.Fatalf("a store without rotations is version %d", v)
	}
	first := e.announce(k0, k1, 1)
	if v := storeVersionOf(t, path); v != storeVersion {
		t.Fatalf("a store with a rotation is version %d", v)
	}
	e.restart(k0, k1)
	e.issue()
	e.issue()
	second := e.announce(k1, k2, 1)
	e.restart(k1, k2)
	if len(e.iss.chain) != 2 {
		t.Fatalf("issuer loaded %d rotations", len(e.iss.chain))
	}
	e.iss.Close()
	st, err := OpenStore(path, true)
	if err != nil {
		t.Fatal(err)
	}
	rots, err := StoredRotations(st)
	st.Close()
	if err != nil || len(rots) != 2 {
		t.Fatalf("%d rotations, %v", len(rots), err)
	}
	for n, want := range []RotationInfo{first, second} {
		r := rots[n]
		if !bytes.Equal(r.Signed, want.Signed) || r.From != want.From || !bytes.Equal(r.Old, want.OldKID) || !bytes.Equal(r.New.KID(), want.NewKID) {
			t.Fatalf("rotation %d: %+v, want %+v", n, r, want)
		}
	}
	good := readStoreFile(t, path)

	// Corruptions, each in a copy of the store.
	notRotation, err := signature.Sign1(k2, []byte{0xa0})
	if err != nil {
		t.Fatal(err)
	}
	k3 := testKey(t, 0x33)
	unlinked, err := trust.Sign(k3, testKey(t, 0x44).Public(), 9, 1) // k3 never was the issuer's key
	if err != nil {
		t.Fatal(err)
	}
	backwards, err := trust.Sign(k2, k3.Public(), 3, 1) // From before the previous rotation's
	if err != nil {
		t.Fatal(err)
	}
	forged := bytes.Clone(second.Signed)
	forged[len(forged)-1] ^= 1 // the signature no longer verifies
	for name, put := range map[string]func(*bolt.Bucket) error{
		"garbage":        func(b *bolt.Bucket) error { return b.Put(keyschedule.U64(9), []byte("garbage")) },
		"not a rotation": func(b *bolt.Bucket) error { return b.Put(keyschedule.U64(9), notRotation) },
		"unlinked":       func(b *bolt.Bucket) error { return b.Put(keyschedule.U64(9), unlinked) },
		"backwards":      func(b *bolt.Bucket) error { return b.Put(keyschedule.U64(9), backwards) },
		"forged":         func(b *bolt.Bucket) error { return b.Put(keyschedule.U64(2), forged) },
		"bad key":        func(b *bolt.Bucket) error { return b.Put([]byte{1}, first.Signed) },
	} {
		p := filepath.Join(t.TempDir(), "copy.db")
		if err := os.WriteFile(p, good, 0o600); err != nil {
			t.Fatal(err)
		}
		db, err := bolt.Open(p, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Update(func(tx *bolt.Tx) error { return put(tx.Bucket(bucketRotations)) }); err != nil {
			t.Fatal(err)
		}
		db.Close()
		st, err := OpenStore(p, true)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := StoredRotations(st); !errors.Is(err, ErrStoreCorrupt) {
			t.Errorf("%s: stored rotations: %v", name, err)
		}
		st.Close()
		cfg := e.cfg
		cfg.StorePath, cfg.Key, cfg.NextKey = p, k1, k2
		if _, err := New(cfg); !errors.Is(err, ErrStoreCorrupt) {
			t.Errorf("%s: New: %v", name, err)
		}
	}
}

// TestSigningKeyStartupChecks: New refuses configured keys that do not
// fit the stored rotations (checkSigningKeys), before issuing anything.
func TestSigningKeyStartupChecks(t *testing.T) {
	e := newEnv(t)
	k0, k1, k2 := e.cfg.Key, testKey(t, 0x11), testKey(t, 0x22)
	e.register(newDevice(t, "dev-1"))
	e.issue()
	e.iss.Close()
	cfg := e.cfg
	cfg.NextKey = k0
	if err := cfg.Validate(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "next key") {
		t.Fatalf("next key = key: %v", err)
	}
	if err := e.newWithKeys(k0, k1); !errors.Is(err, ErrSigningKey) || !strings.Contains(err.Error(), "not announced") {
		t.Fatalf("next key without a rotation: %v", err)
	}
	// Another key without an announcement would strand every device.
	before := readStoreFile(t, e.cfg.StorePath)
	if err := e.newWithKeys(k2, nil); !errors.Is(err, ErrSigningKey) || !strings.Contains(err.Error(), "no key rotation announces it") {
		t.Fatalf("unannounced key swap: %v", err)
	}
	if !bytes.Equal(readStoreFile(t, e.cfg.StorePath), before) {
		t.Fatal("a refused start changed the store file")
	}
	e.open()
	e.announce(k0, k1, 2) // from epoch 4
	for _, c := range []struct {
		key, next *signature.PrivateKey
		want      string
	}{
		{k0, k2, "next key " + kidHex(k2) + " is not announced"},
		{k2, k1, "key " + kidHex(k2) + " is none of the issuer keys"},
		{k1, nil, "epoch 2 must be signed by key " + kidHex(k0)},
		{k1, k0, "next key " + kidHex(k0) + " is not announced"},
	} {
		if err := e.newWithKeys(c.key, c.next); !errors.Is(err, ErrSigningKey) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("key %s next %v: got %v, want %q", kidHex(c.key), c.next != nil, err, c.want)
		}
	}
	for _, next := range []*signature.PrivateKey{nil, k1} {
		if err := e.newWithKeys(k0, next); err != nil {
			t.Fatalf("old key during the overlap (next %v): %v", next != nil, err)
		}
	}
	e.restart(k0, k1)
	e.issue()
	e.issue() // epoch 3: the last one of k0
	e.iss.Close()
	// Just before the switch, both keys are still a valid configuration.
	if err := e.newWithKeys(k0, k1); err != nil {
		t.Fatalf("both keys before the switch: %v", err)
	}
	e.restart(k0, k1)
	e.issue() // epoch 4, signed by k1
	e.iss.Close()
	if err := e.newWithKeys(k0, k1); !errors.Is(err, ErrSigningKey) || !strings.Contains(err.Error(), "key "+kidHex(k0)+" is retired") {
		t.Fatalf("retired key after the switch: %v", err)
	}
	if err := e.newWithKeys(k1, nil); err != nil {
		t.Fatalf("new key alone after the switch: %v", err)
	}
}

// TestKeyAnnouncementPublishedOnConnect: on connecting, the issuer
// publishes the stored announcement retained on issuer/key/{new kid},
// before the roots, and a device that subscribes later gets it and learns
// the new key from its pinned one.
func TestKeyAnnouncementPublishedOnConnect(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := startBroker(t, "")
	e := newEnv(t, func(c *Config) { c.Broker = "tcp://" + b.addr })
	k0, k1 := e.cfg.Key, testKey(t, 0x11)
	e.register(newDevice(t, "dev-1"))
	e.issue()
	info := e.announce(k0, k1, 3)
	e.restart(k0, k1)
	if err := e.iss.Start(ctx); err != nil {
		t.Fatal(err)
	}
	tp := e.iss.topics
	keyTopic := tp.IssuerKey(k1.Public().KID())
	if keyTopic != tp.Prefix+"/issuer/key/"+kidHex(k1) {
		t.Fatal(keyTopic)
	}
	first := await(t, ctx, b.next, "announcement or root", func(m mqttc.Message) bool {
		return m.Topic == keyTopic || m.Topic == tp.Root(1)
	})
	if first.Topic != keyTopic || !bytes.Equal(first.Payload, info.Signed) {
		t.Fatalf("first published %s (%d bytes), want the stored announcement on %s", first.Topic, len(first.Payload), keyTopic)
	}
	// Wait until the whole republish is acknowledged before subscribing
	// (see broker): announcement, root, ticket, epoch info.
	for e.counter("republished") < 4 {
		select {
		case <-ctx.Done():
			t.Fatalf("republish: %v", e.iss.Counters())
		case <-time.After(10 * time.Millisecond):
		}
	}
	dc := dial(t, ctx, b.addr, "dev-late", tp.AllIssuerKeys())
	m := await(t, ctx, dc.Inbox().Next, "retained announcement", func(m mqttc.Message) bool { return m.Topic == keyTopic })
	if !m.Retained || !bytes.Equal(m.Payload, info.Signed) {
		t.Fatalf("retained %v, same bytes %v", m.Retained, bytes.Equal(m.Payload, info.Signed))
	}
	tr, err := trust.New(e.pins)
	if err != nil {
		t.Fatal(err)
	}
	if _, r, err := tr.Learn(m.Payload); err != nil || !r.New.Equal(k1.Public()) || r.From != info.From {
		t.Fatalf("device learns %+v %v", r, err)
	}
	if c := e.iss.Counters(); c["publish_failures"] != 0 {
		t.Fatalf("counters %v", c)
	}
}
