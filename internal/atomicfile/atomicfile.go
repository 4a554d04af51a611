// Package atomicfile is the project's one crash-safe file writer: a
// reader, and the file system after a crash, finds a file's old content or
// its new content, never a mix and never nothing (schema/PROTOCOL.md
// §8.5 for the device's files).
//
// The data goes to a temporary file in the same directory
// ("<name>.tmp-<random>", TempInfix), which is synced, then renamed over
// the file (or hard-linked to its name, when an existing file must not be
// replaced), and the directory is synced so that the rename is durable. A
// crash may leave a temporary file behind; its owner removes such files
// when it next holds the directory (device.cleanTemps).
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// TempInfix follows the file's name in its temporary file's name.
const TempInfix = ".tmp-"

// Options of Write. The zero value replaces the file, mode 0600.
type Options struct {
	// Mode is the new file's permission bits (default 0600).
	Mode fs.FileMode
	// NoReplace makes Write fail with an error wrapping fs.ErrExist, and
	// change nothing, when the file exists.
	NoReplace bool
	// Prepare, if set, is called on the temporary file before data is
	// written (to set its owner, say); its error aborts the write.
	Prepare func(*os.File) error
}

// Write writes data to path crash-safely, as the package says.
func Write(path string, data []byte, o Options) (err error) {
	if o.Mode == 0 {
		o.Mode = 0o600
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+TempInfix+"*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	// After a rename tmp is gone, after a link it is a second name: either
	// way it is removed.
	defer os.Remove(tmp)
	err = f.Chmod(o.Mode)
	if err == nil && o.Prepare != nil {
		err = o.Prepare(f)
	}
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = place(tmp, path, o.NoReplace)
	}
	if err == nil {
		err = SyncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// place gives tmp the name path: a rename, or without replace a hard link
// that fails if path exists (a rename after a check where the file system
// has no hard links).
func place(tmp, path string, noReplace bool) error {
	if !noReplace {
		return os.Rename(tmp, path)
	}
	err := os.Link(tmp, path)
	if err == nil || errors.Is(err, fs.ErrExist) {
		return err
	}
	if _, serr := os.Lstat(path); serr == nil {
		return fs.ErrExist
	}
	return os.Rename(tmp, path)
}

// SyncDir fsyncs a directory, so that a rename or removal in it is
// durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
