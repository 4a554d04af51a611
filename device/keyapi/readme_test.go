package keyapi_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// readmeCall is one curl example of the README's "Keys for applications"
// section and the reply it shows.
type readmeCall struct {
	method, path, body string
	reply              map[string]any
}

var curlLine = regexp.MustCompile(`^curl -s --unix-socket \$S (?:-X (POST) )?http://agent(/\S+)(?: -d '(.*)')?$`)

func readmeCalls(t *testing.T) []readmeCall {
	t.Helper()
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	i := strings.Index(text, "### The local key API")
	if i < 0 {
		t.Fatal("README has no local key API section")
	}
	block := text[i:]
	block = block[strings.Index(block, "```sh\n")+6:]
	block = block[:strings.Index(block, "```")]
	var calls []readmeCall
	for _, line := range strings.Split(block, "\n") {
		if m := curlLine.FindStringSubmatch(line); m != nil {
			method := m[1]
			if method == "" {
				method = "GET"
			}
			calls = append(calls, readmeCall{method: method, path: m[2], body: m[3]})
			continue
		}
		if strings.HasPrefix(line, "curl") {
			t.Fatalf("README curl line not understood: %s", line)
		}
		if strings.HasPrefix(line, "# {") && len(calls) > 0 {
			js := line[2 : strings.LastIndex(line, "}")+1]
			var reply map[string]any
			if err := json.Unmarshal([]byte(js), &reply); err != nil {
				t.Fatalf("README reply %q: %v", js, err)
			}
			calls[len(calls)-1].reply = reply
		}
	}
	return calls
}

func keysOf(m map[string]any) []string {
	var k []string
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}

func kind(v any) string {
	switch v.(type) {
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "bool"
	case []any:
		return "array"
	case nil:
		return "null"
	}
	return "object"
}

// TestReadmeExamples runs every curl example of the README's key API
// section against a real agent (a cohort member with a ticket) and checks
// that the routes exist, take the bodies shown, and reply with exactly the
// JSON fields the README shows, of the same JSON types. Envelopes shown
// elided ("pQAB…") are the ones the previous seal returned.
func TestReadmeExamples(t *testing.T) {
	calls := readmeCalls(t)
	if len(calls) < 6 {
		t.Fatalf("%d curl examples found", len(calls))
	}
	w := newWorld(t)
	w.issue(1, true)
	w.issue(2, true)
	envelopes := map[string]string{} // by the first 4 base64 characters shown
	for _, c := range calls {
		body := c.body
		if m := regexp.MustCompile(`"envelope":"([A-Za-z0-9+/]{4})…"`).FindStringSubmatch(body); m != nil {
			env, ok := envelopes[m[1]]
			if !ok {
				t.Fatalf("%s %s: no envelope starting %s was sealed before", c.method, c.path, m[1])
			}
			body = strings.Replace(body, m[0], `"envelope":"`+env+`"`, 1)
		}
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest(c.method, "http://agent"+c.path, rd)
		if body != "" {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded") // what curl -d sends
		}
		resp, err := client(w.sock).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %s %s: %d %s", c.method, c.path, body, resp.StatusCode, raw)
		}
		var got map[string]any
		if err := json.Unmarshal(bytes.TrimSpace(raw), &got); err != nil {
			t.Fatal(err)
		}
		if c.reply == nil {
			t.Fatalf("%s %s: the README shows no reply", c.method, c.path)
		}
		if g, r := keysOf(got), keysOf(c.reply); strings.Join(g, ",") != strings.Join(r, ",") {
			t.Fatalf("%s %s: fields %v, README shows %v", c.method, c.path, g, r)
		}
		for k, v := range c.reply {
			if kind(got[k]) != kind(v) {
				t.Fatalf("%s %s: %q is a %s, README shows a %s", c.method, c.path, k, kind(got[k]), kind(v))
			}
		}
		if env, ok := got["envelope"].(string); ok {
			envelopes[env[:4]] = env
		}
	}
}
