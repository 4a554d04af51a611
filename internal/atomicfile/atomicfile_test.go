package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.bin")
	if err := Write(p, []byte("one"), Options{}); err != nil {
		t.Fatal(err)
	}
	if err := Write(p, []byte("two"), Options{Mode: 0o640}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	fi, serr := os.Stat(p)
	if err != nil || serr != nil || string(b) != "two" || fi.Mode().Perm() != 0o640 {
		t.Fatalf("content %q mode %v (%v %v)", b, fi.Mode(), err, serr)
	}
	if err := Write(p, []byte("three"), Options{NoReplace: true}); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("NoReplace over an existing file: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "two" {
		t.Fatalf("NoReplace changed the file: %q", b)
	}
	q := filepath.Join(dir, "blob")
	if err := Write(q, []byte("new"), Options{NoReplace: true}); err != nil {
		t.Fatal(err)
	}
	prep := errors.New("refused")
	if err := Write(q, []byte("x"), Options{Prepare: func(*os.File) error { return prep }}); !errors.Is(err, prep) {
		t.Fatalf("Prepare's error: %v", err)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), TempInfix) {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
	if len(ents) != 2 {
		t.Errorf("%d files, want 2", len(ents))
	}
	if err := Write(filepath.Join(dir, "missing", "f"), nil, Options{}); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
}
