//! The embedded SQLite engine.

use rusqlite::{Connection, Row};
use std::path::Path;

use super::sql::{Conn, SqlSecurityStore};
use super::{schema, Cols, Val};
use crate::error::{ErrorKind, Result, SecurityError};

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Val::T(v) => v.to_sql(),
            Val::I(v) => v.to_sql(),
            Val::B(v) => v.to_sql(),
        }
    }
}

impl Cols for Row<'_> {
    fn text(&self, i: usize) -> Result<String> {
        Ok(self.get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>> {
        Ok(self.get(i)?)
    }
    fn int(&self, i: usize) -> Result<i64> {
        Ok(self.get(i)?)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        Ok(self.get(i)?)
    }
    fn flag(&self, i: usize) -> Result<bool> {
        Ok(self.get(i)?)
    }
}

/// A SQLite connection as a [`Conn`].
pub struct LiteConn(Connection);

fn map_err(e: rusqlite::Error) -> SecurityError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            SecurityError::new(
                ErrorKind::Conflict,
                "既に登録されています",
                format!("constraint violation: {e}"),
            )
        }
        _ => SecurityError::storage(e),
    }
}

impl Conn for LiteConn {
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64> {
        let mut st = self.0.prepare_cached(sql)?;
        Ok(st
            .execute(rusqlite::params_from_iter(params))
            .map_err(map_err)? as u64)
    }

    fn rows<T>(
        &mut self,
        sql: &str,
        params: &[Val],
        f: &dyn Fn(&dyn Cols) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut st = self.0.prepare_cached(sql)?;
        let mut rows = st.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(f(r)?);
        }
        Ok(out)
    }

    fn begin(&mut self) -> Result<()> {
        Ok(self.0.execute_batch("BEGIN IMMEDIATE")?)
    }

    fn commit(&mut self) -> Result<()> {
        Ok(self.0.execute_batch("COMMIT")?)
    }

    fn rollback(&mut self) -> Result<()> {
        Ok(self.0.execute_batch("ROLLBACK")?)
    }

    fn lock_audit_chain(&mut self, _tenant: &str) -> Result<()> {
        // BEGIN IMMEDIATE already holds the database write lock.
        Ok(())
    }
}

/// Embedded SQLite implementation of [`super::SecurityStore`].
pub type SqliteSecurityStore = SqlSecurityStore<LiteConn>;

impl SqlSecurityStore<LiteConn> {
    /// Opens (and creates) the database file.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        Self::from_connection(conn)
    }

    /// A private in-memory database (tests, tools).
    pub fn open_in_memory() -> Result<Self> {
        Self::from_connection(Connection::open_in_memory()?)
    }

    /// Uses an existing connection (e.g. the server's main database).
    pub fn from_connection(conn: Connection) -> Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        for s in schema::SCHEMA.iter().chain(schema::SQLITE_AUDIT_GUARD) {
            conn.execute_batch(s)?;
        }
        Ok(Self::with_conn(LiteConn(conn)))
    }

    /// Consistent snapshot of the database into `dest` (online backup).
    pub fn snapshot_to(&self, dest: &Path) -> Result<()> {
        crate::backup::sqlite_snapshot(&self.conn().0, dest)
    }

    /// Runs `PRAGMA integrity_check`; true when the database is sound.
    pub fn integrity_check(&self) -> Result<bool> {
        let r: String = self
            .conn()
            .0
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        Ok(r == "ok")
    }
}
