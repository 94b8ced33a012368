//! The PostgreSQL engine: the same SQL as SQLite ([`super::schema`]) plus the
//! PostgreSQL append-only trigger and a per-tenant advisory lock that
//! serialises audit appends.
//!
//! Uses the blocking `postgres` client: call it from a blocking thread
//! (`tokio::task::spawn_blocking`), not directly inside an async task.

use ::postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use ::postgres::{Client, NoTls, Row};

use super::sql::{Conn, SqlSecurityStore};
use super::{schema, Cols, Val};
use crate::error::{ErrorKind, Result, SecurityError};

impl From<::postgres::Error> for SecurityError {
    fn from(e: ::postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) if db.code() == &::postgres::error::SqlState::UNIQUE_VIOLATION => {
                SecurityError::new(ErrorKind::Conflict, "既に登録されています", format!("{db}"))
            }
            Some(db) => SecurityError::storage(format!("{db}")),
            None => SecurityError::storage(e),
        }
    }
}

impl ToSql for Val {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Val::T(v) => v.to_sql(ty, out),
            Val::I(v) => v.to_sql(ty, out),
            Val::B(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <String as ToSql>::accepts(ty)
            || <i64 as ToSql>::accepts(ty)
            || <bool as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

impl Cols for Row {
    fn text(&self, i: usize) -> Result<String> {
        Ok(self.try_get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>> {
        Ok(self.try_get(i)?)
    }
    fn int(&self, i: usize) -> Result<i64> {
        Ok(self.try_get(i)?)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        Ok(self.try_get(i)?)
    }
    fn flag(&self, i: usize) -> Result<bool> {
        Ok(self.try_get(i)?)
    }
}

fn refs(vals: &[Val]) -> Vec<&(dyn ToSql + Sync)> {
    vals.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// A PostgreSQL client as a [`Conn`].
pub struct PgConn(Client);

impl Conn for PgConn {
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64> {
        Ok(self.0.execute(sql, &refs(params))?)
    }

    fn rows<T>(
        &mut self,
        sql: &str,
        params: &[Val],
        f: &dyn Fn(&dyn Cols) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.0
            .query(sql, &refs(params))?
            .iter()
            .map(|r| f(r))
            .collect()
    }

    fn begin(&mut self) -> Result<()> {
        Ok(self.0.batch_execute("BEGIN")?)
    }

    fn commit(&mut self) -> Result<()> {
        Ok(self.0.batch_execute("COMMIT")?)
    }

    fn rollback(&mut self) -> Result<()> {
        Ok(self.0.batch_execute("ROLLBACK")?)
    }

    fn lock_audit_chain(&mut self, tenant: &str) -> Result<()> {
        self.0.execute(schema::POSTGRES_AUDIT_LOCK, &[&tenant])?;
        Ok(())
    }
}

/// Security store on PostgreSQL.
pub type PgSecurityStore = SqlSecurityStore<PgConn>;

impl SqlSecurityStore<PgConn> {
    /// Connects (`postgresql://user@host/db`) and creates the tables.
    pub fn connect(url: &str) -> Result<Self> {
        Self::from_client(Client::connect(url, NoTls)?)
    }

    /// Uses an existing client and creates the tables.
    pub fn from_client(mut client: Client) -> Result<Self> {
        // Several servers may start at once: create the schema under a lock.
        client.batch_execute(schema::POSTGRES_SCHEMA_LOCK)?;
        let created = (|| -> Result<()> {
            for s in schema::SCHEMA.iter().chain(schema::POSTGRES_AUDIT_GUARD) {
                client.batch_execute(s)?;
            }
            Ok(())
        })();
        client.batch_execute(schema::POSTGRES_SCHEMA_UNLOCK)?;
        created?;
        Ok(Self::with_conn(PgConn(client)))
    }
}
