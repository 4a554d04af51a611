// Package tpmcohort keeps the cohort secret in a TPM 2.0 and computes the
// one operation the protocol needs from it, HMAC-SHA256 (RFC 2104, FIPS
// 198-1) keyed with the secret, inside the TPM (DESIGN.md "Key schedule":
// cohort_mix = HMAC-SHA256(cohort_secret, "ekem/v1 cohort" ‖ ticket_hash)).
//
// Provision imports the 32-byte secret as a keyed-hash HMAC-SHA256 object
// under the owner hierarchy's ECC storage root key (the TCG reference
// template, re-derived on each use from the owner seed, so nothing is
// persisted in TPM NV). The TPM returns a Blob: the key's public area and its
// private area encrypted and integrity-protected under the SRK. Open checks a
// Blob against a TPM and returns a Secret implementing cohort.Secret.
//
// Bus confidentiality: the secret travels to the TPM once, in TPM2_Create,
// inside a session salted to the SRK with AES-128-CFB parameter encryption.
// Every TPM2_HMAC runs in a fresh salted session with response encryption,
// so the MAC (which is key material) is not visible on the bus either. The
// message is public in the protocol and is sent in the clear.
//
// Resources: each MAC creates the SRK, loads the key, starts one session,
// computes the HMAC and flushes all three, on every path. Nothing stays
// loaded between calls, so a Secret survives a TPM restart and never holds
// one of the TPM's few object slots (3 on swtpm).
package tpmcohort

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/entropykem/entropykem/pkg/cohort"
)

// nonceSize is the caller nonce size of sessions: the SHA-256 digest size,
// the most the TPM accepts for a SHA-256 session.
const nonceSize = sha256.Size

// Options configures Provision.
type Options struct {
	// PCRs, if not empty, binds the key to these SHA-256-bank PCRs (0..23):
	// it is usable only while they hold the values they had at
	// provisioning. Order and duplicates do not matter.
	PCRs []uint
}

// probe is the message Provision MACs in the TPM and in software to check
// the imported key.
var probe = []byte("ekem/v1 tpmcohort provisioning check")

// Provision imports secret (cohort.SecretSize bytes) into the TPM as an
// HMAC-SHA256 key and returns its Blob. The TPM2_Create command that carries
// the secret travels in a session salted to the SRK with AES-CFB parameter
// encryption. Provision then opens the blob and checks that the TPM's HMAC of
// a probe message equals the software HMAC. Provisioning twice gives two
// different blobs for the same key.
func Provision(tpm transport.TPM, secret []byte, opts Options) (Blob, error) {
	if len(secret) != cohort.SecretSize {
		return Blob{}, fmt.Errorf("tpmcohort: %w: got %d bytes", cohort.ErrBadSecret, len(secret))
	}
	if tpm == nil {
		return Blob{}, fmt.Errorf("%w: nil transport", ErrUnreachable)
	}
	pcrs, err := normalizePCRs(opts.PCRs)
	if err != nil {
		return Blob{}, fmt.Errorf("tpmcohort: options: %w", err)
	}
	t := sender{tpm}
	blob, err := create(t, secret, pcrs)
	if err != nil {
		return Blob{}, err
	}
	if err := selfTest(t, blob, secret); err != nil {
		return Blob{}, err
	}
	return blob, nil
}

