package main

// reenroll: give a device whose state is lost (or can no longer be
// decrypted) a new key, marked as a re-enrollment (schema/PROTOCOL.md
// §7.6), instead of silently becoming a new identity.

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/wire"
)

const reenrollSynopsis = `Make a new device key in -state and a Registration marked as a re-enrollment,
for a device whose state is lost (state.bin deleted, a reflashed disk) or no
longer decrypts. The old state.bin, status.cbor and registration.cbor are
removed; issuer-keys.cbor and cohort.blob stay. Nothing is sent now: the next
'ekem-device run' publishes the registration, and the issuer holds it until an
operator approves it ('ekem-issuer approve ID'), or accepts it at once if it
runs with '-reenroll auto'. A state that still loads is replaced only with
-force (it is a working identity). Works without the network; the agent must
not be running.`

// cmdReenroll implements reenroll.
func cmdReenroll(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o := newOpts("reenroll", reenrollSynopsis, stderr, "id", "state", "cohort-file", "tpm", "kem")
	var force bool
	o.fs.BoolVar(&force, "force", false, "replace a state that still loads (a working identity)")
	if err := o.parse(args, getenv); err != nil {
		return err
	}
	defer o.closeAll()
	id, dir, err := o.identity()
	if err != nil {
		return err
	}
	alg, err := o.kemID()
	if err != nil {
		return err
	}
	coh, err := o.cohortProvider(stderr)
	if err != nil {
		return err
	}
	c := device.Config{ID: id, StateDir: dir, Cohort: coh, KEM: alg, MustExist: true, Logger: discardLogger()}
	a, err := device.New(c)
	switch {
	case err == nil:
		epoch := a.Epoch()
		a.Close()
		if !force {
			return fmt.Errorf("%s holds a working state of device %s (epoch %d): re-enrolling would throw it away; "+
				"use -force if it was restored from a backup (README: Restoring a device from a backup) "+
				"or the issuer can no longer serve this key", dir, id, epoch)
		}
	case errors.Is(err, device.ErrLocked):
		return fmt.Errorf("%w (stop the agent first)", err)
	case !errors.Is(err, device.ErrIdentityLost) && !errors.Is(err, device.ErrNoState) &&
		!errors.Is(err, device.ErrStateKey) && !errors.Is(err, device.ErrStateCorrupt):
		return err // a cohort or TPM failure: a new key would not help
	}
	c.MustExist, c.Reenroll = false, true
	if a, err = device.New(c); err != nil {
		return err
	}
	defer a.Close()
	reg, err := wire.ParseRegistration(a.Registration())
	if err != nil {
		return err
	}
	pk := kem.PublicKeyHash(reg.PublicKey)
	fmt.Fprintf(stdout, "%s re-enrolled: new key pk_hash=%s\n", id, hex.EncodeToString(pk[:8]))
	fmt.Fprintf(stdout, "next: run the agent ('ekem-device run'), then approve it at the issuer: ekem-issuer approve %s\n", id)
	return nil
}

// explainState adds what to do to an error of device.New about the state
// directory (ErrIdentityLost already says it).
func explainState(err error, id, dir string) error {
	switch {
	case errors.Is(err, device.ErrStateKey):
		return fmt.Errorf("%w\nhint: check the device id and the cohort secret (-cohort-file or -tpm) of %s; "+
			"if the secret this state was written under is gone for good, re-enroll the device: "+
			"ekem-device reenroll -id %s -state %s", err, dir, id, dir)
	case errors.Is(err, device.ErrStateCorrupt):
		return fmt.Errorf("%w\nhint: restore %s from a backup (README: Restoring a device from a backup), "+
			"or re-enroll the device: ekem-device reenroll -id %s -state %s", err, dir, id, dir)
	}
	return err
}
