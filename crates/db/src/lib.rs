//! The resource store: every version of every resource, per tenant, with search indexes.
//!
//! One API, two engines: embedded SQLite (default, a directory on disk) and PostgreSQL (several
//! `iryo serve` processes may share one). All SQL is written once (see [`sql`]); the engines differ
//! only in how writes are scheduled:
//! - SQLite: one writer thread takes every pending write request, applies each in its own
//!   savepoint inside one transaction, and commits once (group commit: one fsync for many writers).
//!   Readers use a pool of WAL connections and never block the writer.
//! - PostgreSQL: each request is its own transaction on a pooled connection; PostgreSQL's WAL
//!   flush already groups concurrent commits.
//!
//! ```no_run
//! # async fn demo() -> Result<(), iryo_db::DbError> {
//! use iryo_db::{Store, WriteOp};
//! let store = Store::open("./iryo-data").await?;
//! let t = store.tenant_id("default").await?.unwrap();
//! let patient = serde_json::json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "山田"}]});
//! let out = store.write(t, vec![WriteOp::put(patient)]).await?;
//! assert_eq!(out[0].version, 1);
//! let read = store.read(t, "Patient", "p1").await?.unwrap();
//! assert!(!read.deleted);
//! # Ok(()) }
//! ```

pub mod jobs;
pub mod schema;
pub mod search;
pub mod sql;
mod store;
mod write;

pub use jobs::ExportJob;
pub use search::{SearchPage, SearchRequest};
pub use store::{HistoryEntry, HistoryQuery, Store, StoredResource, Tenant};
pub use write::{WriteOp, WriteOutcome};

/// Errors of the store. The REST layer maps them to HTTP statuses and OperationOutcomes.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(String),
    #[error("version conflict on {ty}/{id}: expected version {expected}, current is {current}")]
    VersionConflict {
        ty: String,
        id: String,
        expected: i64,
        current: i64,
    },
    #[error("{ty}/{id} already exists")]
    AlreadyExists { ty: String, id: String },
    #[error("{ty}/{id} not found")]
    NotFound { ty: String, id: String },
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("unknown tenant {0}")]
    UnknownTenant(String),
    #[error("storage: {0}")]
    Other(String),
}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> Self {
        match e.as_db_error() {
            Some(d) => DbError::Postgres(format!("{} ({})", d.message(), d.code().code())),
            None => DbError::Postgres(e.to_string()),
        }
    }
}

impl From<std::io::Error> for DbError {
    fn from(e: std::io::Error) -> Self {
        DbError::Other(e.to_string())
    }
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