func create(t transport.TPM, secret []byte, pcrs []uint) (blob Blob, err error) {
	srk, err := createSRK(t)
	if err != nil {
		return Blob{}, err
	}
	defer flush(t, "flush srk", srk.handle, &err)

	var pcrDigest []byte
	if len(pcrs) > 0 {
		if pcrDigest, err = readPCRDigest(t, pcrs); err != nil {
			return Blob{}, err
		}
	}
	tmpl, err := keyTemplate(pcrs, pcrDigest)
	if err != nil {
		return Blob{}, fmt.Errorf("tpmcohort: template: %w", err)
	}
	sess, closeSess, err := tpm2.HMACSession(t, tpm2.TPMAlgSHA256, nonceSize,
		tpm2.Salted(srk.handle, srk.public), tpm2.AESEncryption(128, tpm2.EncryptIn))
	if err != nil {
		return Blob{}, wrapErr("start salted session", nil, err)
	}
	defer closeSession("flush session", closeSess, &err)

	rsp, err := tpm2.Create{
		ParentHandle: tpm2.AuthHandle{Handle: srk.handle, Name: srk.name, Auth: sess},
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: secret}),
		}},
		InPublic: tpm2.New2B(tmpl),
	}.Execute(t)
	if err != nil {
		return Blob{}, wrapErr("create key", nil, err)
	}
	blob = Blob{
		Public:    tpm2.Marshal(rsp.OutPublic),
		Private:   tpm2.Marshal(rsp.OutPrivate),
		PCRs:      pcrs,
		PCRDigest: pcrDigest,
		Parent:    bytes.Clone(srk.name.Buffer),
	}
	if _, err := blob.parse(); err != nil {
		return Blob{}, fmt.Errorf("tpmcohort: TPM returned an unexpected key: %w", err)
	}
	return blob, nil
}

// selfTest checks that blob computes HMAC-SHA256 under secret.
func selfTest(t transport.TPM, blob Blob, secret []byte) error {
	s, err := open(t, blob)
	if err != nil {
		return err
	}
	got, err := s.MAC(probe)
	if err != nil {
		return err
	}
	m := hmac.New(sha256.New, secret)
	m.Write(probe)
	if !hmac.Equal(got, m.Sum(nil)) {
		return errors.New("tpmcohort: provisioned key does not reproduce the secret's HMAC")
	}
	return nil
}

// Secret is a cohort secret held in a TPM. It implements cohort.Secret and
// is safe for concurrent use (calls are serialized: the transport is not).
type Secret struct {
	mu     sync.Mutex
	tpm    transport.TPM
	blob   *parsedBlob
	pcrDig []byte
	parent []byte
	closed bool
}

var _ cohort.Secret = (*Secret)(nil)

// Open validates blob, checks that it belongs to this TPM (its parent is
// this TPM's storage root key and the TPM accepts it: ErrBlobMismatch or
// ErrBadBlob otherwise) and returns a Secret using tpm. Nothing stays loaded.
// tpm must stay open while the Secret is used; Close does not close it.
func Open(tpm transport.TPM, blob Blob) (*Secret, error) {
	if tpm == nil {
		return nil, fmt.Errorf("%w: nil transport", ErrUnreachable)
	}
	return open(sender{tpm}, blob)
}

func open(t transport.TPM, blob Blob) (*Secret, error) {
	p, err := blob.parse()
	if err != nil {
		return nil, err
	}
	s := &Secret{tpm: t, blob: p, pcrDig: bytes.Clone(blob.PCRDigest), parent: bytes.Clone(blob.Parent)}
	if err := s.check(); err != nil {
		return nil, err
	}
	return s, nil
}

// check loads the key once and flushes it.
func (s *Secret) check() (err error) {
	srk, err := createSRK(s.tpm)
	if err != nil {
		return err
	}
	defer flush(s.tpm, "flush srk", srk.handle, &err)
	key, err := s.load(srk)
	if err != nil {
		return err
	}
	flush(s.tpm, "flush key", key.handle, &err)
	return err
}

// MAC returns HMAC-SHA256(secret, msg) computed by TPM2_HMAC. msg is at most
// cohort.MaxMessage bytes (ErrMessageTooLarge). Errors: ErrPolicy if the PCR
// policy is not satisfied, ErrUnreachable if the TPM cannot be reached,
// ErrBlobMismatch if the TPM's SRK changed since Open, ErrClosed after Close.
// All objects and sessions it creates are flushed on every path.
func (s *Secret) MAC(msg []byte) ([]byte, error) {
	if len(msg) > cohort.MaxMessage {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMessageTooLarge, len(msg), cohort.MaxMessage)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	return s.mac(msg)
}

