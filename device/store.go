package device

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/entropykem/entropykem/internal/atomicfile"
	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Device state at rest (schema/PROTOCOL.md §8.5).
//
// A device's state directory holds:
//
//	state.bin          the encrypted device state (below); secret
//	registration.cbor  the Registration exactly as published (§5.1); public
//	status.cbor        the last Status (§5.6) published without a state
//	                   change (a rejection or a stale report), exactly as
//	                   published; public; absent until the first such Status
//	lock               an advisory lock (flock) held by the running agent
//
// state.bin is
//
//	magic "EKDS" (4 bytes) ‖ format version 0x01 (1 byte) ‖ nonce (24 bytes) ‖ ciphertext
//
// where ciphertext = XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha, RFC 8439
// with a 24-byte nonce) of the plaintext under state_key =
// HMAC(cohort_secret, "ekem/v1 state-key" ‖ device_id) (§7.2), with a fresh
// random nonce for every write, and associated data
// "ekem/v1 device-state" ‖ device_id (ASCII, no separator). The plaintext is
// the deterministic CBOR map (§4)
//
//	device-state-file = {0: 1, 1: device-state (bstr), 2: seq (uint), ?3: status (bstr)}
//
// with 1 the accept.State encoding (CDDL device-state), 2 the sequence
// number of the last Status and 3 that Status' exact bytes (present exactly
// when seq > 0). The plaintext is at most MaxStateRecord bytes.
//
// The last Status is the one with the higher seq of state.bin's field 3 and
// status.cbor; equal seqs must carry identical bytes. An accepted ticket
// writes its new state and its Status together into state.bin, so a crash
// can never separate the two; a rejection or stale report only writes
// status.cbor, so the secret state file is never rewritten on a rejection.
// Every file is written crash-safely: a temporary file in the same
// directory, fsync, rename over the old file, fsync of the directory.
// Temporary files left by a crash ("<name>.tmp-*") are removed when the
// directory is next opened.
const (
	stateFileName  = "state.bin"
	regFileName    = "registration.cbor"
	statusFileName = "status.cbor"
	lockFileName   = "lock"
	tmpInfix       = atomicfile.TempInfix

	// StateFileVersion is the format version byte of state.bin.
	StateFileVersion = 1
	// MaxStateRecord bounds the decrypted state.bin plaintext.
	MaxStateRecord = accept.MaxState + wire.MaxStatus + 64
	// MaxStateFile bounds state.bin before it is read further.
	MaxStateFile = stateHeaderSize + MaxStateRecord + chacha20poly1305.Overhead

	stateHeaderSize = len(stateMagic) + 1 + chacha20poly1305.NonceSizeX
	stateMagic      = "EKDS"
	stateADLabel    = "ekem/v1 device-state"
)

// Errors of the state directory. Callers tell them apart with errors.Is.
var (
	// ErrStateCorrupt: a state file that does not decode, or whose parts
	// contradict each other. The file is left as it is.
	ErrStateCorrupt = errors.New("device: state file is corrupt")
	// ErrStateKey: state.bin does not decrypt under this device's state
	// key: another cohort secret or device id, or a damaged file.
	ErrStateKey = errors.New("device: state.bin does not decrypt under this cohort secret and device id")
	// ErrNoState: Config.MustExist is set and the directory holds no state.
	ErrNoState = errors.New("device: no device state in the state directory")
	// ErrLocked: another agent holds the state directory.
	ErrLocked = errors.New("device: state directory is in use by another agent")
	// ErrIdentityLost: the state directory shows an earlier identity of
	// the device (a registration, a Status or learned issuer keys) but
	// holds no state.bin. Creating a new key there would silently make a
	// new identity that the issuer refuses (key_changed); the agent refuses
	// instead, and leaves the directory as it is. The way back is a backup
	// of state.bin or a re-enrollment (Config.Reenroll).
	ErrIdentityLost = errors.New("device: state directory shows an earlier identity but holds no state.bin")
)

// identityFiles are the files that only a device that had a state writes
// (cohort.blob is not one: provisioning writes it before the first run).
var identityFiles = []string{regFileName, statusFileName, issuerKeysFileName}

