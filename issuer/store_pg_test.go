package issuer

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	neturl "net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/pgtest"
)

// pgEngine opens stores on a fresh database of srv each.
func pgEngine(srv *pgtest.Server) storeEngine {
	return storeEngine{
		open: func(t *testing.T) Store {
			st, err := OpenStore(srv.URL(srv.NewDatabase(t)), false)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		},
		reopen: func(t *testing.T, st Store) Store {
			st.Close()
			// Name() has no password; the test server has none either.
			st, err := OpenStore(st.Name(), false)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		},
	}
}

func TestPostgresStoreConformance(t *testing.T) {
	runStoreConformance(t, pgEngine(pgtest.Start(t)))
}

// TestPostgresStore covers what only a shared engine has: migrations,
// concurrent writers, the record revision fence, and the lease.
func TestPostgresStore(t *testing.T) {
	srv := pgtest.Start(t)
	e := pgEngine(srv)
	t.Run("Migrations", func(t *testing.T) {
		url := srv.URL(srv.NewDatabase(t))
		// An empty database cannot be opened read-only: it has no schema.
		if _, err := OpenStore(url, true); !errors.Is(err, errPgSchemaOld) {
			t.Fatalf("read-only open of an empty database: %v", err)
		}
		from, to, err := MigratePostgres(url)
		if err != nil || from != 0 || to != PostgresSchemaVersion() || to < 1 {
			t.Fatalf("migrate: %d → %d, %v", from, to, err)
		}
		if from, to, err = MigratePostgres(url); err != nil || from != to {
			t.Fatalf("second migrate: %d → %d, %v", from, to, err)
		}
		st, err := OpenStore(url, true)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Update(func(tx Tx) error { return tx.PutDevice(testRecord("dev-a", 1)) }); !errors.Is(err, ErrReadOnly) {
			t.Fatalf("write on a read-only store: %v", err)
		}
		st.Close()
		// A schema newer than this version's is refused.
		if err := srv.Exec(dbName(url), fmt.Sprintf("INSERT INTO ekem_schema (version, name) VALUES (%d, 'future')", to+1)); err != nil {
			t.Fatal(err)
		}
		for _, ro := range []bool{true, false} {
			if _, err := OpenStore(url, ro); !errors.Is(err, ErrStoreCorrupt) {
				t.Fatalf("newer schema, read-only %v: %v", ro, err)
			}
		}
	})
	t.Run("ConcurrentUpdates", func(t *testing.T) {
		// Read-modify-write of one record from many goroutines (as from
		// several processes): no increment is lost.
		st := e.open(t)
		mustUpdate(t, st, func(tx Tx) error { return tx.PutDevice(testRecord("dev-a", 0)) })
		var wg sync.WaitGroup
		const n, rounds = 8, 10
		errs := make(chan error, n*rounds)
		for range n {
			wg.Go(func() {
				for range rounds {
					errs <- st.Update(func(tx Tx) error {
						return updateDevice(tx, "dev-a", func(r *record) error { r.StatusSeq++; return nil })
					})
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		mustView(t, st, func(tx ReadTx) error {
			r, err := tx.Device("dev-a")
			if err != nil || r.StatusSeq != testRecord("dev-a", 0).StatusSeq+n*rounds {
				t.Fatalf("after %d increments: %+v %v", n*rounds, r, err)
			}
			return nil
		})
	})
	t.Run("RecordChangedSincePlan", func(t *testing.T) {
		st := e.open(t)
		mustUpdate(t, st, func(tx Tx) error { return tx.PutDevice(testRecord("dev-a", 0)) })
		var planned *record
		mustView(t, st, func(tx ReadTx) (err error) { planned, err = tx.Device("dev-a"); return err })
		// An operator revokes it between the plan and the commit.
		mustUpdate(t, st, func(tx Tx) error {
			return updateDevice(tx, "dev-a", func(r *record) error { r.State = stateRevoked; return nil })
		})
		before := snapshot(t, st)
		planned.Epoch = 1
		if _, err := st.CommitEpoch(&EpochCommit{Prev: 0, Epoch: 1, Records: []*record{planned}, Root: []byte("r"), Info: []byte("i"), KeepRoots: 2}); !errors.Is(err, ErrEpochConflict) {
			t.Fatalf("commit over a changed record: %v", err)
		}
		if snapshot(t, st) != before {
			t.Fatal("a refused commit changed the store")
		}
		// Planned again, it commits.
		mustView(t, st, func(tx ReadTx) (err error) { planned, err = tx.Device("dev-a"); return err })
		if _, err := st.CommitEpoch(&EpochCommit{Prev: 0, Epoch: 1, Records: []*record{planned}, Root: []byte("r"), Info: []byte("i"), KeepRoots: 2}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("CopyStore", func(t *testing.T) {
		// bbolt → PostgreSQL → bbolt: the same state, and a second copy
		// into a non-empty store is refused and changes nothing.
		bolt := storeEngine{open: func(t *testing.T) Store {
			st, err := OpenStore(filepath.Join(t.TempDir(), "s.db"), false)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		}}
		src := bolt.open(t)
		recs := make([]*record, devicesChunk+5)
		for k := range recs {
			recs[k] = testRecord(fmt.Sprintf("dev-%05d", k), 3)
		}
		for ep := uint64(1); ep <= 3; ep++ {
			if _, err := src.CommitEpoch(&EpochCommit{Prev: ep - 1, Epoch: ep, Records: recs, Root: []byte(fmt.Sprint("root-", ep)),
				Info: []byte(fmt.Sprint("info-", ep)), KeepRoots: 2}); err != nil {
				t.Fatal(err)
			}
		}
		mustUpdate(t, src, func(tx Tx) error {
			if err := tx.AddRotation([]byte("rot")); err != nil {
				return err
			}
			return tx.AppendAudit(AuditEntry{Time: 5, Actor: "a", Action: "revoke", Device: "dev-00001", Reason: "r\x00 é"})
		})
		want := snapshot(t, src)
		pg := e.open(t)
		if n, err := CopyStore(pg, src); err != nil || n != len(recs) {
			t.Fatalf("copy to postgres: %d %v", n, err)
		}
		if got := snapshot(t, pg); got != want {
			t.Fatalf("postgres copy differs:\n%.2000s\nwant\n%.2000s", got, want)
		}
		back := bolt.open(t)
		if _, err := CopyStore(back, pg); err != nil {
			t.Fatal(err)
		}
		if got := snapshot(t, back); got != want {
			t.Fatal("bbolt copy of the postgres copy differs")
		}
		if _, err := CopyStore(pg, src); !errors.Is(err, ErrStoreNotEmpty) {
			t.Fatalf("copy into a non-empty store: %v", err)
		}
		if got := snapshot(t, pg); got != want {
			t.Fatal("a refused copy changed the store")
		}
	})
	t.Run("Lease", func(t *testing.T) {
		st := e.open(t)
		ls := st.(Leaser)
		ctx := context.Background()
		const ttl = 600 * time.Millisecond
		a, ok, err := ls.AcquireLease(ctx, "issuer-a", ttl)
		if err != nil || !ok || a.Token == 0 || !a.Valid() {
			t.Fatalf("first acquisition: %+v %v %v", a, ok, err)
		}
		if _, ok, err := ls.AcquireLease(ctx, "issuer-b", ttl); ok || err != nil {
			t.Fatalf("a live lease was taken: %v %v", ok, err)
		}
		commit := func(prev, token uint64) error {
			_, err := st.CommitEpoch(&EpochCommit{Prev: prev, Epoch: prev + 1, Records: []*record{testRecord("dev-a", prev+1)},
				Root: []byte("r"), Info: []byte("i"), KeepRoots: 2, Token: token})
			return err
		}
		if err := commit(0, 0); !errors.Is(err, ErrNotLeader) {
			t.Fatalf("commit without a token under a live lease: %v", err)
		}
		if err := commit(0, a.Token+1); !errors.Is(err, ErrNotLeader) {
			t.Fatalf("commit with another token: %v", err)
		}
		if err := commit(0, a.Token); err != nil {
			t.Fatal(err)
		}
		if a, err = ls.RenewLease(ctx, a, ttl); err != nil || !a.Valid() {
			t.Fatalf("renew: %v", err)
		}
		st1, err := ls.LeaseStatus(ctx)
		if err != nil || st1.Holder != "issuer-a" || !st1.Live || st1.Token != a.Token {
			t.Fatalf("status %+v %v", st1, err)
		}
		// A (paused) holder's lease expires; another instance takes it
		// with a greater token; the old holder can neither renew nor
		// commit, even with the right last epoch.
		time.Sleep(ttl + 100*time.Millisecond)
		if a.Valid() {
			t.Fatal("a lease past its deadline is valid")
		}
		b, ok, err := ls.AcquireLease(ctx, "issuer-b", ttl)
		if err != nil || !ok || b.Token <= a.Token {
			t.Fatalf("takeover: %+v %v %v", b, ok, err)
		}
		if _, err := ls.RenewLease(ctx, a, ttl); !errors.Is(err, ErrNotLeader) {
			t.Fatalf("deposed renew: %v", err)
		}
		if err := commit(1, a.Token); !errors.Is(err, ErrNotLeader) {
			t.Fatalf("deposed commit: %v", err)
		}
		if err := commit(1, b.Token); err != nil {
			t.Fatal(err)
		}
		// Released, it is free at once.
		if err := ls.ReleaseLease(ctx, b); err != nil {
			t.Fatal(err)
		}
		c, ok, err := ls.AcquireLease(ctx, "issuer-a", ttl)
		if err != nil || !ok || c.Token <= b.Token {
			t.Fatalf("after release: %+v %v %v", c, ok, err)
		}
	})
}

// dbName is the database of a pgtest URL.
func dbName(raw string) string {
	u, err := neturl.Parse(raw)
	if err != nil {
		panic(err)
	}
	return u.Path[1:]
}

// BenchmarkCommitEpoch persists one epoch of 10k device records of a
// realistic size on each engine (PostgreSQL: EKEM_BENCH_POSTGRES, an empty
// database, else a test server with fsync off).
func BenchmarkCommitEpoch(b *testing.B) {
	const n = 10000
	recs := make([]*record, n)
	for k := range recs {
		r := testRecord(fmt.Sprintf("dev-%06d", k), 1)
		r.Ticket = make([]byte, 1700)
		r.RegKey, r.Key = make([]byte, 1568), make([]byte, 1568)
		for _, f := range [][]byte{r.Ticket, r.RegKey, r.Key} {
			crand.Read(f)
		}
		recs[k] = r
	}
	engines := map[string]func(b *testing.B) Store{
		"bbolt": func(b *testing.B) Store {
			st, err := OpenStore(filepath.Join(b.TempDir(), "s.db"), false)
			if err != nil {
				b.Fatal(err)
			}
			return st
		},
		"postgres": func(b *testing.B) Store {
			url := os.Getenv("EKEM_BENCH_POSTGRES")
			if url == "" {
				srv := pgtest.Start(b)
				url = srv.URL(srv.NewDatabase(b))
			}
			st, err := OpenStore(url, false)
			if err != nil {
				b.Fatal(err)
			}
			return st
		},
	}
	for name, open := range engines {
		b.Run(name, func(b *testing.B) {
			st := open(b)
			defer st.Close()
			var last uint64
			mustView(&testing.T{}, st, func(tx ReadTx) (err error) { last, err = tx.LastEpoch(); return err })
			b.ResetTimer()
			for range b.N {
				if _, err := st.CommitEpoch(&EpochCommit{Prev: last, Epoch: last + 1, Records: recs, Root: []byte("r"), Info: []byte("i"), KeepRoots: 4}); err != nil {
					b.Fatal(err)
				}
				last++
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*n), "µs/record")
		})
	}
}