func (s *Secret) mac(msg []byte) (out []byte, err error) {
	defer func() { // runs last: a failed flush voids the result
		if err != nil {
			out = nil
		}
	}()
	srk, err := createSRK(s.tpm)
	if err != nil {
		return nil, err
	}
	srkLoaded := true
	defer func() {
		if srkLoaded {
			flush(s.tpm, "flush srk", srk.handle, &err)
		}
	}()
	key, err := s.load(srk)
	if err != nil {
		return nil, err
	}
	defer flush(s.tpm, "flush key", key.handle, &err)
	sess, closeSess, err := s.session(srk)
	if err != nil {
		return nil, err
	}
	defer closeSession("flush session", closeSess, &err)
	// The SRK was needed only as the salt key and parent; free its slot.
	srkLoaded = false
	flush(s.tpm, "flush srk", srk.handle, &err)
	if err != nil {
		return nil, err
	}

	rsp, err := tpm2.Hmac{
		Handle:  tpm2.AuthHandle{Handle: key.handle, Name: key.name, Auth: sess},
		Buffer:  tpm2.TPM2BMaxBuffer{Buffer: msg},
		HashAlg: tpm2.TPMAlgSHA256,
	}.Execute(s.tpm)
	if err != nil {
		var class error
		if errors.Is(err, tpm2.TPMRCPolicyFail) || errors.Is(err, tpm2.TPMRCPCRChanged) {
			class = ErrPolicy
		}
		return nil, wrapErr("hmac", class, err)
	}
	if len(rsp.OutHMAC.Buffer) != sha256.Size {
		return nil, fmt.Errorf("tpmcohort: hmac: TPM returned %d bytes", len(rsp.OutHMAC.Buffer))
	}
	return rsp.OutHMAC.Buffer, nil
}

// session starts the authorization session for the key: salted to the SRK
// (so its session key is unknown to a bus observer) with AES-128-CFB
// encryption of the response parameter (the MAC). With a PCR policy it is a
// policy session on which TPM2_PolicyPCR has been run with the provisioning
// digest. The returned closer flushes the session; it is never nil when err
// is nil, and the session is already flushed when err is not nil.
//
// A fresh session per command, flushed explicitly, also sidesteps go-tpm
// v0.9.8's tpm2.Policy, which leaks the session (and caches its stale
// handle) when the policy callback fails.
func (s *Secret) session(srk *srkObject) (tpm2.Session, func() error, error) {
	opts := []tpm2.AuthOption{tpm2.Salted(srk.handle, srk.public), tpm2.AESEncryption(128, tpm2.EncryptOut)}
	if len(s.blob.pcrSel.PCRSelections) == 0 {
		sess, closeSess, err := tpm2.HMACSession(s.tpm, tpm2.TPMAlgSHA256, nonceSize, opts...)
		if err != nil {
			return nil, nil, wrapErr("start salted session", nil, err)
		}
		return sess, closeSess, nil
	}
	sess, closeSess, err := tpm2.PolicySession(s.tpm, tpm2.TPMAlgSHA256, nonceSize, opts...)
	if err != nil {
		return nil, nil, wrapErr("start policy session", nil, err)
	}
	_, err = tpm2.PolicyPCR{
		PolicySession: sess.Handle(),
		PcrDigest:     tpm2.TPM2BDigest{Buffer: s.pcrDig},
		Pcrs:          s.blob.pcrSel,
	}.Execute(s.tpm)
	if err != nil {
		closeSession("flush policy session", closeSess, &err)
		// TPM_RC_VALUE: the PCRs' current digest differs from pcrDigest.
		var class error
		if errors.Is(err, tpm2.TPMRCValue) {
			class = ErrPolicy
		}
		return nil, nil, wrapErr("policy pcr", class, err)
	}
	return sess, closeSess, nil
}

