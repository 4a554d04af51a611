package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/entropykem/entropykem/internal/brokerconn"
	"github.com/entropykem/entropykem/internal/cliflag"
	"github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/issuer/adminsock"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// usageText is the whole usage: the commands, run's flags (runUsage, from
// their declarations) and examples.
var usageText = `Usage:
  ekem-issuer run [flags]                       run the issuer (flags below, or EKEM_* variables)
  ekem-issuer keygen -out FILE -pub FILE [-alg ML-DSA-87|ML-DSA-65]
                                                 create the issuer signing key pair
  ekem-issuer devices -store FILE [-json]       list the devices
  ekem-issuer device  -store FILE [-json] ID    show one device in full
  ekem-issuer reset   -store FILE [-reason TEXT] ID
                                                 forget ID's pinned key: its next registration is pinned anew
  ekem-issuer revoke  -store FILE [-reason TEXT] ID
                                                 stop issuing tickets to ID
  ekem-issuer release -store FILE [-reason TEXT] ID
                                                 make a quarantined or revoked ID active again
  ekem-issuer approve -store FILE [-reason TEXT] ID
                                                 pin the registration the running issuer holds for ID
  ekem-issuer deny    -store FILE [-reason TEXT] ID
                                                 drop the registration the running issuer holds for ID
  ekem-issuer enroll  -store FILE [-reason TEXT] LIST.csv
                                                 import device ids (optionally with key hashes) for the
                                                 enrollment policy (running issuer, or stopped store)
  ekem-issuer cohort  -store FILE [-reason TEXT] ID COHORT | -leave ID
                                                 make ID a member of COHORT (or of none): its tickets
                                                 carry the cohort's group seed from the next epoch
  ekem-issuer audit   -store FILE [-json]       print the audit log of operator actions
  ekem-issuer backup  -store FILE -out COPY     write a consistent copy of the store
  ekem-issuer recover [run flags] [-reason TEXT]
                                                 rebuild a lost or restored store from the broker:
                                                 raise the epoch floor, re-pin every device
  ekem-issuer migrate -store URL                apply the PostgreSQL schema migrations (run also does)
  ekem-issuer copy-store -from STORE -to STORE  copy a stopped issuer's whole state into an empty
                                                 store (e.g. from a bbolt file to postgres://…)
  ekem-issuer rotate-key -store FILE -signing-key CURRENT.key -new-pub NEW.pub [-overlap N]
                                                 announce NEW as the issuer signing key from epoch
                                                 (last issued + 1 + N) on; N epochs of overlap, default 3
  ekem-issuer version                           print version, commit, Go and protocol version

Run "ekem-issuer COMMAND -h" for one command's flags. The operator commands
(devices … backup) reach a running issuer through its admin socket
(-admin-socket, default: the store's path + ".sock") and open the store
itself when no issuer runs; every action goes into the audit log. recover and
rotate-key need the issuer stopped. After rotate-key, run the issuer with
-signing-key CURRENT.key -next-signing-key NEW.key until the new key's first
epoch is issued; from then on, with -signing-key NEW.key alone.

` + runUsage() + `Deprecated names, still accepted with a warning: -key/EKEM_KEY (-signing-key),
-next-key/EKEM_NEXT_KEY (-next-signing-key), -ca/EKEM_CA (-tls-ca),
-cert/EKEM_CERT (-tls-cert), -keyfile/EKEM_KEYFILE (-tls-key).

Examples:
  ekem-issuer keygen -out issuer.key -pub issuer.pub
  EKEM_PASSWORD_FILE=creds/accounts/ekem-issuer.env ekem-issuer run -broker tcp://localhost:1883 \
      -signing-key issuer.key -store issuer.db -period 1h
  ekem-issuer run -broker ssl://mqtt.example:8883 -tls-ca ca.crt -tls-cert ekem-issuer.crt \
      -tls-key ekem-issuer.key -signing-key issuer.key -store /var/lib/entropykem-issuer/issuer.db \
      -period 15m -metrics 127.0.0.1:7741
  ekem-issuer devices -store issuer.db
  ekem-issuer release -store issuer.db -reason "inspected on site" sensor-0042
  ekem-issuer backup -store /var/lib/entropykem-issuer/issuer.db -out /backup/issuer-2026-12-06.db
  ekem-issuer enroll -store issuer.db -reason "batch 7 from the factory" batch-7.csv
  ekem-issuer keygen -out issuer-2.key -pub issuer-2.pub
  ekem-issuer rotate-key -store issuer.db -signing-key issuer.key -new-pub issuer-2.pub -overlap 3
  ekem-issuer run ... -signing-key issuer.key -next-signing-key issuer-2.key
`

