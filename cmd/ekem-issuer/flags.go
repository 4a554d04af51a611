package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/entropykem/entropykem/broker-config/creds"
	"github.com/entropykem/entropykem/internal/buildinfo"
	"github.com/entropykem/entropykem/internal/cliflag"
)

// warn prints a deprecation warning; run points it at stderr.
var warn = cliflag.WarnTo(os.Stderr, "ekem-issuer")

// runAliases are the deprecated flag names of run: old name → new name.
var runAliases = map[string]string{
	"key": cliflag.SigningKey, "next-key": cliflag.NextSigningKey,
	"ca": cliflag.TLSCA, "cert": cliflag.TLSCert, "keyfile": cliflag.TLSKey,
}

// commands are the commands named by an unknown-command error.
var commands = []string{"run", "keygen", "devices", "device", "reset", "revoke", "release", "approve", "cohort", "audit", "backup", "recover",
	"rotate-key", "migrate", "copy-store", "version", "help"}

// parseEnv parses args, then fills every flag not given on the command
// line from its environment variable (cliflag.FillFromEnv), and refuses a
// flag given under both its name and a deprecated alias.
func parseEnv(fs *flag.FlagSet, args []string, env map[string]cliflag.Env) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %s: %v", errUsage, fs.Name(), err)
	}
	if err := cliflag.CheckAliases(fs); err != nil {
		return fmt.Errorf("%w: %s: %v", errUsage, fs.Name(), err)
	}
	if _, err := cliflag.FillFromEnv(fs, env, os.Getenv, warn); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	return nil
}

// commandHelp is each command's own help ("ekem-issuer COMMAND -h").
var commandHelp = map[string]string{
	"keygen": `Usage: ekem-issuer keygen -out FILE -pub FILE [-alg ML-DSA-87|ML-DSA-65]

Creates the issuer signing key pair: -out the secret key (mode 0600, given
to "run -signing-key"), -pub the public key every device pins (-issuer-pub).
Existing files are never overwritten.

Example:
  ekem-issuer keygen -out issuer.key -pub issuer.pub
`,
	"devices": `Usage: ekem-issuer devices [-store FILE] [-admin-socket PATH] [-json]

Lists the devices: through the running issuer's admin socket (default
FILE.sock) when one answers, else from the stopped store (read-only).
-store may also come from EKEM_STORE, -admin-socket from EKEM_ADMIN_SOCKET.
`,
	"device": `Usage: ekem-issuer device [-store FILE] [-admin-socket PATH] [-json] ID

Shows one device in full: state, pinned key hash, epochs, last status.
`,
	"reset": `Usage: ekem-issuer reset [-store FILE] [-admin-socket PATH] [-reason TEXT] ID

Forgets ID's pinned key: its next registration is pinned anew. Recorded in
the audit log.
`,
	"revoke": `Usage: ekem-issuer revoke [-store FILE] [-admin-socket PATH] [-reason TEXT] ID

Stops issuing tickets to ID. Recorded in the audit log.
`,
	"release": `Usage: ekem-issuer release [-store FILE] [-admin-socket PATH] [-reason TEXT] ID

Makes a quarantined or revoked ID active again. Recorded in the audit log.
`,
	"rotate-key": `Usage: ekem-issuer rotate-key -store FILE -signing-key CURRENT.key -new-pub NEW.pub [-overlap N]

Announces NEW as the issuer signing key from epoch (last issued + 1 + N) on,
signed by CURRENT; N epochs of overlap (default 3). The issuer must be
stopped. Then run it with -signing-key CURRENT.key -next-signing-key NEW.key
until the new key's first epoch is issued, and from then on with
-signing-key NEW.key alone. -key is a deprecated alias of -signing-key.
`,
	"version": `Usage: ekem-issuer version

Prints the version, the commit, the Go version and the protocol version.
`,
}

// helpFor returns the help of cmd: its own, or the whole usage.
func helpFor(cmd string) string {
	if h, ok := commandHelp[cmd]; ok {
		return h
	}
	if cmd == "run" {
		return "Usage: ekem-issuer run [flags]\n\n" + runHelp()
	}
	return usageText
}

// runHelp is the run section of the usage text.
func runHelp() string {
	const from = "run flags ("
	for i := 0; i+len(from) <= len(usageText); i++ {
		if usageText[i:i+len(from)] == from {
			return usageText[i:]
		}
	}
	return usageText
}

// hintFor is the help command an error's hint points to.
func hintFor(cmd string) string {
	if _, ok := commandHelp[cmd]; ok || cmd == "run" {
		return "ekem-issuer " + cmd + " -h"
	}
	return "ekem-issuer help"
}

// cmdVersion prints the build: version, commit, Go and protocol version.
func cmdVersion(args []string, stdout io.Writer) error {
	fs := newFlagSet("version")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: version: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: version: unexpected argument %q", errUsage, fs.Arg(0))
	}
	fmt.Fprintln(stdout, buildinfo.Read().String("ekem-issuer"))
	return nil
}

// makeStoreDir creates the store's directory (mode 0700) if it is missing,
// as -store's help promises; the store file itself is created by the
// issuer.
func makeStoreDir(store string) error {
	if err := os.MkdirAll(filepath.Dir(store), 0o700); err != nil {
		return fmt.Errorf("-store: %w", err)
	}
	return nil
}

// readPassword returns the broker password from -password-file /
// EKEM_PASSWORD_FILE (a bare password or a mkcreds account file) or
// EKEM_PASSWORD; setting both is an error. The username is the one given,
// else the account file's.
func readPassword(file, username string) (user, password string, err error) {
	env, inEnv := os.LookupEnv("EKEM_PASSWORD")
	if file == "" {
		return username, env, nil
	}
	if inEnv {
		return "", "", fmt.Errorf("%w: set either EKEM_PASSWORD or -password-file (EKEM_PASSWORD_FILE), not both", errUsage)
	}
	a, err := creds.ReadPasswordFile(file, username)
	if err != nil {
		return "", "", fmt.Errorf("-password-file: %w", err)
	}
	if username == "" {
		username = a.Username
	}
	return username, a.Password, nil
}
