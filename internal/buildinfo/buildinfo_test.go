package buildinfo

import (
	"regexp"
	"testing"

	"github.com/entropykem/entropykem/pkg/wire"
)

func TestRead(t *testing.T) {
	i := Read()
	if i.Protocol != wire.Version || i.Version == "" || i.Commit == "" {
		t.Fatalf("%+v", i)
	}
	if !regexp.MustCompile(`^tool \S+ commit \S+ go1\.\d+\S* protocol 1$`).MatchString(i.String("tool")) {
		t.Fatalf("%q", i.String("tool"))
	}
	old := Version
	defer func() { Version = old }()
	Version = "v9.9.9"
	if got := Read().Version; got != "v9.9.9" {
		t.Fatalf("-ldflags -X version: %q", got)
	}
}
