//! Persistence of accounts, credentials, sessions, break-glass grants and
//! the audit log.
//!
//! [`SecurityStore`] is the storage interface; [`SqliteSecurityStore`] is the
//! embedded implementation. All SQL is in [`schema`], written to run on both
//! SQLite and PostgreSQL so a PostgreSQL store can reuse it.

pub mod schema;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use serde::Serialize;
use std::path::Path;
use std::sync::Mutex;

use crate::audit::{self, AuditAction, AuditEntry, AuditOutcome, AuditRecord};
use crate::authz::BreakGlassGrant;
use crate::error::{ErrorKind, Result, SecurityError};
use crate::roles::Role;
use crate::token::JtiRegistry;

/// Account status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccountStatus {
    Active,
    Disabled,
}

impl AccountStatus {
    pub fn code(self) -> &'static str {
        match self {
            AccountStatus::Active => "active",
            AccountStatus::Disabled => "disabled",
        }
    }
}

/// A user account of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub tenant: String,
    pub user_id: String,
    /// Login name, stored lowercase.
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub is_admin: bool,
    /// Patient id of a patient account (its own compartment).
    pub patient: Option<String>,
    pub password_hash: String,
    pub password_changed_at: DateTime<Utc>,
    /// The password relies on the 8-character mixed rule (periodic change
    /// required while 2FA is off).
    pub password_rotation: bool,
    pub must_change_password: bool,
    /// TOTP secret (set at enrolment, active once `totp_enabled`).
    pub totp_secret: Option<Vec<u8>>,
    pub totp_enabled: bool,
    pub totp_last_step: Option<u64>,
    pub status: AccountStatus,
    pub status_reason: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub failed_count: u32,
    pub locked_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

/// A stored web session (the id itself is never stored, only its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub tenant: String,
    pub session_hash: String,
    pub user_id: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub absolute_expires_at: DateTime<Utc>,
    pub csrf_hash: String,
    pub source_ip: Option<String>,
}

/// A break-glass grant waiting for administrator review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlassRecord {
    pub tenant: String,
    pub user_id: String,
    pub grant: BreakGlassGrant,
}

/// An entry to append (the store assigns `seq` and the hashes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEntry {
    pub time: DateTime<Utc>,
    pub tenant: String,
    pub actor: String,
    pub role: Option<String>,
    pub action: AuditAction,
    pub source_ip: Option<String>,
    pub patient: Option<String>,
    pub resources: Vec<String>,
    pub outcome: AuditOutcome,
    pub details: serde_json::Value,
}

impl NewAuditEntry {
    /// A minimal entry; fill the optional fields as needed.
    pub fn new(
        time: DateTime<Utc>,
        tenant: &str,
        actor: &str,
        action: AuditAction,
        outcome: AuditOutcome,
    ) -> Self {
        NewAuditEntry {
            time,
            tenant: tenant.into(),
            actor: actor.into(),
            role: None,
            action,
            source_ip: None,
            patient: None,
            resources: Vec::new(),
            outcome,
            details: serde_json::Value::Object(Default::default()),
        }
    }

    fn into_entry(self, seq: u64) -> AuditEntry {
        AuditEntry {
            seq,
            time: audit::truncate_time(self.time),
            tenant: self.tenant,
            actor: self.actor,
            role: self.role,
            action: self.action,
            source_ip: self.source_ip,
            patient: self.patient,
            resources: self.resources,
            outcome: self.outcome,
            details: self.details,
        }
    }
}

/// Filter for [`SecurityStore::search_audit`]; `None` = any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub patient: Option<String>,
    pub actor: Option<String>,
    pub action: Option<AuditAction>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// At most this many entries (capped at 10,000).
    pub limit: Option<u32>,
}

