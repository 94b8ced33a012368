//! The store logic, written once over a minimal connection interface that
//! the SQLite and PostgreSQL engines implement.

use chrono::{DateTime, Utc};
use std::sync::{Mutex, MutexGuard};

use super::*;
use crate::audit::{self, AuditAction, AuditOutcome, AuditRecord};
use crate::authz::BreakGlassGrant;
use crate::error::{ErrorKind, Result, SecurityError};

/// One connection of a database engine.
pub trait Conn: Send {
    /// Runs a statement; returns the number of rows changed. A unique or
    /// primary-key violation is reported with [`ErrorKind::Conflict`].
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64>;
    /// Runs a query and decodes every row with `f`.
    fn rows<T>(
        &mut self,
        sql: &str,
        params: &[Val],
        f: &dyn Fn(&dyn Cols) -> Result<T>,
    ) -> Result<Vec<T>>;
    /// Starts a transaction that takes the write lock at once.
    fn begin(&mut self) -> Result<()>;
    fn commit(&mut self) -> Result<()>;
    fn rollback(&mut self) -> Result<()>;
    /// Inside a transaction: serialises appends to one tenant's audit chain
    /// (nothing to do where [`Conn::begin`] already locks the database).
    fn lock_audit_chain(&mut self, tenant: &str) -> Result<()>;
}

/// [`SecurityStore`] over any [`Conn`]: [`super::SqliteSecurityStore`] and
/// [`super::PgSecurityStore`] are this type on their engine.
pub struct SqlSecurityStore<C: Conn> {
    conn: Mutex<C>,
}

impl<C: Conn> std::fmt::Debug for SqlSecurityStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqlSecurityStore")
    }
}

impl<C: Conn> SqlSecurityStore<C> {
    pub(crate) fn with_conn(conn: C) -> Self {
        SqlSecurityStore {
            conn: Mutex::new(conn),
        }
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, C> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exec(&self, sql: &str, p: &[Val]) -> Result<u64> {
        self.conn().exec(sql, p)
    }

    fn all<T>(&self, sql: &str, p: &[Val], f: &dyn Fn(&dyn Cols) -> Result<T>) -> Result<Vec<T>> {
        self.conn().rows(sql, p, f)
    }

    fn one<T>(
        &self,
        sql: &str,
        p: &[Val],
        f: &dyn Fn(&dyn Cols) -> Result<T>,
    ) -> Result<Option<T>> {
        Ok(self.all(sql, p, f)?.into_iter().next())
    }

    fn count(&self, sql: &str, p: &[Val]) -> Result<i64> {
        Ok(self.one(sql, p, &|r| r.int(0))?.unwrap_or(0).max(0))
    }

    /// Runs `f` in a write transaction, rolled back on error.
    fn tx<T>(&self, f: impl FnOnce(&mut C) -> Result<T>) -> Result<T> {
        let mut c = self.conn();
        c.begin()?;
        match f(&mut c) {
            Ok(v) => {
                c.commit()?;
                Ok(v)
            }
            Err(e) => {
                let _ = c.rollback();
                Err(e)
            }
        }
    }
}

fn vals<const N: usize>(v: [Val; N]) -> [Val; N] {
    v
}

fn s(v: &str) -> Val {
    Val::from(v)
}

impl<C: Conn> SecurityStore for SqlSecurityStore<C> {
    fn create_user(&self, u: &UserRecord) -> Result<()> {
        match self.exec(schema::INSERT_USER, &user_insert_values(u)) {
            Err(e) if e.kind == ErrorKind::Conflict => Err(conflict_user(u)),
            r => r.map(|_| ()),
        }
    }

    fn get_user(&self, tenant: &str, user_id: &str) -> Result<Option<UserRecord>> {
        self.one(
            &schema::select_user_by_id(),
            &[s(tenant), s(user_id)],
            &|r| user_from(r),
        )
    }

    fn find_user_by_name(&self, tenant: &str, username: &str) -> Result<Option<UserRecord>> {
        let name = username.to_lowercase();
        self.one(
            &schema::select_user_by_name(),
            &[s(tenant), s(&name)],
            &|r| user_from(r),
        )
    }

