package adminsock

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/issuer"
)

func (f *fakeAdmin) Enroll(entries []issuer.Enrollment, op issuer.Operator) (issuer.EnrollResult, error) {
	f.ops = append(f.ops, op)
	for _, e := range entries {
		f.acts = append(f.acts, fmt.Sprintf("enroll %s %x", e.ID, e.KeyHash))
	}
	if len(entries) == 0 {
		return issuer.EnrollResult{}, fmt.Errorf("%w: no device ids", issuer.ErrBadEnrollment)
	}
	return issuer.EnrollResult{Added: len(entries)}, nil
}

func (f *fakeAdmin) Deny(id string, op issuer.Operator) error { return f.act("deny", id, op) }

// Enroll and deny reach the issuer with the peer as actor; a bad list is a
// bad request.
func TestSocketEnrollAndDeny(t *testing.T) {
	fa := &fakeAdmin{devices: []issuer.DeviceInfo{{ID: "dev-1"}}}
	c := serveFake(t, fa)
	h := bytes.Repeat([]byte{0xab}, 32)
	res, err := c.Enroll([]issuer.Enrollment{{ID: "dev-7"}, {ID: "dev-8", KeyHash: h}}, issuer.Operator{Actor: "claimed", Reason: "batch"})
	if err != nil || res.Added != 2 {
		t.Fatalf("Enroll = %+v, %v", res, err)
	}
	if err := c.Deny("dev-1", issuer.Operator{Reason: "not ours"}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(fa.acts, ","); got != "enroll dev-7 ,enroll dev-8 "+fmt.Sprintf("%x", h)+",deny dev-1" {
		t.Fatalf("acts %s", got)
	}
	for _, op := range fa.ops {
		if !strings.Contains(op.Actor, "via admin socket") {
			t.Fatalf("actor %q is not the socket's peer", op.Actor)
		}
	}
	if _, err := c.Enroll(nil, issuer.Operator{}); err == nil || !strings.Contains(err.Error(), "no device ids") {
		t.Fatalf("empty list: %v", err)
	}
	if err := c.Deny("nobody", issuer.Operator{}); !errors.Is(err, issuer.ErrUnknownDevice) {
		t.Fatalf("deny of an unknown device: %v", err)
	}
}
