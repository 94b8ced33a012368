//! Persistence of accounts, credentials, sessions, break-glass grants and
//! the audit log.
//!
//! [`SecurityStore`] is the storage interface; [`SqliteSecurityStore`] is the
//! embedded implementation. All SQL is in [`schema`], written to run on both
//! SQLite and PostgreSQL so a PostgreSQL store can reuse it.

mod lite;
mod pg;
pub mod schema;
mod sql;

pub use self::lite::{LiteConn, SqliteSecurityStore};
pub use self::pg::{PgConn, PgSecurityStore};
pub use self::sql::{Conn, SqlSecurityStore};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::audit::{self, AuditAction, AuditEntry, AuditOutcome, AuditRecord};
use crate::authz::BreakGlassGrant;
use crate::error::{ErrorKind, Result, SecurityError};
use crate::roles::Role;

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

/// A SMART authorization code waiting to be exchanged at the token endpoint
/// (the code itself is never stored, only its SHA-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthCodeRecord {
    pub tenant: String,
    pub code_hash: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub user_id: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// Patient in context (patient users).
    pub patient: Option<String>,
    /// PKCE S256 challenge (base64url of SHA-256 of the verifier).
    pub code_challenge: String,
    pub expires_at: DateTime<Utc>,
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
    /// Tenants that have audit entries (including [`crate::report::SYSTEM_TENANT`]).
    fn audit_tenants(&self) -> Result<Vec<String>>;
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

    /// Records a client-assertion `jti` until `expires_at`; false when it was
    /// already recorded (a replay, also across servers sharing the database).
    fn record_assertion_jti(
        &self,
        tenant: &str,
        client_id: &str,
        jti: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<bool>;

    fn insert_auth_code(&self, code: &AuthCodeRecord) -> Result<()>;
    /// Removes and returns an authorization code: of concurrent callers only
    /// one gets it (single use). Expired codes are returned too (the caller
    /// refuses them with a clear reason); codes expired long ago are purged.
    fn take_auth_code(
        &self,
        tenant: &str,
        code_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<AuthCodeRecord>>;

    fn insert_webauthn(&self, c: &crate::webauthn::CredentialRecord) -> Result<()>;
    fn webauthn_credentials(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Vec<crate::webauthn::CredentialRecord>>;
    /// Stores a new signature counter if it is larger (or both are 0); false otherwise.
    fn advance_webauthn_count(&self, tenant: &str, credential_id: &str, count: u32)
        -> Result<bool>;

    /// Appends to the tenant's hash chain atomically; returns the sealed record.
    fn append_audit(&self, entry: NewAuditEntry) -> Result<AuditRecord>;
    /// Appends several entries (e.g. one per resource a search returned) in
    /// one transaction: all or none, one commit.
    fn append_audit_many(&self, entries: Vec<NewAuditEntry>) -> Result<Vec<AuditRecord>> {
        entries.into_iter().map(|e| self.append_audit(e)).collect()
    }
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

pub(crate) fn ts(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

fn from_ts(s: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(s, 0).unwrap_or_default()
}

fn opt_ts(s: Option<i64>) -> Option<DateTime<Utc>> {
    s.map(from_ts)
}

/// Column access shared by the SQLite and PostgreSQL row types, so that
/// rows are decoded by one set of functions.
pub trait Cols {
    // Implemented for the row types of both engines (lite.rs, pg.rs).
    fn text(&self, i: usize) -> Result<String>;
    fn opt_text(&self, i: usize) -> Result<Option<String>>;
    fn int(&self, i: usize) -> Result<i64>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>>;
    fn flag(&self, i: usize) -> Result<bool>;
}

fn bad_row(what: &str) -> SecurityError {
    SecurityError::integrity(
        "保存されたデータの形式が正しくありません(改ざんの可能性があります)",
        format!("malformed stored value in column {what}"),
    )
}

pub(crate) fn user_from(r: &dyn Cols) -> Result<UserRecord> {
    let status = r.text(14)?;
    Ok(UserRecord {
        tenant: r.text(0)?,
        user_id: r.text(1)?,
        username: r.text(2)?,
        display_name: r.text(3)?,
        role: r.text(4)?.parse().map_err(|_| bad_row("role"))?,
        is_admin: r.flag(5)?,
        patient: r.opt_text(6)?,
        password_hash: r.text(7)?,
        password_changed_at: from_ts(r.int(8)?),
        password_rotation: r.flag(9)?,
        must_change_password: r.flag(10)?,
        totp_secret: r
            .opt_text(11)?
            .map(|s| hex::decode(s).map_err(|_| bad_row("totp_secret")))
            .transpose()?,
        totp_enabled: r.flag(12)?,
        totp_last_step: r.opt_int(13)?.map(|v| v.max(0) as u64),
        status: match status.as_str() {
            "active" => AccountStatus::Active,
            "disabled" => AccountStatus::Disabled,
            _ => return Err(bad_row("status")),
        },
        status_reason: r.opt_text(15)?,
        expires_at: opt_ts(r.opt_int(16)?),
        failed_count: r.int(17)?.clamp(0, u32::MAX as i64) as u32,
        locked_until: opt_ts(r.opt_int(18)?),
        created_at: from_ts(r.int(19)?),
        last_login_at: opt_ts(r.opt_int(20)?),
    })
}

pub(crate) fn session_from(r: &dyn Cols) -> Result<SessionRecord> {
    Ok(SessionRecord {
        tenant: r.text(0)?,
        session_hash: r.text(1)?,
        user_id: r.text(2)?,
        created_at: from_ts(r.int(3)?),
        last_seen_at: from_ts(r.int(4)?),
        absolute_expires_at: from_ts(r.int(5)?),
        csrf_hash: r.text(6)?,
        source_ip: r.opt_text(7)?,
    })
}

/// Reads an audit row. A row that cannot be decoded is reported as an
/// integrity error (it was changed outside iryo).
pub(crate) fn audit_from(r: &dyn Cols) -> Result<AuditRecord> {
    Ok(AuditRecord {
        entry: AuditEntry {
            seq: r.int(0)?.max(0) as u64,
            time: DateTime::parse_from_rfc3339(&r.text(1)?)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| bad_row("recorded"))?,
            tenant: r.text(2)?,
            actor: r.text(3)?,
            role: r.opt_text(4)?,
            action: r.text(5)?.parse().map_err(|_| bad_row("action"))?,
            source_ip: r.opt_text(6)?,
            patient: r.opt_text(7)?,
            resources: serde_json::from_str(&r.text(8)?).map_err(|_| bad_row("resources"))?,
            outcome: r.text(9)?.parse().map_err(|_| bad_row("outcome"))?,
            details: serde_json::from_str(&r.text(10)?).map_err(|_| bad_row("details"))?,
        },
        prev_hash: r.text(11)?,
        hash: r.text(12)?,
    })
}

/// Active grant columns: grant_id, reason, patient_ref, granted_at, expires_at.
pub(crate) fn grant_from(r: &dyn Cols, offset: usize) -> Result<BreakGlassGrant> {
    Ok(BreakGlassGrant {
        id: r.text(offset)?,
        reason: r.text(offset + 1)?,
        patient: r.opt_text(offset + 2)?,
        granted_at: from_ts(r.int(offset + 3)?),
        expires_at: from_ts(r.int(offset + 4)?),
    })
}

/// A bound SQL value, usable by both engines (`ToSql` impls in the engine
/// modules), so each statement's parameter list is written once.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    T(Option<String>),
    I(Option<i64>),
    B(bool),
}

impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Val::T(Some(v.to_string()))
    }
}
impl From<&String> for Val {
    fn from(v: &String) -> Self {
        Val::T(Some(v.clone()))
    }
}
impl From<String> for Val {
    fn from(v: String) -> Self {
        Val::T(Some(v))
    }
}
impl From<&Option<String>> for Val {
    fn from(v: &Option<String>) -> Self {
        Val::T(v.clone())
    }
}
impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Val::I(Some(v))
    }
}
impl From<Option<i64>> for Val {
    fn from(v: Option<i64>) -> Self {
        Val::I(v)
    }
}
impl From<bool> for Val {
    fn from(v: bool) -> Self {
        Val::B(v)
    }
}

