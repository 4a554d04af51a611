package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/entropykem/entropykem/internal/buildinfo"
)

const usage = `usage: ekem-device <command> [flags]

commands:
  run       run one device agent until interrupted
  fleet     run N simulated devices in one process, each with its own id,
            state directory and MQTT connection
  next-key  advance a device's ratchet and print the key's name (epoch, ctr)
            and fingerprint, never the key; works without the network
  reenroll  give a device whose state is lost a new key, marked as a
            re-enrollment for the issuer to approve (never silently)
  provision-cohort
            load the cohort secret into the device's TPM once and keep only
            the TPM's blob of it in the state directory (cohort.blob)
  version   print the version, commit, Go version and protocol version

Run 'ekem-device <command> -h' for a command's flags. Every flag of the form
-name also reads the environment variable shown in its help when the flag is
not given. A bad flag or environment value exits with status 2. The broker
password comes from -password-file (a file holding it, or the device's
account file from mkcreds) or EKEM_PASSWORD, never from a flag: argv is
public. TLS to the broker: -tls-ca, -tls-cert, -tls-key (EKEM_TLS_CA,
EKEM_TLS_CERT, EKEM_TLS_KEY); the old names -ca, -cert, -key (EKEM_CA,
EKEM_CERT, EKEM_KEY) still work and warn. Events are logged once, on stderr
(-log-format text or json).

Production devices keep the cohort secret in a TPM: provision-cohort loads it
once, then run, fleet and next-key use it with -tpm (EKEM_TPM), reading the
blob from the state directory. The cohort secret file (-cohort-file) is the
development provider: 32 raw bytes or 64 hex characters. -tpm and
-cohort-file are exclusive.

examples:
  ekem-device run -id dev-0001 -broker tcp://localhost:1883 \
      -password-file creds/accounts/dev-0001.env -state /var/lib/ekem/dev-0001 \
      -issuer-pub issuer.pub -cohort-file cohort.key
  EKEM_DEVICE_ID=dev-0001 EKEM_BROKER=ssl://broker:8883 EKEM_STATE_DIR=./s \
      EKEM_ISSUER_PUB=issuer.pub EKEM_COHORT_FILE=cohort.key \
      ekem-device run -tls-ca ca.crt -tls-cert dev-0001.crt -tls-key dev-0001.key
  ekem-device fleet -n 100 -broker tcp://localhost:1883 -passwords creds/accounts \
      -state ./fleet -issuer-pub issuer.pub -cohort-file cohort.key
  ekem-device next-key -id dev-0001 -state /var/lib/ekem/dev-0001 -cohort-file cohort.key
  ekem-device reenroll -id dev-0001 -state /var/lib/ekem/dev-0001 -tpm /dev/tpmrm0
  ekem-device provision-cohort -state /var/lib/ekem/dev-0001 -tpm /dev/tpmrm0 \
      -secret-file cohort.key
  ekem-device run -id dev-0001 -broker ssl://broker:8883 -tls-ca ca.crt \
      -tls-cert dev-0001.crt -tls-key dev-0001.key -state /var/lib/ekem/dev-0001 \
      -issuer-pub issuer.pub -tpm /dev/tpmrm0
`

// errUsage marks errors that exit with status 2.
var errUsage = errors.New("usage")

func usageErr(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, a...)...)
}

// run is main without os.Exit: it stops on SIGINT or SIGTERM.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return execute(ctx, args, os.Getenv, stdout, stderr)
}

// execute runs one command and returns its exit status: 0 ok, 1 failure,
// 2 bad usage.
func execute(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(ctx, args[1:], getenv, stdout, stderr)
	case "fleet":
		err = cmdFleet(ctx, args[1:], getenv, stdout, stderr)
	case "next-key":
		err = cmdNextKey(args[1:], getenv, stdout, stderr)
	case "provision-cohort":
		err = cmdProvisionCohort(args[1:], getenv, stdout, stderr)
	case "version", "-version", "--version":
		err = cmdVersion(args[1:], stdout)
	case "reenroll":
		err = cmdReenroll(args[1:], getenv, stdout, stderr)
	case "-h", "-help", "--help", "help":
		if len(args) > 1 {
			return execute(ctx, []string{args[1], "-h"}, getenv, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "ekem-device: unknown command %q (commands: run, fleet, next-key, provision-cohort, version, help)\nhint: run \"ekem-device -h\" for usage\n", args[0])
		return 2
	}
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "ekem-device: %s\n", trimUsage(err))
		return 2
	default:
		fmt.Fprintf(stderr, "ekem-device: %v\n", err)
		return 1
	}
}

// cmdVersion prints the build: version, commit, Go and protocol version.
func cmdVersion(args []string, stdout io.Writer) error {
	if len(args) > 0 {
		if args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
			fmt.Fprintln(stdout, "usage: ekem-device version\n\nPrints the version, the commit, the Go version and the protocol version.")
			return nil
		}
		return usageErr("version: unexpected argument %q", args[0])
	}
	fmt.Fprintln(stdout, buildinfo.Read().String("ekem-device"))
	return nil
}

// trimUsage drops the "usage: " marker from a usage error's text.
func trimUsage(err error) string {
	s := err.Error()
	const p = "usage: "
	if len(s) >= len(p) && s[:len(p)] == p {
		return s[len(p):]
	}
	return s
}
