package main

import (
	"bytes"
	"crypto/tls"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/entropykem/entropykem/broker-config/creds"
	"github.com/entropykem/entropykem/device"
	"github.com/entropykem/entropykem/internal/brokerconn"
	"github.com/entropykem/entropykem/internal/cliflag"
	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/cohort"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// maxSecretFile bounds password and cohort files before they are read.
const maxSecretFile = 4096

// opts are the raw flag values of every command.
type opts struct {
	fs      *flag.FlagSet
	usage   func()
	envOf   map[string]string   // flag name → environment variable
	oldEnv  map[string][]string // flag name → deprecated environment variables
	fromEnv map[string]string   // flag name → the variable its value came from
	stderr  io.Writer           // deprecation warnings
	// passwordEnv: the command takes EKEM_PASSWORD (never a flag).
	passwordEnv bool

	id, broker, password, passwordFile, stateDir     string
	issuerPub, cohortFile, kemName, prefix, logLevel string
	logFormat                                        string
	ca, cert, key                                    string
	tpm                                              string      // TPM holding the cohort key (tpm.go)
	closers                                          []io.Closer // closed by closeAll when the command ends
	skew                                             time.Duration
	maxJump                                          uint64
	allowStale                                       bool
	// fleet
	n         int
	idPrefix  string
	passwords string
	// run: the local key API (api.go)
	api api
}

// newOpts defines the flags named in which (a subset of the known ones)
// on a new FlagSet for cmd.
func newOpts(cmd, synopsis string, stderr io.Writer, which ...string) *opts {
	o := &opts{fs: flag.NewFlagSet(cmd, flag.ContinueOnError), envOf: map[string]string{}, oldEnv: map[string][]string{},
		fromEnv: map[string]string{}, stderr: stderr}
	// The flag package's own messages are off: parse reports errors
	// (prefixed, exit 2) and prints the usage only for -h.
	o.fs.SetOutput(io.Discard)
	o.fs.Usage = func() {}
	o.usage = func() {
		o.fs.SetOutput(stderr)
		fmt.Fprintf(stderr, "usage: ekem-device %s [flags]\n\n%s\n\nflags:\n", cmd, synopsis)
		o.fs.PrintDefaults()
		fmt.Fprintf(stderr, "\n%s", examplesOf(cmd))
	}
	defs := map[string]func(){
		"id": func() {
			o.str(&o.id, "id", "", "device id = broker username (1-64 of [A-Za-z0-9._-])")
		},
		"broker": func() { o.str(&o.broker, "broker", "", "broker URL: tcp://host:1883, ssl://host:8883") },
		// The password itself is only read from EKEM_PASSWORD: argv is public.
		"password": func() { o.passwordEnv, o.envOf["password"] = true, cliflag.Var("password") },
		"password-file": func() {
			o.str(&o.passwordFile, "password-file", "", "file holding the broker password, or the device's account file from mkcreds (accounts/ID.env); the password itself may come from EKEM_PASSWORD, never a flag")
		},
		"state": func() { o.str(&o.stateDir, "state", "", "state directory") },
		"issuer-pub": func() {
			o.str(&o.issuerPub, "issuer-pub", "", "pinned issuer public key PEM file(s), comma separated")
		},
		"cohort-file": func() {
			o.str(&o.cohortFile, "cohort-file", "", "cohort secret file, 32 raw bytes or 64 hex chars (development only)")
		},
		"tpm": func() {
			o.str(&o.tpm, "tpm", "", "TPM holding the cohort key: /dev/tpmrm0 or a swtpm socket (blob: -state dir/"+blobFileName+", see provision-cohort)")
		},
		"kem":    func() { o.str(&o.kemName, "kem", kem.Default.String(), "KEM of a new device: "+kemNames()) },
		"prefix": func() { o.str(&o.prefix, "prefix", wire.DefaultPrefix, "topic prefix") },
		"log-level": func() {
			o.str(&o.logLevel, "log-level", "info", "log level: debug, info, warn, error")
		},
		"log-format": func() {
			o.str(&o.logFormat, "log-format", "text", "log format: text or json (one line per event, on stderr)")
		},
		cliflag.TLSCA: func() {
			o.str(&o.ca, cliflag.TLSCA, "", "CA certificate PEM file that signs the broker's certificate")
			o.alias("ca", cliflag.TLSCA, "EKEM_CA")
		},
		cliflag.TLSCert: func() {
			o.str(&o.cert, cliflag.TLSCert, "", "TLS client certificate PEM file (with -tls-key)")
			o.alias("cert", cliflag.TLSCert, "EKEM_CERT")
		},
		cliflag.TLSKey: func() {
			o.str(&o.key, cliflag.TLSKey, "", "TLS client private key PEM file (with -tls-cert)")
			o.alias("key", cliflag.TLSKey, "EKEM_KEY")
		},
		"skew": func() {
			o.fs.DurationVar(&o.skew, "skew", device.DefaultSkew, "clock skew allowed around a ticket's validity (EKEM_SKEW)")
			o.envOf["skew"] = cliflag.Var("skew")
		},
		"max-jump": func() {
			o.fs.Uint64Var(&o.maxJump, "max-jump", accept.DefaultMaxJump, "most epochs a ticket may jump ahead (EKEM_MAX_JUMP)")
			o.envOf["max-jump"] = cliflag.Var("max-jump")
		},
		"allow-stale": func() {
			o.fs.BoolVar(&o.allowStale, "allow-stale", false, "hand out a key even if the last ticket expired")
		},
		"n": func() { o.fs.IntVar(&o.n, "n", 0, "number of simulated devices (1-10000)") },
		"id-prefix": func() {
			o.fs.StringVar(&o.idPrefix, "id-prefix", "dev-", "device ids are this prefix and a 4-digit index: dev-0001")
		},
		"passwords": func() {
			o.fs.StringVar(&o.passwords, "passwords", "", "directory of password files, one per device id: DIR/ID, DIR/ID.env or DIR/accounts/ID.env (a mkcreds directory)")
		},
	}
	o.apiFlags(defs)
	for _, w := range which {
		defs[w]()
	}
	return o
}

func (o *opts) str(p *string, name, def, help string) {
	env := cliflag.Var(name)
	o.fs.StringVar(p, name, def, help+" ("+env+")")
	o.envOf[name] = env
}

// alias defines -old and the variable oldEnv as deprecated names of name.
func (o *opts) alias(old, name, oldEnv string) {
	cliflag.Alias(o.fs, old, name, cliflag.WarnTo(o.stderr, "ekem-device"))
	o.oldEnv[name] = append(o.oldEnv[name], oldEnv)
}

// parse parses args, then fills every flag not given from its environment
// variable. Errors name the flag or variable.
func (o *opts) parse(args []string, getenv func(string) string) error {
	if err := cliflag.RefuseSecrets(args, "password"); err != nil {
		return usageErr("%v", err)
	}
	if err := o.fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			o.usage()
			return err
		}
		return usageErr("%v (see 'ekem-device %s -h')", err, o.fs.Name())
	}
	if o.fs.NArg() > 0 {
		return usageErr("unexpected argument %q", o.fs.Arg(0))
	}
	if err := cliflag.CheckAliases(o.fs); err != nil {
		return usageErr("%v", err)
	}
	env := map[string]cliflag.Env{}
	for name, v := range o.envOf {
		if name != "password" {
			env[name] = cliflag.Env{Var: v, Old: o.oldEnv[name]}
		}
	}
	from, err := cliflag.FillFromEnv(o.fs, env, getenv, cliflag.WarnTo(o.stderr, "ekem-device"))
	if err != nil {
		return usageErr("%v", err)
	}
	o.fromEnv = from
	if o.passwordEnv {
		if o.password = getenv("EKEM_PASSWORD"); o.password != "" {
			o.fromEnv["password"] = "EKEM_PASSWORD"
		}
	}
	return nil
}