/// Mutable user columns in the order of [`schema::UPDATE_USER`] (`$1..$18`).
fn user_mutable(u: &UserRecord) -> Vec<Val> {
    vec![
        (&u.username).into(),
        (&u.display_name).into(),
        u.role.code().into(),
        u.is_admin.into(),
        (&u.patient).into(),
        (&u.password_hash).into(),
        ts(u.password_changed_at).into(),
        u.password_rotation.into(),
        u.must_change_password.into(),
        Val::T(u.totp_secret.as_ref().map(hex::encode)),
        u.totp_enabled.into(),
        Val::I(u.totp_last_step.map(|s| s as i64)),
        u.status.code().into(),
        (&u.status_reason).into(),
        Val::I(u.expires_at.map(ts)),
        (u.failed_count as i64).into(),
        Val::I(u.locked_until.map(ts)),
        Val::I(u.last_login_at.map(ts)),
    ]
}

/// Parameters of [`schema::INSERT_USER`].
pub(crate) fn user_insert_values(u: &UserRecord) -> Vec<Val> {
    let m = user_mutable(u);
    let mut v: Vec<Val> = vec![(&u.tenant).into(), (&u.user_id).into()];
    v.extend(m[..17].iter().cloned());
    v.push(ts(u.created_at).into());
    v.push(m[17].clone());
    v
}