// errUsage marks an error after which the usage hint is printed.
var errUsage = errors.New("usage")

// run is the whole command; it returns the exit status (0 ok, 1 failure,
// 2 usage error).
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return 2
	}
	warn = cliflag.WarnTo(stderr, "ekem-issuer")
	var err error
	if err = cliflag.RefuseSecrets(args[1:], "password"); err != nil {
		err = fmt.Errorf("%w: %w", errUsage, err)
	}
	cmd, rest := args[0], args[1:]
	if (cmd == "help" || cmd == "-h" || cmd == "-help" || cmd == "--help") && len(rest) > 0 {
		cmd, rest = rest[0], []string{"-h"} // "help run" is "run -h"
	}
	switch {
	case err != nil:
	case cmd == "version" || cmd == "-version" || cmd == "--version":
		err = cmdVersion(rest, stdout)
	default:
		err = dispatch(cmd, rest, stdout, stderr)
	}
	return exitStatus(cmd, err, stdout, stderr)
}

// dispatch runs one command.
func dispatch(cmd string, rest []string, stdout, stderr io.Writer) error {
	var err error
	switch cmd {
	case "run":
		err = cmdRun(rest, stderr)
	case "keygen":
		err = cmdKeygen(rest, stdout)
	case "devices":
		err = cmdDevices(rest, stdout)
	case "device":
		err = cmdDevice(rest, stdout)
	case "reset", "revoke", "release", "approve", "deny":
		err = cmdOperator(cmd, rest, stdout)
	case "enroll":
		err = cmdEnroll(rest, stdout)
	case "cohort":
		err = cmdCohort(rest, stdout)
	case "audit":
		err = cmdAudit(rest, stdout)
	case "backup":
		err = cmdBackup(rest, stdout)
	case "recover":
		err = cmdRecover(rest, stdout, stderr)
	case "rotate-key":
		err = cmdRotateKey(rest, stdout)
	case "migrate":
		err = cmdMigrate(rest, stdout)
	case "copy-store":
		err = cmdCopyStore(rest, stdout)
	case "help", "-h", "-help", "--help":
		return flag.ErrHelp
	default:
		err = fmt.Errorf("%w: unknown command %q (commands: %s)", errUsage, cmd, strings.Join(commands, ", "))
	}
	return err
}

// exitStatus prints err as its kind asks and returns the exit status.
func exitStatus(cmd string, err error, stdout, stderr io.Writer) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, helpFor(cmd))
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "ekem-issuer: %s\nhint: run \"%s\" for usage\n", strings.TrimPrefix(err.Error(), "usage: "), hintFor(cmd))
		return 2
	default:
		fmt.Fprintf(stderr, "ekem-issuer: %v\n", err)
		return 1
	}
}

// newFlagSet returns a flag set that reports errors to the caller instead
// of printing usage or exiting.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parse parses args, then fills every named flag not given on the command
// line from its environment variable (cliflag's table), through the same
// flag.Value so both are validated alike.
func parse(fs *flag.FlagSet, args []string, fromEnv ...string) error {
	return parseEnv(fs, args, cliflag.EnvOf(nil, fromEnv...))
}

// runFlags are the run command's settings.
type runFlags struct {
	broker, username, passwordFile, key, store string
	nextKey                                    string
	period, ttl                                time.Duration
	prefix, purpose, group, clientID           string
	keepRoots                                  int
	chunkLeaves                                int
	reenroll                                   string
	ca, cert, keyfile, metrics                 string
	logLevel, logFormat                        string
	adminSocket                                string
	reason                                     string // recover only
	leaseTTL                                   time.Duration
	nudge                                      time.Duration
	enrollment                                 string
}

// runEnv are the variables of run's flags (cliflag's table), with the
// deprecated names the issuer still reads.
var runEnv = cliflag.EnvOf(map[string][]string{
	cliflag.SigningKey: {"EKEM_KEY"}, cliflag.NextSigningKey: {"EKEM_NEXT_KEY"},
	cliflag.TLSCA: {"EKEM_CA"}, cliflag.TLSCert: {"EKEM_CERT"}, cliflag.TLSKey: {"EKEM_KEYFILE"},
}, runFlagNames()...)

