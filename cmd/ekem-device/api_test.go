package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/logbuf"
	"github.com/entropykem/entropykem/pkg/batch"
	"github.com/entropykem/entropykem/pkg/wire"
)

func TestAPIFlags(t *testing.T) {
	path, o, err := api{addr: "unix:/run/ekem/keys.sock", mode: "0660", group: "0"}.options()
	if err != nil || path != "/run/ekem/keys.sock" || o.Mode != 0o660 || !o.SetGroup || o.GID != 0 {
		t.Fatalf("%q %+v %v", path, o, err)
	}
	if path, _, err := (api{mode: "0600"}).options(); err != nil || path != "" {
		t.Fatalf("no -api: %q %v", path, err)
	}
	for _, bad := range []api{{addr: "tcp:127.0.0.1:1", mode: "0600"}, {addr: "unix:", mode: "0600"},
		{addr: "unix:/x", mode: "0666"}, {addr: "unix:/x", mode: "abc"}, {mode: "0600", group: "0"},
		{addr: "unix:/x", mode: "0660", group: "no-such-group-here"}} {
		if _, _, err := bad.options(); !errors.Is(err, errUsage) {
			t.Errorf("%+v: %v", bad, err)
		}
	}
}

// run -api serves the key API on the socket (mode 0600 by default), logs
// each request with its caller, and removes the socket when it stops.
func TestRunServesKeyAPI(t *testing.T) {
	f := provision(t)
	url := startBroker(t)
	topics, _ := wire.NewTopics(wire.DefaultPrefix)
	iss := dialRecorder(t, url, "ekem-issuer", topics.AllRegistrations(), topics.AllStatuses())
	sock := filepath.Join(f.dir, "keys.sock")
	e := map[string]string{
		"EKEM_DEVICE_ID": "sensor-8", "EKEM_BROKER": url, "EKEM_PASSWORD_FILE": f.password,
		"EKEM_STATE_DIR": filepath.Join(f.dir, "s8"), "EKEM_ISSUER_PUB": f.issuerPub,
		"EKEM_COHORT_FILE": f.cohort, "EKEM_KEM": "ML-KEM-768", "EKEM_API": "unix:" + sock,
	}
	ctx, cancel := context.WithCancel(t.Context())
	var out, errb logbuf.Buffer
	done := make(chan int, 1)
	go func() { done <- execute(ctx, []string{"run"}, env(e), &out, &errb) }()
	d := regDevice(t, iss.Wait(topics.Registration("sensor-8"), 1))
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket %v %v", fi, err)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
	resp, err := hc.Post("http://agent/v1/keys/next", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("next key before a ticket: %d", resp.StatusCode)
	}
	ep := issueFor(t, f, 1, []batch.Device{d})
	iss.Put(topics.Root(1), ep.Root)
	iss.Put(topics.Ticket("sensor-8"), ep.Tickets[0].Ticket)
	waitFor(t, &errb, `msg="ticket accepted" device=sensor-8 epoch=1 state=ok`)
	resp, err = hc.Post("http://agent/v1/keys/next", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Epoch, Ctr uint64
		Key        []byte
	}
	json.NewDecoder(resp.Body).Decode(&k)
	resp.Body.Close()
	if resp.StatusCode != 200 || k.Epoch != 1 || k.Ctr != 0 || len(k.Key) != 32 {
		t.Fatalf("next key: %d %+v", resp.StatusCode, k)
	}
	waitFor(t, &errb, fmt.Sprintf(`msg="key API request" method=POST path=/v1/keys/next peer_uid=%d`, os.Getuid()))
	hc.CloseIdleConnections()
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("run exit %d: %s", code, errb.String())
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
}