    fn list_users(&self, tenant: &str) -> Result<Vec<UserRecord>> {
        self.all(&schema::select_users(), &[s(tenant)], &|r| user_from(r))
    }

    fn list_tenants(&self) -> Result<Vec<String>> {
        self.all(schema::SELECT_TENANTS, &[], &|r| r.text(0))
    }

    fn audit_tenants(&self) -> Result<Vec<String>> {
        self.all(schema::SELECT_AUDIT_TENANTS, &[], &|r| r.text(0))
    }

    fn update_user(&self, u: &UserRecord) -> Result<()> {
        if self.exec(schema::UPDATE_USER, &user_update_values(u))? == 0 {
            return Err(SecurityError::new(
                ErrorKind::NotFound,
                "利用者が見つかりません",
                "user not found",
            ));
        }
        Ok(())
    }

    fn record_login_failure(&self, tenant: &str, user_id: &str) -> Result<u32> {
        let key = vals([s(tenant), s(user_id)]);
        let n = self.tx(|c| {
            c.exec(schema::INCREMENT_FAILURES, &key)?;
            Ok(c.rows(schema::SELECT_FAILURES, &key, &|r| r.int(0))?
                .into_iter()
                .next()
                .unwrap_or(0))
        })?;
        Ok(n.clamp(0, u32::MAX as i64) as u32)
    }

    fn set_locked_until(
        &self,
        tenant: &str,
        user_id: &str,
        until: Option<DateTime<Utc>>,
    ) -> Result<()> {
        self.exec(
            schema::SET_LOCKED_UNTIL,
            &[until.map(ts).into(), s(tenant), s(user_id)],
        )?;
        Ok(())
    }

    fn advance_totp_step(&self, tenant: &str, user_id: &str, step: u64) -> Result<bool> {
        Ok(self.exec(
            schema::ADVANCE_TOTP_STEP,
            &[(step as i64).into(), s(tenant), s(user_id)],
        )? == 1)
    }

    fn add_password_history(
        &self,
        tenant: &str,
        user_id: &str,
        hash: &str,
        at: DateTime<Utc>,
    ) -> Result<()> {
        self.exec(
            schema::INSERT_PASSWORD_HISTORY,
            &[s(tenant), s(user_id), ts(at).into(), s(hash)],
        )?;
        Ok(())
    }

    fn recent_password_hashes(&self, tenant: &str, user_id: &str, n: usize) -> Result<Vec<String>> {
        self.all(
            schema::SELECT_PASSWORD_HISTORY,
            &[s(tenant), s(user_id), (n as i64).into()],
            &|r| r.text(0),
        )
    }

    fn replace_recovery_codes(
        &self,
        tenant: &str,
        user_id: &str,
        hashes: &[String],
        at: DateTime<Utc>,
    ) -> Result<()> {
        self.tx(|c| {
            c.exec(schema::DELETE_RECOVERY_CODES, &[s(tenant), s(user_id)])?;
            for h in hashes {
                c.exec(
                    schema::INSERT_RECOVERY_CODE,
                    &[s(tenant), s(user_id), s(h), ts(at).into()],
                )?;
            }
            Ok(())
        })
    }

    fn use_recovery_code(
        &self,
        tenant: &str,
        user_id: &str,
        hash: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        Ok(self.exec(
            schema::USE_RECOVERY_CODE,
            &[ts(at).into(), s(tenant), s(user_id), s(hash)],
        )? == 1)
    }

    fn remaining_recovery_codes(&self, tenant: &str, user_id: &str) -> Result<u32> {
        Ok(self
            .count(schema::COUNT_RECOVERY_CODES, &[s(tenant), s(user_id)])?
            .min(u32::MAX as i64) as u32)
    }

    fn insert_session(&self, rec: &SessionRecord) -> Result<()> {
        self.exec(schema::INSERT_SESSION, &session_values(rec))?;
        Ok(())
    }

