package main

// The TPM cohort provider of run, fleet and next-key (-tpm): the cohort
// secret lives in the TPM as an HMAC-SHA256 key (schema/PROTOCOL.md §7.1) and
// only its TPM-wrapped blob, made by provision-cohort, lies in the state
// directory (§8.5, cohort.blob). Every MAC of the key schedule, including the
// state-at-rest key (§7.2), is a TPM2_HMAC.

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/tpmcohort"
)

// blobFileName is the cohort key's blob in a state directory (PROTOCOL.md
// §8.5).
const blobFileName = "cohort.blob"

// cohortProvider returns the cohort secret the command's flags name: the
// key in the TPM at -tpm, opened from the blob in the -state directory, or,
// for development only, the secret in -cohort-file (which warns on stderr).
// The two are exclusive and one is required.
func (o *opts) cohortProvider(stderr io.Writer) (cohort.Secret, error) {
	switch {
	case o.tpm != "" && o.cohortFile != "":
		return nil, usageErr("%s and %s are exclusive: the cohort secret lives in a TPM (%s) or, for development only, in a file (%s)",
			o.src("tpm"), o.src("cohort-file"), o.src("tpm"), o.src("cohort-file"))
	case o.tpm != "":
		return o.tpmCohort()
	case o.cohortFile != "":
		return o.cohortSecret(stderr)
	}
	return nil, usageErr("a cohort secret is required: -tpm PATH (EKEM_TPM), the TPM that 'ekem-device provision-cohort' loaded it into, " +
		"or, for development only, -cohort-file FILE (EKEM_COHORT_FILE)")
}

// tpmCohort opens the TPM at -tpm and the cohort key of the blob
// STATE/cohort.blob in it. The TPM stays open until closeAll. Nothing in
// the state directory is written.
func (o *opts) tpmCohort() (cohort.Secret, error) {
	path := filepath.Join(o.stateDir, blobFileName)
	blob, err := readBlob(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no cohort blob %s: load the cohort secret into this device's TPM first: "+
			"ekem-device provision-cohort -state %s -tpm %s -secret-file FILE", path, o.stateDir, o.tpm)
	}
	if err != nil {
		return nil, explainTPM(err, o.tpm, path)
	}
	tpm, err := openTPM(o.tpm)
	if err != nil {
		return nil, err
	}
	s, err := tpmcohort.Open(tpm, blob)
	if err != nil {
		tpm.Close()
		return nil, explainTPM(err, o.tpm, path)
	}
	o.closers = append(o.closers, s, tpm) // the Secret first: it uses the transport
	return &tpmSecret{s: s, tpm: o.tpm, blob: path, pcrs: blob.PCRs}, nil
}

// closeAll closes what the command opened (the TPM), in order.
func (o *opts) closeAll() {
	for _, c := range o.closers {
		c.Close()
	}
	o.closers = nil
}

// openTPM opens the TPM at path, a character device or a swtpm socket.
func openTPM(path string) (transport.TPMCloser, error) {
	tpm, err := tpmcohort.OpenDevice(path)
	if err != nil {
		return nil, explainTPM(err, path, "")
	}
	return tpm, nil
}

// readBlob reads and strictly decodes a blob file, bounded by
// tpmcohort.MaxBlobSize before decoding. A missing file wraps
// fs.ErrNotExist; a bad one wraps tpmcohort.ErrBadBlob.
func readBlob(path string) (tpmcohort.Blob, error) {
	f, err := os.Open(path)
	if err != nil {
		return tpmcohort.Blob{}, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, tpmcohort.MaxBlobSize+1))
	if err != nil {
		return tpmcohort.Blob{}, err
	}
	if len(data) > tpmcohort.MaxBlobSize {
		return tpmcohort.Blob{}, fmt.Errorf("%w: larger than %d bytes", tpmcohort.ErrBadBlob, tpmcohort.MaxBlobSize)
	}
	return tpmcohort.UnmarshalBlob(data)
}

// explainTPM turns an error of pkg/tpmcohort into one that says what
// happened and what to do, naming the TPM and the blob file (if known). It
// wraps err, so callers still test the sentinels with errors.Is.
func explainTPM(err error, tpm, blob string) error {
	switch {
	case errors.Is(err, tpmcohort.ErrUnreachable):
		return fmt.Errorf("TPM at %s unreachable: %w", tpm, err)
	case errors.Is(err, tpmcohort.ErrBlobMismatch):
		return fmt.Errorf("cohort blob %s was made by a different TPM than the one at %s (or this TPM's owner hierarchy was cleared since): "+
			"it can never be used here; re-provision this device from the cohort secret's source with "+
			"'ekem-device provision-cohort -force': %w", blob, tpm, err)
	case errors.Is(err, tpmcohort.ErrBadBlob):
		if blob == "" {
			return fmt.Errorf("TPM at %s: %w", tpm, err)
		}
		return fmt.Errorf("cohort blob %s is corrupt or not a cohort key; re-provision with 'ekem-device provision-cohort -force': %w", blob, err)
	default:
		return fmt.Errorf("TPM at %s: %w", tpm, err)
	}
}

// tpmSecret is the cohort.Secret of run, fleet and next-key: the TPM's key,
// with errors that name the TPM and say what to do. A MAC fails, for
// instance, when the PCRs the key is bound to no longer hold their values
// from provisioning.
type tpmSecret struct {
	s         *tpmcohort.Secret
	tpm, blob string
	pcrs      []uint
}

// MAC implements cohort.Secret by TPM2_HMAC. Errors wrap the tpmcohort
// sentinels and never contain key material.
func (t *tpmSecret) MAC(msg []byte) ([]byte, error) {
	m, err := t.s.MAC(msg)
	if err == nil {
		return m, nil
	}
	if errors.Is(err, tpmcohort.ErrPolicy) {
		return nil, fmt.Errorf("TPM at %s refuses the cohort key: it is bound to PCRs %s, which changed since provisioning "+
			"(another boot state); if the change is legitimate, re-provision with 'ekem-device provision-cohort -force -pcrs %s': %w",
			t.tpm, pcrList(t.pcrs), pcrList(t.pcrs), err)
	}
	return nil, explainTPM(err, t.tpm, t.blob)
}

func pcrList(pcrs []uint) string {
	s := make([]string, len(pcrs))
	for i, p := range pcrs {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, ",")
}