// earlierIdentity returns which of identityFiles dir holds. It writes
// nothing.
func earlierIdentity(dir string) ([]string, error) {
	var found []string
	for _, n := range identityFiles {
		_, err := os.Lstat(filepath.Join(dir, n))
		switch {
		case err == nil:
			found = append(found, n)
		case !errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("device: state directory: %w", err)
		}
	}
	return found, nil
}

// identityLost is the ErrIdentityLost error for dir, naming what it found
// and what to do.
func identityLost(dir, id string, found []string) error {
	return fmt.Errorf("%w: %s holds %s of device %q without its state.bin (a lost or deleted state); "+
		"starting would make a new key that the issuer refuses. Restore the state directory from a backup "+
		"(README: Restoring a device from a backup), or re-enroll the device with a new key: "+
		"ekem-device reenroll -id %s -state %s, then approve it at the issuer (ekem-issuer approve %s)",
		ErrIdentityLost, dir, strings.Join(found, ", "), id, id, dir, id)
}

// record is the plaintext of state.bin.
type record struct {
	Version uint64 `cbor:"0,keyasint"`
	State   []byte `cbor:"1,keyasint"`
	Seq     uint64 `cbor:"2,keyasint"`
	Status  []byte `cbor:"3,keyasint,omitempty"`
}

// loaded is a decoded state.bin.
type loaded struct {
	st     *accept.State
	seq    uint64
	status []byte // nil when seq is 0
}

// stateAD is the associated data of state.bin for device id.
func stateAD(id string) []byte { return append([]byte(stateADLabel), id...) }

// sealState encrypts a state record for device id under key.
func sealState(key []byte, id string, st *accept.State, seq uint64, status []byte) ([]byte, error) {
	sb, err := st.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("device: encode state: %w", err)
	}
	pt, err := cbor.Marshal(&record{Version: StateFileVersion, State: sb, Seq: seq, Status: status})
	clear(sb)
	if err != nil {
		return nil, fmt.Errorf("device: encode state: %w", err)
	}
	defer clear(pt)
	if len(pt) > MaxStateRecord {
		return nil, fmt.Errorf("device: encoded state is %d bytes, limit %d", len(pt), MaxStateRecord)
	}
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, fmt.Errorf("device: state key: %w", err)
	}
	out := make([]byte, stateHeaderSize, stateHeaderSize+len(pt)+aead.Overhead())
	copy(out, stateMagic)
	out[len(stateMagic)] = StateFileVersion
	nonce := out[len(stateMagic)+1 : stateHeaderSize]
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("device: nonce: %w", err)
	}
	return aead.Seal(out, nonce, pt, stateAD(id)), nil
}

// openState decrypts and strictly decodes state.bin for device id. It
// checks, in order: the size bound, the magic and version, authentication
// (ErrStateKey), the plaintext's strict CBOR, the State, and that the last
// Status belongs to this device and carries the record's seq.
func openState(key []byte, id string, data []byte) (*loaded, error) {
	if len(data) > MaxStateFile {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrStateCorrupt, len(data), MaxStateFile)
	}
	if len(data) < stateHeaderSize+chacha20poly1305.Overhead || string(data[:len(stateMagic)]) != stateMagic {
		return nil, fmt.Errorf("%w: not a device state file", ErrStateCorrupt)
	}
	if v := data[len(stateMagic)]; v != StateFileVersion {
		return nil, fmt.Errorf("%w: format version %d, want %d", ErrStateCorrupt, v, StateFileVersion)
	}
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, fmt.Errorf("device: state key: %w", err)
	}
	nonce := data[len(stateMagic)+1 : stateHeaderSize]
	pt, err := aead.Open(nil, nonce, data[stateHeaderSize:], stateAD(id))
	if err != nil {
		return nil, ErrStateKey
	}
	defer clear(pt)
	return decodeRecord(id, pt)
}

