package integration

// The system on the clustered broker: the same issuer, devices and monitor
// as on Mosquitto (only the broker URL and credentials differ), on a 3-node
// NATS JetStream cluster started by natstest with broker-config/nats.

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	fleetmon "github.com/entropykem/entropykem/internal/monitor"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Four devices, four epochs on the cluster: every device accepts every
// epoch without a gap, every ticket goes to a fresh device key, the issuer
// verifies every confirmation, and the monitor (ekemctl fleet status, with
// the ekem-monitor account) verifies every root and sees the whole fleet
// current.
func TestNATSSystemSeveralEpochs(t *testing.T) {
	t.Parallel() // with the other NATS tests: see nats_helpers_test.go
	ids := []string{"dev-1", "dev-2", "dev-3", "dev-4"}
	f := newNATSFleet(t, ids...)
	f.startIssuer(t, nil)
	f.startDevices(t, ids...)
	used := map[string]string{}
	const epochs = 4
	for e := uint64(1); e <= epochs; e++ {
		f.issue(t, e)
		f.waitEpoch(t, e, ids...)
		for _, id := range ids {
			kh := fmt.Sprintf("%x", f.deviceInfo(t, id).KeyHash)
			if prev, dup := used[kh]; dup {
				t.Fatalf("%s@%d: ticket encapsulated to a key already used by %s", id, e, prev)
			}
			used[kh] = fmt.Sprintf("%s@%d", id, e)
			if st := f.devices[id].agent.Status(); st.Epoch != e || st.State != wire.StateOK {
				t.Fatalf("%s: Status epoch %d state %v, want %d ok", id, st.Epoch, st.State, e)
			}
		}
	}
	for _, id := range ids {
		acc := f.devices[id].events.accepted()
		if len(acc) != epochs {
			t.Fatalf("%s: accepted %d tickets, want %d: %s", id, len(acc), epochs, describeEvents(f.devices[id].events.all()))
		}
		for i, ev := range acc {
			if ev.Epoch != uint64(i+1) || ev.Gap {
				t.Fatalf("%s: accepted %+v, want epoch %d without a gap", id, ev, i+1)
			}
		}
	}
	f.checkCleanCounters(t)
	if c := f.iss.Counters(); c["tickets_issued"] != epochs*uint64(len(ids)) || c["epochs"] != epochs {
		t.Fatalf("issuer counters %v: want %d tickets, %d epochs", c, epochs*len(ids), epochs)
	}

	// The monitor, unchanged, with its own account on the cluster.
	dir := t.TempDir()
	pub := filepath.Join(dir, "issuer.pub")
	pw := filepath.Join(dir, "monitor.pw")
	if err := os.WriteFile(pub, signature.MarshalPublicKeyPEM(f.key.Public()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pw, []byte(f.account(monitor).Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-broker", f.brokerURL(), "-username", monitor, "-password-file", pw,
		"-issuer-pub", pub, "-json", "-settle", "500ms", "-timeout", "20s"}
	s, code, stderr := fleetStatus(t, args, &offsetClock{})
	if code != 0 || len(s.RootFailures) > 0 {
		t.Fatalf("fleet status exit %d, root failures %v; stderr %s", code, s.RootFailures, stderr)
	}
	rows := map[string]fleetmon.Row{}
	for _, id := range ids {
		rows[id] = fleetmon.Row{State: fleetmon.StateCurrent, Epoch: epochs}
	}
	wantFleet(t, s, epochs, rows)
}
