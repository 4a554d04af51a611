package keyapi_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/entropykem/entropykem/pkg/envelope"
	"github.com/entropykem/entropykem/pkg/groupenv"
)

// TestHugeBodies: requests far above the API's bound (with and without a
// Content-Length, on every POST route) are refused as bad_request without
// the agent reading them whole; the largest legitimate requests (a group
// or device envelope of its largest plaintext) still pass; the agent
// serves on afterwards.
func TestHugeBodies(t *testing.T) {
	w := newWorld(t)
	w.issue(1, true)
	huge := `{"plaintext":"` + strings.Repeat("A", 16<<20) + `"}`
	answered := 0
	for _, path := range []string{"/v1/seal", "/v1/open", "/v1/group/seal", "/v1/group/open", "/v1/keys/next"} {
		for _, chunked := range []bool{false, true} {
			var body io.Reader = strings.NewReader(huge)
			if chunked {
				body = io.MultiReader(strings.NewReader(huge)) // no length known: chunked transfer encoding
			}
			req, _ := http.NewRequest("POST", "http://device"+path, body)
			resp, err := client(w.sock).Do(req)
			if err != nil {
				// The server may close the connection once the bound is
				// passed, before the client finished writing.
				continue
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			answered++
			want := http.StatusBadRequest
			if path == "/v1/keys/next" {
				want = http.StatusOK // takes no body: the body is never read
			}
			if resp.StatusCode != want {
				t.Fatalf("%s chunked=%v: %d %s", path, chunked, resp.StatusCode, raw)
			}
		}
	}
	if answered < 5 {
		t.Fatalf("only %d of 10 oversized requests were answered", answered)
	}
	// The largest group plaintext seals and opens through the API.
	big := bytes.Repeat([]byte{0x5a}, groupenv.MaxPlaintext)
	var gs sealReply
	if code, c := w.call("POST", "/v1/group/seal", map[string]any{"plaintext": big}, &gs); code != 200 {
		t.Fatalf("largest group plaintext: %d %s", code, c)
	}
	var gopen openReply
	if code, c := w.call("POST", "/v1/group/open", map[string]any{"envelope": gs.Envelope}, &gopen); code != 200 || !bytes.Equal(gopen.Plaintext, big) {
		t.Fatalf("open the largest group envelope: %d %s", code, c)
	}
	// One byte more is refused as bad_request, nothing sealed.
	if code, c := w.call("POST", "/v1/group/seal", map[string]any{"plaintext": append(big, 0)}, nil); code != 400 || c != "bad_request" {
		t.Fatalf("group plaintext one byte too long: %d %s", code, c)
	}
	dbig := bytes.Repeat([]byte{0x5b}, envelope.MaxPlaintext)
	var ds sealReply
	if code, c := w.call("POST", "/v1/seal", map[string]any{"plaintext": dbig}, &ds); code != 200 {
		t.Fatalf("largest device plaintext: %d %s", code, c)
	}
	// A JSON body just over the bound, on a route that reads it.
	over := `{"envelope":"` + base64.StdEncoding.EncodeToString(make([]byte, 80<<10)) + `"}`
	if code, c := w.rawCall("/v1/group/open", over); code != 400 || c != "bad_request" {
		t.Fatalf("envelope of 80 KiB: %d %s", code, c)
	}
	var st map[string]any
	if code, _ := w.call("GET", "/v1/status", nil, &st); code != 200 || st["epoch"] != float64(1) {
		t.Fatalf("status after the attacks: %v", st)
	}
}

func (w *world) rawCall(path, body string) (int, string) {
	w.t.Helper()
	req, _ := http.NewRequest("POST", "http://device"+path, strings.NewReader(body))
	resp, err := client(w.sock).Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	var e struct{ Code string }
	json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Code
}

// TestConcurrentGroupSeals: parallel group seals (with ratchet keys handed
// out between them) never share a counter: each (sender, epoch, ctr) is a
// ChaCha20-Poly1305 nonce under the sender's key (PROTOCOL.md §7.8).
func TestConcurrentGroupSeals(t *testing.T) {
	w := newWorld(t)
	w.issue(1, true)
	const n = 40
	ctrs := make(chan uint64, n)
	errs := make(chan error, 2*n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(2)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("POST", "http://device/v1/group/seal", strings.NewReader(`{"plaintext":"eA=="}`))
			resp, err := client(w.sock).Do(req)
			if err != nil {
				errs <- err
				ctrs <- 1 << 63
				return
			}
			var r sealReply
			err = json.NewDecoder(resp.Body).Decode(&r)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 {
				errs <- fmt.Errorf("seal %d: %d %v", i, resp.StatusCode, err)
			}
			ctrs <- r.Ctr
		}()
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("POST", "http://device/v1/keys/next", nil)
			resp, err := client(w.sock).Do(req)
			if err == nil {
				resp.Body.Close()
			} else {
				errs <- err
			}
		}()
	}
	wg.Wait()
	seen := map[uint64]bool{}
	for range n {
		c := <-ctrs
		if seen[c] {
			t.Fatalf("ctr %d used twice", c)
		}
		seen[c] = true
	}
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	for c := range uint64(n) {
		if !seen[c] {
			t.Fatalf("ctr %d skipped: counters are not 0..%d", c, n-1)
		}
	}
}

// TestGroupReplayWindowIsInMemory pins what PROTOCOL.md §7.8 and the README
// say of this implementation: the replay window refuses a second open
// while the agent runs, and lives in memory, so after a restart the same
// envelope opens once more (an application that must never process one
// twice records what it processed). If the windows become persistent,
// change both texts with this test.
func TestGroupReplayWindowIsInMemory(t *testing.T) {
	w := newWorld(t)
	w.issue(1, true)
	var g sealReply
	w.call("POST", "/v1/group/seal", map[string]any{"plaintext": []byte("once")}, &g)
	if code, c := w.call("POST", "/v1/group/open", map[string]any{"envelope": g.Envelope}, nil); code != 200 {
		t.Fatalf("first open: %d %s", code, c)
	}
	if code, c := w.call("POST", "/v1/group/open", map[string]any{"envelope": g.Envelope}, nil); code != 409 || c != "replay" {
		t.Fatalf("second open: %d %s", code, c)
	}
	w.shutdown()
	w.start()
	if code, c := w.call("POST", "/v1/group/open", map[string]any{"envelope": g.Envelope}, nil); code != 200 {
		t.Fatalf("open after a restart: %d %s (the texts say it opens once more)", code, c)
	}
	if code, c := w.call("POST", "/v1/group/open", map[string]any{"envelope": g.Envelope}, nil); code != 409 || c != "replay" {
		t.Fatalf("again after the restart: %d %s", code, c)
	}
}
