package main

import (
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/signature"
)

// TestAdminListener checks that -metrics serves all three endpoints: an
// issuer that is not connected is alive but not ready.
func TestAdminListener(t *testing.T) {
	key, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := issuer.New(issuer.Config{Broker: "tcp://127.0.0.1:1", Username: "ekem-issuer", Key: key,
		StorePath: filepath.Join(t.TempDir(), "s.db"), Period: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer iss.Close()
	srv, err := serveMetrics("127.0.0.1:0", iss.AdminHandler(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	addr := srv.Addr
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 503, "/metrics": 200} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s: status %d, want %d (%s)", path, resp.StatusCode, want, body)
		}
		if path == "/readyz" && !strings.Contains(string(body), "broker") {
			t.Errorf("/readyz does not say what is not ready: %s", body)
		}
		if path == "/metrics" && !strings.Contains(string(body), "ekem_broker_connected 0") {
			t.Errorf("/metrics lacks ekem_broker_connected 0")
		}
	}
}
