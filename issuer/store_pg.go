package issuer

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net/url"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/wire"
)

// The PostgreSQL engine (DESIGN "Issuer state: one Store interface, two
// engines"): the production store, which several issuer instances share
// (one leader, lease.go). Its schema is the numbered migrations in
// migrations/postgres, applied in order, each once, in one transaction
// under an advisory lock (so instances starting together migrate once):
// at start (OpenStore for writing) and by 'ekem-issuer migrate'.
//
// Several processes write at once (the leader handling messages, operators
// running admin commands against the database directly), so:
//   - Update runs in one READ COMMITTED transaction whose reads of a
//     device (Device) and of the last epoch (LastEpoch) lock the row read
//     (SELECT … FOR UPDATE) until commit: a read-modify-write of a record
//     never loses another writer's change.
//   - CommitEpoch locks the meta row, compares-and-sets (last epoch,
//     lease token), streams the records into a temporary table with COPY,
//     and writes them with one UPDATE that skips a record changed since
//     the plan read it (its rev), refusing the epoch then
//     (ErrEpochConflict): a few round trips for any number of devices,
//     never one per device.
//   - View runs in a REPEATABLE READ, read-only transaction: one snapshot.

//go:embed migrations/postgres/*.sql
var pgMigrations embed.FS

// pgMigration is one numbered schema migration.
type pgMigration struct {
	version int
	name    string
	sql     string
}

// pgSchema returns the migrations in order. Names are NNNN_what.sql.
func pgSchema() ([]pgMigration, error) {
	names, err := fs.Glob(pgMigrations, "migrations/postgres/*.sql")
	if err != nil {
		return nil, err
	}
	var out []pgMigration
	for _, n := range names {
		base := path.Base(n)
		v, err := strconv.Atoi(strings.SplitN(base, "_", 2)[0])
		if err != nil {
			return nil, fmt.Errorf("issuer: migration %s: no version number", base)
		}
		b, err := pgMigrations.ReadFile(n)
		if err != nil {
			return nil, err
		}
		out = append(out, pgMigration{version: v, name: base, sql: string(b)})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].version < out[b].version })
	for k, m := range out {
		if m.version != k+1 {
			return nil, fmt.Errorf("issuer: migrations are not numbered 1, 2, …: %s", m.name)
		}
	}
	return out, nil
}

// PostgresSchemaVersion is the schema version this ekem-issuer writes.
func PostgresSchemaVersion() int {
	m, _ := pgSchema()
	return len(m)
}

// pgMigrateLock is the advisory lock key of migrations ("ekem" "mig").
const pgMigrateLock = 0x656b656d_6d6967

// Timeouts of the PostgreSQL engine.
const (
	// pgTxTimeout bounds one View or Update transaction.
	pgTxTimeout = 60 * time.Second
	// pgCommitTimeout bounds one CommitEpoch (a million records).
	pgCommitTimeout = 10 * time.Minute
	// pgConnectTimeout bounds opening the store.
	pgConnectTimeout = 15 * time.Second
)

// pgDefaults are session settings the engine sets unless the URL does:
// a transaction left idle (a client stalled or cut off mid-commit) is
// ended by the server, releasing its row locks (the lease row, the meta
// row) so that a standby can take over; a lock wait is bounded.
var pgDefaults = map[string]string{
	"idle_in_transaction_session_timeout": "5000",
	"lock_timeout":                        "10000",
	"application_name":                    "ekem-issuer",
}

// IsPostgresStore reports whether a store name is a PostgreSQL URL.
func IsPostgresStore(name string) bool {
	return strings.HasPrefix(name, "postgres://") || strings.HasPrefix(name, "postgresql://")
}

// pgStore is the PostgreSQL engine of Store.
type pgStore struct {
	pool     *pgxpool.Pool
	name     string
	readOnly bool
}

// redactURL is a store URL without its password (for messages).
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "postgres://(unparsable url)"
	}
	if u.User != nil {
		u.User = url.User(u.User.Username())
	}
	q := u.Query()
	if q.Has("password") {
		q.Del("password")
		u.RawQuery = q.Encode()
	}
	return u.String()
}

