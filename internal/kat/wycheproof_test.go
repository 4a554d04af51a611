package kat

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// hexBytes is a Wycheproof "HexBytes" field: lowercase hex, possibly empty.
type hexBytes []byte

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("hex field: %w", err)
	}
	d, err := hex.DecodeString(s)
	if err != nil {
		return fmt.Errorf("hex field %.20q: %w", s, err)
	}
	*h = d
	return nil
}

// result is a Wycheproof test outcome.
type result string

const (
	resultValid   result = "valid"
	resultInvalid result = "invalid"
	// resultAcceptable marks inputs an implementation may accept or reject.
	// None of the pinned files contains one; checkResult fails on it so
	// that re-pinning a file that introduces one forces a written decision.
	resultAcceptable result = "acceptable"
)

func (r *result) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	switch result(s) {
	case resultValid, resultInvalid, resultAcceptable:
		*r = result(s)
		return nil
	default:
		return fmt.Errorf("unknown result %q", s)
	}
}

// testCase holds the fields every Wycheproof test has. Embedded in the
// per-schema structs.
type testCase struct {
	TcID    int      `json:"tcId"`
	Comment string   `json:"comment"`
	Flags   []string `json:"flags"`
	Result  result   `json:"result"`
}

// source is the group's "source" object.
type source struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// wycheproofFile is the top level of every testvectors_v1 file. G is the
// schema's test group type.
type wycheproofFile[G any] struct {
	Algorithm     string                     `json:"algorithm"`
	Schema        string                     `json:"schema"`
	NumberOfTests int                        `json:"numberOfTests"`
	Header        []string                   `json:"header"`
	Notes         map[string]json.RawMessage `json:"notes"`
	TestGroups    []G                        `json:"testGroups"`
}

// loadWycheproof decodes testdata/wycheproof/name strictly (unknown fields
// are an error, so a schema change cannot silently drop a field we should
// check) and checks its algorithm and schema names.
func loadWycheproof[G any](t *testing.T, name, algorithm, schema string) *wycheproofFile[G] {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "wycheproof", name))
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f wycheproofFile[G]
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if dec.More() {
		t.Fatalf("%s: trailing data after the JSON object", name)
	}
	if f.Algorithm != algorithm || f.Schema != schema {
		t.Fatalf("%s: algorithm %q schema %q, want %q %q", name, f.Algorithm, f.Schema, algorithm, schema)
	}
	if len(f.TestGroups) == 0 {
		t.Fatalf("%s: no test groups", name)
	}
	return &f
}

// tally counts the cases a test ran, by expected result, and checks the
// count against the file's numberOfTests when the test ends.
type tally struct {
	name  string
	valid int
	inval int
}

func (c *tally) add(r result) {
	switch r {
	case resultValid:
		c.valid++
	case resultInvalid:
		c.inval++
	}
}

// done fails the test if no case ran or if the number run differs from
// want, the file's numberOfTests, so a broken loader or an early continue
// cannot pass silently. It logs a summary.
func (c *tally) done(t *testing.T, want int) {
	t.Helper()
	n := c.valid + c.inval
	if n == 0 {
		t.Fatalf("%s: no test cases ran", c.name)
	}
	if n != want {
		t.Errorf("%s: ran %d cases, file declares %d", c.name, n, want)
	}
	t.Logf("%s: %d cases (%d valid, %d invalid)", c.name, n, c.valid, c.inval)
}

// verdict is what the implementation did with one test case.
type verdict int

const (
	// verdictAccepted: every step accepted its input and every output
	// matched the vector.
	verdictAccepted verdict = iota
	// verdictRejected: a step refused the input (returned an error, or a
	// verifier returned false).
	verdictRejected
	// verdictMismatch: the input was accepted but an output differs from
	// the vector. This is a failure for every expected result: an invalid
	// case must be refused, not answered with a different value.
	verdictMismatch
)

func (v verdict) String() string {
	switch v {
	case verdictAccepted:
		return "accepted"
	case verdictRejected:
		return "rejected"
	case verdictMismatch:
		return "accepted with different output"
	default:
		return fmt.Sprintf("verdict(%d)", int(v))
	}
}

// outcome is a verdict with its reason. bug, when set, is a failure
// whatever the expected result (for example an error that wraps none of
// the sentinels callers rely on).
type outcome struct {
	verdict verdict
	why     string
	bug     error
}

func accepted() outcome           { return outcome{verdict: verdictAccepted} }
func rejected(why string) outcome { return outcome{verdict: verdictRejected, why: why} }
func mismatch(why string) outcome { return outcome{verdict: verdictMismatch, why: why} }
func failed(format string, a ...any) outcome {
	return outcome{verdict: verdictMismatch, bug: fmt.Errorf(format, a...)}
}

// rejectedWith is the outcome of step returning err, which must wrap
// sentinel.
func rejectedWith(err, sentinel error, step string) outcome {
	if !errors.Is(err, sentinel) {
		return failed("%s: error does not wrap %q: %v", step, sentinel, err)
	}
	return rejected(step + ": " + err.Error())
}

// checkOutcome compares o with the case's expected result and counts it.
//
//   - valid: o must be verdictAccepted.
//   - invalid: o must be verdictRejected.
//   - acceptable: no expectation has been decided; the test fails so that a
//     re-pinned file containing such a case forces a written decision.
func checkOutcome(t *testing.T, c *tally, tc testCase, o outcome) {
	t.Helper()
	id := fmt.Sprintf("%s tcId %d (%q %v)", c.name, tc.TcID, tc.Comment, tc.Flags)
	if o.bug != nil {
		t.Errorf("%s: %v", id, o.bug)
	}
	switch tc.Result {
	case resultValid:
		if o.bug == nil && o.verdict != verdictAccepted {
			t.Errorf("%s: valid case not accepted: %s", id, o.why)
		}
	case resultInvalid:
		if o.bug == nil && o.verdict != verdictRejected {
			t.Errorf("%s: invalid case not rejected (%v): %s", id, o.verdict, o.why)
		}
	default:
		t.Errorf("%s: result %q has no expectation in this package; decide and document it", id, tc.Result)
		return
	}
	c.add(tc.Result)
}