/// Parameters of [`schema::UPDATE_USER`].
pub(crate) fn user_update_values(u: &UserRecord) -> Vec<Val> {
    let mut v = user_mutable(u);
    v.push((&u.tenant).into());
    v.push((&u.user_id).into());
    v
}

/// Parameters of [`schema::INSERT_SESSION`].
pub(crate) fn session_values(s: &SessionRecord) -> Vec<Val> {
    vec![
        (&s.tenant).into(),
        (&s.session_hash).into(),
        (&s.user_id).into(),
        ts(s.created_at).into(),
        ts(s.last_seen_at).into(),
        ts(s.absolute_expires_at).into(),
        (&s.csrf_hash).into(),
        (&s.source_ip).into(),
    ]
}

/// Parameters of [`schema::INSERT_BREAK_GLASS`].
pub(crate) fn break_glass_values(tenant: &str, user_id: &str, g: &BreakGlassGrant) -> Vec<Val> {
    vec![
        tenant.into(),
        (&g.id).into(),
        user_id.into(),
        (&g.reason).into(),
        (&g.patient).into(),
        ts(g.granted_at).into(),
        ts(g.expires_at).into(),
    ]
}

/// Parameters of [`schema::INSERT_AUDIT`].
pub(crate) fn audit_values(rec: &AuditRecord) -> Result<Vec<Val>> {
    let en = &rec.entry;
    Ok(vec![
        (&en.tenant).into(),
        (en.seq as i64).into(),
        audit::format_time(en.time).into(),
        (&en.actor).into(),
        (&en.role).into(),
        en.action.code().into(),
        (&en.source_ip).into(),
        (&en.patient).into(),
        serde_json::to_string(&en.resources)
            .map_err(SecurityError::storage)?
            .into(),
        en.outcome.code().into(),
        en.details.to_string().into(),
        (&rec.prev_hash).into(),
        (&rec.hash).into(),
    ])
}

/// Parameters of [`schema::search_audit`].
pub(crate) fn search_values(tenant: &str, q: &AuditQuery) -> Vec<Val> {
    vec![
        tenant.into(),
        (&q.patient).into(),
        (&q.actor).into(),
        Val::T(q.action.map(|a| a.code().to_string())),
        Val::T(q.from.map(audit::format_time)),
        Val::T(q.to.map(audit::format_time)),
        (q.limit.unwrap_or(1000).min(10_000) as i64).into(),
    ]
}

pub(crate) fn conflict_user(u: &UserRecord) -> SecurityError {
    SecurityError::new(
        ErrorKind::Conflict,
        "この利用者名は既に使われています",
        format!(
            "user name '{}' already exists in tenant '{}'",
            u.username, u.tenant
        ),
    )
}

