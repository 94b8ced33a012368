//! PostgreSQL implementation of [`SecurityStore`], on the same SQL as the
//! SQLite store ([`super::schema`]) plus the PostgreSQL append-only trigger
//! and a per-tenant advisory lock that serialises audit appends.
//!
//! Uses the blocking `postgres` client: call it from a blocking thread
//! (`tokio::task::spawn_blocking`), not directly inside an async task.

use ::postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use ::postgres::{Client, GenericClient, NoTls, Row};
use chrono::{DateTime, Utc};
use std::sync::Mutex;

use super::schema;
use super::*;
use crate::audit::{self, AuditAction, AuditOutcome, AuditRecord};
use crate::authz::BreakGlassGrant;
use crate::error::{ErrorKind, Result, SecurityError};
use crate::token::JtiRegistry;

impl From<::postgres::Error> for SecurityError {
    fn from(e: ::postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => SecurityError::storage(format!("{db}")),
            None => SecurityError::storage(e),
        }
    }
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

fn refs(vals: &[Val]) -> Vec<&(dyn ToSql + Sync)> {
    vals.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// Security store on PostgreSQL.
pub struct PgSecurityStore {
    client: Mutex<Client>,
}

impl std::fmt::Debug for PgSecurityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgSecurityStore")
    }
}

fn one<T>(
    c: &mut impl GenericClient,
    sql: &str,
    p: &[&(dyn ToSql + Sync)],
    f: impl Fn(&Row) -> Result<T>,
) -> Result<Option<T>> {
    match c.query_opt(sql, p)? {
        Some(r) => Ok(Some(f(&r)?)),
        None => Ok(None),
    }
}

fn all<T>(
    c: &mut impl GenericClient,
    sql: &str,
    p: &[&(dyn ToSql + Sync)],
    f: impl Fn(&Row) -> Result<T>,
) -> Result<Vec<T>> {
    c.query(sql, p)?.iter().map(f).collect()
}

impl PgSecurityStore {
    /// Connects (`postgresql://user@host/db`) and creates the tables.
    pub fn connect(url: &str) -> Result<Self> {
        let client = Client::connect(url, NoTls)?;
        Self::from_client(client)
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
        Ok(PgSecurityStore {
            client: Mutex::new(client),
        })
    }

