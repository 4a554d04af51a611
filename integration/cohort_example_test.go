package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/device/keyapi"
	"github.com/entropykem/entropykem/internal/mosquittotest"
	ekissuer "github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/issuer/adminsock"
	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/groupenv"
	"github.com/entropykem/entropykem/pkg/keyschedule"
)

// TestCohortTelemetryExample runs examples/cohort-telemetry through a real
// Mosquitto whose ACL keeps ekem/v1/app/fleet-a/+ to the cohort's
// application accounts: three devices of cohort fleet-a and a backend
// member (each an agent with its own registration and the cohort's secret,
// serving its local key API), and an outsider with another cohort secret.
// Membership is set online through the issuer's admin socket. The
// devices' applications publish sealed readings, the backend's application
// opens every one; the outsider's agent refuses to seal for the cohort,
// the broker refuses its reads and writes of the topic, and nothing the
// issuer holds (its whole store, its signing key) opens an envelope or
// contains the group key.
func TestCohortTelemetryExample(t *testing.T) {
	members := []string{"dev-a", "dev-b", "dev-c", "backend-1"}
	ids := append(append([]string{}, members...), "outsider")
	var accounts, apps []string
	for _, id := range ids {
		accounts = append(accounts, id, id+"-app")
	}
	for _, id := range members {
		apps = append(apps, id+"-app")
	}
	f := newSysFleetWith(t, mosquittotest.Options{Devices: accounts, Cohorts: map[string][]string{"fleet-a": apps}})
	bin := binary(t, "cohort-telemetry")
	iss := f.startIssuer(t, nil)
	adm, err := adminsock.Listen(filepath.Join(f.dir, "admin.sock"), iss.Admin(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()

	otherSecret := make([]byte, 32)
	rand.Read(otherSecret)
	other, _ := cohort.NewSoftware(otherSecret)
	for _, id := range ids {
		if id == "outsider" {
			f.startDeviceWith(t, id, func(c *device.Config) { c.Cohort = other })
		} else {
			f.startDevice(t, id)
		}
	}
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), sysTimeout)
		_, err := iss.WaitRegistered(ctx, id)
		cancel()
		if err != nil {
			t.Fatalf("issuer did not pin %s: %v", id, err)
		}
	}
	cl, err := adminsock.Dial(adm.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for _, id := range members {
		if err := cl.SetCohort(id, "fleet-a", ekissuer.Operator{Reason: "telemetry cohort"}); err != nil {
			t.Fatal(err)
		}
	}
	f.issue(t, 1)
	f.waitEpoch(t, 1, ids...)

	sockets := map[string]string{}
	for _, id := range ids {
		sockets[id] = filepath.Join(f.dir, id+".sock")
		s, err := keyapi.Listen(sockets[id], f.devices[id].agent, keyapi.Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
	}
	env := func(acct string) []string { return []string{"EKEM_PASSWORD=" + f.account(acct).Password} }

	reader := startProc(t, "backend reader", env("backend-1-app"), bin, "read", "-api", "unix:"+sockets["backend-1"],
		"-broker", f.brokerURL(), "-user", "backend-1-app", "-n", "6", "-timeout", "60s")
	if _, ok := reader.waitLine(sysTimeout, func(l string) bool { return strings.HasPrefix(l, "subscribed ekem/v1/app/fleet-a/+") }); !ok {
		t.Fatalf("reader did not subscribe: %s", reader.stderr.tail(10))
	}
	// The outsider: its own agent has no group key, and the broker keeps
	// it off the cohort's topics in both directions.
	out := startProc(t, "outsider", env("outsider-app"), bin, "publish", "-api", "unix:"+sockets["outsider"],
		"-broker", f.brokerURL(), "-user", "outsider-app", "-n", "1")
	select {
	case <-out.done:
	case <-time.After(sysTimeout):
	}
	out.kill(t)
	if strings.Contains(strings.Join(out.stdout.all(), "\n"), "sent") {
		t.Fatal("the outsider sealed for the cohort")
	}
	snoop := make(chan []byte, 16)
	oc := dialApp(t, f, "outsider-app")
	if tok := oc.Subscribe("ekem/v1/app/fleet-a/+", 1, func(_ mqtt.Client, m mqtt.Message) {
		select {
		case snoop <- m.Payload():
		default:
		}
	}); !tok.WaitTimeout(sysTimeout) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	oc.Publish("ekem/v1/app/fleet-a/outsider-app", 1, false, []byte("forged")).WaitTimeout(sysTimeout)
	oc.Publish("ekem/v1/app/fleet-a/dev-a-app", 1, false, []byte("forged")).WaitTimeout(sysTimeout)

	for _, id := range []string{"dev-a", "dev-b", "dev-c"} {
		p := startProc(t, id+" publisher", env(id+"-app"), bin, "publish", "-api", "unix:"+sockets[id],
			"-broker", f.brokerURL(), "-user", id+"-app", "-n", "2", "-every", "100ms")
		select {
		case <-p.done:
		case <-time.After(sysTimeout):
			t.Fatalf("%s publisher did not finish: %s", id, p.stderr.tail(10))
		}
		if p.err != nil || len(p.stdout.all()) != 2 {
			t.Fatalf("%s publisher: %v\n%s\n%s", id, p.err, p.stdout.tail(5), p.stderr.tail(5))
		}
	}
	select {
	case <-reader.done:
	case <-time.After(sysTimeout):
		t.Fatalf("reader did not open 6 envelopes:\n%s\n%s", reader.stdout.tail(20), reader.stderr.tail(10))
	}
	if reader.err != nil {
		t.Fatalf("reader: %v\n%s", reader.err, reader.stderr.tail(10))
	}
	var envelopes [][]byte
	got := map[string]int{}
	for _, l := range reader.stdout.all() {
		if strings.HasPrefix(l, "refused") {
			t.Errorf("the reader was handed something it refused (the ACL let it through): %s", l)
		}
		if !strings.HasPrefix(l, "opened ") {
			continue
		}
		sender := strings.TrimPrefix(strings.Fields(l)[1], "sender=")
		got[sender]++
		if !strings.Contains(l, `"device":"`+sender+`"`) {
			t.Errorf("plaintext does not match its sender: %s", l)
		}
		hx := strings.TrimSuffix(strings.TrimPrefix(strings.Fields(l)[4], "envelope="), ":")
		e, err := hex.DecodeString(hx)
		if err != nil {
			t.Fatal(err)
		}
		envelopes = append(envelopes, e)
	}
	if got["dev-a"] != 2 || got["dev-b"] != 2 || got["dev-c"] != 2 || len(got) != 3 {
		t.Fatalf("opened %v", got)
	}
	select {
	case m := <-snoop:
		t.Fatalf("the outsider read the cohort's topic: %q", m)
	default:
	}

	// Every member holds the same group key for epoch 1 (read from their
	// encrypted state with the cohort secret), and the outsider none.
	var key []byte
	for _, id := range members {
		st := decryptState(t, f, f.devices[id], f.cohort)
		if st.Group == nil {
			t.Fatalf("%s has no group key", id)
		}
		k, ok := st.Group.KeyOf(1)
		if !ok || (key != nil && !bytes.Equal(k, key)) {
			t.Fatalf("%s: group key of epoch 1 missing or different", id)
		}
		key = k
	}
	if st := decryptState(t, f, f.devices["outsider"], other); st.Group != nil {
		t.Fatal("the outsider holds a group key")
	}
	// The issuer reads nothing: its whole store and its signing key hold
	// neither the group key nor anything that opens an envelope as one.
	store, err := os.ReadFile(filepath.Join(f.dir, "issuer.db"))
	if err != nil {
		t.Fatal(err)
	}
	held := append(bytes.Clone(store), f.key.Seed()...)
	if bytes.Contains(held, key) {
		t.Fatal("the group key is in the issuer's state")
	}
	tried, scan := 0, time.Now()
	for i := 0; i+32 <= len(held); i++ {
		w := held[i : i+32]
		if bytes.Contains(w, make([]byte, 8)) {
			continue // the store's empty space: a key has no 8 zero bytes in a row (p ≈ 2^-59)
		}
		tried++
		if _, _, err := groupenv.Open(w, envelopes[0]); err == nil {
			t.Fatalf("32 bytes of the issuer's state at offset %d open a group envelope", i)
		}
	}
	t.Logf("issuer state: %d bytes, %d windows tried as group keys in %v", len(held), tried, time.Since(scan).Round(time.Millisecond))

	// dev-c is revoked before epoch 2: the others derive epoch 2's key,
	// dev-c (whose agent still holds epoch 1's) cannot open its envelopes.
	if err := cl.Revoke("dev-c", ekissuer.Operator{Reason: "stolen"}); err != nil {
		t.Fatal(err)
	}
	f.issue(t, 2)
	f.waitEpoch(t, 2, "dev-a", "dev-b", "backend-1", "outsider")
	var sealed struct {
		Envelope []byte `json:"envelope"`
		Epoch    uint64 `json:"epoch"`
	}
	if code, c := apiCall(t, sockets["dev-a"], "/v1/group/seal", map[string]any{"plaintext": []byte("after the revocation")}, &sealed); code != 200 || sealed.Epoch != 2 {
		t.Fatalf("seal at epoch 2: %d %s epoch %d", code, c, sealed.Epoch)
	}
	if code, c := apiCall(t, sockets["dev-c"], "/v1/group/open", map[string]any{"envelope": sealed.Envelope}, nil); code != 404 || c != "unknown_key" {
		t.Fatalf("the revoked member on an epoch-2 envelope: %d %s", code, c)
	}
	if code, c := apiCall(t, sockets["outsider"], "/v1/group/open", map[string]any{"envelope": sealed.Envelope}, nil); code != 409 || c != "not_member" {
		t.Fatalf("the outsider on an epoch-2 envelope: %d %s", code, c)
	}
	var opened struct {
		Plaintext []byte `json:"plaintext"`
	}
	if code, c := apiCall(t, sockets["backend-1"], "/v1/group/open", map[string]any{"envelope": sealed.Envelope}, &opened); code != 200 || string(opened.Plaintext) != "after the revocation" {
		t.Fatalf("the backend on an epoch-2 envelope: %d %s", code, c)
	}
}

// apiCall posts in to a key API socket and decodes the answer into out; it
// returns the status and the error code.
func apiCall(t *testing.T, sock, path string, in, out any) (int, string) {
	t.Helper()
	hc := &http.Client{Timeout: sysTimeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
	defer hc.CloseIdleConnections()
	b, _ := json.Marshal(in)
	resp, err := hc.Post("http://agent"+path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		var e struct{ Code string }
		json.Unmarshal(raw, &e)
		return resp.StatusCode, e.Code
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	return resp.StatusCode, ""
}

// dialApp connects an application account to the fleet's broker.
func dialApp(t *testing.T, f *sysFleet, acct string) mqtt.Client {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(f.brokerURL()).SetClientID(acct).SetUsername(acct).
		SetPassword(f.account(acct).Password).SetCleanSession(true).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(sysTimeout) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", acct, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// decryptState reads a device's state.bin as PROTOCOL.md Appendix A says,
// with the cohort secret.
func decryptState(t *testing.T, f *sysFleet, d *sysDevice, c cohort.Secret) *accept.State {
	t.Helper()
	data := d.stateFile(t)
	key, err := keyschedule.StateKey(c, d.id)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		t.Fatal(err)
	}
	const head = 4 + 1 + chacha20poly1305.NonceSizeX
	pt, err := aead.Open(nil, data[5:head], data[head:], append([]byte("ekem/v1 device-state"), d.id...))
	if err != nil {
		t.Fatalf("%s: state.bin: %v", d.id, err)
	}
	var rec struct {
		Version uint64 `cbor:"0,keyasint"`
		State   []byte `cbor:"1,keyasint"`
		Seq     uint64 `cbor:"2,keyasint"`
		Status  []byte `cbor:"3,keyasint,omitempty"`
	}
	if err := cbor.Unmarshal(pt, len(pt), &rec); err != nil {
		t.Fatal(err)
	}
	st, err := accept.UnmarshalState(rec.State)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