/// Storage interface of the security data. Every key includes the tenant.
pub trait SecurityStore: Send + Sync {
    fn create_user(&self, user: &UserRecord) -> Result<()>;
    fn get_user(&self, tenant: &str, user_id: &str) -> Result<Option<UserRecord>>;
    fn find_user_by_name(&self, tenant: &str, username: &str) -> Result<Option<UserRecord>>;
    fn list_users(&self, tenant: &str) -> Result<Vec<UserRecord>>;
    fn list_tenants(&self) -> Result<Vec<String>>;
    /// Writes every mutable field of an existing user.
    fn update_user(&self, user: &UserRecord) -> Result<()>;
    /// Atomically counts a failed login; returns the new count.
    fn record_login_failure(&self, tenant: &str, user_id: &str) -> Result<u32>;
    fn set_locked_until(
        &self,
        tenant: &str,
        user_id: &str,
        until: Option<DateTime<Utc>>,
    ) -> Result<()>;
    /// Atomically stores a newly accepted TOTP step; false if not newer than
    /// the stored one (a concurrent replay).
    fn advance_totp_step(&self, tenant: &str, user_id: &str, step: u64) -> Result<bool>;

    fn add_password_history(
        &self,
        tenant: &str,
        user_id: &str,
        hash: &str,
        at: DateTime<Utc>,
    ) -> Result<()>;
    fn recent_password_hashes(&self, tenant: &str, user_id: &str, n: usize) -> Result<Vec<String>>;

    fn replace_recovery_codes(
        &self,
        tenant: &str,
        user_id: &str,
        hashes: &[String],
        at: DateTime<Utc>,
    ) -> Result<()>;
    /// Marks a code used; false if unknown or already used.
    fn use_recovery_code(
        &self,
        tenant: &str,
        user_id: &str,
        hash: &str,
        at: DateTime<Utc>,
    ) -> Result<bool>;
    fn remaining_recovery_codes(&self, tenant: &str, user_id: &str) -> Result<u32>;

    fn insert_session(&self, s: &SessionRecord) -> Result<()>;
    fn get_session(&self, tenant: &str, session_hash: &str) -> Result<Option<SessionRecord>>;
    fn touch_session(&self, tenant: &str, session_hash: &str, at: DateTime<Utc>) -> Result<()>;
    fn delete_session(&self, tenant: &str, session_hash: &str) -> Result<bool>;
    /// Revokes every session of a user; returns how many.
    fn delete_user_sessions(&self, tenant: &str, user_id: &str) -> Result<u64>;
    fn count_user_sessions(&self, tenant: &str, user_id: &str) -> Result<u64>;
    /// Removes sessions past their absolute expiry or idle since `idle_before`.
    fn purge_sessions(&self, now: DateTime<Utc>, idle_before: DateTime<Utc>) -> Result<u64>;

