package conformance

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/mosquittotest"
	"github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/signature"
)

// The project's own issuer passes every issuer rule.
func TestIssuerKitPassesIssuer(t *testing.T) {
	ids := []string{"kit-a", "kit-b", "kit-c"}
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: ids})
	key, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		t.Fatal(err)
	}
	pins, err := signature.NewKeySet(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	a := b.Issuer()
	iss, err := issuer.New(issuer.Config{Broker: b.URL(), Username: a.Username, Password: a.Password, Key: key,
		StorePath: filepath.Join(t.TempDir(), "issuer.db"), Period: time.Second, Logger: testLogger(t),
		// Chunks of 2 leaves: the three played ids make every epoch a
		// streamed one (PROTOCOL.md §5.5), two chunks, root last.
		ChunkLeaves: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer iss.Close()
	// The played ids are members of one cohort (PROTOCOL.md §7.7), as an
	// operator sets it up before a run: enrolled, then made members.
	op := issuer.Operator{Actor: "test", Reason: "conformance cohort"}
	var enr []issuer.Enrollment
	for _, id := range ids {
		enr = append(enr, issuer.Enrollment{ID: id})
	}
	if _, err := iss.Admin().Enroll(enr, op); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if err := iss.Admin().SetCohort(id, "kit-cohort", op); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	go func() {
		if err := iss.Run(ctx); err != nil {
			t.Errorf("issuer: %v", err)
		}
	}()
	var accts []Account
	for _, id := range ids {
		accts = append(accts, Account{ID: id, Password: b.Account(id).Password})
	}
	rep, err := RunIssuer(ctx, IssuerOptions{Broker: Broker{URL: b.URL()}, Devices: accts, IssuerKeys: pins, Cohort: "kit-cohort"})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	rep.Print(&buf)
	t.Logf("\n%s", buf.String())
	if rep.Failed() != 0 {
		t.Fatalf("%d rules failed", rep.Failed())
	}
	for _, res := range rep.Results {
		if res.Rule == RuleIssuerStreamed && (!res.Pass || res.Skipped) {
			t.Fatalf("the streamed epochs were not checked: %s", res.Detail)
		}
	}
}
