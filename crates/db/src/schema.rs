//! The storage layout, identical on SQLite and PostgreSQL apart from column types.
//! See docs/implementation/storage.md for the reasoning.
//!
//! Every table starts its primary key with `tenant`, so the PostgreSQL schema can be distributed
//! by tenant (Citus `create_distributed_table(…, 'tenant')`) without change.

/// Current schema version, kept in `meta`.
pub const SCHEMA_VERSION: i64 = 5;

const TABLES: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tenant (
  id BIGINT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  created BIGINT NOT NULL,
  settings TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS resource (
  tenant BIGINT NOT NULL,
  type BIGINT NOT NULL,
  id TEXT NOT NULL,
  rid BIGINT NOT NULL,
  version BIGINT NOT NULL,
  tx BIGINT NOT NULL,
  last_updated BIGINT NOT NULL,
  deleted BIGINT NOT NULL,
  PRIMARY KEY (tenant, type, id)
) @WR;
CREATE UNIQUE INDEX IF NOT EXISTS resource_rid ON resource (tenant, rid);
CREATE INDEX IF NOT EXISTS resource_lu ON resource (tenant, type, last_updated);
CREATE TABLE IF NOT EXISTS resource_version (
  tenant BIGINT NOT NULL,
  rid BIGINT NOT NULL,
  version BIGINT NOT NULL,
  type BIGINT NOT NULL,
  tx BIGINT NOT NULL,
  last_updated BIGINT NOT NULL,
  op BIGINT NOT NULL,
  body @BLOB,
  PRIMARY KEY (tenant, rid, version)
);
CREATE INDEX IF NOT EXISTS resource_version_tx ON resource_version (tenant, tx);
CREATE INDEX IF NOT EXISTS resource_version_type_tx ON resource_version (tenant, type, tx);
CREATE TABLE IF NOT EXISTS sp_string (
  tenant BIGINT NOT NULL, type BIGINT NOT NULL, param BIGINT NOT NULL,
  norm TEXT @C NOT NULL, rid BIGINT NOT NULL, exact TEXT NOT NULL,
  PRIMARY KEY (tenant, type, param, norm, rid)
) @WR;
CREATE TABLE IF NOT EXISTS sp_token (
  tenant BIGINT NOT NULL, type BIGINT NOT NULL, param BIGINT NOT NULL,
  code TEXT @C NOT NULL, system TEXT @C NOT NULL, rid BIGINT NOT NULL,
  PRIMARY KEY (tenant, type, param, code, rid, system)
) @WR;
CREATE TABLE IF NOT EXISTS sp_date (
  tenant BIGINT NOT NULL, type BIGINT NOT NULL, param BIGINT NOT NULL,
  lo BIGINT NOT NULL, hi BIGINT NOT NULL, rid BIGINT NOT NULL,
  PRIMARY KEY (tenant, type, param, rid, lo, hi)
) @WR;
CREATE TABLE IF NOT EXISTS sp_number (
  tenant BIGINT NOT NULL, type BIGINT NOT NULL, param BIGINT NOT NULL,
  lo @REAL NOT NULL, hi @REAL NOT NULL, rid BIGINT NOT NULL,
  PRIMARY KEY (tenant, type, param, rid, lo, hi)
) @WR;
CREATE TABLE IF NOT EXISTS sp_quantity (
  tenant BIGINT NOT NULL, type BIGINT NOT NULL, param BIGINT NOT NULL,
  code TEXT @C NOT NULL, system TEXT @C NOT NULL, lo @REAL NOT NULL, hi @REAL NOT NULL, rid BIGINT NOT NULL,
  PRIMARY KEY (tenant, type, param, code, rid, system, lo, hi)
) @WR;
CREATE TABLE IF NOT EXISTS sp_reference (
  tenant BIGINT NOT NULL, type BIGINT NOT NULL, param BIGINT NOT NULL,
  target_type BIGINT NOT NULL, target_id TEXT @C NOT NULL, rid BIGINT NOT NULL,
  PRIMARY KEY (tenant, type, param, target_id, rid, target_type)
) @WR;
CREATE INDEX IF NOT EXISTS sp_reference_rid ON sp_reference (tenant, type, param, rid, target_type, target_id);
CREATE TABLE IF NOT EXISTS sp_uri (
  tenant BIGINT NOT NULL, type BIGINT NOT NULL, param BIGINT NOT NULL,
  value TEXT @C NOT NULL, rid BIGINT NOT NULL,
  PRIMARY KEY (tenant, type, param, value, rid)
) @WR;
CREATE TABLE IF NOT EXISTS export_job (
  tenant BIGINT NOT NULL,
  id TEXT NOT NULL,
  created BIGINT NOT NULL,
  status TEXT NOT NULL,
  request TEXT NOT NULL,
  result TEXT NOT NULL,
  PRIMARY KEY (tenant, id)
);
CREATE TABLE IF NOT EXISTS export_file (
  tenant BIGINT NOT NULL,
  job TEXT NOT NULL,
  name TEXT NOT NULL,
  body @BLOB NOT NULL,
  PRIMARY KEY (tenant, job, name)
);
"#;

/// DDL for SQLite.
pub fn sqlite() -> String {
    TABLES
        .replace("@WR", "WITHOUT ROWID")
        .replace("@BLOB", "BLOB")
        .replace("@REAL", "REAL")
        .replace("@C ", "")
}

/// DDL for PostgreSQL (sequences for resource keys and transaction numbers).
pub fn postgres() -> String {
    let mut s = TABLES
        .replace("@WR", "")
        .replace("@BLOB", "BYTEA")
        .replace("@REAL", "DOUBLE PRECISION")
        .replace("@C ", "COLLATE \"C\" ");
    s.push_str(
        "CREATE SEQUENCE IF NOT EXISTS rid_seq CACHE 100;\nCREATE SEQUENCE IF NOT EXISTS tx_seq CACHE 1;\nCREATE SEQUENCE IF NOT EXISTS tenant_seq;\n",
    );
    s
}
