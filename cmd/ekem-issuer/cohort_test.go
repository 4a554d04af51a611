package main

import (
	"strings"
	"testing"
)

// cohort sets and clears membership on a stopped store, audited, and shows
// it in "device"; bad arguments are usage errors.
func TestCohortCommand(t *testing.T) {
	clearEnv(t)
	path := makeStore(t)
	code, stdout, stderr := runCmd(t, "cohort", "-store", path, "-admin-socket", "off", "-reason", "pilot", "dev-a", "fleet-a")
	if code != 0 || !strings.Contains(stdout, "dev-a: member of cohort fleet-a") {
		t.Fatalf("cohort: exit %d %q %q", code, stdout, stderr)
	}
	if d := storedDevice(t, path, "dev-a"); d.Cohort != "fleet-a" {
		t.Fatalf("stored cohort %q", d.Cohort)
	}
	if code, stdout, _ = runCmd(t, "device", "-store", path, "-admin-socket", "off", "dev-a"); code != 0 || !strings.Contains(stdout, "fleet-a") {
		t.Fatalf("device: exit %d\n%s", code, stdout)
	}
	if code, stdout, stderr = runCmd(t, "cohort", "-store", path, "-admin-socket", "off", "-leave", "dev-a"); code != 0 || !strings.Contains(stdout, "left its cohort") {
		t.Fatalf("cohort -leave: exit %d %q %q", code, stdout, stderr)
	}
	if d := storedDevice(t, path, "dev-a"); d.Cohort != "" {
		t.Fatalf("stored cohort after -leave %q", d.Cohort)
	}
	code, stdout, _ = runCmd(t, "audit", "-store", path, "-admin-socket", "off")
	if code != 0 || !strings.Contains(stdout, "cohort (none) -> fleet-a") || !strings.Contains(stdout, "cohort fleet-a -> (none)") || !strings.Contains(stdout, "pilot") {
		t.Fatalf("audit: exit %d\n%s", code, stdout)
	}
	for _, args := range [][]string{{"dev-a"}, {"dev-a", "a;b"}, {"-leave", "dev-a", "fleet-a"}, {"bad id!", "fleet-a"}} {
		if code, _, _ := runCmd(t, append([]string{"cohort", "-store", path, "-admin-socket", "off"}, args...)...); code != 2 {
			t.Errorf("cohort %q: exit %d, want 2", args, code)
		}
	}
	if code, _, stderr = runCmd(t, "cohort", "-store", path, "-admin-socket", "off", "dev-zz", "fleet-a"); code == 0 || !strings.Contains(stderr, "dev-zz") {
		t.Fatalf("unknown device: exit %d %q", code, stderr)
	}
}