    fn get_session(&self, tenant: &str, session_hash: &str) -> Result<Option<SessionRecord>> {
        self.one(
            schema::SELECT_SESSION,
            &[s(tenant), s(session_hash)],
            &|r| session_from(r),
        )
    }

    fn touch_session(&self, tenant: &str, session_hash: &str, at: DateTime<Utc>) -> Result<()> {
        self.exec(
            schema::TOUCH_SESSION,
            &[ts(at).into(), s(tenant), s(session_hash)],
        )?;
        Ok(())
    }

    fn delete_session(&self, tenant: &str, session_hash: &str) -> Result<bool> {
        Ok(self.exec(schema::DELETE_SESSION, &[s(tenant), s(session_hash)])? > 0)
    }

    fn delete_user_sessions(&self, tenant: &str, user_id: &str) -> Result<u64> {
        self.exec(schema::DELETE_USER_SESSIONS, &[s(tenant), s(user_id)])
    }

    fn count_user_sessions(&self, tenant: &str, user_id: &str) -> Result<u64> {
        Ok(self.count(schema::COUNT_USER_SESSIONS, &[s(tenant), s(user_id)])? as u64)
    }

    fn purge_sessions(&self, now: DateTime<Utc>, idle_before: DateTime<Utc>) -> Result<u64> {
        self.exec(
            schema::DELETE_EXPIRED_SESSIONS,
            &[ts(now).into(), ts(idle_before).into()],
        )
    }

    fn insert_break_glass(&self, tenant: &str, user_id: &str, g: &BreakGlassGrant) -> Result<()> {
        self.exec(
            schema::INSERT_BREAK_GLASS,
            &break_glass_values(tenant, user_id, g),
        )?;
        Ok(())
    }