    fn insert_break_glass(
        &self,
        tenant: &str,
        user_id: &str,
        grant: &BreakGlassGrant,
    ) -> Result<()>;
    fn active_break_glass(
        &self,
        tenant: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<BreakGlassGrant>>;
    fn unreviewed_break_glass(&self, tenant: &str) -> Result<Vec<BreakGlassRecord>>;
    fn review_break_glass(
        &self,
        tenant: &str,
        grant_id: &str,
        reviewer: &str,
        at: DateTime<Utc>,
    ) -> Result<bool>;

    /// Appends to the tenant's hash chain atomically; returns the sealed record.
    fn append_audit(&self, entry: NewAuditEntry) -> Result<AuditRecord>;
    /// Entries with `seq >= from_seq`, in order, at most `limit`.
    fn audit_range(&self, tenant: &str, from_seq: u64, limit: u32) -> Result<Vec<AuditRecord>>;
    fn audit_head(&self, tenant: &str) -> Result<Option<AuditRecord>>;
    fn last_audit_of(
        &self,
        tenant: &str,
        action: AuditAction,
        outcome: AuditOutcome,
    ) -> Result<Option<AuditRecord>>;
    fn search_audit(&self, tenant: &str, q: &AuditQuery) -> Result<Vec<AuditRecord>>;

    /// Verifies a tenant's whole chain, reading it in pages.
    fn verify_audit_chain(
        &self,
        tenant: &str,
    ) -> Result<std::result::Result<u64, audit::ChainBreak>> {
        const PAGE: u32 = 5000;
        let mut next = 1u64;
        let mut prev = audit::GENESIS_HASH.to_string();
        let mut count = 0u64;
        loop {
            let page = self.audit_range(tenant, next, PAGE)?;
            if page.is_empty() {
                return Ok(Ok(count));
            }
            if let Err(b) = audit::verify_from(&page, next, &prev) {
                return Ok(Err(b));
            }
            let last = page.last().map(|r| (r.entry.seq, r.hash.clone()));
            count += page.len() as u64;
            if let Some((s, h)) = last {
                next = s + 1;
                prev = h;
            }
            if page.len() < PAGE as usize {
                return Ok(Ok(count));
            }
        }
    }
}

fn ts(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

fn from_ts(s: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(s, 0).unwrap_or_default()
}

fn opt_ts(s: Option<i64>) -> Option<DateTime<Utc>> {
    s.map(from_ts)
}

fn bad_row(what: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(0, what.to_string(), rusqlite::types::Type::Text)
}

fn user_from_row(r: &Row<'_>) -> rusqlite::Result<UserRecord> {
    let role: String = r.get(4)?;
    let status: String = r.get(14)?;
    let secret: Option<String> = r.get(11)?;
    Ok(UserRecord {
        tenant: r.get(0)?,
        user_id: r.get(1)?,
        username: r.get(2)?,
        display_name: r.get(3)?,
        role: role.parse().map_err(|_| bad_row("role"))?,
        is_admin: r.get(5)?,
        patient: r.get(6)?,
        password_hash: r.get(7)?,
        password_changed_at: from_ts(r.get(8)?),
        password_rotation: r.get(9)?,
        must_change_password: r.get(10)?,
        totp_secret: secret
            .map(|s| hex::decode(s).map_err(|_| bad_row("totp_secret")))
            .transpose()?,
        totp_enabled: r.get(12)?,
        totp_last_step: r.get::<_, Option<i64>>(13)?.map(|v| v.max(0) as u64),
        status: match status.as_str() {
            "active" => AccountStatus::Active,
            "disabled" => AccountStatus::Disabled,
            _ => return Err(bad_row("status")),
        },
        status_reason: r.get(15)?,
        expires_at: opt_ts(r.get(16)?),
        failed_count: r.get::<_, i64>(17)?.clamp(0, u32::MAX as i64) as u32,
        locked_until: opt_ts(r.get(18)?),
        created_at: from_ts(r.get(19)?),
        last_login_at: opt_ts(r.get(20)?),
    })
}

fn session_from_row(r: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        tenant: r.get(0)?,
        session_hash: r.get(1)?,
        user_id: r.get(2)?,
        created_at: from_ts(r.get(3)?),
        last_seen_at: from_ts(r.get(4)?),
        absolute_expires_at: from_ts(r.get(5)?),
        csrf_hash: r.get(6)?,
        source_ip: r.get(7)?,
    })
}

/// Reads an audit row. Malformed content is kept as far as possible so that
/// verification reports it as a chain break instead of failing to read.
fn audit_from_row(r: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    let recorded: String = r.get(1)?;
    let action: String = r.get(5)?;
    let resources: String = r.get(8)?;
    let outcome: String = r.get(9)?;
    let details: String = r.get(10)?;
    Ok(AuditRecord {
        entry: AuditEntry {
            seq: r.get::<_, i64>(0)?.max(0) as u64,
            time: DateTime::parse_from_rfc3339(&recorded)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| bad_row("recorded"))?,
            tenant: r.get(2)?,
            actor: r.get(3)?,
            role: r.get(4)?,
            action: action.parse().map_err(|_| bad_row("action"))?,
            source_ip: r.get(6)?,
            patient: r.get(7)?,
            resources: serde_json::from_str(&resources).map_err(|_| bad_row("resources"))?,
            outcome: outcome.parse().map_err(|_| bad_row("outcome"))?,
            details: serde_json::from_str(&details).map_err(|_| bad_row("details"))?,
        },
        prev_hash: r.get(11)?,
        hash: r.get(12)?,
    })
}

/// Embedded SQLite implementation of [`SecurityStore`].
pub struct SqliteSecurityStore {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteSecurityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteSecurityStore")
    }
}

