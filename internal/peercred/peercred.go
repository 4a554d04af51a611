// Package peercred reads the credentials of the process at the other end
// of a Unix socket connection (Linux SO_PEERCRED, taken by the kernel when
// the peer connected). The issuer's admin socket and the device's local key
// API name and log their callers with it.
package peercred

import (
	"errors"
	"net"

	"golang.org/x/sys/unix"
)

// Cred is a peer's credentials at connect time.
type Cred struct {
	UID, GID, PID int
}

// ErrNotUnix: the connection is not a Unix socket connection.
var ErrNotUnix = errors.New("peercred: not a unix connection")

// Of reads c's peer credentials.
func Of(c net.Conn) (Cred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Cred{}, ErrNotUnix
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Cred{}, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Cred{}, err
	}
	if cerr != nil {
		return Cred{}, cerr
	}
	return Cred{UID: int(cred.Uid), GID: int(cred.Gid), PID: int(cred.Pid)}, nil
}
