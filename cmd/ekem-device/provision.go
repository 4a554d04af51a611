package main

// provision-cohort: load a cohort secret (schema/PROTOCOL.md §7.1) into the
// device's TPM once, at manufacturing, and keep only the TPM's blob of it in
// the state directory (§8.5, cohort.blob).

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/entropykem/entropykem/internal/atomicfile"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/tpmcohort"
)

// stdin is where -secret-stdin reads the secret (a variable for tests).
var stdin io.Reader = os.Stdin

const provisionSynopsis = `Load the cohort secret into the TPM at -tpm as an HMAC-SHA256 key that never
leaves it, and store only the TPM's blob of that key in -state/` + blobFileName + `
(mode 0600, written crash-safely). The secret is 32 raw bytes or 64 hex
characters, read once from -secret-file or standard input (-secret-stdin); it
is never printed. An existing blob is replaced only with -force: replacing it
with another secret makes the device's existing state undecryptable.
The blob is useless without this TPM. Destroy the plaintext secret once every
device of the cohort is provisioned.`

const provisionExamples = `examples:
  ekem-device provision-cohort -state /var/lib/ekem/dev-0001 -tpm /dev/tpmrm0 \
      -secret-file /media/usb/cohort-7.key -pcrs 7
  ekem-device provision-cohort -state ./s -tpm /run/swtpm/sock -secret-stdin < cohort.key
`

// provisionFlags are the flags only provision-cohort has.
type provisionFlags struct {
	secretFile  string
	secretStdin bool
	pcrs        string
	force       bool
}

// cmdProvisionCohort implements provision-cohort. On any failure nothing
// is written: the blob file (and the state directory, if new) only appear
// after the TPM imported the secret and checked it.
func cmdProvisionCohort(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o := newOpts("provision-cohort", provisionSynopsis, stderr, "state", "tpm")
	var p provisionFlags
	o.fs.StringVar(&p.secretFile, "secret-file", "", "file holding the cohort secret: 32 raw bytes or 64 hex characters")
	o.fs.BoolVar(&p.secretStdin, "secret-stdin", false, "read the cohort secret from standard input instead")
	o.fs.StringVar(&p.pcrs, "pcrs", "", "bind the key to these SHA-256 PCRs (0-23), comma separated, e.g. 7 or 16,23")
	o.fs.BoolVar(&p.force, "force", false, "replace an existing "+blobFileName)
	if err := o.parse(args, getenv); err != nil {
		return err
	}
	dir, err := o.state()
	if err != nil {
		return err
	}
	if o.tpm == "" {
		return usageErr("%s is required: the TPM, /dev/tpmrm0 or a swtpm socket", o.src("tpm"))
	}
	pcrs, err := parsePCRs(p.pcrs)
	if err != nil {
		return err
	}
	if p.secretFile != "" && p.secretStdin {
		return usageErr("-secret-file and -secret-stdin are exclusive")
	}
	if p.secretFile == "" && !p.secretStdin {
		return usageErr("the cohort secret is required: -secret-file FILE or -secret-stdin")
	}
	path := filepath.Join(dir, blobFileName)
	if !p.force {
		if _, err := os.Lstat(path); err == nil {
			return errBlobExists(path)
		}
	}
	secret, err := readCohortSecret(o, p)
	if err != nil {
		return err
	}
	defer clear(secret)
	blob, err := provisionTPM(o.tpm, secret, pcrs)
	if err != nil {
		return err
	}
	data, err := blob.MarshalBinary()
	if err != nil {
		return fmt.Errorf("cohort blob: %w", err)
	}
	if err := writeBlob(dir, data, p.force); err != nil {
		return err
	}
	bound := "not bound to PCRs"
	if len(blob.PCRs) > 0 {
		bound = "bound to PCRs " + pcrList(blob.PCRs)
	}
	fmt.Fprintf(stdout, "cohort secret loaded into the TPM at %s (%s); blob written to %s\n", o.tpm, bound, path)
	fmt.Fprintln(stdout, "Destroy every plaintext copy of the secret once all devices of the cohort are provisioned.")
	return nil
}

func errBlobExists(path string) error {
	return fmt.Errorf("%s already exists: this device is provisioned; pass -force to replace it "+
		"(with another secret, the device's existing state no longer decrypts)", path)
}

// provisionTPM opens the TPM, imports secret and closes the TPM.
func provisionTPM(path string, secret []byte, pcrs []uint) (tpmcohort.Blob, error) {
	tpm, err := tpmcohort.OpenDevice(path)
	if err != nil {
		return tpmcohort.Blob{}, explainTPM(err, path, "")
	}
	defer tpm.Close()
	blob, err := tpmcohort.Provision(tpm, secret, tpmcohort.Options{PCRs: pcrs})
	if err != nil {
		return tpmcohort.Blob{}, explainTPM(err, path, "")
	}
	return blob, nil
}

// parsePCRs parses "16,23" into PCR indexes 0..23; "" is no policy.
func parsePCRs(s string) ([]uint, error) {
	if s == "" {
		return nil, nil
	}
	var pcrs []uint
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		n, err := strconv.ParseUint(f, 10, 8)
		if err != nil || n > 23 {
			return nil, usageErr("-pcrs: %q is not a PCR index 0-23", f)
		}
		pcrs = append(pcrs, uint(n))
	}
	return pcrs, nil
}

// readCohortSecret reads the secret once from -secret-file or standard
// input: exactly 32 raw bytes, or 64 hex characters with surrounding
// white space. Errors name the size, never the content.
func readCohortSecret(o *opts, p provisionFlags) ([]byte, error) {
	var b []byte
	var err error
	src := "standard input (-secret-stdin)"
	if p.secretFile != "" {
		src = "-secret-file " + p.secretFile
		b, err = o.readSecret("secret-file", p.secretFile)
	} else {
		b, err = io.ReadAll(io.LimitReader(stdin, maxSecretFile+1))
		if err == nil && len(b) > maxSecretFile {
			err = usageErr("%s: more than %d bytes", src, maxSecretFile)
		}
	}
	if err != nil {
		clear(b)
		return nil, err
	}
	defer clear(b)
	return decodeSecret(b, src)
}

// decodeSecret returns a copy of the 32-byte secret held in b.
func decodeSecret(b []byte, src string) ([]byte, error) {
	if len(b) == cohort.SecretSize {
		return bytes.Clone(b), nil
	}
	t := bytes.TrimSpace(b)
	if len(t) != 2*cohort.SecretSize {
		return nil, usageErr("%s holds %d bytes (%d without surrounding white space): the cohort secret is 32 raw bytes or 64 hex characters",
			src, len(b), len(t))
	}
	secret := make([]byte, cohort.SecretSize)
	if _, err := hex.Decode(secret, t); err != nil { // hex's error would quote a character of the secret
		clear(secret)
		return nil, usageErr("%s holds 64 characters that are not all hex digits: the cohort secret is 32 raw bytes or 64 hex characters", src)
	}
	return secret, nil
}

// writeBlob writes data to dir/cohort.blob crash-safely (PROTOCOL.md §8.5,
// internal/atomicfile): over the old blob with force, else only if there
// is none. dir is created (0700) if missing. On failure no blob is left
// half-written.
func writeBlob(dir string, data []byte, force bool) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	path := filepath.Join(dir, blobFileName)
	err := atomicfile.Write(path, data, atomicfile.Options{NoReplace: !force})
	if errors.Is(err, fs.ErrExist) {
		return errBlobExists(path)
	}
	return err
}
