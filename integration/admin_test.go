package integration

// Online administration (issue #11): every operator command runs against a
// running ekem-issuer through its admin socket, issuance goes on, and
// every action is in the audit log with its actor and reason. Another Unix
// user is refused: by the socket's mode, and by the issuer's peer
// credential check when the mode is loosened.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	ekissuer "github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/wire"
)

// runBin runs bin to completion (bounded) and returns its exit code and
// output. cred, if set, runs it as another user.
func runBin(t *testing.T, cred *syscall.Credential, bin string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), faultTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=/", "TMPDIR=" + os.TempDir()}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", bin, args, err)
	}
	return code, out.String(), errb.String()
}

// registration is a device's Registration for a new ML-KEM-768 key.
func registration(t *testing.T, id string) (payload, keyHash []byte) {
	t.Helper()
	sch, err := kem.Lookup(kem.MLKEM768)
	if err != nil {
		t.Fatal(err)
	}
	k, err := sch.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	r := &wire.Registration{Version: wire.Version, DeviceID: id, KEMAlg: kem.MLKEM768, PublicKey: k.PublicKey().Bytes(),
		CreatedAt: uint64(time.Now().Unix())}
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b, kem.PublicKeyHash(k.PublicKey().Bytes())
}

func TestIssuerAdminOnline(t *testing.T) {
	ids := []string{"adm-1", "adm-2"}
	f := newSysFleet(t, append(ids, "adm-3")...)
	for _, id := range ids {
		f.startDevice(t, id)
	}
	iss := newBinIssuer(t, f)
	// The socket lives in a directory other users may enter, so that only
	// the socket's own protection is tested below.
	sockDir, err := os.MkdirTemp("", "ekem-admin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	if err := os.Chmod(sockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(sockDir, "issuer.sock")
	p := iss.start(t, "run", "-admin-socket", sock)
	f.waitFleetEpoch(t, 1, ids...)

	admin := func(args ...string) string {
		t.Helper()
		code, out, errOut := runBin(t, nil, iss.bin, append(args[:1:1], append([]string{"-store", iss.store}, args[1:]...)...)...)
		if code != 0 {
			t.Fatalf("ekem-issuer %v while the issuer runs: exit %d\n%s%s", args, code, out, errOut)
		}
		return out
	}

	// Reading: the store is locked by the running issuer, so these go
	// through its socket.
	if out := admin("devices", "-admin-socket", sock); !strings.Contains(out, "adm-1") || !strings.Contains(out, "adm-2") {
		t.Fatalf("devices: %s", out)
	}
	var d ekissuer.DeviceInfo
	if err := json.Unmarshal([]byte(admin("device", "-admin-socket", sock, "-json", "adm-1")), &d); err != nil || d.ID != "adm-1" || d.LastEpoch < 1 {
		t.Fatalf("device -json adm-1: %+v %v", d, err)
	}

	// Acting.
	admin("revoke", "-admin-socket", sock, "-reason", "lost in transit", "adm-2")
	if out := admin("device", "-admin-socket", sock, "adm-2"); !strings.Contains(out, "revoked") {
		t.Fatalf("adm-2 after revoke: %s", out)
	}
	admin("release", "-admin-socket", sock, "-reason", "found again", "adm-2")
	// A device whose key changed: refused, held, then approved online.
	c := connectAs(t, f.b, "adm-3")
	first, _ := registration(t, "adm-3")
	publish(t, c, prefix+"reg/adm-3", first, true)
	sysWaitFor(t, "adm-3 pinned", func() bool {
		code, out, _ := runBin(t, nil, iss.bin, "device", "-admin-socket", sock, "adm-3")
		return code == 0 && strings.Contains(out, "adm-3")
	})
	second, secondHash := registration(t, "adm-3")
	publish(t, c, prefix+"reg/adm-3", second, true)
	sysWaitFor(t, "the changed key held for approval", func() bool {
		code, _, errOut := runBin(t, nil, iss.bin, "approve", "-admin-socket", sock, "-reason", "reflashed", "adm-3")
		if code != 0 && !strings.Contains(errOut, "no registration awaits approval") {
			t.Fatalf("approve: %d %s", code, errOut)
		}
		return code == 0
	})
	if out := admin("device", "-admin-socket", sock, "adm-3"); !strings.Contains(out, fmt.Sprintf("%x", secondHash)) {
		t.Fatalf("adm-3 after approve does not have the approved key %x:\n%s", secondHash, out)
	}
	admin("reset", "-admin-socket", sock, "-reason", "re-provisioned", "adm-3")

	// A consistent copy of the running issuer's store.
	backup := filepath.Join(t.TempDir(), "backup.db")
	if out := admin("backup", "-admin-socket", sock, "-out", backup); !strings.Contains(out, "3 devices") {
		t.Fatalf("backup of the running issuer: %s", out)
	}
	// Issuance went on throughout: the devices accept later epochs.
	e := f.devices["adm-1"].agent.Epoch()
	f.waitFleetEpoch(t, e+2, ids...)

	// The audit log, through the socket, has every action with its actor.
	var log []ekissuer.AuditEntry
	if err := json.Unmarshal([]byte(admin("audit", "-admin-socket", sock, "-json")), &log); err != nil {
		t.Fatal(err)
	}
	want := []struct{ action, device, reason string }{
		{"revoke", "adm-2", "lost in transit"}, {"release", "adm-2", "found again"},
		{"approve", "adm-3", "reflashed"}, {"reset", "adm-3", "re-provisioned"},
	}
	if len(log) != len(want) {
		t.Fatalf("audit log has %d entries, want %d: %+v", len(log), len(want), log)
	}
	actor := fmt.Sprintf("uid=%d(", os.Getuid())
	for k, w := range want {
		g := log[k]
		if g.Action != w.action || g.Device != w.device || g.Reason != w.reason || !strings.HasPrefix(g.Actor, actor) ||
			!strings.Contains(g.Actor, "via admin socket") || g.Time == 0 || g.Seq != uint64(k+1) {
			t.Errorf("audit entry %d: %+v, want %s %s %q by %s… via admin socket", k, g, w.action, w.device, w.reason, actor)
		}
	}

	t.Run("another user", func(t *testing.T) {
		if os.Getuid() != 0 {
			t.Skip("needs root to run a command as another user")
		}
		nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
		binDir, err := os.MkdirTemp("", "ekem-admin-bin-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(binDir) })
		os.Chmod(binDir, 0o755)
		bin := filepath.Join(binDir, "ekem-issuer")
		copyFile(t, iss.bin, bin)
		os.Chmod(bin, 0o755)
		// The socket's mode (0600) keeps the other user out.
		if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("socket mode %v %v, want 0600", fi.Mode(), err)
		}
		code, _, errOut := runBin(t, nobody, bin, "revoke", "-admin-socket", sock, "adm-1")
		if code == 0 || !strings.Contains(errOut, "permission denied") {
			t.Fatalf("another user through a 0600 socket: exit %d %s", code, errOut)
		}
		// With the mode loosened by mistake, the issuer still refuses the
		// connection by its peer credentials.
		if err := os.Chmod(sock, 0o666); err != nil {
			t.Fatal(err)
		}
		code, _, errOut = runBin(t, nobody, bin, "revoke", "-admin-socket", sock, "adm-1")
		if code == 0 || !strings.Contains(errOut, "refused by the issuer") {
			t.Fatalf("another user through a 0666 socket: exit %d %s", code, errOut)
		}
		if !slicesContain(p.stderr.all(), "admin_peer_refused") {
			t.Errorf("the issuer did not log the refused peer:\n%s", p.stderr.tail(20))
		}
		var after []ekissuer.AuditEntry
		json.Unmarshal([]byte(admin("audit", "-admin-socket", sock, "-json")), &after)
		if len(after) != len(log) {
			t.Errorf("a refused user's action reached the audit log: %+v", after)
		}
		if out := admin("device", "-admin-socket", sock, "adm-1"); strings.Contains(out, "revoked") {
			t.Errorf("a refused user revoked adm-1:\n%s", out)
		}
	})
	p.signal(t, syscall.SIGTERM)
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("the admin socket outlived the issuer: %v", err)
	}
}

func slicesContain(lines []string, s string) bool {
	for _, l := range lines {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}
