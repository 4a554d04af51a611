package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/issuer/adminsock"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Operator commands work on a running issuer through its admin socket
// and, when no issuer serves it, on the stopped store directly: the same
// actions either way, each appended to the audit log.

// adminSocketPath is the admin socket of the issuer of store: flag if
// set ("off" disables it), else the store's path + ".sock".
// A PostgreSQL store has no default socket: commands go to the database.
func adminSocketPath(flag, store string) string {
	switch {
	case flag == "off":
		return ""
	case flag == "" && issuer.IsPostgresStore(store):
		return ""
	case flag == "":
		return store + ".sock"
	}
	return flag
}

// adminFlags are the flags every operator command takes.
type adminFlags struct {
	store, socket, reason string
	json                  bool
}

// adminEnv are the operator commands' flags read from the environment.
var adminEnv = []string{"store", "admin-socket"}

func parseAdmin(name string, args []string, reason, asJSON bool) (*adminFlags, []string, error) {
	f := &adminFlags{}
	fs := newFlagSet(name)
	fs.StringVar(&f.store, "store", "", "")
	fs.StringVar(&f.socket, "admin-socket", "", "")
	if reason {
		fs.StringVar(&f.reason, "reason", "", "")
	}
	if asJSON {
		fs.BoolVar(&f.json, "json", false, "")
	}
	if err := parse(fs, args, adminEnv...); err != nil {
		return nil, nil, err
	}
	if f.store == "" && f.socket == "" {
		return nil, nil, fmt.Errorf("%w: %s needs -store (or EKEM_STORE), or -admin-socket", errUsage, name)
	}
	return f, fs.Args(), nil
}

// openAdmin reaches the issuer's state: through the running issuer's admin
// socket when one answers, else the store itself (read-only unless write).
// close releases it.
func openAdmin(f *adminFlags, write bool) (a issuer.Admin, close func(), err error) {
	path := adminSocketPath(f.socket, f.store)
	var sockErr error
	if path != "" {
		c, err := adminsock.Dial(path)
		if err == nil {
			return c, c.Close, nil
		}
		// No issuer serves the socket (missing file, stale socket): the
		// issuer is stopped, and the store can be opened. Anything else
		// (another user refused, permissions) is the answer.
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, nil, err
		}
		sockErr = err
	}
	if f.store == "" {
		return nil, nil, fmt.Errorf("no issuer answers on %s and no -store is given: %w", path, sockErr)
	}
	st, err := issuer.OpenStore(f.store, true)
	if err == nil && write {
		st.Close() // it exists and is a store; now open it for writing
		st, err = issuer.OpenStore(f.store, false)
	}
	if errors.Is(err, issuer.ErrStoreLocked) && path != "" {
		return nil, nil, fmt.Errorf("%w; and no issuer answers on its admin socket %s (%v): is the issuer running with another -admin-socket?", err, path, sockErr)
	}
	if err != nil {
		return nil, nil, err
	}
	return issuer.StoreAdmin{Store: st}, func() { st.Close() }, nil
}

func cmdDevices(args []string, stdout io.Writer) error {
	f, rest, err := parseAdmin("devices", args, false, true)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return fmt.Errorf("%w: devices: unexpected argument %q", errUsage, rest[0])
	}
	a, done, err := openAdmin(f, false)
	if err != nil {
		return err
	}
	defer done()
	devs, err := a.Devices()
	if err != nil {
		return err
	}
	last, err := a.LastEpoch()
	if err != nil {
		return err
	}
	if f.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if devs == nil {
			devs = []issuer.DeviceInfo{}
		}
		return enc.Encode(struct {
			LastEpoch uint64              `json:"last_epoch"`
			Devices   []issuer.DeviceInfo `json:"devices"`
		}{last, devs})
	}
	fmt.Fprintf(stdout, "last epoch: %d, devices: %d\n", last, len(devs))
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tSTANDING\tKEM\tPINNED\tEPOCH\tCONFIRMED\tNEXT_KEY\tSTATUS\tSEQ")
	for _, d := range devs {
		pinned := "-"
		if d.PinnedKeyHash != nil {
			pinned = fmt.Sprintf("%x", d.PinnedKeyHash[:8])
		}
		status := "-"
		if d.HasStatus {
			status = fmt.Sprintf("%s/%d@%d", d.StatusState, d.StatusReason, d.StatusEpoch)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%v\t%s\t%d\n", d.ID, d.State, d.Standing, d.KEMAlg, pinned, d.LastEpoch,
			d.ConfirmedEpoch, d.NextKeyReady, status, d.StatusSeq)
	}
	return tw.Flush()
}