func openPostgres(raw string, readOnly bool) (Store, error) {
	name := redactURL(raw)
	cfg, err := pgxpool.ParseConfig(raw)
	if err != nil {
		// pgx's parse errors can quote the URL: say only what is wrong.
		return nil, fmt.Errorf("issuer: store %s: invalid PostgreSQL URL", name)
	}
	for k, v := range pgDefaults {
		if _, ok := cfg.ConnConfig.RuntimeParams[k]; !ok {
			cfg.ConnConfig.RuntimeParams[k] = v
		}
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	cfg.MaxConns = max(cfg.MaxConns, 4)
	// Every connection has its own staging table for bulk writes
	// (copyRecords). Records are mostly keys and ciphertexts, which do not
	// compress: stored out of line, uncompressed (EXTERNAL).
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, `CREATE TEMP TABLE IF NOT EXISTS ekem_epoch_in (
			id text COLLATE "C", rev bigint, state int, epoch bigint, rec bytea) ON COMMIT DELETE ROWS;
			ALTER TABLE ekem_epoch_in ALTER COLUMN rec SET STORAGE EXTERNAL`)
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), pgConnectTimeout)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("issuer: store %s: %w", name, err)
	}
	s := &pgStore{pool: pool, name: name, readOnly: readOnly}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("issuer: store %s: connect: %w", name, err)
	}
	if readOnly {
		err = s.checkSchema(ctx)
	} else {
		_, _, err = s.migrate(ctx)
	}
	if err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// MigratePostgres applies the schema migrations this version has to the
// PostgreSQL store at raw, and returns the schema version before and after.
func MigratePostgres(raw string) (from, to int, err error) {
	if !IsPostgresStore(raw) {
		return 0, 0, fmt.Errorf("issuer: migrate: %q is not a postgres:// URL (a bbolt store needs no migration)", redactURL(raw))
	}
	s := &pgStore{name: redactURL(raw)}
	cfg, err := pgxpool.ParseConfig(raw)
	if err != nil {
		return 0, 0, fmt.Errorf("issuer: store %s: invalid PostgreSQL URL", s.name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), pgConnectTimeout)
	defer cancel()
	if s.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return 0, 0, fmt.Errorf("issuer: store %s: %w", s.name, err)
	}
	defer s.pool.Close()
	return s.migrate(ctx)
}

// errPgSchemaOld: the database's schema is older than this version's (or
// absent); opening it for writing migrates it.
var errPgSchemaOld = errors.New("issuer: the store's schema is older than this ekem-issuer's")

