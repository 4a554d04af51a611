package conformance

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/internal/brokerconn"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
)

// CommandUsage is the usage of "ekemctl conformance".
const CommandUsage = `usage: ekemctl conformance device|issuer [flags]

  device  play the issuer (and an attacker) against a device under test:
          ekemctl conformance device -broker URL -password-file F -id DEVICE -issuer-key kit.key
          (the device pins kit.key's public key, starts from a fresh state, and
          the kit connects with the issuer's broker account)
  issuer  play three devices against an issuer under test:
          ekemctl conformance issuer -broker URL -issuer-pub issuer.pub -devices-file F
          (F: one "device-id password" per line, ids the issuer has never seen;
          run the issuer with a short -period, e.g. 1s or 2s, and -chunk-leaves 2
          so that its epochs are streamed, PROTOCOL.md §5.5)

Prints a pass/fail table per rule; exit status 0 when every rule passed, 1
when any failed, 2 for a usage or setup error.
`

// Command runs "ekemctl conformance" with args (after "conformance").
func Command(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, CommandUsage)
		return 2
	}
	switch args[0] {
	case "device", "issuer":
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, CommandUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "ekemctl conformance: unknown mode %q\n%s", args[0], CommandUsage)
		return 2
	}
	mode := args[0]
	fs := flag.NewFlagSet("conformance "+mode, flag.ContinueOnError)
	fs.SetOutput(stderr)
	broker := fs.String("broker", os.Getenv("EKEM_BROKER"), "broker URL: tcp://host:1883 or ssl://host:8883")
	prefix := fs.String("prefix", "", "topic prefix (default ekem/v1)")
	ca := fs.String("tls-ca", "", "CA certificate PEM for an ssl:// broker")
	wait := fs.Duration("timeout", 10*time.Second, "how long to wait for each expected message")
	quiet := fs.Duration("quiet", 1500*time.Millisecond, "how long nothing must arrive where nothing is expected")
	verbose := fs.Bool("v", false, "log the kit's own progress to stderr")
	// device mode
	username := fs.String("username", brokerconfig.IssuerAccount, "device mode: the kit's broker account (the issuer's)")
	passwordFile := fs.String("password-file", "", "device mode: file holding that account's password (or EKEM_PASSWORD)")
	id := fs.String("id", "", "device mode: the device under test")
	issuerKey := fs.String("issuer-key", "", "device mode: issuer secret key PEM the kit signs with (ekem-issuer keygen); the device pins its public key")
	skew := fs.Duration("skew", 30*time.Second, "device mode: the device's clock skew")
	maxJump := fs.Uint64("max-jump", 1000, "device mode: the device's fast-forward bound")
	staleWait := fs.Duration("stale-wait", 30*time.Second, "device mode: how long to wait for the stale Status after expiry")
	// issuer mode
	issuerPub := fs.String("issuer-pub", "", "issuer mode: the issuer's public key PEM file(s), comma separated")
	devicesFile := fs.String("devices-file", "", `issuer mode: file of "device-id password" lines (at least 3)`)
	kemName := fs.String("kem", "ML-KEM-768", "issuer mode: KEM of the played devices")
	cohortID := fs.String("cohort", "", "issuer mode: the cohort the played ids were made members of before the run (enroll them, then ekem-issuer cohort ID COHORT); checks the group seed (PROTOCOL.md §7.7)")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "ekemctl conformance %s: "+format+"\n", append([]any{mode}, a...)...)
		return 2
	}
	if *broker == "" {
		return fail("-broker is required")
	}
	b := Broker{URL: *broker, Prefix: *prefix}
	if *ca != "" {
		var err error
		if b.TLS, err = brokerconn.TLS(brokerconn.Files{CA: *ca, CAName: "-tls-ca"}, false); err != nil {
			return fail("%v", err)
		}
	}
	var log *slog.Logger
	if *verbose {
		log = slog.New(slog.NewTextHandler(stderr, nil))
	}
	timing := Timing{Status: *wait, Quiet: *quiet}
	var rep *Report
	switch mode {
	case "device":
		if *id == "" || *issuerKey == "" {
			return fail("-id and -issuer-key are required")
		}
		pw := os.Getenv("EKEM_PASSWORD")
		if *passwordFile != "" {
			p, err := readSmall(*passwordFile)
			if err != nil {
				return fail("%v", err)
			}
			pw = strings.TrimSpace(string(p))
		}
		keyPEM, err := readSmall(*issuerKey)
		if err != nil {
			return fail("%v", err)
		}
		key, err := signature.ParsePrivateKeyPEM(keyPEM)
		if err != nil {
			return fail("-issuer-key: %v", err)
		}
		b.Username, b.Password = *username, pw
		rep, err = RunDevice(ctx, DeviceOptions{Broker: b, DeviceID: *id, IssuerKey: key, Skew: *skew, MaxJump: *maxJump,
			StaleWait: *staleWait, Timing: timing, Logger: log})
		if err != nil {
			return fail("%v", err)
		}
	case "issuer":
		if *issuerPub == "" || *devicesFile == "" {
			return fail("-issuer-pub and -devices-file are required")
		}
		var keys []*signature.PublicKey
		for _, f := range strings.Split(*issuerPub, ",") {
			p, err := readSmall(strings.TrimSpace(f))
			if err != nil {
				return fail("%v", err)
			}
			k, err := signature.ParsePublicKeyPEM(p)
			if err != nil {
				return fail("-issuer-pub %s: %v", f, err)
			}
			keys = append(keys, k)
		}
		pins, err := signature.NewKeySet(keys...)
		if err != nil {
			return fail("%v", err)
		}
		accts, err := readDevices(*devicesFile)
		if err != nil {
			return fail("%v", err)
		}
		var id kem.ID
		for _, k := range kem.IDs() {
			if k.String() == *kemName {
				id = k
			}
		}
		if id == 0 {
			return fail("-kem: unknown %q", *kemName)
		}
		rep, err = RunIssuer(ctx, IssuerOptions{Broker: b, Devices: accts, IssuerKeys: pins, KEM: id, Timing: timing, Logger: log,
			Cohort: *cohortID})
		if err != nil {
			return fail("%v", err)
		}
	}
	rep.Print(stdout)
	if rep.Failed() > 0 {
		return 1
	}
	return 0
}

// readSmall reads a key, password or account file (at most 64 KiB).
func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64<<10+1))
	if err != nil {
		return nil, err
	}
	if len(b) > 64<<10 {
		return nil, fmt.Errorf("%s: larger than 64 KiB", path)
	}
	return b, nil
}

// readDevices reads "id password" lines; blank lines and # comments are
// skipped.
func readDevices(path string) ([]Account, error) {
	b, err := readSmall(path)
	if err != nil {
		return nil, err
	}
	var out []Account
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("%s:%d: want \"device-id password\"", path, n)
		}
		out = append(out, Account{ID: f[0], Password: f[1]})
	}
	return out, nil
}