// cmdDevice shows everything the store holds about one device (public
// values only: hashes, epochs, states; never a ticket secret).
func cmdDevice(args []string, stdout io.Writer) error {
	f, rest, err := parseAdmin("device", args, false, true)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return fmt.Errorf("%w: device needs exactly one device id", errUsage)
	}
	id := rest[0]
	if err := wire.ValidateDeviceID(id); err != nil {
		return fmt.Errorf("%w: device: %v", errUsage, err)
	}
	a, done, err := openAdmin(f, false)
	if err != nil {
		return err
	}
	defer done()
	d, err := a.Device(id)
	if err != nil {
		return err
	}
	if f.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(d)
	}
	hexOr := func(b []byte) string {
		if b == nil {
			return "-"
		}
		return fmt.Sprintf("%x", b)
	}
	pinnedAt := "-"
	if !d.PinnedAt.IsZero() {
		pinnedAt = d.PinnedAt.UTC().Format(time.RFC3339)
	}
	status := "none"
	if d.HasStatus {
		status = fmt.Sprintf("%s, reason %d, epoch %d, seq %d", d.StatusState, d.StatusReason, d.StatusEpoch, d.StatusSeq)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	for _, row := range [][2]string{
		{"device", d.ID},
		{"state", string(d.State)},
		{"standing", d.Standing},
		{"kem", d.KEMAlg.String()},
		{"pinned key (sha-256)", hexOr(d.PinnedKeyHash)},
		{"pinned at", pinnedAt},
		{"latest ticket epoch", fmt.Sprint(d.LastEpoch)},
		{"latest ticket hash", hexOr(d.TicketHash)},
		{"encapsulated to (sha-256)", hexOr(d.KeyHash)},
		{"confirmed epoch", fmt.Sprint(d.ConfirmedEpoch)},
		{"next key verified", fmt.Sprint(d.NextKeyReady)},
		{"cohort", cohortName(d.Cohort)},
		{"last status", status},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", row[0], row[1])
	}
	return tw.Flush()
}

// cmdOperator runs reset, revoke, release, approve or deny on one device.
func cmdOperator(name string, args []string, stdout io.Writer) error {
	f, rest, err := parseAdmin(name, args, true, false)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return fmt.Errorf("%w: %s needs exactly one device id", errUsage, name)
	}
	id := rest[0]
	if err := wire.ValidateDeviceID(id); err != nil {
		return fmt.Errorf("%w: %s: %v", errUsage, name, err)
	}
	a, done, err := openAdmin(f, true)
	if err != nil {
		return err
	}
	defer done()
	op := issuer.Operator{Actor: issuer.LocalActor(), Reason: f.reason}
	do := map[string]func(string, issuer.Operator) error{"reset": a.Reset, "revoke": a.Revoke,
		"release": a.Release, "approve": a.Approve, "deny": a.Deny}[name]
	if err := do(id, op); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %s done\n", id, name)
	return nil
}

