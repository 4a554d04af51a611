package dirsnap

import (
	"maps"
	"os"
	"path/filepath"
	"testing"
)

func TestTakeSeesEveryChange(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "a")
	os.WriteFile(f, []byte("1"), 0o600)
	before := Take(t, dir)
	for name, change := range map[string]func(){
		"bytes": func() { os.WriteFile(f, []byte("2"), 0o600) },
		"mode":  func() { os.Chmod(f, 0o644) },
		"added": func() { os.WriteFile(filepath.Join(dir, "b"), nil, 0o600) },
	} {
		change()
		if maps.Equal(before, Take(t, dir)) {
			t.Errorf("%s: the snapshot did not change", name)
		}
		os.Remove(filepath.Join(dir, "b"))
		os.WriteFile(f, []byte("1"), 0o600)
		os.Chmod(f, 0o600)
	}
	if !maps.Equal(before, Take(t, dir)) {
		t.Error("restored tree differs")
	}
}
