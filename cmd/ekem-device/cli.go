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
)

const usage = `usage: ekem-device <command> [flags]

commands:
  run       run one device agent until interrupted
  fleet     run N simulated devices in one process, each with its own id,
            state directory and MQTT connection
  next-key  advance a device's ratchet and print the key's name (epoch, ctr)
            and fingerprint, never the key; works without the network
  provision-cohort
            load the cohort secret into the device's TPM once and keep only
            the TPM's blob of it in the state directory (cohort.blob)

Run 'ekem-device <command> -h' for a command's flags. Every flag of the form
-name also reads the environment variable shown in its help when the flag is
not given. A bad flag or environment value exits with status 2.

Production devices keep the cohort secret in a TPM: provision-cohort loads it
once, then run, fleet and next-key use it with -tpm (EKEM_TPM), reading the
blob from the state directory. The cohort secret file (-cohort-file) is the
development provider: 32 raw bytes or 64 hex characters. -tpm and
-cohort-file are exclusive.

examples:
  ekem-device run -id dev-0001 -broker tcp://localhost:1883 \
      -password-file dev-0001.pw -state /var/lib/ekem/dev-0001 \
      -issuer-pub issuer.pub -cohort-file cohort.key
  EKEM_DEVICE_ID=dev-0001 EKEM_BROKER=ssl://broker:8883 EKEM_STATE_DIR=./s \
      EKEM_ISSUER_PUB=issuer.pub EKEM_COHORT_FILE=cohort.key \
      ekem-device run -ca ca.pem -cert dev.pem -key dev.key
  ekem-device fleet -n 100 -broker tcp://localhost:1883 -passwords ./pw \
      -state ./fleet -issuer-pub issuer.pub -cohort-file cohort.key
  ekem-device next-key -id dev-0001 -state /var/lib/ekem/dev-0001 -cohort-file cohort.key
  ekem-device provision-cohort -state /var/lib/ekem/dev-0001 -tpm /dev/tpmrm0 \
      -secret-file cohort.key
  ekem-device run -id dev-0001 -broker ssl://broker:8883 -ca ca.pem -cert dev.pem \
      -key dev.key -state /var/lib/ekem/dev-0001 -issuer-pub issuer.pub -tpm /dev/tpmrm0
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
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "ekem-device: unknown command %q\n\n%s", args[0], usage)
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

// trimUsage drops the "usage: " marker from a usage error's text.
func trimUsage(err error) string {
	s := err.Error()
	const p = "usage: "
	if len(s) >= len(p) && s[:len(p)] == p {
		return s[len(p):]
	}
	return s
}
