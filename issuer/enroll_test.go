package issuer

import (
	"bytes"
	"encoding/hex"
	"errors"
	"maps"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/pkg/kem"
)

func TestParseEnrollmentCSV(t *testing.T) {
	h := strings.Repeat("ab", 32)
	got, err := ParseEnrollmentCSV(strings.NewReader("device_id,key_sha256\n# factory batch 7\n\ndev-1\ndev-2," + h + "\n dev-3 , \n"))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := hex.DecodeString(h)
	if len(got) != 3 || got[0].ID != "dev-1" || got[0].KeyHash != nil || !bytes.Equal(got[1].KeyHash, want) || got[2].ID != "dev-3" {
		t.Fatalf("parsed %+v", got)
	}
	for name, in := range map[string]string{
		"empty":            "",
		"only a header":    "device_id\n",
		"bad id":           "dev-1\na/b\n",
		"reserved id":      "ekem-issuer-2\n",
		"duplicate":        "dev-1\ndev-2\ndev-1\n",
		"short hash":       "dev-1,abcd\n",
		"not hex":          "dev-1," + strings.Repeat("zz", 32) + "\n",
		"three fields":     "dev-1," + h + ",x\n",
		"unbalanced quote": "\"dev-1\n",
	} {
		if _, err := ParseEnrollmentCSV(strings.NewReader(in)); !errors.Is(err, ErrBadEnrollment) {
			t.Errorf("%s: err = %v, want ErrBadEnrollment", name, err)
		}
	}
	if _, err := ParseEnrollmentCSV(strings.NewReader("dev-1\na/b\n")); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("error %v does not name the line", err)
	}
}

func allowlist(c *Config) { c.Enrollment = EnrollmentAllowlist }

// Under the allowlist policy an unlisted id's first registration is held,
// not pinned, and changes nothing stored; approve pins it, deny drops it and
// revokes the id; both are audited.
func TestAllowlistHoldsUnlistedIDs(t *testing.T) {
	e := newEnv(t, allowlist)
	listed, unlisted, denied := newDevice(t, "dev-1"), newDevice(t, "dev-2"), newDevice(t, "dev-3")
	res, err := e.iss.Admin().Enroll([]Enrollment{{ID: "dev-1"}}, testOp)
	if err != nil || res.Added != 1 {
		t.Fatalf("Enroll = %+v, %v", res, err)
	}
	e.register(listed)
	before := e.dump()
	for _, d := range []*device{unlisted, denied} {
		e.iss.handle(e.iss.topics.Registration(d.id), d.registration())
	}
	if got := e.counter("registrations_rejected:not_enrolled"); got != 2 {
		t.Fatalf("not_enrolled = %d, want 2 (%v)", got, e.iss.Counters())
	}
	if !maps.EqualFunc(before, e.dump(), bytes.Equal) {
		t.Fatal("a held registration changed the store")
	}
	e.issue()
	if _, ok := e.iss.Device(unlisted.id); ok {
		t.Fatal("an unlisted device got a record (and a ticket)")
	}
	if err := e.iss.Admin().Approve(unlisted.id, testOp); err != nil {
		t.Fatal(err)
	}
	info, ok := e.iss.Device(unlisted.id)
	if !ok || !bytes.Equal(info.PinnedKeyHash, kem.PublicKeyHash(unlisted.st.Current.PublicKey().Bytes())) {
		t.Fatalf("approve did not pin the held key: %+v", info)
	}
	if err := e.iss.Admin().Deny(denied.id, testOp); err != nil {
		t.Fatal(err)
	}
	if info, _ := e.iss.Device(denied.id); info.State != StateRevoked || info.PinnedKeyHash != nil {
		t.Fatalf("denied device: %+v", info)
	}
	if err := e.iss.Admin().Deny(denied.id, testOp); !errors.Is(err, ErrNothingToApprove) {
		t.Fatalf("second deny = %v, want ErrNothingToApprove", err)
	}
	// The denied id's registration is refused from now on, not held.
	e.iss.handle(e.iss.topics.Registration(denied.id), denied.registration())
	if e.counter("registrations_rejected:device_revoked") != 1 {
		t.Fatalf("denied id registered again: %v", e.iss.Counters())
	}
	audit, err := e.iss.Admin().Audit()
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, a := range audit {
		actions = append(actions, a.Action+":"+a.Device)
	}
	if got := strings.Join(actions, ","); got != "enroll:,approve:dev-2,deny:dev-3" {
		t.Fatalf("audit %s", got)
	}
	e.issue()
	if info, _ := e.iss.Device(unlisted.id); info.LastEpoch != 2 {
		t.Fatalf("approved device not issued epoch 2: %+v", info)
	}
}

// An id enrolled with a key hash is pinned only to that key, whatever the
// policy; online enrollment pins a registration held for a newly listed id.
func TestEnrolledKeyHash(t *testing.T) {
	e := newEnv(t) // open policy
	d, thief := newDevice(t, "dev-1"), newDevice(t, "dev-1")
	if _, err := e.iss.Admin().Enroll([]Enrollment{{ID: d.id, KeyHash: kem.PublicKeyHash(d.st.Current.PublicKey().Bytes())}}, testOp); err != nil {
		t.Fatal(err)
	}
	e.iss.handle(e.iss.topics.Registration(thief.id), thief.registration())
	if e.counter("registrations_rejected:enrolled_key_mismatch") != 1 {
		t.Fatalf("a key other than the enrolled one: %v", e.iss.Counters())
	}
	if info, _ := e.iss.Device(d.id); info.PinnedKeyHash != nil {
		t.Fatal("the thief's key was pinned")
	}
	e.register(d)
	if info, _ := e.iss.Device(d.id); !bytes.Equal(info.PinnedKeyHash, kem.PublicKeyHash(d.st.Current.PublicKey().Bytes())) || !info.Enrolled {
		t.Fatalf("enrolled key not pinned: %+v", info)
	}
	// Re-importing with another hash than the pinned key is refused whole.
	before := e.dump()
	_, err := e.iss.Admin().Enroll([]Enrollment{{ID: "dev-9"}, {ID: d.id, KeyHash: make([]byte, 32)}}, testOp)
	if !errors.Is(err, ErrBadEnrollment) || !maps.EqualFunc(before, e.dump(), bytes.Equal) {
		t.Fatalf("contradicting import: %v, store changed: %v", err, !maps.EqualFunc(before, e.dump(), bytes.Equal))
	}

	a := newEnv(t, allowlist)
	late := newDevice(t, "dev-5")
	a.iss.handle(a.iss.topics.Registration(late.id), late.registration())
	res, err := a.iss.Admin().Enroll([]Enrollment{{ID: late.id}}, testOp)
	if err != nil || res.Pinned != 1 {
		t.Fatalf("Enroll of a held id = %+v, %v", res, err)
	}
	if info, _ := a.iss.Device(late.id); info.PinnedKeyHash == nil {
		t.Fatal("the held registration was not pinned at enrollment")
	}
}