// schemaVersion reads the applied schema version, 0 for none.
func schemaVersion(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (int, error) {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT to_regclass('ekem_schema') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		return 0, err
	}
	var v int
	err := q.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM ekem_schema`).Scan(&v)
	return v, err
}

// checkSchema refuses a database whose schema is not this version's.
func (s *pgStore) checkSchema(ctx context.Context) error {
	v, err := schemaVersion(ctx, s.pool)
	if err != nil {
		return fmt.Errorf("issuer: store %s: %w", s.name, err)
	}
	want := PostgresSchemaVersion()
	switch {
	case v > want:
		return fmt.Errorf("%w: %s: schema version %d (hint: written by a newer ekem-issuer; run that version)", ErrStoreCorrupt, s.name, v)
	case v < want:
		return fmt.Errorf("%w: %s: schema version %d, this ekem-issuer needs %d (hint: run 'ekem-issuer migrate -store URL', or start the issuer)", errPgSchemaOld, s.name, v, want)
	}
	return nil
}

// migrate applies the missing migrations in one transaction.
func (s *pgStore) migrate(ctx context.Context) (from, to int, err error) {
	migs, err := pgSchema()
	if err != nil {
		return 0, 0, err
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("issuer: store %s: %w", s.name, err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(pgMigrateLock)); err != nil {
		return 0, 0, fmt.Errorf("issuer: store %s: migrate: %w", s.name, err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS ekem_schema (
		version int PRIMARY KEY, name text NOT NULL, applied timestamptz NOT NULL DEFAULT now())`); err != nil {
		return 0, 0, fmt.Errorf("issuer: store %s: migrate: %w", s.name, err)
	}
	from, err = schemaVersion(ctx, tx)
	if err != nil {
		return 0, 0, fmt.Errorf("issuer: store %s: migrate: %w", s.name, err)
	}
	if from > len(migs) {
		return from, from, fmt.Errorf("%w: %s: schema version %d (hint: written by a newer ekem-issuer; run that version)", ErrStoreCorrupt, s.name, from)
	}
	for _, m := range migs[from:] {
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return from, from, fmt.Errorf("issuer: store %s: migration %s: %w", s.name, m.name, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO ekem_schema (version, name) VALUES ($1, $2)`, m.version, m.name); err != nil {
			return from, from, fmt.Errorf("issuer: store %s: migration %s: %w", s.name, m.name, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return from, from, fmt.Errorf("issuer: store %s: migrate: %w", s.name, err)
	}
	return from, len(migs), nil
}

func (s *pgStore) Name() string { return s.name }

func (s *pgStore) Close() error {
	s.pool.Close()
	return nil
}

func (s *pgStore) fail(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("issuer: store %s: %s: %w", s.name, what, err)
}

func (s *pgStore) View(fn func(ReadTx) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), pgTxTimeout)
	defer cancel()
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return s.fail("begin", err)
	}
	defer tx.Rollback(context.Background())
	return fn(&pgTx{s: s, tx: tx, ctx: ctx})
}

func (s *pgStore) Update(fn func(Tx) error) error {
	if s.readOnly {
		return fmt.Errorf("%w: %s", ErrReadOnly, s.name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), pgTxTimeout)
	defer cancel()
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return s.fail("begin", err)
	}
	defer tx.Rollback(context.Background())
	t := &pgTx{s: s, tx: tx, ctx: ctx, write: true}
	if err := fn(t); err != nil {
		return err
	}
	if !t.wrote {
		return nil
	}
	return s.fail("commit", tx.Commit(ctx))
}

// pgTx is a transaction seen as a ReadTx or (write) a Tx.
type pgTx struct {
	s     *pgStore
	tx    pgx.Tx
	ctx   context.Context
	write bool
	wrote bool
}

// lock is " FOR UPDATE" in a write transaction: its reads lock the rows.
func (t *pgTx) lock() string {
	if t.write {
		return " FOR UPDATE"
	}
	return ""
}

func (t *pgTx) LastEpoch() (uint64, error) {
	var e int64
	err := t.tx.QueryRow(t.ctx, `SELECT last_epoch FROM ekem_meta WHERE id = 1`+t.lock()).Scan(&e)
	if errors.Is(err, pgx.ErrNoRows) || e < 0 {
		return 0, fmt.Errorf("%w: %s: no meta row", ErrStoreCorrupt, t.s.name)
	}
	return uint64(e), t.s.fail("read last epoch", err)
}

func (t *pgTx) EpochInfo() ([]byte, error) {
	var b []byte
	err := t.tx.QueryRow(t.ctx, `SELECT epoch_info FROM ekem_meta WHERE id = 1`).Scan(&b)
	return b, t.s.fail("read epoch info", err)
}

func (t *pgTx) Device(id string) (*record, error) {
	var rev int64
	var b []byte
	err := t.tx.QueryRow(t.ctx, `SELECT rev, rec FROM ekem_devices WHERE id = $1`+t.lock(), id).Scan(&rev, &b)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, t.s.fail("read device", err)
	}
	r, err := decodeRecord(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.s.name, err)
	}
	r.rev = uint64(rev)
	return r, nil
}

// Devices reads the records a page at a time (keyset pagination, in id
// order), so fn may use the transaction and memory stays bounded.
func (t *pgTx) Devices(fn func(*record) error) error {
	return t.devices("", nil, decodeRecords, fn)
}

func (t *pgTx) DeviceHeads(fn func(*record) error) error {
	return t.devices("", nil, decodeHeads, fn)
}

func (t *pgTx) DeviceRange(from, to string, fn func(*record) error) error {
	if from > to {
		return nil
	}
	return t.devices(from, &to, decodeRecords, fn)
}

// devices reads the records with ids from from on (and up to *to, if
// set) a page at a time, in id order (COLLATE "C": bytewise, as the
// store's id order is everywhere).
func (t *pgTx) devices(from string, to *string, decode func([][]byte) ([]*record, error), fn func(*record) error) error {
	after := ""
	first := true
	upper := ""
	if to != nil {
		upper = ` AND id <= $3`
	}
	for {
		var rows pgx.Rows
		var err error
		args := []any{devicesChunk}
		q := `SELECT id, rev, rec FROM ekem_devices WHERE id >= $2` + upper + ` ORDER BY id LIMIT $1`
		if first {
			args = append(args, from)
		} else {
			q = `SELECT id, rev, rec FROM ekem_devices WHERE id > $2` + upper + ` ORDER BY id LIMIT $1`
			args = append(args, after)
		}
		if to != nil {
			args = append(args, *to)
		}
		rows, err = t.tx.Query(t.ctx, q, args...)
		if err != nil {
			return t.s.fail("read devices", err)
		}
		var vals [][]byte
		var revs []int64
		for rows.Next() {
			var rev int64
			var b []byte
			if err := rows.Scan(&after, &rev, &b); err != nil {
				rows.Close()
				return t.s.fail("read devices", err)
			}
			vals, revs = append(vals, b), append(revs, rev)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return t.s.fail("read devices", err)
		}
		first = false
		recs, err := decode(vals)
		if err != nil {
			return fmt.Errorf("%s: %w", t.s.name, err)
		}
		for n, r := range recs {
			r.rev = uint64(revs[n])
			if err := fn(r); err != nil {
				return err
			}
		}
		if len(vals) < devicesChunk {
			return nil
		}
	}
}

func (t *pgTx) Roots() ([]StoredRoot, error) {
	rows, err := t.tx.Query(t.ctx, `SELECT epoch, root FROM ekem_roots ORDER BY epoch`)
	if err != nil {
		return nil, t.s.fail("read roots", err)
	}
	defer rows.Close()
	var out []StoredRoot
	for rows.Next() {
		var e int64
		var b []byte
		if err := rows.Scan(&e, &b); err != nil {
			return nil, t.s.fail("read roots", err)
		}
		out = append(out, StoredRoot{Epoch: uint64(e), Root: b})
	}
	return out, t.s.fail("read roots", rows.Err())
}

func (t *pgTx) Root(epoch uint64) ([]byte, error) {
	if epoch > math.MaxInt64 {
		return nil, nil
	}
	var b []byte
	err := t.tx.QueryRow(t.ctx, `SELECT root FROM ekem_roots WHERE epoch = $1`, int64(epoch)).Scan(&b)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	return b, t.s.fail("read root", err)
}

func (t *pgTx) Rotations() ([][]byte, error) {
	rows, err := t.tx.Query(t.ctx, `SELECT signed FROM ekem_rotations ORDER BY seq`)
	if err != nil {
		return nil, t.s.fail("read key rotations", err)
	}
	defer rows.Close()
	var out [][]byte
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			return nil, t.s.fail("read key rotations", err)
		}
		out = append(out, b)
	}
	return out, t.s.fail("read key rotations", rows.Err())
}

func (t *pgTx) Audit(fn func(AuditEntry) error) error {
	var entries []AuditEntry
	rows, err := t.tx.Query(t.ctx, `SELECT seq, entry FROM ekem_audit ORDER BY seq`)
	if err != nil {
		return t.s.fail("read audit log", err)
	}
	for rows.Next() {
		var seq int64
		var b []byte
		if err := rows.Scan(&seq, &b); err != nil {
			rows.Close()
			return t.s.fail("read audit log", err)
		}
		var e AuditEntry
		if err := cbor.Unmarshal(b, maxAuditEntry, &e); err != nil || e.Seq != uint64(seq) {
			rows.Close()
			return fmt.Errorf("%w: %s: audit entry %d: %v", ErrStoreCorrupt, t.s.name, seq, err)
		}
		entries = append(entries, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return t.s.fail("read audit log", err)
	}
	for _, e := range entries {
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}

func (t *pgTx) writable() error {
	if !t.write {
		return fmt.Errorf("%w: %s", ErrReadOnly, t.s.name)
	}
	t.wrote = true
	return nil
}

func (t *pgTx) PutDevice(r *record) error {
	if err := t.writable(); err != nil {
		return err
	}
	b, err := cbor.Marshal(r)
	if err != nil {
		return fmt.Errorf("issuer: encode device record: %w", err)
	}
	_, err = t.tx.Exec(t.ctx, `INSERT INTO ekem_devices (id, rev, state, epoch, rec) VALUES ($1, 1, $2, $3, $4)
		ON CONFLICT (id) DO UPDATE SET rev = ekem_devices.rev + 1, state = excluded.state, epoch = excluded.epoch, rec = excluded.rec`,
		r.ID, int32(r.State), int64(r.Epoch), b)
	return t.s.fail("store device record", err)
}

func (t *pgTx) AddRotation(signed []byte) error {
	if err := t.writable(); err != nil {
		return err
	}
	_, err := t.tx.Exec(t.ctx, `INSERT INTO ekem_rotations (signed) VALUES ($1)`, signed)
	return t.s.fail("store key rotation", err)
}

// sqlText is s as a PostgreSQL text value (valid UTF-8, no NUL): the
// columns are for reading; the CBOR entry keeps the bytes as given.
func sqlText(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, string(utf8.RuneError)), "\x00", "")
}

func (t *pgTx) AppendAudit(e AuditEntry) error {
	if err := e.validate(); err != nil {
		return err
	}
	if err := t.writable(); err != nil {
		return err
	}
	var seq int64
	if err := t.tx.QueryRow(t.ctx, `UPDATE ekem_meta SET audit_seq = audit_seq + 1 WHERE id = 1 RETURNING audit_seq`).Scan(&seq); err != nil {
		return t.s.fail("append audit entry", err)
	}
	e.Seq = uint64(seq)
	b, err := cbor.Marshal(e)
	if err != nil {
		return fmt.Errorf("issuer: encode audit entry: %w", err)
	}
	at := time.Unix(int64(min(e.Time, wire.MaxTime)), 0).UTC()
	_, err = t.tx.Exec(t.ctx, `INSERT INTO ekem_audit (seq, at, actor, action, device, reason, detail, entry)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, seq, at, sqlText(e.Actor), sqlText(e.Action), sqlText(e.Device),
		sqlText(e.Reason), sqlText(e.Detail), b)
	return t.s.fail("append audit entry", err)
}

