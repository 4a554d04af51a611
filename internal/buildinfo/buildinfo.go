// Package buildinfo names the build of an entropykem binary: its version,
// the commit it was built from, the Go toolchain and the protocol version it
// speaks, for the "version" subcommand and -version flag of every binary.
package buildinfo

import (
	"fmt"
	"runtime/debug"

	"github.com/entropykem/entropykem/pkg/wire"
)

// Version is the release version. Release builds set it with
//
//	go build -ldflags "-X github.com/entropykem/entropykem/internal/buildinfo.Version=v1.1.0"
//
// Without it, the module version from the build information is used
// ("(devel)" for a build inside the repository).
var Version = ""

// UnknownCommit is Info.Commit of a build without VCS stamping (go build
// -buildvcs=false, or outside a repository).
const UnknownCommit = "unknown"

// Info describes one build.
type Info struct {
	Version   string // release or module version, "(devel)" if unknown
	Commit    string // vcs.revision, with "-dirty" if the tree was modified; "unknown" without VCS stamping
	GoVersion string // the Go toolchain, e.g. go1.26.0
	Protocol  int    // wire.Version, the protocol version in every message
}

// Read returns the build information of the running binary.
func Read() Info {
	i := Info{Version: Version, Commit: UnknownCommit, Protocol: wire.Version}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		if i.Version == "" {
			i.Version = "(devel)"
		}
		return i
	}
	i.GoVersion = bi.GoVersion
	if i.Version == "" {
		i.Version = bi.Main.Version
	}
	if i.Version == "" {
		i.Version = "(devel)"
	}
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			i.Commit = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && i.Commit != UnknownCommit {
		i.Commit += "-dirty"
	}
	return i
}

// String is the one line every binary prints for "version":
//
//	ekem-issuer (devel) commit 1a2b3c… go1.26.0 protocol 1
func (i Info) String(binary string) string {
	return fmt.Sprintf("%s %s commit %s %s protocol %d", binary, i.Version, i.Commit, i.GoVersion, i.Protocol)
}
