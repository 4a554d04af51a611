package tpmcohort

import (
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Sentinel errors; every error this package returns that falls in one of
// these classes wraps the sentinel, so callers test with errors.Is.
var (
	// ErrUnreachable: the TPM could not be talked to (device or socket gone,
	// connection refused, short response) or reports that it is not usable
	// (failure mode, not started). Retrying later may help.
	ErrUnreachable = errors.New("tpmcohort: TPM unreachable")
	// ErrBlobMismatch: the blob was made under another storage root key,
	// i.e. on another TPM, or on this one before its owner hierarchy was
	// cleared. It will never load here; re-provision from the secret's source.
	ErrBlobMismatch = errors.New("tpmcohort: blob belongs to a different TPM")
	// ErrPolicy: the key's PCR policy is not satisfied (a PCR no longer
	// holds its value from provisioning).
	ErrPolicy = errors.New("tpmcohort: PCR policy not satisfied")
	// ErrBadBlob: the blob is malformed, is not a cohort key this package
	// made, or the TPM rejects it as corrupted (integrity check failed).
	ErrBadBlob = errors.New("tpmcohort: bad blob")
	// ErrMessageTooLarge: the message exceeds cohort.MaxMessage, the TPM's
	// TPM2_HMAC input buffer.
	ErrMessageTooLarge = errors.New("tpmcohort: message too large")
	// ErrClosed: the Secret was closed.
	ErrClosed = errors.New("tpmcohort: secret closed")
)

// transportError marks an error returned by the transport itself, as
// opposed to a TPM response code or a go-tpm marshalling error.
type transportError struct{ err error }

func (e *transportError) Error() string { return e.err.Error() }
func (e *transportError) Unwrap() error { return e.err }

// sender wraps the caller's transport so transport failures can be told
// apart from TPM errors after go-tpm has wrapped them.
type sender struct{ tpm transport.TPM }

func (s sender) Send(cmd []byte) ([]byte, error) {
	rsp, err := s.tpm.Send(cmd)
	if err != nil {
		return nil, &transportError{err}
	}
	return rsp, nil
}

// unusableRCs are response codes that mean the TPM cannot execute commands
// at all right now.
var unusableRCs = []tpm2.TPMRC{tpm2.TPMRCInitialize, tpm2.TPMRCFailure, tpm2.TPMRCReboot}

// wrapErr wraps err from the TPM operation op. Transport failures and an
// unusable TPM become ErrUnreachable; everything else becomes class (nil:
// no sentinel). err never contains parameters of the command (go-tpm errors
// carry only response codes), so no secret can leak through it.
func wrapErr(op string, class, err error) error {
	if err == nil {
		return nil
	}
	if unreachable(err) {
		return fmt.Errorf("%w: %s: %w", ErrUnreachable, op, err)
	}
	if class != nil {
		return fmt.Errorf("%w: %s: %w", class, op, err)
	}
	return fmt.Errorf("tpmcohort: %s: %w", op, err)
}

func unreachable(err error) bool {
	var te *transportError
	if errors.As(err, &te) {
		return true
	}
	for _, rc := range unusableRCs {
		if errors.Is(err, rc) {
			return true
		}
	}
	return false
}

// tpmRC returns the TPM response code inside err, if any.
func tpmRC(err error) (tpm2.TPMRC, bool) {
	var rc tpm2.TPMRC
	if errors.As(err, &rc) {
		return rc, true
	}
	return 0, false
}
