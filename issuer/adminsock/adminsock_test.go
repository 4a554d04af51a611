package adminsock

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/issuer"
)

// fakeAdmin records what it is asked.
type fakeAdmin struct {
	devices []issuer.DeviceInfo
	acts    []string
	ops     []issuer.Operator
}

func (f *fakeAdmin) Devices() ([]issuer.DeviceInfo, error) { return f.devices, nil }
func (f *fakeAdmin) Device(id string) (issuer.DeviceInfo, error) {
	for _, d := range f.devices {
		if d.ID == id {
			return d, nil
		}
	}
	return issuer.DeviceInfo{}, fmt.Errorf("%w: %q", issuer.ErrUnknownDevice, id)
}
func (f *fakeAdmin) LastEpoch() (uint64, error) { return 7, nil }
func (f *fakeAdmin) Backup(w io.Writer) error {
	_, err := w.Write([]byte("store bytes"))
	return err
}
func (f *fakeAdmin) Audit() ([]issuer.AuditEntry, error) {
	return []issuer.AuditEntry{{Seq: 1, Action: "revoke", Actor: "a"}}, nil
}
func (f *fakeAdmin) act(name, id string, op issuer.Operator) error {
	if _, err := f.Device(id); err != nil {
		return err
	}
	f.acts, f.ops = append(f.acts, name+" "+id), append(f.ops, op)
	return nil
}
func (f *fakeAdmin) Reset(id string, op issuer.Operator) error   { return f.act("reset", id, op) }
func (f *fakeAdmin) Revoke(id string, op issuer.Operator) error  { return f.act("revoke", id, op) }
func (f *fakeAdmin) Release(id string, op issuer.Operator) error { return f.act("release", id, op) }
func (f *fakeAdmin) Approve(id string, op issuer.Operator) error {
	return fmt.Errorf("%w: device %q", issuer.ErrNothingToApprove, id)
}

func TestSocketRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "admin.sock")
	fa := &fakeAdmin{devices: []issuer.DeviceInfo{{ID: "dev-1", State: issuer.StateActive, LastEpoch: 3}}}
	s, err := Listen(path, fa, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v %v", fi.Mode(), err)
	}
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if d, err := c.Devices(); err != nil || len(d) != 1 || d[0].LastEpoch != 3 {
		t.Fatalf("Devices %+v %v", d, err)
	}
	if _, err := c.Device("nobody"); !errors.Is(err, issuer.ErrUnknownDevice) {
		t.Fatalf("unknown device: %v", err)
	}
	if err := c.Approve("dev-1", issuer.Operator{}); !errors.Is(err, issuer.ErrNothingToApprove) {
		t.Fatalf("approve: %v", err)
	}
	if _, err := c.Device("bad/id"); err == nil {
		t.Fatal("an invalid id was sent")
	}
	// The actor is the peer, not what the client claims.
	if err := c.Revoke("dev-1", issuer.Operator{Actor: "someone else", Reason: "stolen"}); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("uid=%d(", os.Getuid())
	if len(fa.ops) != 1 || !strings.HasPrefix(fa.ops[0].Actor, want) || !strings.Contains(fa.ops[0].Actor, fmt.Sprintf("pid=%d", os.Getpid())) ||
		fa.ops[0].Reason != "stolen" || fa.acts[0] != "revoke dev-1" {
		t.Fatalf("operator %+v acts %v", fa.ops, fa.acts)
	}
	var copy bytes.Buffer
	if err := c.Backup(&copy); err != nil || copy.String() != "store bytes" {
		t.Fatalf("Backup %q %v", copy.String(), err)
	}
	if a, err := c.Audit(); err != nil || len(a) != 1 || a[0].Action != "revoke" {
		t.Fatalf("Audit %+v %v", a, err)
	}
	// A second issuer on the same path is refused; the first keeps it.
	if _, err := Listen(path, fa, nil); !errors.Is(err, ErrInUse) {
		t.Fatalf("second Listen: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left after Close: %v", err)
	}
	if _, err := Dial(path); err == nil {
		t.Fatal("Dial of a closed socket succeeded")
	}
}

func TestSocketPathChecks(t *testing.T) {
	dir := t.TempDir()
	// A stale socket (its issuer died) is replaced.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	s, err := Listen(stale, &fakeAdmin{}, nil)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	s.Close()
	// A regular file is never removed.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep"), 0o600)
	if _, err := Listen(file, &fakeAdmin{}, nil); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Fatal("the regular file was changed")
	}
}
