package tpmcohort

import (
	"fmt"
	"os"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"
)

// OpenDevice opens the TPM at path: a character device such as /dev/tpmrm0
// (the kernel's resource manager; prefer it to /dev/tpm0, which admits one
// user and no context swapping) or a unix socket such as swtpm's command
// socket (one connection per command). A missing path or an unopenable
// device wraps ErrUnreachable.
func OpenDevice(path string) (transport.TPMCloser, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	var tpm transport.TPMCloser
	switch mode := fi.Mode(); {
	case mode&os.ModeCharDevice != 0:
		tpm, err = linuxtpm.Open(path)
	case mode&os.ModeSocket != 0:
		tpm, err = linuxudstpm.Open(path)
	default:
		return nil, fmt.Errorf("tpmcohort: %s is %s, neither a TPM character device (/dev/tpmrm0) nor a unix socket (swtpm)",
			path, describe(mode))
	}
	if err != nil {
		return nil, fmt.Errorf("%w: open %s: %w", ErrUnreachable, path, err)
	}
	return tpm, nil
}

func describe(mode os.FileMode) string {
	switch {
	case mode.IsRegular():
		return "a regular file"
	case mode.IsDir():
		return "a directory"
	default:
		return "of type " + mode.Type().String()
	}
}