pub(crate) fn check_details(e: &NewAuditEntry) -> Result<()> {
    if e.details.is_object() {
        Ok(())
    } else {
        Err(SecurityError::invalid(
            "監査記録の詳細はJSONオブジェクトにしてください",
            "audit details must be a JSON object",
        ))
    }
}

pub(crate) fn auth_code_from(r: &dyn Cols) -> Result<AuthCodeRecord> {
    Ok(AuthCodeRecord {
        tenant: r.text(0)?,
        code_hash: r.text(1)?,
        client_id: r.text(2)?,
        redirect_uri: r.text(3)?,
        user_id: r.text(4)?,
        scope: r.text(5)?,
        patient: r.opt_text(6)?,
        code_challenge: r.text(7)?,
        expires_at: from_ts(r.int(8)?),
    })
}

/// A shared store (`Arc<dyn SecurityStore>`, as the server holds it) is a store too, so
/// [`crate::accounts::Accounts`] can run on it.
impl<T: SecurityStore + ?Sized> SecurityStore for std::sync::Arc<T> {
    fn create_user(&self, user: &UserRecord) -> Result<()> {
        (**self).create_user(user)
    }
    fn get_user(&self, tenant: &str, user_id: &str) -> Result<Option<UserRecord>> {
        (**self).get_user(tenant, user_id)
    }
    fn find_user_by_name(&self, tenant: &str, username: &str) -> Result<Option<UserRecord>> {
        (**self).find_user_by_name(tenant, username)
    }
    fn list_users(&self, tenant: &str) -> Result<Vec<UserRecord>> {
        (**self).list_users(tenant)
    }
    fn list_tenants(&self) -> Result<Vec<String>> {
        (**self).list_tenants()
    }
    fn audit_tenants(&self) -> Result<Vec<String>> {
        (**self).audit_tenants()
    }
    fn update_user(&self, user: &UserRecord) -> Result<()> {
        (**self).update_user(user)
    }
    fn record_login_failure(&self, tenant: &str, user_id: &str) -> Result<u32> {
        (**self).record_login_failure(tenant, user_id)
    }
    fn set_locked_until(
        &self,
        tenant: &str,
        user_id: &str,
        until: Option<DateTime<Utc>>,
    ) -> Result<()> {
        (**self).set_locked_until(tenant, user_id, until)
    }
    fn advance_totp_step(&self, tenant: &str, user_id: &str, step: u64) -> Result<bool> {
        (**self).advance_totp_step(tenant, user_id, step)
    }
    fn add_password_history(
        &self,
        tenant: &str,
        user_id: &str,
        hash: &str,
        at: DateTime<Utc>,
    ) -> Result<()> {
        (**self).add_password_history(tenant, user_id, hash, at)
    }
    fn recent_password_hashes(&self, tenant: &str, user_id: &str, n: usize) -> Result<Vec<String>> {
        (**self).recent_password_hashes(tenant, user_id, n)
    }
    fn replace_recovery_codes(
        &self,
        tenant: &str,
        user_id: &str,
        hashes: &[String],
        at: DateTime<Utc>,
    ) -> Result<()> {
        (**self).replace_recovery_codes(tenant, user_id, hashes, at)
    }
    fn use_recovery_code(
        &self,
        tenant: &str,
        user_id: &str,
        hash: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        (**self).use_recovery_code(tenant, user_id, hash, at)
    }
    fn remaining_recovery_codes(&self, tenant: &str, user_id: &str) -> Result<u32> {
        (**self).remaining_recovery_codes(tenant, user_id)
    }
    fn insert_session(&self, s: &SessionRecord) -> Result<()> {
        (**self).insert_session(s)
    }
    fn get_session(&self, tenant: &str, session_hash: &str) -> Result<Option<SessionRecord>> {
        (**self).get_session(tenant, session_hash)
    }
    fn touch_session(&self, tenant: &str, session_hash: &str, at: DateTime<Utc>) -> Result<()> {
        (**self).touch_session(tenant, session_hash, at)
    }
    fn delete_session(&self, tenant: &str, session_hash: &str) -> Result<bool> {
        (**self).delete_session(tenant, session_hash)
    }
    fn delete_user_sessions(&self, tenant: &str, user_id: &str) -> Result<u64> {
        (**self).delete_user_sessions(tenant, user_id)
    }
    fn count_user_sessions(&self, tenant: &str, user_id: &str) -> Result<u64> {
        (**self).count_user_sessions(tenant, user_id)
    }
    fn purge_sessions(&self, now: DateTime<Utc>, idle_before: DateTime<Utc>) -> Result<u64> {
        (**self).purge_sessions(now, idle_before)
    }
    fn insert_break_glass(
        &self,
        tenant: &str,
        user_id: &str,
        grant: &BreakGlassGrant,
    ) -> Result<()> {
        (**self).insert_break_glass(tenant, user_id, grant)
    }
    fn active_break_glass(
        &self,
        tenant: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<BreakGlassGrant>> {
        (**self).active_break_glass(tenant, user_id, now)
    }
    fn unreviewed_break_glass(&self, tenant: &str) -> Result<Vec<BreakGlassRecord>> {
        (**self).unreviewed_break_glass(tenant)
    }
    fn review_break_glass(
        &self,
        tenant: &str,
        grant_id: &str,
        reviewer: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        (**self).review_break_glass(tenant, grant_id, reviewer, at)
    }
    fn record_assertion_jti(
        &self,
        tenant: &str,
        client_id: &str,
        jti: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<bool> {
        (**self).record_assertion_jti(tenant, client_id, jti, expires_at)
    }
    fn insert_auth_code(&self, code: &AuthCodeRecord) -> Result<()> {
        (**self).insert_auth_code(code)
    }
    fn take_auth_code(
        &self,
        tenant: &str,
        code_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<AuthCodeRecord>> {
        (**self).take_auth_code(tenant, code_hash, now)
    }
    fn insert_webauthn(&self, c: &crate::webauthn::CredentialRecord) -> Result<()> {
        (**self).insert_webauthn(c)
    }
    fn webauthn_credentials(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Vec<crate::webauthn::CredentialRecord>> {
        (**self).webauthn_credentials(tenant, user_id)
    }
    fn advance_webauthn_count(
        &self,
        tenant: &str,
        credential_id: &str,
        count: u32,
    ) -> Result<bool> {
        (**self).advance_webauthn_count(tenant, credential_id, count)
    }
    fn append_audit(&self, entry: NewAuditEntry) -> Result<AuditRecord> {
        (**self).append_audit(entry)
    }
    fn append_audit_many(&self, entries: Vec<NewAuditEntry>) -> Result<Vec<AuditRecord>> {
        (**self).append_audit_many(entries)
    }
    fn audit_range(&self, tenant: &str, from_seq: u64, limit: u32) -> Result<Vec<AuditRecord>> {
        (**self).audit_range(tenant, from_seq, limit)
    }
    fn audit_head(&self, tenant: &str) -> Result<Option<AuditRecord>> {
        (**self).audit_head(tenant)
    }
    fn last_audit_of(
        &self,
        tenant: &str,
        action: AuditAction,
        outcome: AuditOutcome,
    ) -> Result<Option<AuditRecord>> {
        (**self).last_audit_of(tenant, action, outcome)
    }
    fn search_audit(&self, tenant: &str, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        (**self).search_audit(tenant, q)
    }
    fn verify_audit_chain(
        &self,
        tenant: &str,
    ) -> Result<std::result::Result<u64, audit::ChainBreak>> {
        (**self).verify_audit_chain(tenant)
    }
}

pub(crate) fn webauthn_from(r: &dyn Cols) -> Result<crate::webauthn::CredentialRecord> {
    Ok(crate::webauthn::CredentialRecord {
        tenant: r.text(0)?,
        user_id: r.text(1)?,
        credential: crate::webauthn::Credential {
            id: r.text(2)?,
            public_key: hex::decode(r.text(3)?).map_err(|_| bad_row("public_key"))?,
            sign_count: r.int(4)?.clamp(0, u32::MAX as i64) as u32,
            user_verified: r.flag(5)?,
        },
        label: r.text(6)?,
        created_at: from_ts(r.int(7)?),
    })
}
