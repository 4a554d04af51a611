package svctest

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestFindBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "svc-x")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SVCTEST_BIN", "")
	if p, err := FindBinary("SVCTEST_BIN", "svc-x", "/nonexistent", dir); err != nil || p != bin {
		t.Fatalf("from dirs: %q %v", p, err)
	}
	t.Setenv("SVCTEST_BIN", bin)
	if p, err := FindBinary("SVCTEST_BIN", "svc-none"); err != nil || p != bin {
		t.Fatalf("from env: %q %v", p, err)
	}
	t.Setenv("SVCTEST_BIN", bin+".missing")
	if _, err := FindBinary("SVCTEST_BIN", "svc-x", dir); err == nil {
		t.Fatal("a missing $SVCTEST_BIN was not an error")
	}
	t.Setenv("SVCTEST_BIN", "")
	if _, err := FindBinary("SVCTEST_BIN", "svc-none", dir); !errors.Is(err, ErrNotFound) {
		t.Fatalf("none: %v", err)
	}
}

func TestFreePorts(t *testing.T) {
	ports, err := FreePorts(5)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if p <= 0 || seen[p] {
			t.Fatalf("ports %v", ports)
		}
		seen[p] = true
	}
}