func (t *pgTx) Recover(floor uint64, roots []StoredRoot, info []byte) error {
	last, err := t.LastEpoch()
	if err != nil {
		return err
	}
	if floor <= last {
		return fmt.Errorf("issuer: recovery floor %d is not above the last epoch %d", floor, last)
	}
	if floor > math.MaxInt64 {
		return fmt.Errorf("issuer: recovery floor %d out of range", floor)
	}
	if err := t.writable(); err != nil {
		return err
	}
	if _, err := t.tx.Exec(t.ctx, `DELETE FROM ekem_roots`); err != nil {
		return t.s.fail("recover", err)
	}
	for _, r := range roots {
		if _, err := t.tx.Exec(t.ctx, `INSERT INTO ekem_roots (epoch, root) VALUES ($1, $2)`, int64(r.Epoch), r.Root); err != nil {
			return t.s.fail("recover", err)
		}
	}
	_, err = t.tx.Exec(t.ctx, `UPDATE ekem_meta SET last_epoch = $1, epoch_info = $2 WHERE id = 1`, int64(floor), info)
	return t.s.fail("recover", err)
}

// CommitEpoch: see the file comment. The lease row is read FOR SHARE as
// the transaction's last statement: a standby's acquisition (an UPDATE of
// that row) waits until this commit ends, so the token compared is still
// current when the records are committed.
func (s *pgStore) CommitEpoch(c *EpochCommit) (cleared []uint64, err error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	if c.Epoch > math.MaxInt64 {
		return nil, fmt.Errorf("issuer: epoch %d out of range", c.Epoch)
	}
	if s.readOnly {
		return nil, fmt.Errorf("%w: %s", ErrReadOnly, s.name)
	}
	encoded, err := encodeRecords(c.Records)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), pgCommitTimeout)
	defer cancel()
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return nil, s.fail("begin", err)
	}
	defer tx.Rollback(context.Background())
	var last int64
	if err := tx.QueryRow(ctx, `SELECT last_epoch FROM ekem_meta WHERE id = 1 FOR UPDATE`).Scan(&last); err != nil {
		return nil, s.fail("commit epoch", err)
	}
	if uint64(last) != c.Prev {
		return nil, fmt.Errorf("%w: epoch %d was planned after %d, but the store's last epoch is now %d", ErrEpochFence, c.Epoch, c.Prev, last)
	}
	if len(c.Records) > 0 {
		if err := s.copyRecords(ctx, tx, c.Records, encoded, c.Epoch); err != nil {
			return nil, err
		}
	}
	if c.storesRoot() {
		if cleared, err = s.commitRoot(ctx, tx, c); err != nil {
			return nil, err
		}
	} else if _, err := tx.Exec(ctx, `UPDATE ekem_meta SET last_epoch = $1 WHERE id = 1`, int64(c.Epoch)); err != nil {
		return nil, s.fail("commit epoch", err)
	}
	// The lease last, share-locked until the commit: the token compared is
	// current when the records become visible, and a renewal (which
	// updates this row) waits only for the commit itself.
	var token int64
	var holder string
	var live bool
	if err := tx.QueryRow(ctx, `SELECT token, holder, expires > clock_timestamp() FROM ekem_lease WHERE id = 1 FOR SHARE`).Scan(&token, &holder, &live); err != nil {
		return nil, s.fail("commit epoch", err)
	}
	switch {
	case c.Token == 0 && live:
		return nil, fmt.Errorf("%w: epoch %d: instance %q holds the lease (token %d), and this commit has none", ErrNotLeader, c.Epoch, holder, token)
	case c.Token != 0 && (uint64(token) != c.Token || !live):
		return nil, fmt.Errorf("%w: epoch %d: the commit's token is %d, the lease's %d (held by %q, live %v)", ErrNotLeader, c.Epoch, c.Token, token, holder, live)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, s.fail("commit epoch: commit", err)
	}
	return cleared, nil
}