// src names where flag name's value came from, for error messages.
func (o *opts) src(name string) string {
	if v, ok := o.fromEnv[name]; ok {
		return v
	}
	if name == "password" {
		return "EKEM_PASSWORD"
	}
	return "-" + name
}

func kemNames() string {
	var n []string
	for _, id := range kem.IDs() {
		n = append(n, id.String())
	}
	return strings.Join(n, ", ")
}

func (o *opts) kemID() (kem.ID, error) {
	for _, id := range kem.IDs() {
		if strings.EqualFold(o.kemName, id.String()) {
			return id, nil
		}
	}
	return 0, usageErr("%s: unknown KEM %q (allowed: %s)", o.src("kem"), o.kemName, kemNames())
}

func (o *opts) deviceID() (string, error) {
	if o.id == "" {
		return "", usageErr("%s is required", o.src("id"))
	}
	if err := wire.ValidateDeviceID(o.id); err != nil {
		return "", usageErr("%s: %v", o.src("id"), err)
	}
	return o.id, nil
}

func (o *opts) state() (string, error) {
	if o.stateDir == "" {
		return "", usageErr("%s is required", o.src("state"))
	}
	return o.stateDir, nil
}

// identity returns the device id and its state directory (-id, -state).
func (o *opts) identity() (id, dir string, err error) {
	if id, err = o.deviceID(); err != nil {
		return "", "", err
	}
	if dir, err = o.state(); err != nil {
		return "", "", err
	}
	return id, dir, nil
}