// Close ends the use of s; later MACs return ErrClosed. It does not close
// the transport. Nothing is loaded between calls, so there is nothing to
// flush.
func (s *Secret) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

// srkObject is a loaded storage root key.
type srkObject struct {
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	public tpm2.TPMTPublic
}

// createSRK creates the owner hierarchy's ECC P-256 SRK from the TCG
// reference template (tpm2.ECCSRKTemplate). Being derived from the owner
// seed, it is the same key every time until the owner hierarchy is cleared.
func createSRK(t transport.TPM) (*srkObject, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(t)
	if err != nil {
		return nil, wrapErr("create srk", nil, err)
	}
	srk := &srkObject{handle: rsp.ObjectHandle, name: rsp.Name}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		err = wrapErr("srk public area", nil, err)
		flush(t, "flush srk", srk.handle, &err)
		return nil, err
	}
	srk.public = *pub
	return srk, nil
}

// loadedKey is the loaded cohort key.
type loadedKey struct {
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
}

// load loads the blob's key under srk, after checking that srk is the
// blob's parent.
func (s *Secret) load(srk *srkObject) (*loadedKey, error) {
	if !bytes.Equal(srk.name.Buffer, s.parent) {
		return nil, fmt.Errorf("%w: it was provisioned under storage root key %x, this TPM's is %x "+
			"(another TPM, or this TPM's owner hierarchy was cleared); re-provision",
			ErrBlobMismatch, s.parent, srk.name.Buffer)
	}
	rsp, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: srk.handle, Name: srk.name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    s.blob.private,
		InPublic:     s.blob.public,
	}.Execute(s.tpm)
	if err != nil {
		// The parent matches, so a rejected blob is a corrupted one
		// (TPM_RC_INTEGRITY, or a malformed area). Warnings such as
		// TPM_RC_OBJECT_MEMORY are about the TPM, not the blob.
		var class error
		if rc, ok := tpmRC(err); ok && !rc.IsWarning() {
			class = ErrBadBlob
		}
		return nil, wrapErr("load key", class, err)
	}
	return &loadedKey{handle: rsp.ObjectHandle, name: rsp.Name}, nil
}

// readPCRDigest returns SHA-256 over the SHA-256-bank values of pcrs in
// ascending order: the pcrDigest of TPM2_PolicyPCR (Part 3 §23.7). It reads
// one PCR per command, since TPM2_PCR_Read returns at most 8 digests.
func readPCRDigest(t transport.TPM, pcrs []uint) ([]byte, error) {
	h := sha256.New()
	for _, p := range pcrs {
		rsp, err := tpm2.PCRRead{PCRSelectionIn: pcrSelection([]uint{p})}.Execute(t)
		if err != nil {
			return nil, wrapErr(fmt.Sprintf("read pcr %d", p), nil, err)
		}
		if len(rsp.PCRValues.Digests) != 1 || len(rsp.PCRValues.Digests[0].Buffer) != sha256.Size {
			return nil, fmt.Errorf("tpmcohort: read pcr %d: the TPM has no SHA-256 value for it", p)
		}
		h.Write(rsp.PCRValues.Digests[0].Buffer)
	}
	return h.Sum(nil), nil
}

// flush flushes handle and, if *errp is nil, stores the failure in it.
func flush(t transport.TPM, op string, handle tpm2.TPMHandle, errp *error) {
	_, err := tpm2.FlushContext{FlushHandle: handle}.Execute(t)
	if err != nil && *errp == nil {
		*errp = wrapErr(op, nil, err)
	}
}

// closeSession runs a go-tpm session closer and, if *errp is nil, stores
// the failure in it.
func closeSession(op string, closeSess func() error, errp *error) {
	if err := closeSess(); err != nil && *errp == nil {
		*errp = wrapErr(op, nil, err)
	}
}