    fn active_break_glass(
        &self,
        tenant: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<BreakGlassGrant>> {
        self.one(
            schema::SELECT_ACTIVE_BREAK_GLASS,
            &[s(tenant), s(user_id), ts(now).into()],
            &|r| grant_from(r, 0),
        )
    }

    fn unreviewed_break_glass(&self, tenant: &str) -> Result<Vec<BreakGlassRecord>> {
        self.all(schema::SELECT_UNREVIEWED_BREAK_GLASS, &[s(tenant)], &|r| {
            Ok(BreakGlassRecord {
                tenant: tenant.to_string(),
                user_id: r.text(0)?,
                grant: grant_from(r, 1)?,
            })
        })
    }

    fn review_break_glass(
        &self,
        tenant: &str,
        grant_id: &str,
        reviewer: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        Ok(self.exec(
            schema::REVIEW_BREAK_GLASS,
            &[ts(at).into(), s(reviewer), s(tenant), s(grant_id)],
        )? == 1)
    }

    fn record_assertion_jti(
        &self,
        tenant: &str,
        client_id: &str,
        jti: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<bool> {
        // An assertion expires at most 5 minutes after it is presented, so ids
        // expiring well before this one belong to assertions refused by `exp`.
        self.exec(
            schema::DELETE_EXPIRED_JTI,
            &[(ts(expires_at) - 1800).into()],
        )?;
        Ok(self.exec(
            schema::INSERT_JTI,
            &[s(tenant), s(client_id), s(jti), ts(expires_at).into()],
        )? == 1)
    }

    fn insert_auth_code(&self, c: &AuthCodeRecord) -> Result<()> {
        self.exec(
            schema::INSERT_AUTH_CODE,
            &[
                s(&c.tenant),
                s(&c.code_hash),
                s(&c.client_id),
                s(&c.redirect_uri),
                s(&c.user_id),
                s(&c.scope),
                Val::T(c.patient.clone()),
                s(&c.code_challenge),
                ts(c.expires_at).into(),
            ],
        )?;
        Ok(())
    }

    fn take_auth_code(
        &self,
        tenant: &str,
        code_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<AuthCodeRecord>> {
        self.exec(
            schema::DELETE_EXPIRED_AUTH_CODES,
            &[(ts(now) - 3600).into()],
        )?;
        let Some(c) = self.one(schema::SELECT_AUTH_CODE, &[s(tenant), s(code_hash)], &|r| {
            auth_code_from(r)
        })?
        else {
            return Ok(None);
        };
        // Only the caller whose DELETE removed the row gets the code.
        Ok((self.exec(schema::DELETE_AUTH_CODE, &[s(tenant), s(code_hash)])? == 1).then_some(c))
    }

    fn insert_webauthn(&self, c: &crate::webauthn::CredentialRecord) -> Result<()> {
        self.exec(
            schema::INSERT_WEBAUTHN,
            &[
                s(&c.tenant),
                s(&c.credential.id),
                s(&c.user_id),
                Val::from(hex::encode(&c.credential.public_key)),
                (c.credential.sign_count as i64).into(),
                Val::B(c.credential.user_verified),
                s(&c.label),
                ts(c.created_at).into(),
            ],
        )
        .map_err(|e| match e.kind {
            ErrorKind::Conflict => SecurityError::new(
                ErrorKind::Conflict,
                "このパスキーは既に登録されています",
                "credential already registered",
            ),
            _ => e,
        })?;
        Ok(())
    }

    fn webauthn_credentials(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Vec<crate::webauthn::CredentialRecord>> {
        self.all(schema::SELECT_WEBAUTHN, &[s(tenant), s(user_id)], &|r| {
            webauthn_from(r)
        })
    }

    fn advance_webauthn_count(
        &self,
        tenant: &str,
        credential_id: &str,
        count: u32,
    ) -> Result<bool> {
        Ok(self.exec(
            schema::ADVANCE_WEBAUTHN_COUNT,
            &[(count as i64).into(), s(tenant), s(credential_id)],
        )? == 1)
    }

    fn append_audit(&self, e: NewAuditEntry) -> Result<AuditRecord> {
        let mut v = self.append_audit_many(vec![e])?;
        v.pop()
            .ok_or_else(|| SecurityError::storage("audit append returned nothing"))
    }

    fn append_audit_many(&self, entries: Vec<NewAuditEntry>) -> Result<Vec<AuditRecord>> {
        for e in &entries {
            check_details(e)?;
        }
        self.tx(|c| {
            let mut out: Vec<AuditRecord> = Vec::with_capacity(entries.len());
            for e in entries {
                // The previous record of this tenant: from this batch, or the store.
                let last = match out.iter().rev().find(|r| r.entry.tenant == e.tenant) {
                    Some(r) => Some(r.clone()),
                    None => {
                        c.lock_audit_chain(&e.tenant)?;
                        c.rows(&schema::select_audit_last(), &[s(&e.tenant)], &|r| {
                            audit_from(r)
                        })?
                        .into_iter()
                        .next()
                    }
                };
                let seq = last.as_ref().map(|l| l.entry.seq + 1).unwrap_or(1);
                let rec = audit::seal(e.into_entry(seq), last.as_ref());
                c.exec(schema::INSERT_AUDIT, &audit_values(&rec)?)?;
                out.push(rec);
            }
            Ok(out)
        })
    }

    fn audit_range(&self, tenant: &str, from_seq: u64, limit: u32) -> Result<Vec<AuditRecord>> {
        self.all(
            &schema::select_audit_range(),
            &[s(tenant), (from_seq as i64).into(), (limit as i64).into()],
            &|r| audit_from(r),
        )
    }

    fn audit_head(&self, tenant: &str) -> Result<Option<AuditRecord>> {
        self.one(&schema::select_audit_last(), &[s(tenant)], &|r| {
            audit_from(r)
        })
    }

    fn last_audit_of(
        &self,
        tenant: &str,
        action: AuditAction,
        outcome: AuditOutcome,
    ) -> Result<Option<AuditRecord>> {
        self.one(
            &schema::select_audit_last_of_action(),
            &[s(tenant), s(action.code()), s(outcome.code())],
            &|r| audit_from(r),
        )
    }

    fn search_audit(&self, tenant: &str, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        self.all(&schema::search_audit(), &search_values(tenant, q), &|r| {
            audit_from(r)
        })
    }
}