    fn client(&self) -> std::sync::MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SecurityStore for PgSecurityStore {
    fn create_user(&self, u: &UserRecord) -> Result<()> {
        let r = self
            .client()
            .execute(schema::INSERT_USER, &refs(&user_insert_values(u)));
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&::postgres::error::SqlState::UNIQUE_VIOLATION) => {
                Err(conflict_user(u))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn get_user(&self, tenant: &str, user_id: &str) -> Result<Option<UserRecord>> {
        one(
            &mut *self.client(),
            &schema::select_user_by_id(),
            &[&tenant, &user_id],
            user_from,
        )
    }

    fn find_user_by_name(&self, tenant: &str, username: &str) -> Result<Option<UserRecord>> {
        let name = username.to_lowercase();
        one(
            &mut *self.client(),
            &schema::select_user_by_name(),
            &[&tenant, &name],
            user_from,
        )
    }

    fn list_users(&self, tenant: &str) -> Result<Vec<UserRecord>> {
        all(
            &mut *self.client(),
            &schema::select_users(),
            &[&tenant],
            user_from,
        )
    }

    fn list_tenants(&self) -> Result<Vec<String>> {
        all(&mut *self.client(), schema::SELECT_TENANTS, &[], |r| {
            r.text(0)
        })
    }

    fn audit_tenants(&self) -> Result<Vec<String>> {
        all(
            &mut *self.client(),
            schema::SELECT_AUDIT_TENANTS,
            &[],
            |r| r.text(0),
        )
    }

    fn update_user(&self, u: &UserRecord) -> Result<()> {
        let n = self
            .client()
            .execute(schema::UPDATE_USER, &refs(&user_update_values(u)))?;
        if n == 0 {
            return Err(SecurityError::new(
                ErrorKind::NotFound,
                "利用者が見つかりません",
                "user not found",
            ));
        }
        Ok(())
    }

    fn record_login_failure(&self, tenant: &str, user_id: &str) -> Result<u32> {
        let mut c = self.client();
        let mut tx = c.transaction()?;
        tx.execute(schema::INCREMENT_FAILURES, &[&tenant, &user_id])?;
        let n = one(
            &mut tx,
            schema::SELECT_FAILURES,
            &[&tenant, &user_id],
            |r| r.int(0),
        )?
        .unwrap_or(0);
        tx.commit()?;
        Ok(n.clamp(0, u32::MAX as i64) as u32)
    }

    fn set_locked_until(
        &self,
        tenant: &str,
        user_id: &str,
        until: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let until = until.map(ts);
        self.client()
            .execute(schema::SET_LOCKED_UNTIL, &[&until, &tenant, &user_id])?;
        Ok(())
    }

    fn advance_totp_step(&self, tenant: &str, user_id: &str, step: u64) -> Result<bool> {
        let s = step as i64;
        Ok(self
            .client()
            .execute(schema::ADVANCE_TOTP_STEP, &[&s, &tenant, &user_id])?
            == 1)
    }

    fn add_password_history(
        &self,
        tenant: &str,
        user_id: &str,
        hash: &str,
        at: DateTime<Utc>,
    ) -> Result<()> {
        self.client().execute(
            schema::INSERT_PASSWORD_HISTORY,
            &[&tenant, &user_id, &ts(at), &hash],
        )?;
        Ok(())
    }

    fn recent_password_hashes(&self, tenant: &str, user_id: &str, n: usize) -> Result<Vec<String>> {
        all(
            &mut *self.client(),
            schema::SELECT_PASSWORD_HISTORY,
            &[&tenant, &user_id, &(n as i64)],
            |r| r.text(0),
        )
    }

    fn replace_recovery_codes(
        &self,
        tenant: &str,
        user_id: &str,
        hashes: &[String],
        at: DateTime<Utc>,
    ) -> Result<()> {
        let mut c = self.client();
        let mut tx = c.transaction()?;
        tx.execute(schema::DELETE_RECOVERY_CODES, &[&tenant, &user_id])?;
        for h in hashes {
            tx.execute(
                schema::INSERT_RECOVERY_CODE,
                &[&tenant, &user_id, h, &ts(at)],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn use_recovery_code(
        &self,
        tenant: &str,
        user_id: &str,
        hash: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        Ok(self.client().execute(
            schema::USE_RECOVERY_CODE,
            &[&ts(at), &tenant, &user_id, &hash],
        )? == 1)
    }

    fn remaining_recovery_codes(&self, tenant: &str, user_id: &str) -> Result<u32> {
        let n = one(
            &mut *self.client(),
            schema::COUNT_RECOVERY_CODES,
            &[&tenant, &user_id],
            |r| r.int(0),
        )?;
        Ok(n.unwrap_or(0).max(0) as u32)
    }

    fn insert_session(&self, s: &SessionRecord) -> Result<()> {
        self.client()
            .execute(schema::INSERT_SESSION, &refs(&session_values(s)))?;
        Ok(())
    }

    fn get_session(&self, tenant: &str, session_hash: &str) -> Result<Option<SessionRecord>> {
        one(
            &mut *self.client(),
            schema::SELECT_SESSION,
            &[&tenant, &session_hash],
            session_from,
        )
    }

    fn touch_session(&self, tenant: &str, session_hash: &str, at: DateTime<Utc>) -> Result<()> {
        self.client()
            .execute(schema::TOUCH_SESSION, &[&ts(at), &tenant, &session_hash])?;
        Ok(())
    }

    fn delete_session(&self, tenant: &str, session_hash: &str) -> Result<bool> {
        Ok(self
            .client()
            .execute(schema::DELETE_SESSION, &[&tenant, &session_hash])?
            > 0)
    }

    fn delete_user_sessions(&self, tenant: &str, user_id: &str) -> Result<u64> {
        Ok(self
            .client()
            .execute(schema::DELETE_USER_SESSIONS, &[&tenant, &user_id])?)
    }

    fn count_user_sessions(&self, tenant: &str, user_id: &str) -> Result<u64> {
        let n = one(
            &mut *self.client(),
            schema::COUNT_USER_SESSIONS,
            &[&tenant, &user_id],
            |r| r.int(0),
        )?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    fn purge_sessions(&self, now: DateTime<Utc>, idle_before: DateTime<Utc>) -> Result<u64> {
        Ok(self.client().execute(
            schema::DELETE_EXPIRED_SESSIONS,
            &[&ts(now), &ts(idle_before)],
        )?)
    }

    fn insert_break_glass(&self, tenant: &str, user_id: &str, g: &BreakGlassGrant) -> Result<()> {
        self.client().execute(
            schema::INSERT_BREAK_GLASS,
            &refs(&break_glass_values(tenant, user_id, g)),
        )?;
        Ok(())
    }

    fn active_break_glass(
        &self,
        tenant: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<BreakGlassGrant>> {
        one(
            &mut *self.client(),
            schema::SELECT_ACTIVE_BREAK_GLASS,
            &[&tenant, &user_id, &ts(now)],
            |r| grant_from(r, 0),
        )
    }

    fn unreviewed_break_glass(&self, tenant: &str) -> Result<Vec<BreakGlassRecord>> {
        all(
            &mut *self.client(),
            schema::SELECT_UNREVIEWED_BREAK_GLASS,
            &[&tenant],
            |r| {
                Ok(BreakGlassRecord {
                    tenant: tenant.to_string(),
                    user_id: r.text(0)?,
                    grant: grant_from(r, 1)?,
                })
            },
        )
    }

    fn review_break_glass(
        &self,
        tenant: &str,
        grant_id: &str,
        reviewer: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        Ok(self.client().execute(
            schema::REVIEW_BREAK_GLASS,
            &[&ts(at), &reviewer, &tenant, &grant_id],
        )? == 1)
    }

    fn append_audit(&self, e: NewAuditEntry) -> Result<AuditRecord> {
        check_details(&e)?;
        let mut c = self.client();
        let mut tx = c.transaction()?;
        tx.execute(schema::POSTGRES_AUDIT_LOCK, &[&e.tenant])?;
        let last = one(
            &mut tx,
            &schema::select_audit_last(),
            &[&e.tenant],
            audit_from,
        )?;
        let seq = last.as_ref().map(|l| l.entry.seq + 1).unwrap_or(1);
        let rec = audit::seal(e.into_entry(seq), last.as_ref());
        tx.execute(schema::INSERT_AUDIT, &refs(&audit_values(&rec)?))?;
        tx.commit()?;
        Ok(rec)
    }

    fn audit_range(&self, tenant: &str, from_seq: u64, limit: u32) -> Result<Vec<AuditRecord>> {
        all(
            &mut *self.client(),
            &schema::select_audit_range(),
            &[&tenant, &(from_seq as i64), &(limit as i64)],
            audit_from,
        )
    }

    fn audit_head(&self, tenant: &str) -> Result<Option<AuditRecord>> {
        one(
            &mut *self.client(),
            &schema::select_audit_last(),
            &[&tenant],
            audit_from,
        )
    }

    fn last_audit_of(
        &self,
        tenant: &str,
        action: AuditAction,
        outcome: AuditOutcome,
    ) -> Result<Option<AuditRecord>> {
        one(
            &mut *self.client(),
            &schema::select_audit_last_of_action(),
            &[&tenant, &action.code(), &outcome.code()],
            audit_from,
        )
    }

    fn search_audit(&self, tenant: &str, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        all(
            &mut *self.client(),
            &schema::search_audit(),
            &refs(&search_values(tenant, q)),
            audit_from,
        )
    }
}

impl JtiRegistry for PgSecurityStore {
    fn record_jti(
        &self,
        tenant: &str,
        client_id: &str,
        jti: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<bool> {
        let mut c = self.client();
        c.execute(schema::DELETE_EXPIRED_JTI, &[&(ts(expires_at) - 1800)])?;
        Ok(c.execute(
            schema::INSERT_JTI,
            &[&tenant, &client_id, &jti, &ts(expires_at)],
        )? == 1)
    }
}
