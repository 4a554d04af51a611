package svctest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
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

func TestStop(t *testing.T) {
	start := func(script string) (*exec.Cmd, chan struct{}) {
		cmd := exec.Command("sh", "-c", script)
		if err := cmd.Start(); err != nil {
			t.Skip("no sh:", err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		return cmd, done
	}
	cmd, done := start("exec sleep 30")
	if err := Stop(cmd, done, syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := Stop(cmd, done, syscall.SIGTERM, time.Second); err != nil {
		t.Fatalf("stopping a stopped process: %v", err)
	}
	cmd, done = start(`trap "" TERM; while :; do sleep 0.05; done`)
	time.Sleep(100 * time.Millisecond) // let the trap be set
	if err := Stop(cmd, done, syscall.SIGTERM, 200*time.Millisecond); !errors.Is(err, ErrIgnoredSignal) {
		t.Fatalf("a process ignoring SIGTERM: %v", err)
	}
}