// commitRoot stores c's root, drops the roots outside the last KeepRoots
// (returned, oldest first) and sets the last epoch and EpochInfo, in tx.
func (s *pgStore) commitRoot(ctx context.Context, tx pgx.Tx, c *EpochCommit) (cleared []uint64, err error) {
	if _, err := tx.Exec(ctx, `INSERT INTO ekem_roots (epoch, root) VALUES ($1, $2)
		ON CONFLICT (epoch) DO UPDATE SET root = excluded.root`, int64(c.Epoch), c.Root); err != nil {
		return nil, s.fail("commit epoch: root", err)
	}
	dropped, err := tx.Query(ctx, `DELETE FROM ekem_roots WHERE epoch <= $1 RETURNING epoch`, int64(c.Epoch)-int64(c.KeepRoots))
	if err != nil {
		return nil, s.fail("commit epoch: roots", err)
	}
	for dropped.Next() {
		var e int64
		if err := dropped.Scan(&e); err != nil {
			dropped.Close()
			return nil, s.fail("commit epoch: roots", err)
		}
		cleared = append(cleared, uint64(e))
	}
	dropped.Close()
	if err := dropped.Err(); err != nil {
		return nil, s.fail("commit epoch: roots", err)
	}
	sort.Slice(cleared, func(a, b int) bool { return cleared[a] < cleared[b] })
	if _, err := tx.Exec(ctx, `UPDATE ekem_meta SET last_epoch = $1, epoch_info = $2 WHERE id = 1`, int64(c.Epoch), c.Info); err != nil {
		return nil, s.fail("commit epoch", err)
	}
	return cleared, nil
}

