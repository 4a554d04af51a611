//go:build !unix

package device

import (
	"errors"
	"os"
)

// lockDir is not implemented outside Unix: the state directory must not
// be shared by two agents, and without flock that cannot be enforced.
func lockDir(string) (*os.File, error) {
	return nil, errors.New("device: state directory locking is only supported on Unix")
}