func parseRun(args []string) (*runFlags, error) { return parseRunFlags("run", args) }

// parseRunFlags parses the flags of run, or of recover (the same, plus
// -reason).
func parseRunFlags(name string, args []string) (*runFlags, error) {
	f := &runFlags{}
	fs := newFlagSet(name)
	if name == "recover" {
		fs.StringVar(&f.reason, "reason", "", "")
	}
	for _, d := range runFlagTable(f) {
		if d.bind != nil {
			d.bind(fs, d.name, d.help)
		}
	}
	for old, current := range runAliases {
		cliflag.Alias(fs, old, current, warn)
	}
	if err := parseEnv(fs, args, runEnv); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: %s: unexpected argument %q", errUsage, name, fs.Arg(0))
	}
	return f, f.check()
}

// check validates the flags with messages that name the flag.
func (f *runFlags) check() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{errUsage}, a...)...)
	}
	switch {
	case f.broker == "":
		return bad("-broker is required (or EKEM_BROKER)")
	case f.key == "":
		return bad("-signing-key is required (or EKEM_SIGNING_KEY)")
	case f.nextKey != "" && f.nextKey == f.key:
		return bad("-next-signing-key and -signing-key must be different files")
	case f.store == "":
		return bad("-store is required (or EKEM_STORE)")
	case f.period < time.Second:
		return bad("-period must be at least 1s, got %v", f.period)
	case f.period > wire.MaxTTL*time.Second:
		return bad("-period must be at most %v, got %v", wire.MaxTTL*time.Second, f.period)
	case f.ttl != 0 && (f.ttl < time.Second || f.ttl > wire.MaxTTL*time.Second):
		return bad("-ttl must be between 1s and %v, got %v", wire.MaxTTL*time.Second, f.ttl)
	case f.ttl%time.Second != 0:
		return bad("-ttl must be a whole number of seconds, got %v", f.ttl)
	case f.keepRoots < issuer.MinKeepRoots:
		return bad("-keep-roots must be at least %d, got %d", issuer.MinKeepRoots, f.keepRoots)
	case f.chunkLeaves < 2 || f.chunkLeaves&(f.chunkLeaves-1) != 0:
		return bad("-chunk-leaves must be a power of two of at least 2, got %d", f.chunkLeaves)
	case (f.cert == "") != (f.keyfile == ""):
		return bad("-tls-cert and -tls-key go together")
	case f.logFormat != "text" && f.logFormat != "json":
		return bad("-log-format must be text or json, got %q", f.logFormat)
	case f.leaseTTL != 0 && !issuer.IsPostgresStore(f.store):
		return bad("-lease-ttl needs a postgres:// store (a bbolt store has one issuer, without a lease)")
	case f.leaseTTL < 0:
		return bad("-lease-ttl must not be negative, got %v", f.leaseTTL)
	}
	if err := brokerconn.CheckURL(f.broker); err != nil {
		return bad("-broker: %v", err)
	}
	if _, err := parseLevel(f.logLevel); err != nil {
		return bad("-log-level: %v", err)
	}
	if f.ca != "" || f.cert != "" {
		if !brokerconn.Secure(f.broker) {
			return bad("-tls-ca, -tls-cert and -tls-key need an ssl://, tls://, mqtts:// or wss:// broker, got %q", f.broker)
		}
	}
	return nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	switch s {
	case "debug", "info", "warn", "error":
		return l, l.UnmarshalText([]byte(s))
	}
	return l, fmt.Errorf("must be debug, info, warn or error, got %q", s)
}

func cmdRun(args []string, stderr io.Writer) error {
	f, err := parseRun(args)
	if err != nil {
		return err
	}
	level, _ := parseLevel(f.logLevel)
	hopts := &slog.HandlerOptions{Level: level}
	var log *slog.Logger
	if f.logFormat == "json" {
		log = slog.New(slog.NewJSONHandler(stderr, hopts))
	} else {
		log = slog.New(slog.NewTextHandler(stderr, hopts))
	}
	cfg, err := f.config(log)
	if err != nil {
		return err
	}
	if issuer.IsPostgresStore(f.store) {
		return runCluster(f, cfg, log)
	}
	iss, err := issuer.New(cfg)
	if err != nil {
		return err
	}
	return serve(f, iss, iss.Admin(), iss.AdminHandler(), log)
}

