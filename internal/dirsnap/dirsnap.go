// Package dirsnap takes a snapshot of a directory tree for tests that
// prove an operation changed nothing on disk (a refusal, a rejected
// input): every entry's path, mode and, for a regular file, its bytes.
package dirsnap

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// Take maps every entry under dir (dir included) to its mode and, for a
// regular file, a space and its bytes. Two snapshots are equal exactly
// when no entry was added, removed, re-moded or rewritten with other
// bytes.
func Take(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		v := fi.Mode().String()
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			v += " " + string(b)
		}
		out[p] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
