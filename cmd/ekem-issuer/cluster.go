package main

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"

	"github.com/entropykem/entropykem/issuer"
)

// runCluster runs one instance of several sharing a PostgreSQL store:
// standby until it takes the leader lease, then leader (issuer.Cluster).
// Operator commands go to the database directly (-store URL), on any
// instance's host; approve, which needs the registration the leader holds,
// goes through the leader's admin socket (-admin-socket PATH).
func runCluster(f *runFlags, cfg issuer.Config, log *slog.Logger) error {
	c, err := issuer.NewCluster(cfg, issuer.ClusterConfig{Instance: f.clientID, LeaseTTL: f.leaseTTL})
	if err != nil {
		return err
	}
	// /readyz says "standby" until this instance leads.
	mux := http.NewServeMux()
	mux.Handle("/metrics", c.MetricsHandler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if iss := c.Issuer(); iss != nil {
			iss.ReadyHandler().ServeHTTP(w, r)
			return
		}
		io.WriteString(w, "standby\n")
	})
	// An admin socket only where asked for (-admin-socket PATH): the
	// leader answers every command on it, a standby the read-only ones;
	// every command but approve also works on the database (-store URL).
	return serve(f, c, c.Admin(), mux, log)
}

// cmdMigrate applies the PostgreSQL schema migrations.
func cmdMigrate(args []string, stdout io.Writer) error {
	fs := newFlagSet("migrate")
	store := fs.String("store", "", "")
	if err := parse(fs, args, "store"); err != nil {
		return err
	}
	if *store == "" || fs.NArg() > 0 {
		return fmt.Errorf("%w: migrate needs -store postgres://… (or EKEM_STORE) and no argument", errUsage)
	}
	from, to, err := issuer.MigratePostgres(*store)
	if err != nil {
		return err
	}
	if from == to {
		fmt.Fprintf(stdout, "schema version %d: up to date\n", to)
	} else {
		fmt.Fprintf(stdout, "schema migrated from version %d to %d\n", from, to)
	}
	return nil
}

// cmdCopyStore copies a stopped issuer's state into an empty store.
func cmdCopyStore(args []string, stdout io.Writer) error {
	fs := newFlagSet("copy-store")
	from := fs.String("from", "", "")
	to := fs.String("to", "", "")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *from == "" || *to == "" || fs.NArg() > 0 {
		return fmt.Errorf("%w: copy-store needs -from STORE and -to STORE, and no argument", errUsage)
	}
	src, err := issuer.OpenStore(*from, true)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := issuer.OpenStore(*to, false)
	if err != nil {
		return err
	}
	defer dst.Close()
	n, err := issuer.CopyStore(dst, src)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "copied %d devices and the issuer's epochs, roots, key rotations and audit log from %s to %s\n", n, src.Name(), dst.Name())
	return nil
}
