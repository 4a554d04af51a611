//go:build unix

package creds

import (
	"os"
	"syscall"
)

// keepOwner gives f the owner and group of fi, so a file that the broker's
// user reads stays readable after replaceFile (which, run as root, would
// otherwise leave it owned by root). Failure is ignored when the caller may
// not change owners: the file is then owned by whoever ran the tool, as
// any file it writes.
func keepOwner(f *os.File, fi os.FileInfo) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		_ = f.Chown(int(st.Uid), int(st.Gid))
	}
}