func (o *opts) brokerURL() (string, error) {
	if o.broker == "" {
		return "", usageErr("%s is required", o.src("broker"))
	}
	if err := brokerconn.CheckURL(o.broker); err != nil {
		return "", usageErr("%s: %v", o.src("broker"), err)
	}
	return o.broker, nil
}

// readSecret reads a small secret file named by flag name.
func (o *opts) readSecret(name, path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, usageErr("%s: %v", o.src(name), err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return nil, usageErr("%s: %v", o.src(name), err)
	}
	if len(b) > maxSecretFile {
		return nil, usageErr("%s: %s is larger than %d bytes", o.src(name), path, maxSecretFile)
	}
	return b, nil
}

// brokerPassword returns the password from -password or -password-file.
func (o *opts) brokerPassword() (string, error) {
	if o.password != "" && o.passwordFile != "" {
		return "", usageErr("%s and %s are exclusive", o.src("password"), o.src("password-file"))
	}
	if o.passwordFile != "" {
		return o.passwordFrom("password-file", o.passwordFile, o.id)
	}
	if o.password == "" && o.cert == "" {
		return "", usageErr("a broker password is required: %s or %s (or a client certificate, -tls-cert)", o.src("password-file"), o.src("password"))
	}
	return o.password, nil
}

// passwordFrom reads a bare password or a mkcreds account file; an account
// file must be the one of the device id (if one is known).
func (o *opts) passwordFrom(name, path, id string) (string, error) {
	a, err := creds.ReadPasswordFile(path, id)
	if err != nil {
		return "", usageErr("%s: %v", o.src(name), err)
	}
	return a.Password, nil
}

// issuerKeys parses the pinned issuer public keys.
func (o *opts) issuerKeys() (*signature.KeySet, error) {
	if o.issuerPub == "" {
		return nil, usageErr("%s is required", o.src("issuer-pub"))
	}
	var keys []*signature.PublicKey
	for _, p := range strings.Split(o.issuerPub, ",") {
		p = strings.TrimSpace(p)
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, usageErr("%s: %v", o.src("issuer-pub"), err)
		}
		k, err := signature.ParsePublicKeyPEM(b)
		if err != nil {
			return nil, usageErr("%s: %s: %v", o.src("issuer-pub"), p, err)
		}
		keys = append(keys, k)
	}
	ks, err := signature.NewKeySet(keys...)
	if err != nil {
		return nil, usageErr("%s: %v", o.src("issuer-pub"), err)
	}
	return ks, nil
}