// instance is what run serves until SIGINT or SIGTERM: one issuer, or one
// instance of a cluster (runCluster).
type instance interface {
	Run(ctx context.Context) error
	Close() error
}

// serve runs inst with its admin socket (a) and, with -metrics, its
// /metrics, /healthz and /readyz (h), and closes it.
func serve(f *runFlags, inst instance, a issuer.Admin, h http.Handler, log *slog.Logger) error {
	defer inst.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	closeAdmin, err := serveAdmin(f, a, log)
	if err != nil {
		return err
	}
	defer closeAdmin()
	if f.metrics != "" {
		srv, err := serveMetrics(f.metrics, h, log)
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	if err := inst.Run(ctx); err != nil {
		return err
	}
	log.Info("shutting down")
	return nil
}

// serveAdmin serves a on the admin socket f names (none for "off"), and
// returns what closes it.
func serveAdmin(f *runFlags, a issuer.Admin, log *slog.Logger) (func(), error) {
	path := adminSocketPath(f.adminSocket, f.store)
	if path == "" {
		return func() {}, nil
	}
	sock, err := adminsock.Listen(path, a, log)
	if err != nil {
		return nil, err
	}
	log.Info("admin socket listening", "path", path)
	return func() { sock.Close() }, nil
}

// config builds the issuer configuration, reading the key, password and
// TLS files.
func (f *runFlags) config(log *slog.Logger) (issuer.Config, error) {
	key, err := readKey("-signing-key", f.key, log)
	if err != nil {
		return issuer.Config{}, err
	}
	var nextKey *signature.PrivateKey
	if f.nextKey != "" {
		if nextKey, err = readKey("-next-signing-key", f.nextKey, log); err != nil {
			return issuer.Config{}, err
		}
	}
	username, password, err := readPassword(f.passwordFile, f.username)
	if err != nil {
		return issuer.Config{}, err
	}
	if err := makeStoreDir(f.store); err != nil {
		return issuer.Config{}, err
	}
	tlsCfg, err := brokerconn.TLS(brokerconn.Files{CA: f.ca, Cert: f.cert, Key: f.keyfile,
		CAName: "-" + cliflag.TLSCA, CertName: "-" + cliflag.TLSCert, KeyName: "-" + cliflag.TLSKey}, false)
	if err != nil {
		return issuer.Config{}, err
	}
	cfg := issuer.Config{
		Broker: f.broker, Username: username, Password: password, TLS: tlsCfg, ClientID: f.clientID, Enrollment: f.enrollment,
		Prefix: f.prefix, Key: key, NextKey: nextKey, StorePath: f.store, Period: f.period, TTL: f.ttl,
		Purpose: f.purpose, Group: f.group, KeepRoots: f.keepRoots, ChunkLeaves: f.chunkLeaves, Logger: log,
		Reenroll: issuer.ReenrollPolicy(f.reenroll), NudgeInterval: f.nudge,
	}
	return cfg, cfg.Validate()
}

func readLimited(path string, limit int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return b, nil
}

// readKey reads the issuer secret key file given by the flag name.
func readKey(name, path string, log *slog.Logger) (*signature.PrivateKey, error) {
	b, err := readLimited(path, signature.MaxKeyFileSize)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	k, err := signature.ParsePrivateKeyPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", name, path, err)
	}
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		log.Warn("issuer secret key file is readable by others; chmod 600 it", "file", path, "mode", st.Mode().Perm().String())
	}
	return k, nil
}

func serveMetrics(addr string, h http.Handler, log *slog.Logger) (*http.Server, error) {
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("-metrics: %w", err)
	}
	srv.Addr = ln.Addr().String() // the bound address, for ":0"
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("serving /metrics, /healthz and /readyz", "addr", ln.Addr().String())
	return srv, nil
}

