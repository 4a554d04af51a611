package adminsock

import (
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/issuer"
)

func (f *fakeAdmin) SetCohort(id, cohort string, op issuer.Operator) error {
	return f.act("cohort="+cohort, id, op)
}

// serveFake serves fa on a fresh socket for the test and returns a client
// of it; both are closed when the test ends.
func serveFake(t *testing.T, fa *fakeAdmin) *Client {
	t.Helper()
	path := filepath.Join(t.TempDir(), "admin.sock")
	s, err := Listen(path, fa, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// The cohort action reaches the issuer with the peer as actor; a bad
// cohort is a bad request, an unknown device unknown_device.
func TestSocketCohort(t *testing.T) {
	fa := &fakeAdmin{devices: []issuer.DeviceInfo{{ID: "dev-1"}}}
	c := serveFake(t, fa)
	if err := c.SetCohort("dev-1", "fleet-a", issuer.Operator{Reason: "joins"}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetCohort("dev-1", "", issuer.Operator{}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(fa.acts, ","); got != "cohort=fleet-a dev-1,cohort= dev-1" {
		t.Fatalf("acts %q", got)
	}
	if fa.ops[0].Reason != "joins" || !strings.Contains(fa.ops[0].Actor, "via admin socket") {
		t.Fatalf("operator %+v", fa.ops[0])
	}
	if err := c.SetCohort("dev-1", "a;b", issuer.Operator{}); err == nil || !strings.Contains(err.Error(), "cohort") {
		t.Fatalf("bad cohort: %v", err)
	}
	if err := c.SetCohort("nobody", "fleet-a", issuer.Operator{}); !errors.Is(err, issuer.ErrUnknownDevice) {
		t.Fatalf("unknown device: %v", err)
	}
}