// cohortSecret loads the file-backed development cohort secret and warns
// loudly on stderr.
func (o *opts) cohortSecret(stderr io.Writer) (cohort.Secret, error) {
	if o.cohortFile == "" {
		return nil, usageErr("%s is required", o.src("cohort-file"))
	}
	b, err := o.readSecret("cohort-file", o.cohortFile)
	if err != nil {
		return nil, err
	}
	defer clear(b)
	secret := b
	if len(b) != cohort.SecretSize {
		t := bytes.TrimSpace(b)
		secret = make([]byte, cohort.SecretSize)
		defer clear(secret)
		if len(t) != 2*cohort.SecretSize {
			return nil, usageErr("%s: %s must hold 32 raw bytes or 64 hex characters", o.src("cohort-file"), o.cohortFile)
		}
		if _, err := hex.Decode(secret, t); err != nil {
			return nil, usageErr("%s: %s must hold 32 raw bytes or 64 hex characters", o.src("cohort-file"), o.cohortFile)
		}
	}
	s, err := cohort.NewSoftware(secret)
	if err != nil {
		return nil, usageErr("%s: %v", o.src("cohort-file"), err)
	}
	msg := "WARNING: cohort secret held in a file (development only): " + o.cohortFile +
		". Anyone who reads it and records the issuer's tickets can compute this cohort's keys; production devices keep it in a TPM."
	if fi, err := os.Stat(o.cohortFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
		msg += fmt.Sprintf(" The file is readable by other users (mode %v).", fi.Mode().Perm())
	}
	fmt.Fprintln(stderr, msg)
	return s, nil
}

// tlsConfig builds the TLS configuration from -tls-ca, -tls-cert and
// -tls-key, or nil for a plain connection with no TLS flags.
func (o *opts) tlsConfig() (*tls.Config, error) {
	c, err := brokerconn.TLS(brokerconn.Files{CA: o.ca, Cert: o.cert, Key: o.key,
		CAName: o.src(cliflag.TLSCA), CertName: o.src(cliflag.TLSCert), KeyName: o.src(cliflag.TLSKey)}, brokerconn.Secure(o.broker))
	if err != nil {
		return nil, usageErr("%v", err)
	}
	return c, nil
}

func (o *opts) logger(stderr io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, usageErr("%s: %q is not debug, info, warn or error", o.src("log-level"), o.logLevel)
	}
	hopts := &slog.HandlerOptions{Level: lvl}
	switch o.logFormat {
	case "text", "":
		return slog.New(slog.NewTextHandler(stderr, hopts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(stderr, hopts)), nil
	}
	return nil, usageErr("%s: %q is not text or json", o.src("log-format"), o.logFormat)
}

// baseConfig builds what run and fleet share.
func (o *opts) baseConfig(stderr io.Writer) (device.Config, error) {
	var c device.Config
	var err error
	if _, err = o.brokerURL(); err != nil {
		return c, err
	}
	if c.KEM, err = o.kemID(); err != nil {
		return c, err
	}
	if _, err := wire.NewTopics(o.prefix); err != nil {
		return c, usageErr("%s: %v", o.src("prefix"), err)
	}
	if o.skew < 0 {
		return c, usageErr("%s: negative skew", o.src("skew"))
	}
	if o.maxJump == 0 {
		return c, usageErr("%s: must be at least 1", o.src("max-jump"))
	}
	if c.IssuerKeys, err = o.issuerKeys(); err != nil {
		return c, err
	}
	if c.TLS, err = o.tlsConfig(); err != nil {
		return c, err
	}
	if c.Logger, err = o.logger(stderr); err != nil {
		return c, err
	}
	if c.Cohort, err = o.cohortProvider(stderr); err != nil {
		return c, err
	}
	c.Broker, c.Prefix, c.Skew, c.MaxJump = o.broker, o.prefix, o.skew, o.maxJump
	return c, nil
}

func examplesOf(cmd string) string {
	switch cmd {
	case "run":
		return "examples:\n  ekem-device run -id dev-0001 -broker tcp://localhost:1883 -password-file creds/accounts/dev-0001.env \\\n      -state /var/lib/ekem/dev-0001 -issuer-pub issuer.pub -cohort-file cohort.key\n"
	case "fleet":
		return "examples:\n  ekem-device fleet -n 100 -broker tcp://localhost:1883 -passwords creds/accounts -state ./fleet \\\n      -issuer-pub issuer.pub -cohort-file cohort.key\n"
	case "provision-cohort":
		return provisionExamples
	case "reenroll":
		return "examples:\n  ekem-device reenroll -id dev-0001 -state /var/lib/ekem/dev-0001 -tpm /dev/tpmrm0\n"
	}
	return "examples:\n  ekem-device next-key -id dev-0001 -state /var/lib/ekem/dev-0001 -cohort-file cohort.key\n"
}

// deviceDir is the state directory of fleet device id under base.
func deviceDir(base, id string) string { return filepath.Join(base, id) }

func validID(id string) error { return wire.ValidateDeviceID(id) }

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
