package issuer

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// damagedCopies writes damaged copies of the store file good into dir:
// truncated at every page boundary and at odd sizes, and with each page
// (of the first 64) overwritten by random bytes. It returns name → path.
func damagedCopies(t *testing.T, good []byte, dir string) map[string]string {
	t.Helper()
	const page = 4096
	out := map[string]string{}
	write := func(name string, b []byte) {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".db")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		out[name] = p
	}
	for size := page; size < len(good); size += page {
		write(fmt.Sprintf("truncated to %d", size), good[:size])
	}
	write("truncated to half", good[:len(good)/2])
	write("truncated by one byte", good[:len(good)-1])
	write("truncated to 100 bytes", good[:100])
	rng := rand.New(rand.NewPCG(1, 2))
	for p := 0; p*page < len(good) && p < 64; p++ {
		b := append([]byte(nil), good...)
		for k := p * page; k < (p+1)*page && k < len(b); k++ {
			b[k] = byte(rng.Uint32())
		}
		write(fmt.Sprintf("page %d garbled", p), b)
		// A smaller damage: a few bytes in the page header.
		b = append([]byte(nil), good...)
		for k := p * page; k < p*page+16 && k < len(b); k++ {
			b[k] ^= 0x5a
		}
		write(fmt.Sprintf("page %d header flipped", p), b)
	}
	return out
}

// goodStoreFile makes a store with devices, epochs, roots, a rotation-free
// chain and an audit log, and returns its bytes.
func goodStoreFile(t *testing.T) []byte {
	t.Helper()
	e := newEnv(t)
	for k := range 40 {
		e.register(newDevice(t, fmt.Sprintf("dev-%02d", k)))
	}
	for range 3 {
		e.issue()
	}
	if err := e.iss.Admin().Revoke("dev-01", testOp); err != nil {
		t.Fatal(err)
	}
	path := e.cfg.StorePath
	e.iss.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBoltStoreDamaged: a truncated or garbled store file gives an error
// (ErrStoreCorrupt naming the file where the damage is seen), never a
// panic or a crash, whatever is done with it; and a truncated file is
// always refused at open.
func TestBoltStoreDamaged(t *testing.T) {
	good := goodStoreFile(t)
	if len(good) < 8*4096 {
		t.Fatalf("the test store is only %d bytes: too small to damage usefully", len(good))
	}
	// The pages in use end at the high-water mark; bbolt grows the file
	// beyond it, so a truncation past it loses nothing.
	dir := t.TempDir()
	goodPath := filepath.Join(dir, "good.db")
	if err := os.WriteFile(goodPath, good, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := OpenStore(goodPath, true)
	if err != nil {
		t.Fatal(err)
	}
	var used int64
	st.(*boltStore).db.View(func(tx *bolt.Tx) error { used = tx.Size(); return nil })
	st.Close()
	refused := 0
	copies := damagedCopies(t, good, dir)
	for name, path := range copies {
		for _, readOnly := range []bool{true, false} {
			err := useStore(path, readOnly)
			switch {
			case err == nil:
			case errors.Is(err, ErrStoreCorrupt):
				refused++
				if !strings.Contains(err.Error(), path) {
					t.Errorf("%s: the error does not name the file: %v", name, err)
				}
			default:
				t.Errorf("%s (read-only %v): %v, want nil or ErrStoreCorrupt", name, readOnly, err)
			}
			if fi, _ := os.Stat(path); fi.Size() < used && !errors.Is(err, ErrStoreCorrupt) {
				t.Errorf("%s (read-only %v): opened and used: %v", name, readOnly, err)
			}
		}
	}
	t.Logf("%d damaged copies of a %d-byte store (%d bytes in use); %d opens refused as corrupt", len(copies), len(good), used, refused)
}

// useStore opens the store and does what the issuer and every admin
// command do with it, returning the first error. A panic fails the test
// by escaping.
func useStore(path string, readOnly bool) error {
	st, err := OpenStore(path, readOnly)
	if err != nil {
		return err
	}
	defer st.Close()
	a := StoreAdmin{Store: st}
	if _, err := a.Devices(); err != nil {
		return err
	}
	if _, err := a.LastEpoch(); err != nil {
		return err
	}
	if _, err := a.Audit(); err != nil {
		return err
	}
	if _, err := StoredRotations(st); err != nil {
		return err
	}
	if err := st.View(func(tx ReadTx) error {
		_, _, err := lastEpochInfo(tx)
		if err == nil {
			_, err = tx.Roots()
		}
		return err
	}); err != nil {
		return err
	}
	if readOnly {
		return nil
	}
	if err := a.Release("dev-01", Operator{Actor: "t"}); err != nil && !errors.Is(err, ErrUnknownDevice) {
		return err
	}
	_, err = st.CommitEpoch(&EpochCommit{Prev: 3, Epoch: 4, Records: []*record{testRecord("dev-00", 4)},
		Root: []byte("r"), Info: []byte("i"), KeepRoots: 2})
	if errors.Is(err, ErrEpochFence) {
		err = nil
	}
	return err
}

// TestBoltStoreNotAStore: files that are not a store at all are refused
// with the file's name, and left unchanged.
func TestBoltStoreNotAStore(t *testing.T) {
	dir := t.TempDir()
	for name, b := range map[string][]byte{
		"text":   []byte(strings.Repeat("not a bbolt file\n", 1000)),
		"zeros":  make([]byte, 64*1024),
		"a page": make([]byte, 4096),
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		for _, ro := range []bool{true, false} {
			if _, err := OpenStore(p, ro); !errors.Is(err, ErrStoreCorrupt) || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "hint") {
				t.Errorf("%s (read-only %v): %v", name, ro, err)
			}
		}
		if got, _ := os.ReadFile(p); string(got) != string(b) {
			t.Errorf("%s: refusing the file changed it", name)
		}
	}
}