// cmdAudit prints the audit log.
func cmdAudit(args []string, stdout io.Writer) error {
	f, rest, err := parseAdmin("audit", args, false, true)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return fmt.Errorf("%w: audit: unexpected argument %q", errUsage, rest[0])
	}
	a, done, err := openAdmin(f, false)
	if err != nil {
		return err
	}
	defer done()
	log, err := a.Audit()
	if err != nil {
		return err
	}
	if f.json {
		if log == nil {
			log = []issuer.AuditEntry{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(log)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tACTOR\tACTION\tDEVICE\tREASON\tDETAIL")
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	for _, e := range log {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.When().Format(time.RFC3339), e.Actor, e.Action,
			dash(e.Device), dash(e.Reason), dash(e.Detail))
	}
	return tw.Flush()
}

// cmdBackup writes a consistent copy of the store (through a running
// issuer's admin socket, or from the stopped store) to a new file, and
// checks the copy by opening it.
func cmdBackup(args []string, stdout io.Writer) error {
	fs := newFlagSet("backup")
	f := &adminFlags{}
	fs.StringVar(&f.store, "store", "", "")
	fs.StringVar(&f.socket, "admin-socket", "", "")
	out := fs.String("out", "", "")
	if err := parse(fs, args, adminEnv...); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("%w: backup: unexpected argument %q", errUsage, fs.Arg(0))
	case f.store == "" && f.socket == "":
		return fmt.Errorf("%w: backup needs -store (or EKEM_STORE), or -admin-socket", errUsage)
	case *out == "":
		return fmt.Errorf("%w: backup needs -out, a new file for the copy", errUsage)
	}
	a, done, err := openAdmin(f, false)
	if err != nil {
		return err
	}
	defer done()
	fh, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	fail := func(err error) error {
		fh.Close()
		os.Remove(*out)
		return fmt.Errorf("backup: %w (nothing was kept at %s)", err, *out)
	}
	if err := a.Backup(fh); err != nil {
		return fail(err)
	}
	if err := fh.Sync(); err != nil {
		return fail(err)
	}
	if err := fh.Close(); err != nil {
		return fail(err)
	}
	// The copy must be a whole, readable store.
	st, err := issuer.OpenStore(*out, true)
	if err != nil {
		os.Remove(*out)
		return fmt.Errorf("backup: the copy does not check: %w (nothing was kept at %s)", err, *out)
	}
	defer st.Close()
	check := issuer.StoreAdmin{Store: st}
	devs, err := check.Devices()
	if err != nil {
		return fmt.Errorf("backup: the copy does not read: %w", err)
	}
	last, err := check.LastEpoch()
	if err != nil {
		return fmt.Errorf("backup: the copy does not read: %w", err)
	}
	fmt.Fprintf(stdout, "backup written to %s: last epoch %d, %d devices (keep it encrypted: it holds ticket MAC keys)\n", *out, last, len(devs))
	return nil
}

// maxListed bounds the device ids a command prints in a summary line.
const maxListed = 20

// firstFew joins up to maxListed ids, saying how many more there are.
func firstFew(ids []string) string {
	if len(ids) <= maxListed {
		return strings.Join(ids, " ")
	}
	return fmt.Sprintf("%s … and %d more", strings.Join(ids[:maxListed], " "), len(ids)-maxListed)
}

// cmdRecover rebuilds the store from the broker (issuer.OnlineAdmin.Recover).
func cmdRecover(args []string, stdout, stderr io.Writer) error {
	f, err := parseRunFlags("recover", args)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg, err := f.config(log)
	if err != nil {
		return err
	}
	iss, err := issuer.New(cfg)
	if err != nil {
		return err
	}
	defer iss.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	rep, err := iss.Admin().Recover(ctx, issuer.Operator{Actor: issuer.LocalActor(), Reason: f.reason})
	if err != nil {
		return err
	}
	if !rep.Recovered {
		fmt.Fprintf(stdout, "nothing to recover: the store's last epoch %d is not behind the broker's highest epoch %d; the store is unchanged\n",
			rep.StoreEpoch, rep.BrokerEpoch)
		return nil
	}
	fmt.Fprintf(stdout, "recovered: epoch floor %d (the store had %d); the next epoch is %d\n", rep.Floor, rep.StoreEpoch, rep.Floor+1)
	fmt.Fprintf(stdout, "re-pinned %d devices from their latest Status and %d from their Registration\n", rep.FromStatus, rep.FromRegistration)
	if n := len(rep.Kept); n > 0 {
		fmt.Fprintf(stdout, "%d devices the broker holds nothing of are left as stored: %s\n", n, firstFew(rep.Kept))
	}
	if n := len(rep.Refused); n > 0 {
		ids := make([]string, 0, n)
		for id := range rep.Refused {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		fmt.Fprintf(stdout, "%d devices not re-pinned (re-enroll them):\n", n)
		for _, id := range ids[:min(n, maxListed)] {
			fmt.Fprintf(stdout, "  %s: %s\n", id, rep.Refused[id])
		}
		if n > maxListed {
			fmt.Fprintf(stdout, "  … and %d more (the issuer's log names each)\n", n-maxListed)
		}
	}
	fmt.Fprintln(stdout, "next: start the issuer (ekem-issuer run, same flags); devices accept its next ticket and report the gap")
	return nil
}
