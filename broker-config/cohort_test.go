package brokerconfig

import (
	"errors"
	"strings"
	"testing"
)

func TestCohortSection(t *testing.T) {
	got, err := CohortSection("fleet-a", []string{"dev-a", "backend-1"})
	if err != nil {
		t.Fatal(err)
	}
	want := "user dev-a\ntopic read ekem/v1/app/fleet-a/+\ntopic write ekem/v1/app/fleet-a/dev-a\n" +
		"user backend-1\ntopic read ekem/v1/app/fleet-a/+\ntopic write ekem/v1/app/fleet-a/backend-1\n"
	if !strings.HasSuffix(got, want) {
		t.Fatalf("section:\n%s", got)
	}
	for _, bad := range [][2]string{{"fleet/a", "dev-a"}, {"fleet+", "dev-a"}, {"", "dev-a"}, {"fleet-a", "ekem-monitor"}, {"fleet-a", "dev/#"}} {
		if _, err := CohortSection(bad[0], []string{bad[1]}); !errors.Is(err, ErrRender) {
			t.Errorf("%q %q: %v", bad[0], bad[1], err)
		}
	}
	// The monitor, which reads ekem/v1/#, is denied the application
	// topics in the shipped file.
	if !strings.Contains(ACL(), "user ekem-monitor\n") || !strings.Contains(ACL(), "topic deny ekem/v1/app/#") {
		t.Fatal("the shipped ACL does not deny the monitor the application topics")
	}
}