// copyRecords writes records (encoded: their CBOR) with one COPY into a
// temporary table and one UPDATE (and, for records not read from this
// store, one INSERT), refusing (ErrEpochConflict) if one changed since it
// was read (its rev; 0: not read from this store, written whatever is
// stored). Records in one call have distinct ids.
func (s *pgStore) copyRecords(ctx context.Context, tx pgx.Tx, records []*record, encoded [][]byte, epoch uint64) error {
	if _, err := tx.Exec(ctx, `TRUNCATE ekem_epoch_in`); err != nil {
		return s.fail("write records", err)
	}
	rows := make([][]any, len(records))
	for n, r := range records {
		rows[n] = []any{r.ID, int64(r.rev), int32(r.State), int64(r.Epoch), encoded[n]}
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"ekem_epoch_in"}, []string{"id", "rev", "state", "epoch", "rec"},
		pgx.CopyFromRows(rows)); err != nil {
		return s.fail("write records: copy", err)
	}
	// Records read from this store (rev > 0) are updated only if
	// unchanged since: an UPDATE that meets a row another transaction
	// changes waits for it and re-checks the condition on the new version.
	// Those not read from it (rev 0) are written whatever is stored.
	var fresh int
	for _, r := range records {
		if r.rev == 0 {
			fresh++
		}
	}
	tag, err := tx.Exec(ctx, `UPDATE ekem_devices d SET rev = d.rev + 1, state = i.state, epoch = i.epoch, rec = i.rec
		FROM ekem_epoch_in i WHERE d.id = i.id AND (i.rev = 0 OR d.rev = i.rev)`)
	if err != nil {
		return s.fail("write records", err)
	}
	written := tag.RowsAffected()
	if fresh > 0 {
		tag, err := tx.Exec(ctx, `INSERT INTO ekem_devices (id, rev, state, epoch, rec)
			SELECT id, 1, state, epoch, rec FROM ekem_epoch_in WHERE rev = 0 ON CONFLICT (id) DO NOTHING`)
		if err != nil {
			return s.fail("write records", err)
		}
		written += tag.RowsAffected()
	}
	if written != int64(len(records)) {
		return fmt.Errorf("%w: epoch %d: %d of %d device records changed since the plan", ErrEpochConflict, epoch, int64(len(records))-written, len(records))
	}
	return nil
}