impl SqliteSecurityStore {
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
        Ok(SqliteSecurityStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Consistent snapshot of the database into `dest` (online backup).
    pub fn snapshot_to(&self, dest: &Path) -> Result<()> {
        crate::backup::sqlite_snapshot(&self.conn(), dest)
    }

    /// Runs `PRAGMA integrity_check`; true when the database is sound.
    pub fn integrity_check(&self) -> Result<bool> {
        let r: String = self
            .conn()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        Ok(r == "ok")
    }
}

fn user_params(u: &UserRecord) -> Vec<Box<dyn rusqlite::ToSql>> {
    vec![
        Box::new(u.username.clone()),
        Box::new(u.display_name.clone()),
        Box::new(u.role.code()),
        Box::new(u.is_admin),
        Box::new(u.patient.clone()),
        Box::new(u.password_hash.clone()),
        Box::new(ts(u.password_changed_at)),
        Box::new(u.password_rotation),
        Box::new(u.must_change_password),
        Box::new(u.totp_secret.as_ref().map(hex::encode)),
        Box::new(u.totp_enabled),
        Box::new(u.totp_last_step.map(|s| s as i64)),
        Box::new(u.status.code()),
        Box::new(u.status_reason.clone()),
        Box::new(u.expires_at.map(ts)),
        Box::new(u.failed_count as i64),
        Box::new(u.locked_until.map(ts)),
        Box::new(u.last_login_at.map(ts)),
    ]
}

impl SecurityStore for SqliteSecurityStore {
    fn create_user(&self, u: &UserRecord) -> Result<()> {
        let c = self.conn();
        let r = c.execute(
            schema::INSERT_USER,
            params![
                u.tenant,
                u.user_id,
                u.username,
                u.display_name,
                u.role.code(),
                u.is_admin,
                u.patient,
                u.password_hash,
                ts(u.password_changed_at),
                u.password_rotation,
                u.must_change_password,
                u.totp_secret.as_ref().map(hex::encode),
                u.totp_enabled,
                u.totp_last_step.map(|s| s as i64),
                u.status.code(),
                u.status_reason,
                u.expires_at.map(ts),
                u.failed_count as i64,
                u.locked_until.map(ts),
                ts(u.created_at),
                u.last_login_at.map(ts),
            ],
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(SecurityError::new(
                    ErrorKind::Conflict,
                    "この利用者名は既に使われています",
                    format!(
                        "user name '{}' already exists in tenant '{}'",
                        u.username, u.tenant
                    ),
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn get_user(&self, tenant: &str, user_id: &str) -> Result<Option<UserRecord>> {
        Ok(self
            .conn()
            .query_row(
                &schema::select_user_by_id(),
                params![tenant, user_id],
                user_from_row,
            )
            .optional()?)
    }

    fn find_user_by_name(&self, tenant: &str, username: &str) -> Result<Option<UserRecord>> {
        Ok(self
            .conn()
            .query_row(
                &schema::select_user_by_name(),
                params![tenant, username.to_lowercase()],
                user_from_row,
            )
            .optional()?)
    }

    fn list_users(&self, tenant: &str) -> Result<Vec<UserRecord>> {
        let c = self.conn();
        let mut st = c.prepare(&schema::select_users())?;
        let rows = st.query_map(params![tenant], user_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn list_tenants(&self) -> Result<Vec<String>> {
        let c = self.conn();
        let mut st = c.prepare(schema::SELECT_TENANTS)?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn update_user(&self, u: &UserRecord) -> Result<()> {
        let mut p = user_params(u);
        p.push(Box::new(u.tenant.clone()));
        p.push(Box::new(u.user_id.clone()));
        let n = self.conn().execute(
            schema::UPDATE_USER,
            rusqlite::params_from_iter(p.iter().map(|b| b.as_ref())),
        )?;
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
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(schema::INCREMENT_FAILURES, params![tenant, user_id])?;
        let n: i64 = tx.query_row(schema::SELECT_FAILURES, params![tenant, user_id], |r| {
            r.get(0)
        })?;
        tx.commit()?;
        Ok(n.clamp(0, u32::MAX as i64) as u32)
    }

    fn set_locked_until(
        &self,
        tenant: &str,
        user_id: &str,
        until: Option<DateTime<Utc>>,
    ) -> Result<()> {
        self.conn().execute(
            schema::SET_LOCKED_UNTIL,
            params![until.map(ts), tenant, user_id],
        )?;
        Ok(())
    }

    fn advance_totp_step(&self, tenant: &str, user_id: &str, step: u64) -> Result<bool> {
        let s = step as i64;
        Ok(self
            .conn()
            .execute(schema::ADVANCE_TOTP_STEP, params![s, tenant, user_id, s])?
            == 1)
    }

    fn add_password_history(
        &self,
        tenant: &str,
        user_id: &str,
        hash: &str,
        at: DateTime<Utc>,
    ) -> Result<()> {
        self.conn().execute(
            schema::INSERT_PASSWORD_HISTORY,
            params![tenant, user_id, ts(at), hash],
        )?;
        Ok(())
    }

    fn recent_password_hashes(&self, tenant: &str, user_id: &str, n: usize) -> Result<Vec<String>> {
        let c = self.conn();
        let mut st = c.prepare(schema::SELECT_PASSWORD_HISTORY)?;
        let rows = st.query_map(params![tenant, user_id, n as i64], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn replace_recovery_codes(
        &self,
        tenant: &str,
        user_id: &str,
        hashes: &[String],
        at: DateTime<Utc>,
    ) -> Result<()> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        tx.execute(schema::DELETE_RECOVERY_CODES, params![tenant, user_id])?;
        for h in hashes {
            tx.execute(
                schema::INSERT_RECOVERY_CODE,
                params![tenant, user_id, h, ts(at)],
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
        Ok(self.conn().execute(
            schema::USE_RECOVERY_CODE,
            params![ts(at), tenant, user_id, hash],
        )? == 1)
    }

    fn remaining_recovery_codes(&self, tenant: &str, user_id: &str) -> Result<u32> {
        let n: i64 = self.conn().query_row(
            schema::COUNT_RECOVERY_CODES,
            params![tenant, user_id],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u32)
    }

    fn insert_session(&self, s: &SessionRecord) -> Result<()> {
        self.conn().execute(
            schema::INSERT_SESSION,
            params![
                s.tenant,
                s.session_hash,
                s.user_id,
                ts(s.created_at),
                ts(s.last_seen_at),
                ts(s.absolute_expires_at),
                s.csrf_hash,
                s.source_ip
            ],
        )?;
        Ok(())
    }

    fn get_session(&self, tenant: &str, session_hash: &str) -> Result<Option<SessionRecord>> {
        Ok(self
            .conn()
            .query_row(
                schema::SELECT_SESSION,
                params![tenant, session_hash],
                session_from_row,
            )
            .optional()?)
    }

    fn touch_session(&self, tenant: &str, session_hash: &str, at: DateTime<Utc>) -> Result<()> {
        self.conn()
            .execute(schema::TOUCH_SESSION, params![ts(at), tenant, session_hash])?;
        Ok(())
    }

    fn delete_session(&self, tenant: &str, session_hash: &str) -> Result<bool> {
        Ok(self
            .conn()
            .execute(schema::DELETE_SESSION, params![tenant, session_hash])?
            > 0)
    }

    fn delete_user_sessions(&self, tenant: &str, user_id: &str) -> Result<u64> {
        Ok(self
            .conn()
            .execute(schema::DELETE_USER_SESSIONS, params![tenant, user_id])? as u64)
    }

    fn count_user_sessions(&self, tenant: &str, user_id: &str) -> Result<u64> {
        let n: i64 =
            self.conn()
                .query_row(schema::COUNT_USER_SESSIONS, params![tenant, user_id], |r| {
                    r.get(0)
                })?;
        Ok(n.max(0) as u64)
    }

    fn purge_sessions(&self, now: DateTime<Utc>, idle_before: DateTime<Utc>) -> Result<u64> {
        Ok(self.conn().execute(
            schema::DELETE_EXPIRED_SESSIONS,
            params![ts(now), ts(idle_before)],
        )? as u64)
    }

    fn insert_break_glass(&self, tenant: &str, user_id: &str, g: &BreakGlassGrant) -> Result<()> {
        self.conn().execute(
            schema::INSERT_BREAK_GLASS,
            params![
                tenant,
                g.id,
                user_id,
                g.reason,
                g.patient,
                ts(g.granted_at),
                ts(g.expires_at)
            ],
        )?;
        Ok(())
    }

    fn active_break_glass(
        &self,
        tenant: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<BreakGlassGrant>> {
        Ok(self
            .conn()
            .query_row(
                schema::SELECT_ACTIVE_BREAK_GLASS,
                params![tenant, user_id, ts(now), ts(now)],
                |r| {
                    Ok(BreakGlassGrant {
                        id: r.get(0)?,
                        reason: r.get(1)?,
                        patient: r.get(2)?,
                        granted_at: from_ts(r.get(3)?),
                        expires_at: from_ts(r.get(4)?),
                    })
                },
            )
            .optional()?)
    }

    fn unreviewed_break_glass(&self, tenant: &str) -> Result<Vec<BreakGlassRecord>> {
        let c = self.conn();
        let mut st = c.prepare(schema::SELECT_UNREVIEWED_BREAK_GLASS)?;
        let rows = st.query_map(params![tenant], |r| {
            Ok(BreakGlassRecord {
                tenant: tenant.to_string(),
                user_id: r.get(1)?,
                grant: BreakGlassGrant {
                    id: r.get(0)?,
                    reason: r.get(2)?,
                    patient: r.get(3)?,
                    granted_at: from_ts(r.get(4)?),
                    expires_at: from_ts(r.get(5)?),
                },
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn review_break_glass(
        &self,
        tenant: &str,
        grant_id: &str,
        reviewer: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        Ok(self.conn().execute(
            schema::REVIEW_BREAK_GLASS,
            params![ts(at), reviewer, tenant, grant_id],
        )? == 1)
    }

    fn append_audit(&self, e: NewAuditEntry) -> Result<AuditRecord> {
        if !e.details.is_object() {
            return Err(SecurityError::invalid(
                "監査記録の詳細はJSONオブジェクトにしてください",
                "audit details must be a JSON object",
            ));
        }
        let mut c = self.conn();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let last = tx
            .query_row(
                &schema::select_audit_last(),
                params![e.tenant],
                audit_from_row,
            )
            .optional()?;
        let seq = last.as_ref().map(|l| l.entry.seq + 1).unwrap_or(1);
        let rec = audit::seal(e.into_entry(seq), last.as_ref());
        let en = &rec.entry;
        tx.execute(
            schema::INSERT_AUDIT,
            params![
                en.tenant,
                en.seq as i64,
                audit::format_time(en.time),
                en.actor,
                en.role,
                en.action.code(),
                en.source_ip,
                en.patient,
                serde_json::to_string(&en.resources).map_err(SecurityError::storage)?,
                en.outcome.code(),
                en.details.to_string(),
                rec.prev_hash,
                rec.hash,
            ],
        )?;
        tx.commit()?;
        Ok(rec)
    }

    fn audit_range(&self, tenant: &str, from_seq: u64, limit: u32) -> Result<Vec<AuditRecord>> {
        let c = self.conn();
        let mut st = c.prepare(&schema::select_audit_range())?;
        let rows = st.query_map(
            params![tenant, from_seq as i64, limit as i64],
            audit_from_row,
        )?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| {
            SecurityError::integrity(
                "アクセスログに読み取れない記録があります(改ざんの可能性があります)",
                format!("unreadable audit row: {e}"),
            )
        })
    }

    fn audit_head(&self, tenant: &str) -> Result<Option<AuditRecord>> {
        Ok(self
            .conn()
            .query_row(
                &schema::select_audit_last(),
                params![tenant],
                audit_from_row,
            )
            .optional()?)
    }

    fn last_audit_of(
        &self,
        tenant: &str,
        action: AuditAction,
        outcome: AuditOutcome,
    ) -> Result<Option<AuditRecord>> {
        Ok(self
            .conn()
            .query_row(
                &schema::select_audit_last_of_action(),
                params![tenant, action.code(), outcome.code()],
                audit_from_row,
            )
            .optional()?)
    }

    fn search_audit(&self, tenant: &str, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let c = self.conn();
        let mut st = c.prepare(&schema::search_audit())?;
        let limit = q.limit.unwrap_or(1000).min(10_000) as i64;
        let rows = st.query_map(
            params![
                tenant,
                q.patient,
                q.actor,
                q.action.map(|a| a.code()),
                q.from.map(audit::format_time),
                q.to.map(audit::format_time),
                limit
            ],
            audit_from_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}

impl JtiRegistry for SqliteSecurityStore {
    fn record_jti(
        &self,
        tenant: &str,
        client_id: &str,
        jti: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<bool> {
        let c = self.conn();
        // An assertion expires at most 5 minutes after it is presented, so ids
        // expiring well before this one belong to assertions refused by `exp`.
        c.execute(schema::DELETE_EXPIRED_JTI, params![ts(expires_at) - 1800])?;
        Ok(c.execute(
            schema::INSERT_JTI,
            params![tenant, client_id, jti, ts(expires_at)],
        )? == 1)
    }
}