// decodeRecord strictly decodes the plaintext of state.bin.
func decodeRecord(id string, pt []byte) (*loaded, error) {
	var r record
	if err := cbor.Unmarshal(pt, MaxStateRecord, &r); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStateCorrupt, err)
	}
	defer clear(r.State)
	if r.Version != StateFileVersion {
		return nil, fmt.Errorf("%w: record version %d", ErrStateCorrupt, r.Version)
	}
	st, err := accept.UnmarshalState(r.State)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStateCorrupt, err)
	}
	if st.DeviceID != id {
		return nil, fmt.Errorf("%w: state is for device %q", ErrStateCorrupt, st.DeviceID)
	}
	if (r.Seq == 0) != (r.Status == nil) {
		return nil, fmt.Errorf("%w: status must be present exactly when seq > 0", ErrStateCorrupt)
	}
	if r.Status != nil {
		if err := checkStatus(id, r.Status, r.Seq); err != nil {
			return nil, err
		}
	}
	return &loaded{st: st, seq: r.Seq, status: r.Status}, nil
}

// checkStatus verifies that b is a valid Status of device id; if seq is
// not zero, it must be the Status' seq.
func checkStatus(id string, b []byte, seq uint64) error {
	s, err := wire.ParseStatus(b)
	if err != nil {
		return fmt.Errorf("%w: last status: %w", ErrStateCorrupt, err)
	}
	if s.DeviceID != id || (seq != 0 && s.Seq != seq) {
		return fmt.Errorf("%w: last status is for %q seq %d", ErrStateCorrupt, s.DeviceID, s.Seq)
	}
	return nil
}

// mergeStatus picks the last Status from state.bin's (seq, status) and
// status.cbor's bytes (nil if absent).
func mergeStatus(id string, seq uint64, status, file []byte) (uint64, []byte, error) {
	if file == nil {
		return seq, status, nil
	}
	if err := checkStatus(id, file, 0); err != nil {
		return 0, nil, fmt.Errorf("%s: %w", statusFileName, err)
	}
	s, _ := wire.ParseStatus(file) // checked above
	switch {
	case s.Seq > seq:
		return s.Seq, file, nil
	case s.Seq == seq && !bytes.Equal(file, status):
		return 0, nil, fmt.Errorf("%w: %s and %s disagree on status seq %d", ErrStateCorrupt, statusFileName, stateFileName, seq)
	}
	return seq, status, nil
}

// readBounded reads the file at path, failing if it exceeds max bytes.
// A missing file gives an error wrapping fs.ErrNotExist.
func readBounded(path string, max int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(max)+1))
	if err != nil {
		return nil, fmt.Errorf("device: read %s: %w", path, err)
	}
	if len(b) > max {
		return nil, fmt.Errorf("%w: %s exceeds %d bytes", ErrStateCorrupt, path, max)
	}
	return b, nil
}

// readOptional is readBounded that returns nil, nil for a missing file.
func readOptional(path string, max int) ([]byte, error) {
	b, err := readBounded(path, max)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

// writeAtomic replaces dir/name with data crash-safely: a temporary file
// in dir, fsync, rename over dir/name, fsync of dir. After a crash dir/name
// is either the old or the new content, never a mix.
func writeAtomic(dir, name string, data []byte) error {
	if err := atomicfile.Write(filepath.Join(dir, name), data, atomicfile.Options{}); err != nil {
		return fmt.Errorf("device: %w", err)
	}
	return nil
}

// syncDir fsyncs a directory so a rename in it is durable.
func syncDir(dir string) error { return atomicfile.SyncDir(dir) }

// cleanTemps removes temporary files a crash left in dir. It runs only
// under the directory lock, so no live writer owns them.
func cleanTemps(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("device: state directory: %w", err)
	}
	for _, e := range ents {
		n := e.Name()
		for _, base := range []string{stateFileName, regFileName, statusFileName, issuerKeysFileName} {
			if strings.HasPrefix(n, base+tmpInfix) && e.Type().IsRegular() {
				if err := os.Remove(filepath.Join(dir, n)); err != nil {
					return fmt.Errorf("device: remove leftover %s: %w", n, err)
				}
			}
		}
	}
	return nil
}
