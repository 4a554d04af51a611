package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/internal/cliflag"
)

var commonFlags = []string{"broker", "password", "password-file", "issuer-pub", "cohort-file", "tpm", "kem",
	"prefix", "log-level", "log-format", cliflag.TLSCA, cliflag.TLSCert, cliflag.TLSKey, "skew", "max-jump"}

// cmdRun runs one agent until ctx ends.
func cmdRun(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o := newOpts("run", "Run one device agent until interrupted; with -api, serve its keys to local applications.", stderr,
		append([]string{"id", "state", "api", "api-mode", "api-group"}, commonFlags...)...)
	if err := o.parse(args, getenv); err != nil {
		return err
	}
	if _, _, err := o.api.options(); err != nil {
		return err
	}
	defer o.closeAll()
	id, dir, err := o.identity()
	if err != nil {
		return err
	}
	pw, err := o.brokerPassword()
	if err != nil {
		return err
	}
	c, err := o.baseConfig(stderr)
	if err != nil {
		return err
	}
	// Events are logged once, by the agent's logger (stderr, -log-format).
	c.ID, c.StateDir, c.Password = id, dir, pw
	a, err := device.New(c)
	if err != nil {
		return explainState(err, id, dir)
	}
	defer a.Close()
	stop, err := o.api.serve(a, c.Logger)
	if err != nil {
		return err
	}
	defer stop()
	c.Logger.Info("device agent started", "device", id, "epoch", a.Epoch(), "state_dir", dir, "broker", c.Broker)
	return a.Run(ctx)
}

// maxFleet bounds the fleet size (ids are prefix plus a 4-digit index, and
// each device holds a connection).
const maxFleet = 10000

// cmdFleet runs n agents in one process, sharing one root cache.
func cmdFleet(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o := newOpts("fleet", "Run N simulated devices, each with its own id (prefix + 4-digit index), state\ndirectory (under -state) and MQTT connection, sharing one verified-root cache.",
		stderr, append([]string{"n", "id-prefix", "passwords", "state"}, commonFlags...)...)
	if err := o.parse(args, getenv); err != nil {
		return err
	}
	defer o.closeAll()
	if o.n < 1 || o.n > maxFleet {
		return usageErr("-n: %d is not between 1 and %d", o.n, maxFleet)
	}
	base, err := o.state()
	if err != nil {
		return err
	}
	ids, err := fleetIDs(o.idPrefix, o.n)
	if err != nil {
		return err
	}
	pws, err := fleetPasswords(o, ids)
	if err != nil {
		return err
	}
	c, err := o.baseConfig(stderr)
	if err != nil {
		return err
	}
	fleet := device.NewFleet(c.IssuerKeys)
	agents := make([]*device.Agent, 0, len(ids))
	defer func() {
		for _, a := range agents {
			a.Close()
		}
	}()
	for i, id := range ids {
		dc := c
		dc.ID, dc.StateDir, dc.Password = id, deviceDir(base, id), pws[i]
		dc.Logger = c.Logger.With("fleet_index", i+1)
		a, err := fleet.New(dc)
		if err != nil {
			return explainState(err, id, dc.StateDir)
		}
		agents = append(agents, a)
	}
	c.Logger.Info("fleet started", "devices", len(ids), "first", ids[0], "last", ids[len(ids)-1], "state_dir", base, "broker", c.Broker)
	var wg sync.WaitGroup
	errs := make(chan error, len(agents))
	for _, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.Run(ctx); err != nil {
				errs <- fmt.Errorf("%s: %w", a.ID(), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs // nil if every agent stopped cleanly
}

func fleetIDs(prefix string, n int) ([]string, error) {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s%04d", prefix, i+1)
	}
	for _, id := range []string{ids[0], ids[n-1]} {
		if err := validID(id); err != nil {
			return nil, usageErr("-id-prefix: %q gives device id %q: %v", prefix, id, err)
		}
	}
	return ids, nil
}

// fleetPasswords returns one password per id: all the same (-password,
// -password-file) or one file per id in -passwords.
func fleetPasswords(o *opts, ids []string) ([]string, error) {
	pws := make([]string, len(ids))
	if o.passwords == "" {
		pw, err := o.brokerPassword()
		if err != nil {
			return nil, err
		}
		for i := range pws {
			pws[i] = pw
		}
		return pws, nil
	}
	if o.password != "" || o.passwordFile != "" {
		return nil, usageErr("-passwords excludes %s and %s", o.src("password"), o.src("password-file"))
	}
	for i, id := range ids {
		pw, err := o.passwordFrom("passwords", fleetPasswordFile(o.passwords, id), id)
		if err != nil {
			return nil, err
		}
		pws[i] = pw
	}
	return pws, nil
}

// fleetPasswordFile is id's password file in dir: DIR/ID (a bare
// password), else DIR/ID.env, else DIR/accounts/ID.env (a mkcreds
// directory), the first that exists.
func fleetPasswordFile(dir, id string) string {
	for _, p := range []string{filepath.Join(dir, id), filepath.Join(dir, id+".env"), filepath.Join(dir, "accounts", id+".env")} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return filepath.Join(dir, id)
}

// cmdNextKey advances the ratchet of a device from its state directory.
func cmdNextKey(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o := newOpts("next-key", "Advance the ratchet of the device in -state and print the key's name and\nfingerprint (never the key). No network is used; the agent must not be running.",
		stderr, "id", "state", "cohort-file", "tpm", "allow-stale", "skew")
	if err := o.parse(args, getenv); err != nil {
		return err
	}
	defer o.closeAll()
	id, dir, err := o.identity()
	if err != nil {
		return err
	}
	coh, err := o.cohortProvider(stderr)
	if err != nil {
		return err
	}
	a, err := device.New(device.Config{ID: id, StateDir: dir, Cohort: coh, MustExist: true,
		AllowStale: o.allowStale, Skew: o.skew, Logger: discardLogger()})
	if err != nil {
		return explainState(err, id, dir)
	}
	defer a.Close()
	k, err := a.NextKey()
	if err != nil {
		return err
	}
	defer k.Wipe()
	fmt.Fprintf(stdout, "%s epoch=%d ctr=%d fingerprint=%s\n", id, k.Epoch, k.Ctr, device.Fingerprint(k.Bytes))
	return nil
}
