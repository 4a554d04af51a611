-- entropykem issuer store, PostgreSQL engine, schema version 1.
-- Applied once, in one transaction, by ekem-issuer at start or by
-- 'ekem-issuer migrate' (issuer/store_pg.go). Never edit a released
-- migration: add the next numbered file.

-- The last issued epoch (or recovery floor), its EpochInfo, and the
-- audit log's sequence. One row.
CREATE TABLE ekem_meta (
	id         int PRIMARY KEY CHECK (id = 1),
	last_epoch bigint NOT NULL DEFAULT 0 CHECK (last_epoch >= 0),
	epoch_info bytea,
	audit_seq  bigint NOT NULL DEFAULT 0
);
INSERT INTO ekem_meta (id) VALUES (1);

-- One row per device: its record (CBOR, issuer/record.go) and, for SQL
-- readers, the columns an operator filters on. rev grows at every write:
-- an epoch commit refuses to overwrite a record changed since its plan.
CREATE TABLE ekem_devices (
	id    text COLLATE "C" PRIMARY KEY,
	rev   bigint NOT NULL DEFAULT 1,
	state int NOT NULL,
	epoch bigint NOT NULL,
	rec   bytea NOT NULL
);
-- Records are mostly keys and ciphertexts, which do not compress: stored
-- out of line without a compression attempt.
ALTER TABLE ekem_devices ALTER COLUMN rec SET STORAGE EXTERNAL;

-- The last few signed epoch roots (COSE_Sign1).
CREATE TABLE ekem_roots (
	epoch bigint PRIMARY KEY,
	root  bytea NOT NULL
);

-- Issuer key rotation announcements (COSE_Sign1), in order.
CREATE TABLE ekem_rotations (
	seq    bigserial PRIMARY KEY,
	signed bytea NOT NULL
);

-- The audit log of operator actions: the entry (CBOR) is the record; the
-- columns repeat it for SQL readers.
CREATE TABLE ekem_audit (
	seq    bigint PRIMARY KEY,
	at     timestamptz NOT NULL,
	actor  text NOT NULL,
	action text NOT NULL,
	device text NOT NULL,
	reason text NOT NULL,
	detail text NOT NULL,
	entry  bytea NOT NULL
);

-- The leader lease of the issuer instances sharing this database. token
-- grows at every acquisition: it is the fencing token every epoch commit
-- compares in its own transaction. expires is on the database's clock.
CREATE TABLE ekem_lease (
	id       int PRIMARY KEY CHECK (id = 1),
	token    bigint NOT NULL DEFAULT 0,
	holder   text NOT NULL DEFAULT '',
	acquired timestamptz,
	expires  timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO ekem_lease (id) VALUES (1);