func cmdKeygen(args []string, stdout io.Writer) error {
	fs := newFlagSet("keygen")
	out := fs.String("out", "", "")
	pub := fs.String("pub", "", "")
	algName := fs.String("alg", signature.Default.String(), "")
	if err := parse(fs, args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("%w: keygen: unexpected argument %q", errUsage, fs.Arg(0))
	case *out == "" || *pub == "":
		return fmt.Errorf("%w: keygen needs -out and -pub", errUsage)
	case *out == *pub:
		return fmt.Errorf("%w: keygen: -out and -pub must differ", errUsage)
	}
	var alg signature.Alg
	for _, a := range []signature.Alg{signature.MLDSA87, signature.MLDSA65} {
		if a.String() == *algName {
			alg = a
		}
	}
	if alg == 0 {
		return fmt.Errorf("%w: -alg must be ML-DSA-87 or ML-DSA-65, got %q", errUsage, *algName)
	}
	for _, p := range []string{*out, *pub} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("keygen: %s exists; refusing to overwrite", p)
		}
	}
	priv, pubPEM, err := issuer.Keygen(alg)
	if err != nil {
		return err
	}
	if err := writeNew(*out, priv, 0o600); err != nil {
		return err
	}
	if err := writeNew(*pub, pubPEM, 0o644); err != nil {
		os.Remove(*out)
		return err
	}
	pk, err := signature.ParsePublicKeyPEM(pubPEM)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (secret, mode 0600) and %s (%s, kid %x)\n", *out, *pub, alg, pk.KID())
	return nil
}

// writeNew creates path (failing if it exists), writes b and syncs.
func writeNew(path string, b []byte, mode os.FileMode) error {
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	if _, err := fh.Write(b); err != nil {
		fh.Close()
		os.Remove(path)
		return fmt.Errorf("keygen: %w", err)
	}
	if err := fh.Sync(); err != nil {
		fh.Close()
		os.Remove(path)
		return fmt.Errorf("keygen: %w", err)
	}
	return fh.Close()
}

// cmdRotateKey announces the next issuer signing key (issuer.AnnounceKeyRotation).
func cmdRotateKey(args []string, stdout io.Writer) error {
	fs := newFlagSet("rotate-key")
	store := fs.String("store", "", "")
	keyFile := fs.String(cliflag.SigningKey, "", "")
	newPub := fs.String("new-pub", "", "")
	overlap := fs.Uint64("overlap", issuer.DefaultRotationOverlap, "")
	cliflag.Alias(fs, "key", cliflag.SigningKey, warn)
	if err := parseEnv(fs, args, cliflag.EnvOf(map[string][]string{cliflag.SigningKey: {"EKEM_KEY"}}, "store", cliflag.SigningKey)); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("%w: rotate-key: unexpected argument %q", errUsage, fs.Arg(0))
	case *store == "":
		return fmt.Errorf("%w: rotate-key needs -store (or EKEM_STORE)", errUsage)
	case *keyFile == "":
		return fmt.Errorf("%w: rotate-key needs -signing-key, the current issuer secret key (or EKEM_SIGNING_KEY)", errUsage)
	case *newPub == "":
		return fmt.Errorf("%w: rotate-key needs -new-pub, the new key's public key file from keygen", errUsage)
	case *overlap < 1:
		return fmt.Errorf("%w: rotate-key: -overlap must be at least 1 epoch, got %d", errUsage, *overlap)
	}
	current, err := readKey("-signing-key", *keyFile, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	b, err := readLimited(*newPub, signature.MaxKeyFileSize)
	if err != nil {
		return fmt.Errorf("-new-pub: %w", err)
	}
	next, err := signature.ParsePublicKeyPEM(b)
	if err != nil {
		return fmt.Errorf("-new-pub %s: %w", *newPub, err)
	}
	info, err := issuer.AnnounceKeyRotation(*store, current, next, *overlap, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "key rotation stored: issuer key %x hands over to new key %x (%s)\n", info.OldKID, info.NewKID, next.Alg())
	fmt.Fprintf(stdout, "last issued epoch %d; epochs %d..%d are still signed by %x; from epoch %d on, by %x\n",
		info.LastEpoch, info.LastEpoch+1, info.From-1, info.OldKID, info.From, info.NewKID)
	fmt.Fprintf(stdout, "the announcement is published retained on {prefix}/issuer/key/%x when the issuer connects\n", info.NewKID)
	fmt.Fprintf(stdout, "next: restart the issuer with -next-signing-key NEW.key (the secret key of %s), keeping -signing-key %s;\n", *newPub, *keyFile)
	fmt.Fprintf(stdout, "once epoch %d is issued, run it with -signing-key NEW.key alone\n", info.From)
	return nil
}