// putDevices writes many records in one COPY (CopyStore).
func (t *pgTx) putDevices(recs []*record) error {
	if err := t.writable(); err != nil {
		return err
	}
	encoded, err := encodeRecords(recs)
	if err != nil {
		return err
	}
	return t.s.copyRecords(t.ctx, t.tx, recs, encoded, 0)
}

// The leader lease (lease.go) on PostgreSQL: one row, ekem_lease, whose
// token grows at every acquisition and whose expiry is on the database's
// clock. Acquiring is one UPDATE that succeeds only on an expired lease;
// renewing one that succeeds only while the token is still the holder's
// and unexpired. The local deadline a Lease carries starts before the
// statement is sent, so it ends no later than the database's expiry.

func (s *pgStore) AcquireLease(ctx context.Context, holder string, ttl time.Duration) (Lease, bool, error) {
	if s.readOnly {
		return Lease{}, false, fmt.Errorf("%w: %s", ErrReadOnly, s.name)
	}
	start := time.Now()
	var token int64
	err := s.pool.QueryRow(ctx, `UPDATE ekem_lease SET token = token + 1, holder = $1, acquired = now(),
		expires = now() + make_interval(secs => $2) WHERE id = 1 AND expires <= now() RETURNING token`,
		sqlText(holder), ttl.Seconds()).Scan(&token)
	if errors.Is(err, pgx.ErrNoRows) {
		return Lease{}, false, nil
	}
	if err != nil {
		return Lease{}, false, s.fail("acquire lease", err)
	}
	return Lease{Token: uint64(token), Holder: holder, Until: start.Add(ttl)}, true, nil
}

func (s *pgStore) RenewLease(ctx context.Context, l Lease, ttl time.Duration) (Lease, error) {
	start := time.Now()
	var token int64
	err := s.pool.QueryRow(ctx, `UPDATE ekem_lease SET expires = now() + make_interval(secs => $2)
		WHERE id = 1 AND token = $1 AND expires > now() RETURNING token`, int64(l.Token), ttl.Seconds()).Scan(&token)
	if errors.Is(err, pgx.ErrNoRows) {
		return Lease{}, fmt.Errorf("%w: token %d expired or was taken over", ErrNotLeader, l.Token)
	}
	if err != nil {
		return Lease{}, s.fail("renew lease", err)
	}
	l.Until = start.Add(ttl)
	return l, nil
}

func (s *pgStore) ReleaseLease(ctx context.Context, l Lease) error {
	_, err := s.pool.Exec(ctx, `UPDATE ekem_lease SET expires = '-infinity' WHERE id = 1 AND token = $1`, int64(l.Token))
	return s.fail("release lease", err)
}

func (s *pgStore) LeaseStatus(ctx context.Context) (LeaseStatus, error) {
	var st LeaseStatus
	var token int64
	var acquired *time.Time
	var remaining float64
	err := s.pool.QueryRow(ctx, `SELECT token, holder, acquired, expires > now(),
		CASE WHEN expires > now() THEN extract(epoch FROM expires - now())::float8 ELSE 0 END
		FROM ekem_lease WHERE id = 1`).Scan(&token, &st.Holder, &acquired, &st.Live, &remaining)
	st.Remaining = time.Duration(remaining * float64(time.Second))
	if err != nil {
		return st, s.fail("read lease", err)
	}
	st.Token = uint64(token)
	if acquired != nil {
		st.Acquired = *acquired
	}
	return st, nil
}
