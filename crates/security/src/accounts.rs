//! Account lifecycle and the login flow on top of a [`SecurityStore`].
//!
//! Login: [`Accounts::login_password`] (rate limit, lockout, argon2id) →
//! [`LoginStep`] telling what is still needed (password change, TOTP
//! enrolment, TOTP or recovery code) → [`Accounts::start_session`]. Every
//! step, success or failure, is written to the audit log.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::json;
use std::sync::OnceLock;

use crate::audit::{AuditAction, AuditOutcome, AuditRecord};
use crate::authz::{authorize_admin, request_break_glass, BreakGlassGrant, Principal};
use crate::error::{ErrorKind, Result, SecurityError};
use crate::password::{self, LockoutPolicy, LoginThrottle, PasswordPolicy};
use crate::roles::Role;
use crate::session::{self, NewSession, SessionPolicy};
use crate::store::{AccountStatus, NewAuditEntry, SecurityStore, SessionRecord, UserRecord};
use crate::totp;
use crate::webauthn;

/// Settings of the account service.
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    pub password: PasswordPolicy,
    pub lockout: LockoutPolicy,
    pub session: SessionPolicy,
    /// Accounts without a login for this long are disabled (default 90 days).
    pub dormant_after: Duration,
    /// Staff must use a second factor (default true).
    pub require_totp_for_staff: bool,
    /// Issuer shown in authenticator apps.
    pub totp_issuer: String,
    /// Server key (32 bytes, kept outside the database, e.g. a key file made
    /// by [`crate::backup::generate_key_file`]) that encrypts TOTP secrets at
    /// rest. `None` stores them unencrypted (tests only).
    pub secret_key: Option<[u8; 32]>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            password: PasswordPolicy::default(),
            lockout: LockoutPolicy::default(),
            session: SessionPolicy::default(),
            dormant_after: Duration::days(90),
            require_totp_for_staff: true,
            totp_issuer: "iryo".into(),
            secret_key: None,
        }
    }
}

/// Who performs an administrative action.
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    /// A logged-in user (must have administrator rights in the tenant).
    User(&'a Principal),
    /// An operator running host-side commands (`iryo user add`); trusted by
    /// access to the host, recorded in the log under this name.
    Host(&'a str),
}

impl Actor<'_> {
    fn check(&self, tenant: &str) -> Result<()> {
        match self {
            Actor::User(p) => authorize_admin(p, tenant).into_result().map(|_| ()),
            Actor::Host(_) => Ok(()),
        }
    }
    fn name(&self) -> String {
        match self {
            Actor::User(p) => p.subject.clone(),
            Actor::Host(n) => format!("host:{n}"),
        }
    }
    fn role(&self) -> Option<String> {
        match self {
            Actor::User(p) => p.role.map(|r| r.code().to_string()),
            Actor::Host(_) => None,
        }
    }
}

/// A new account.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub tenant: String,
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub is_admin: bool,
    pub patient: Option<String>,
    /// `None`: a random one-time password is generated and returned; it
    /// must be changed at first login.
    pub password: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Result of creating an account.
#[derive(Debug, Clone)]
pub struct CreatedUser {
    pub user: UserRecord,
    /// The generated one-time password, shown once.
    pub one_time_password: Option<String>,
}

/// What the user must do next after the password was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoginStep {
    /// Initial or expired password: change it first.
    ChangePassword,
    /// Staff without a second factor: enrol TOTP now.
    EnrolSecondFactor,
    /// Enter a TOTP or recovery code.
    SecondFactor,
    /// Nothing more; start the session.
    Complete,
}

/// Proof that all login steps succeeded; only this crate can make one, and
/// [`Accounts::start_session`] requires it, so a caller cannot skip the
/// second factor by mistake.
#[derive(Debug, PartialEq, Eq)]
pub struct LoginTicket {
    tenant: String,
    user_id: String,
    second_factor: bool,
}

impl LoginTicket {
    pub fn tenant(&self) -> &str {
        &self.tenant
    }
    pub fn user_id(&self) -> &str {
        &self.user_id
    }
    /// Whether a second factor was verified.
    pub fn second_factor(&self) -> bool {
        self.second_factor
    }
}

/// Result of the password step.
#[derive(Debug)]
pub struct PasswordLogin {
    pub user: UserRecord,
    pub step: LoginStep,
    /// Present when `step` is [`LoginStep::Complete`].
    pub ticket: Option<LoginTicket>,
}

/// One row of the account report (checklist: accounts, roles, administrator
/// rights, 2FA, last login).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountReportRow {
    pub user_id: String,
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub role_ja: String,
    pub is_admin: bool,
    pub status: AccountStatus,
    pub status_reason: Option<String>,
    pub two_factor: bool,
    pub last_login_at: Option<DateTime<Utc>>,
    pub password_changed_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub locked: bool,
    /// Days since the last login (or creation when never logged in).
    pub days_unused: i64,
}

/// The account service.
pub struct Accounts<S: SecurityStore> {
    store: S,
    config: SecurityConfig,
    throttle: LoginThrottle,
}

fn generic_login_failure() -> SecurityError {
    SecurityError::new(
        ErrorKind::Unauthenticated,
        "利用者名またはパスワードが正しくありません",
        "wrong user name or password",
    )
}

fn not_found() -> SecurityError {
    SecurityError::new(
        ErrorKind::NotFound,
        "利用者が見つかりません",
        "user not found",
    )
}

/// Hash verified when the user does not exist, so that timing does not tell
/// which user names exist.
fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| password::hash_password("iryo-dummy-password-for-timing").unwrap_or_default())
}

fn valid_username(u: &str) -> bool {
    let n = u.chars().count();
    (1..=64).contains(&n)
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

impl<S: SecurityStore> Accounts<S> {
    pub fn new(store: S, config: SecurityConfig) -> Self {
        Accounts {
            store,
            config,
            throttle: LoginThrottle::default(),
        }
    }

    /// Replaces the login throttle (tests, tuning).
    pub fn with_throttle(mut self, throttle: LoginThrottle) -> Self {
        self.throttle = throttle;
        self
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn config(&self) -> &SecurityConfig {
        &self.config
    }

    /// Appends to the audit log.
    pub fn audit(&self, e: NewAuditEntry) -> Result<AuditRecord> {
        self.store.append_audit(e)
    }

    #[allow(clippy::too_many_arguments)]
    fn log(
        &self,
        now: DateTime<Utc>,
        tenant: &str,
        actor: &str,
        role: Option<String>,
        action: AuditAction,
        outcome: AuditOutcome,
        source_ip: Option<&str>,
        details: serde_json::Value,
    ) -> Result<AuditRecord> {
        let mut e = NewAuditEntry::new(now, tenant, actor, action, outcome);
        e.role = role;
        e.source_ip = source_ip.map(str::to_string);
        e.details = details;
        self.store.append_audit(e)
    }

    fn user_by_name(&self, tenant: &str, username: &str) -> Result<UserRecord> {
        self.store
            .find_user_by_name(tenant, username)?
            .ok_or_else(not_found)
    }

    fn user_by_id(&self, tenant: &str, user_id: &str) -> Result<UserRecord> {
        self.store.get_user(tenant, user_id)?.ok_or_else(not_found)
    }

    /// First start of a tenant: when it has no account yet, creates the
    /// administrator `admin` with a random one-time password (returned once,
    /// to be printed on the console) that must be changed at first login.
    /// Returns `None` when the tenant already has accounts.
    pub fn bootstrap_admin(&self, tenant: &str, now: DateTime<Utc>) -> Result<Option<CreatedUser>> {
        if !self.store.list_users(tenant)?.is_empty() {
            return Ok(None);
        }
        self.add_user(
            Actor::Host("bootstrap"),
            NewUser {
                tenant: tenant.into(),
                username: "admin".into(),
                display_name: "初期管理者".into(),
                role: Role::SystemAdministrator,
                is_admin: true,
                patient: None,
                password: None,
                expires_at: None,
            },
            now,
        )
        .map(Some)
    }

    /// Creates an account (administrators only).
    pub fn add_user(
        &self,
        actor: Actor<'_>,
        new: NewUser,
        now: DateTime<Utc>,
    ) -> Result<CreatedUser> {
        actor.check(&new.tenant)?;
        let username = new.username.trim().to_lowercase();
        if new.tenant.is_empty() || !valid_username(&username) {
            return Err(SecurityError::invalid(
                "利用者名は64文字以内の英数字と . _ - @ で指定してください",
                "user name must be 1-64 characters of letters, digits and . _ - @",
            ));
        }
        if new.role == Role::Patient && new.patient.is_none() {
            return Err(SecurityError::invalid(
                "患者アカウントには患者IDの指定が必要です",
                "a patient account needs its Patient id",
            ));
        }
        let (pw, generated) = match new.password {
            Some(p) => (p, false),
            None => (password::generate_password(), true),
        };
        let outcome = self
            .config
            .password
            .check(&pw, &[&username, &new.display_name, &new.tenant])?;
        let hash = password::hash_password(&pw)?;
        let user = UserRecord {
            tenant: new.tenant.clone(),
            user_id: crate::random_token(12),
            username,
            display_name: new.display_name,
            role: new.role,
            is_admin: new.is_admin,
            patient: new.patient,
            password_hash: hash.clone(),
            password_changed_at: now,
            password_rotation: outcome.rotation_required_without_2fa,
            // Passwords set by someone else are one-time passwords.
            must_change_password: true,
            totp_secret: None,
            totp_enabled: false,
            totp_last_step: None,
            status: AccountStatus::Active,
            status_reason: None,
            expires_at: new.expires_at,
            failed_count: 0,
            locked_until: None,
            created_at: now,
            last_login_at: None,
        };
        self.store.create_user(&user)?;
        self.store
            .add_password_history(&user.tenant, &user.user_id, &hash, now)?;
        self.log_admin(&actor, &user.tenant, now, json!({"op": "add", "user": user.username, "role": user.role.code(), "admin": user.is_admin}))?;
        Ok(CreatedUser {
            user,
            one_time_password: generated.then_some(pw),
        })
    }

    fn set_status(
        &self,
        actor: Actor<'_>,
        tenant: &str,
        username: &str,
        status: AccountStatus,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<UserRecord> {
        actor.check(tenant)?;
        let mut u = self.user_by_name(tenant, username)?;
        u.status = status;
        u.status_reason = Some(reason.to_string());
        if status == AccountStatus::Active {
            u.failed_count = 0;
            u.locked_until = None;
        }
        self.store.update_user(&u)?;
        if status == AccountStatus::Disabled {
            self.store.delete_user_sessions(tenant, &u.user_id)?;
        }
        self.log_admin(
            &actor,
            tenant,
            now,
            json!({"op": status.code(), "user": u.username, "reason": reason}),
        )?;
        Ok(u)
    }

    /// Disables an account and ends its sessions.
    pub fn disable_user(
        &self,
        actor: Actor<'_>,
        tenant: &str,
        username: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<UserRecord> {
        self.set_status(
            actor,
            tenant,
            username,
            AccountStatus::Disabled,
            reason,
            now,
        )
    }

    /// Re-enables an account (also clears a lockout).
    pub fn enable_user(
        &self,
        actor: Actor<'_>,
        tenant: &str,
        username: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<UserRecord> {
        self.set_status(actor, tenant, username, AccountStatus::Active, reason, now)
    }

    /// Sets or clears the expiry date of an account.
    pub fn set_expiry(
        &self,
        actor: Actor<'_>,
        tenant: &str,
        username: &str,
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<UserRecord> {
        actor.check(tenant)?;
        let mut u = self.user_by_name(tenant, username)?;
        u.expires_at = expires_at;
        self.store.update_user(&u)?;
        self.log_admin(&actor, tenant, now, json!({"op": "expiry", "user": u.username, "expires_at": expires_at.map(|t| t.to_rfc3339())}))?;
        Ok(u)
    }

    /// Changes role and administrator rights.
    pub fn set_role(
        &self,
        actor: Actor<'_>,
        tenant: &str,
        username: &str,
        role: Role,
        is_admin: bool,
        now: DateTime<Utc>,
    ) -> Result<UserRecord> {
        actor.check(tenant)?;
        let mut u = self.user_by_name(tenant, username)?;
        let before = (u.role, u.is_admin);
        u.role = role;
        u.is_admin = is_admin;
        self.store.update_user(&u)?;
        self.store.delete_user_sessions(tenant, &u.user_id)?;
        self.log_admin(&actor, tenant, now, json!({"op": "role", "user": u.username, "from": [before.0.code(), before.1], "to": [role.code(), is_admin]}))?;
        Ok(u)
    }

    /// Clears a user's second factor (lost device) so that TOTP is enrolled
    /// again at the next login; recovery codes are revoked and sessions end.
    /// Administrators only; logged.
    pub fn reset_totp(
        &self,
        actor: Actor<'_>,
        tenant: &str,
        username: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<UserRecord> {
        actor.check(tenant)?;
        let mut u = self.user_by_name(tenant, username)?;
        u.totp_secret = None;
        u.totp_enabled = false;
        self.store.update_user(&u)?;
        self.store
            .replace_recovery_codes(tenant, &u.user_id, &[], now)?;
        self.store.delete_user_sessions(tenant, &u.user_id)?;
        self.log_admin(
            &actor,
            tenant,
            now,
            json!({"op": "reset-totp", "user": u.username, "reason": reason}),
        )?;
        Ok(u)
    }

    /// Disables accounts not used for [`SecurityConfig::dormant_after`]
    /// (counting from creation when never used). Returns the user names.
    pub fn disable_dormant(&self, tenant: &str, now: DateTime<Utc>) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for u in self.store.list_users(tenant)? {
            if u.status != AccountStatus::Active {
                continue;
            }
            let last = u.last_login_at.unwrap_or(u.created_at);
            if now - last >= self.config.dormant_after {
                self.set_status(
                    Actor::Host("lifecycle"),
                    tenant,
                    &u.username,
                    AccountStatus::Disabled,
                    &format!(
                        "{}日間未使用のため自動無効化 / unused for {} days",
                        self.config.dormant_after.num_days(),
                        self.config.dormant_after.num_days()
                    ),
                    now,
                )?;
                done.push(u.username);
            }
        }
        Ok(done)
    }

    /// Periodic job (e.g. hourly): disables dormant accounts in every tenant
    /// and deletes expired sessions. Returns (tenant, user name) of the
    /// accounts disabled and the number of sessions removed.
    pub fn housekeeping(&self, now: DateTime<Utc>) -> Result<(Vec<(String, String)>, u64)> {
        let mut disabled = Vec::new();
        for t in self.store.list_tenants()? {
            for u in self.disable_dormant(&t, now)? {
                disabled.push((t.clone(), u));
            }
        }
        let purged = self
            .store
            .purge_sessions(now, now - self.config.session.idle_timeout)?;
        Ok((disabled, purged))
    }

    /// Every account of the tenant with role, administrator rights, 2FA
    /// state and last login.
    pub fn account_report(
        &self,
        tenant: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<AccountReportRow>> {
        Ok(self
            .store
            .list_users(tenant)?
            .into_iter()
            .map(|u| AccountReportRow {
                days_unused: (now - u.last_login_at.unwrap_or(u.created_at)).num_days(),
                locked: u.locked_until.is_some_and(|t| t > now),
                user_id: u.user_id,
                username: u.username,
                display_name: u.display_name,
                role: u.role,
                role_ja: u.role.label_ja().to_string(),
                is_admin: u.is_admin,
                status: u.status,
                status_reason: u.status_reason,
                two_factor: u.totp_enabled,
                last_login_at: u.last_login_at,
                password_changed_at: u.password_changed_at,
                expires_at: u.expires_at,
            })
            .collect())
    }

    fn ticket(&self, tenant: &str, user_id: &str, second_factor: bool) -> LoginTicket {
        LoginTicket {
            tenant: tenant.to_string(),
            user_id: user_id.to_string(),
            second_factor,
        }
    }

    /// Logs a successful administrative action on accounts.
    fn log_admin(
        &self,
        actor: &Actor<'_>,
        tenant: &str,
        now: DateTime<Utc>,
        details: serde_json::Value,
    ) -> Result<AuditRecord> {
        self.log(
            now,
            tenant,
            &actor.name(),
            actor.role(),
            AuditAction::UserAdmin,
            AuditOutcome::Success,
            None,
            details,
        )
    }

    /// Counts a failed factor and locks the account with the growing delay.
    fn register_failure(&self, tenant: &str, user_id: &str, now: DateTime<Utc>) -> Result<()> {
        let n = self.store.record_login_failure(tenant, user_id)?;
        let delay = self.config.lockout.delay_after(n);
        if delay > Duration::zero() {
            self.store
                .set_locked_until(tenant, user_id, Some(now + delay))?;
        }
        Ok(())
    }

    /// Refuses (and logs) a second-factor attempt on a throttled or locked account.
    fn second_factor_gate(
        &self,
        u: &UserRecord,
        source_ip: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let err = match self.throttle.check(&u.tenant, &u.username, source_ip, now) {
            Err(e) => Some(("rate-limited", e)),
            Ok(()) => u
                .locked_until
                .filter(|t| *t > now)
                .map(|until| ("locked", password::throttled(until - now))),
        };
        if let Some((why, e)) = err {
            self.log(
                now,
                &u.tenant,
                &u.user_id,
                Some(u.role.code().into()),
                AuditAction::LoginFailed,
                AuditOutcome::Denied,
                Some(source_ip),
                json!({ "reason": why }),
            )?;
            return Err(e);
        }
        self.usable(u, now)
    }

    /// Counts and logs a failed second factor.
    fn second_factor_failed(
        &self,
        u: &UserRecord,
        source_ip: &str,
        now: DateTime<Utc>,
        why: &str,
    ) -> Result<()> {
        self.register_failure(&u.tenant, &u.user_id, now)?;
        self.log(
            now,
            &u.tenant,
            &u.user_id,
            Some(u.role.code().into()),
            AuditAction::LoginFailed,
            AuditOutcome::Denied,
            Some(source_ip),
            json!({ "reason": why }),
        )?;
        Ok(())
    }

    /// Clears the failure counter after a successful second factor.
    fn clear_failures(&self, tenant: &str, user_id: &str) -> Result<()> {
        let mut u = self.user_by_id(tenant, user_id)?;
        if u.failed_count != 0 || u.locked_until.is_some() {
            u.failed_count = 0;
            u.locked_until = None;
            self.store.update_user(&u)?;
        }
        Ok(())
    }

    fn seal_totp(&self, tenant: &str, user_id: &str, secret: &[u8]) -> Result<Vec<u8>> {
        match &self.config.secret_key {
            Some(k) => {
                crate::secretbox::seal(k, &format!("totp\u{0}{tenant}\u{0}{user_id}"), secret)
            }
            None => Ok(secret.to_vec()),
        }
    }

    fn open_totp(&self, u: &UserRecord) -> Result<Option<Vec<u8>>> {
        match (&u.totp_secret, &self.config.secret_key) {
            (None, _) => Ok(None),
            (Some(s), Some(k)) => {
                crate::secretbox::open(k, &format!("totp\u{0}{}\u{0}{}", u.tenant, u.user_id), s)
                    .map(Some)
            }
            (Some(s), None) => Ok(Some(s.clone())),
        }
    }

    /// What the user must do after the password was accepted.
    pub fn next_step(&self, u: &UserRecord, now: DateTime<Utc>) -> LoginStep {
        let change_due = self.config.password.change_due(
            u.password_rotation,
            u.totp_enabled,
            u.password_changed_at,
            now,
        );
        if u.must_change_password || change_due {
            LoginStep::ChangePassword
        } else if u.totp_enabled || self.has_passkey(u) {
            LoginStep::SecondFactor
        } else if self.config.require_totp_for_staff && u.role.is_staff() {
            LoginStep::EnrolSecondFactor
        } else {
            LoginStep::Complete
        }
    }

    fn usable(&self, u: &UserRecord, now: DateTime<Utc>) -> Result<()> {
        if u.status != AccountStatus::Active {
            return Err(SecurityError::new(
                ErrorKind::Forbidden,
                "このアカウントは無効です",
                "account disabled",
            ));
        }
        if u.expires_at.is_some_and(|e| e <= now) {
            return Err(SecurityError::new(
                ErrorKind::Forbidden,
                "このアカウントは有効期限切れです",
                "account expired",
            ));
        }
        Ok(())
    }

    /// First login step: user name and password. Throttled per account and
    /// per source address; repeated failures lock the account with a growing
    /// delay. Errors do not reveal whether the user name exists.
    pub fn login_password(
        &self,
        tenant: &str,
        username: &str,
        pw: &str,
        source_ip: &str,
        now: DateTime<Utc>,
    ) -> Result<PasswordLogin> {
        let uname = username.trim().to_lowercase();
        let fail = |user: &str,
                    role: Option<String>,
                    why: &str,
                    err: SecurityError|
         -> Result<PasswordLogin> {
            self.log(
                now,
                tenant,
                user,
                role,
                AuditAction::LoginFailed,
                AuditOutcome::Denied,
                Some(source_ip),
                json!({"reason": why}),
            )?;
            Err(err)
        };
        if let Err(e) = self.throttle.check(tenant, &uname, source_ip, now) {
            return fail(&uname, None, "rate-limited", e);
        }
        let Some(mut u) = self.store.find_user_by_name(tenant, &uname)? else {
            let _ = password::verify_password(dummy_hash(), pw);
            return fail(&uname, None, "unknown-user", generic_login_failure());
        };
        let role = Some(u.role.code().to_string());
        if let Some(until) = u.locked_until.filter(|t| *t > now) {
            return fail(&u.user_id, role, "locked", password::throttled(until - now));
        }
        if !password::verify_password(&u.password_hash, pw) {
            self.register_failure(tenant, &u.user_id, now)?;
            return fail(&u.user_id, role, "wrong-password", generic_login_failure());
        }
        if let Err(e) = self.usable(&u, now) {
            let why = e.message_en.clone();
            return fail(&u.user_id, role, &why, e);
        }
        if password::needs_rehash(&u.password_hash) {
            u.password_hash = password::hash_password(pw)?;
        }
        u.failed_count = 0;
        u.locked_until = None;
        self.store.update_user(&u)?;
        let step = self.next_step(&u, now);
        let ticket = (step == LoginStep::Complete).then(|| LoginTicket {
            tenant: tenant.to_string(),
            user_id: u.user_id.clone(),
            second_factor: false,
        });
        Ok(PasswordLogin {
            user: u,
            step,
            ticket,
        })
    }

    /// Changes a password; the current one is required. Applies the policy,
    /// history and common-password checks, clears "must change", and ends
    /// other sessions.
    pub fn change_password(
        &self,
        tenant: &str,
        user_id: &str,
        current: &str,
        new_password: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.change_password_from(tenant, user_id, current, new_password, None, now)
    }

    /// [`Self::change_password`] logging the address the request came from.
    pub fn change_password_from(
        &self,
        tenant: &str,
        user_id: &str,
        current: &str,
        new_password: &str,
        source_ip: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut u = self.user_by_id(tenant, user_id)?;
        self.usable(&u, now)?;
        if !password::verify_password(&u.password_hash, current) {
            self.log(
                now,
                tenant,
                user_id,
                Some(u.role.code().into()),
                AuditAction::PasswordChange,
                AuditOutcome::Denied,
                source_ip,
                json!({"reason": "wrong current password"}),
            )?;
            return Err(generic_login_failure());
        }
        let outcome = self
            .config
            .password
            .check(new_password, &[&u.username, &u.display_name, tenant])?;
        let history =
            self.store
                .recent_password_hashes(tenant, user_id, self.config.password.history)?;
        self.config
            .password
            .check_reuse(new_password, history.iter().map(String::as_str))?;
        let hash = password::hash_password(new_password)?;
        u.password_hash = hash.clone();
        u.password_changed_at = now;
        u.password_rotation = outcome.rotation_required_without_2fa;
        u.must_change_password = false;
        self.store.update_user(&u)?;
        self.store
            .add_password_history(tenant, user_id, &hash, now)?;
        self.store.delete_user_sessions(tenant, user_id)?;
        self.log(
            now,
            tenant,
            user_id,
            Some(u.role.code().into()),
            AuditAction::PasswordChange,
            AuditOutcome::Success,
            source_ip,
            json!({}),
        )?;
        Ok(())
    }

    /// Starts (or restarts) TOTP enrolment: a new secret is stored but not
    /// active until [`Self::confirm_totp`].
    pub fn begin_totp_enrolment(&self, tenant: &str, user_id: &str) -> Result<totp::TotpEnrolment> {
        let mut u = self.user_by_id(tenant, user_id)?;
        if u.totp_enabled {
            return Err(SecurityError::new(
                ErrorKind::Conflict,
                "二要素認証は既に設定されています",
                "TOTP already enabled; reset it first",
            ));
        }
        let e = totp::enrol(
            &format!("{} ({tenant})", self.config.totp_issuer),
            &u.username,
        )?;
        u.totp_secret = Some(self.seal_totp(tenant, user_id, &e.secret)?);
        u.totp_last_step = None;
        self.store.update_user(&u)?;
        Ok(e)
    }

    /// Confirms enrolment with a first code; enables TOTP and returns fresh
    /// recovery codes (shown once) and, the code being a verified second
    /// factor, a login ticket.
    pub fn confirm_totp(
        &self,
        tenant: &str,
        user_id: &str,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<(Vec<String>, LoginTicket)> {
        self.confirm_totp_from(tenant, user_id, code, None, now)
    }

    /// [`Self::confirm_totp`] logging the address the request came from.
    pub fn confirm_totp_from(
        &self,
        tenant: &str,
        user_id: &str,
        code: &str,
        source_ip: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(Vec<String>, LoginTicket)> {
        let mut u = self.user_by_id(tenant, user_id)?;
        let secret = self.open_totp(&u)?.ok_or_else(|| {
            SecurityError::invalid(
                "二要素認証の登録が開始されていません",
                "TOTP enrolment not started",
            )
        })?;
        let step = totp::verify(&secret, code, now, u.totp_last_step)?;
        u.totp_enabled = true;
        u.totp_last_step = Some(step);
        self.store.update_user(&u)?;
        let (codes, hashes) = totp::generate_recovery_codes();
        self.store
            .replace_recovery_codes(tenant, user_id, &hashes, now)?;
        self.log(
            now,
            tenant,
            user_id,
            Some(u.role.code().into()),
            AuditAction::TotpEnrol,
            AuditOutcome::Success,
            source_ip,
            json!({}),
        )?;
        Ok((codes, self.ticket(tenant, user_id, true)))
    }

    /// Verifies a TOTP code at login. A code of an already used time step
    /// is refused (also under concurrency, via an atomic step update).
    pub fn verify_totp(
        &self,
        tenant: &str,
        user_id: &str,
        code: &str,
        source_ip: &str,
        now: DateTime<Utc>,
    ) -> Result<LoginTicket> {
        let u = self.user_by_id(tenant, user_id)?;
        self.second_factor_gate(&u, source_ip, now)?;
        let secret = match (self.open_totp(&u)?, u.totp_enabled) {
            (Some(s), true) => s,
            _ => {
                return Err(SecurityError::invalid(
                    "二要素認証が設定されていません",
                    "TOTP not enabled",
                ))
            }
        };
        let r = totp::verify(&secret, code, now, u.totp_last_step).and_then(|step| {
            if self.store.advance_totp_step(tenant, user_id, step)? {
                Ok(())
            } else {
                Err(SecurityError::new(
                    ErrorKind::Replay,
                    "この確認コードは既に使用されています",
                    "TOTP step already used",
                ))
            }
        });
        if let Err(e) = r {
            self.second_factor_failed(&u, source_ip, now, &e.message_en)?;
            return Err(e);
        }
        self.clear_failures(tenant, user_id)?;
        Ok(self.ticket(tenant, user_id, true))
    }

    /// Uses a one-time recovery code instead of TOTP. Returns how many are
    /// left and a login ticket.
    pub fn use_recovery_code(
        &self,
        tenant: &str,
        user_id: &str,
        code: &str,
        source_ip: &str,
        now: DateTime<Utc>,
    ) -> Result<(u32, LoginTicket)> {
        let u = self.user_by_id(tenant, user_id)?;
        let role = Some(u.role.code().to_string());
        self.second_factor_gate(&u, source_ip, now)?;
        if !self
            .store
            .use_recovery_code(tenant, user_id, &totp::hash_recovery_code(code), now)?
        {
            self.second_factor_failed(&u, source_ip, now, "bad recovery code")?;
            return Err(SecurityError::new(
                ErrorKind::Unauthenticated,
                "リカバリーコードが正しくないか、既に使用されています",
                "recovery code wrong or already used",
            ));
        }
        self.clear_failures(tenant, user_id)?;
        let left = self.store.remaining_recovery_codes(tenant, user_id)?;
        self.log(
            now,
            tenant,
            user_id,
            role,
            AuditAction::Login,
            AuditOutcome::Success,
            Some(source_ip),
            json!({"second_factor": "recovery-code", "remaining": left}),
        )?;
        Ok((left, self.ticket(tenant, user_id, true)))
    }

    /// Starts a session after all login steps succeeded. Any session id the
    /// browser presented before login is deleted (session fixation).
    pub fn start_session(
        &self,
        ticket: LoginTicket,
        previous_session_id: Option<&str>,
        source_ip: &str,
        now: DateTime<Utc>,
    ) -> Result<NewSession> {
        let (tenant, user_id) = (ticket.tenant.as_str(), ticket.user_id.as_str());
        let mut u = self.user_by_id(tenant, user_id)?;
        self.usable(&u, now)?;
        let step = self.next_step(&u, now);
        let complete = step == LoginStep::Complete
            || (step == LoginStep::SecondFactor && ticket.second_factor);
        if !complete {
            return Err(SecurityError::new(
                ErrorKind::Forbidden,
                "ログイン手続きが完了していません",
                "login steps not completed",
            ));
        }
        if let Some(old) = previous_session_id {
            self.store
                .delete_session(tenant, &session::hash_secret(old))?;
        }
        let mut s =
            session::new_session(tenant, user_id, Some(source_ip), &self.config.session, now);
        if let Some(k) = &self.config.secret_key {
            // derivable again from the id, so web pages can render it
            s.csrf_token = session::derive_csrf_token(k, &s.id);
            s.record.csrf_hash = session::hash_secret(&s.csrf_token);
        }
        self.store.insert_session(&s.record)?;
        u.last_login_at = Some(now);
        self.store.update_user(&u)?;
        self.log(
            now,
            tenant,
            user_id,
            Some(u.role.code().into()),
            AuditAction::Login,
            AuditOutcome::Success,
            Some(source_ip),
            json!({"two_factor": u.totp_enabled}),
        )?;
        Ok(s)
    }

    /// Validates a session id from a cookie and refreshes its idle timer.
    /// Returns the session and a [`Principal`] (with any active
    /// break-glass grant) for [`crate::authz::authorize`].
    pub fn validate_session(
        &self,
        tenant: &str,
        session_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(SessionRecord, Principal)> {
        let invalid = || {
            SecurityError::new(
                ErrorKind::Unauthenticated,
                "ログインしてください",
                "no valid session",
            )
        };
        let h = session::hash_secret(session_id);
        let s = self.store.get_session(tenant, &h)?.ok_or_else(invalid)?;
        if let Err(e) = session::check_timeouts(&s, &self.config.session, now) {
            self.store.delete_session(tenant, &h)?;
            return Err(e);
        }
        let u = self
            .store
            .get_user(tenant, &s.user_id)?
            .ok_or_else(invalid)?;
        if let Err(e) = self.usable(&u, now) {
            self.store.delete_session(tenant, &h)?;
            return Err(e);
        }
        self.store.touch_session(tenant, &h, now)?;
        let principal = Principal {
            tenant: tenant.to_string(),
            subject: u.user_id.clone(),
            role: Some(u.role),
            is_admin: u.is_admin,
            scopes: None,
            patient: u.patient.clone(),
            break_glass: self.store.active_break_glass(tenant, &u.user_id, now)?,
        };
        Ok((s, principal))
    }

    /// Whether the user has registered a passkey (WebAuthn credential).
    pub fn has_passkey(&self, u: &UserRecord) -> bool {
        self.store
            .webauthn_credentials(&u.tenant, &u.user_id)
            .is_ok_and(|v| !v.is_empty())
    }

    fn webauthn_key(&self) -> Result<&[u8; 32]> {
        self.config.secret_key.as_ref().ok_or_else(|| {
            SecurityError::new(
                ErrorKind::Crypto,
                "サーバー鍵が設定されていません",
                "WebAuthn needs the server key (SecurityConfig::secret_key)",
            )
        })
    }

    /// A challenge for a WebAuthn ceremony (`register` or `login`) of a user.
    pub fn webauthn_challenge(
        &self,
        tenant: &str,
        user_id: &str,
        purpose: &str,
        now: DateTime<Utc>,
    ) -> Result<String> {
        Ok(webauthn::new_challenge(
            self.webauthn_key()?,
            purpose,
            tenant,
            user_id,
            now,
        ))
    }

    /// Checks a challenge of `purpose` and records it as used (once, across servers).
    fn use_challenge(
        &self,
        tenant: &str,
        user_id: &str,
        purpose: &str,
        challenge: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let key = self.webauthn_key()?;
        let exp = webauthn::check_challenge(key, purpose, tenant, user_id, challenge, now)?;
        if !self
            .store
            .record_assertion_jti(tenant, "webauthn", challenge, exp)?
        {
            return Err(SecurityError::new(
                ErrorKind::Replay,
                "このパスキーの応答は既に使用されています",
                "WebAuthn challenge already used",
            ));
        }
        Ok(())
    }

    /// Registers a passkey for a logged-in user (ES256, attestation `none`); logged as a
    /// second-factor enrolment.
    #[allow(clippy::too_many_arguments)]
    pub fn register_webauthn(
        &self,
        tenant: &str,
        user_id: &str,
        rp: &webauthn::RelyingParty,
        client_data_json: &[u8],
        attestation_object: &[u8],
        label: &str,
        source_ip: &str,
        now: DateTime<Utc>,
    ) -> Result<webauthn::CredentialRecord> {
        let u = self.user_by_id(tenant, user_id)?;
        self.usable(&u, now)?;
        let role = Some(u.role.code().to_string());
        let r = webauthn::verify_registration(rp, client_data_json, attestation_object, |c| {
            self.use_challenge(tenant, user_id, "register", c, now)
        })
        .and_then(|credential| {
            let rec = webauthn::CredentialRecord {
                tenant: tenant.to_string(),
                user_id: user_id.to_string(),
                credential,
                label: label.chars().take(100).collect(),
                created_at: now,
            };
            self.store.insert_webauthn(&rec)?;
            Ok(rec)
        });
        let (outcome, details) = match &r {
            Ok(rec) => (
                AuditOutcome::Success,
                json!({"second_factor": "webauthn", "credential": rec.credential.id}),
            ),
            Err(e) => (
                AuditOutcome::Denied,
                json!({"second_factor": "webauthn", "reason": e.message_en}),
            ),
        };
        self.log(
            now,
            tenant,
            user_id,
            role,
            AuditAction::TotpEnrol,
            outcome,
            Some(source_ip),
            details,
        )?;
        r
    }

    /// Second factor at login with a passkey: the assertion must verify with one of the
    /// user's credentials, and its counter must grow. Failures count towards the lockout.
    #[allow(clippy::too_many_arguments)]
    pub fn verify_webauthn(
        &self,
        tenant: &str,
        user_id: &str,
        rp: &webauthn::RelyingParty,
        credential_id: &str,
        client_data_json: &[u8],
        authenticator_data: &[u8],
        signature: &[u8],
        source_ip: &str,
        now: DateTime<Utc>,
    ) -> Result<LoginTicket> {
        let u = self.user_by_id(tenant, user_id)?;
        self.second_factor_gate(&u, source_ip, now)?;
        let r = self
            .store
            .webauthn_credentials(tenant, user_id)?
            .into_iter()
            .find(|c| c.credential.id == credential_id)
            .ok_or_else(|| {
                SecurityError::new(
                    ErrorKind::Unauthenticated,
                    "このパスキーは登録されていません",
                    "WebAuthn: unknown credential for this user",
                )
            })
            .and_then(|c| {
                let n = webauthn::verify_assertion(
                    rp,
                    &c.credential,
                    client_data_json,
                    authenticator_data,
                    signature,
                    |ch| self.use_challenge(tenant, user_id, "login", ch, now),
                )?;
                if self
                    .store
                    .advance_webauthn_count(tenant, credential_id, n)?
                {
                    Ok(())
                } else {
                    Err(SecurityError::new(
                        ErrorKind::Replay,
                        "パスキーの署名カウンターが増えていません",
                        "WebAuthn: signature counter did not increase",
                    ))
                }
            });
        if let Err(e) = r {
            self.second_factor_failed(&u, source_ip, now, &e.message_en)?;
            return Err(e);
        }
        self.clear_failures(tenant, user_id)?;
        Ok(self.ticket(tenant, user_id, true))
    }

    /// Ends one session.
    pub fn logout(&self, tenant: &str, session_id: &str, now: DateTime<Utc>) -> Result<()> {
        self.logout_from(tenant, session_id, None, now)
    }

    /// Ends one session, logging the address the request came from (default:
    /// the address of the login).
    pub fn logout_from(
        &self,
        tenant: &str,
        session_id: &str,
        source_ip: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let h = session::hash_secret(session_id);
        if let Some(s) = self.store.get_session(tenant, &h)? {
            self.store.delete_session(tenant, &h)?;
            self.log(
                now,
                tenant,
                &s.user_id,
                None,
                AuditAction::Logout,
                AuditOutcome::Success,
                source_ip.or(s.source_ip.as_deref()),
                json!({"session_minutes": (now - s.created_at).num_minutes()}),
            )?;
        }
        Ok(())
    }

    /// Ends every session of a user (the user themself or an administrator).
    pub fn revoke_all_sessions(
        &self,
        actor: Actor<'_>,
        tenant: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        self.revoke_all_sessions_from(actor, tenant, user_id, None, now)
    }

    /// [`Self::revoke_all_sessions`] logging the address the request came from.
    pub fn revoke_all_sessions_from(
        &self,
        actor: Actor<'_>,
        tenant: &str,
        user_id: &str,
        source_ip: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let own = matches!(actor, Actor::User(p) if p.subject == user_id && p.tenant == tenant);
        if !own {
            actor.check(tenant)?;
        }
        let n = self.store.delete_user_sessions(tenant, user_id)?;
        self.log(
            now,
            tenant,
            &actor.name(),
            actor.role(),
            AuditAction::SessionRevoke,
            AuditOutcome::Success,
            source_ip,
            json!({"user_id": user_id, "sessions": n}),
        )?;
        Ok(n)
    }

    /// Breaks the glass for a logged-in clinical professional: reason
    /// required, time-limited, stored for administrator review and logged.
    pub fn break_glass(
        &self,
        principal: &Principal,
        reason: &str,
        patient: Option<&str>,
        duration: Duration,
        source_ip: &str,
        now: DateTime<Utc>,
    ) -> Result<BreakGlassGrant> {
        let g = match request_break_glass(principal, reason, patient, duration, now) {
            Ok(g) => g,
            Err(e) => {
                self.log(
                    now,
                    &principal.tenant,
                    &principal.subject,
                    principal.role.map(|r| r.code().into()),
                    AuditAction::BreakGlass,
                    AuditOutcome::Denied,
                    Some(source_ip),
                    json!({"reason": reason, "error": e.message_en}),
                )?;
                return Err(e);
            }
        };
        self.store
            .insert_break_glass(&principal.tenant, &principal.subject, &g)?;
        let mut e = NewAuditEntry::new(
            now,
            &principal.tenant,
            &principal.subject,
            AuditAction::BreakGlass,
            AuditOutcome::Success,
        );
        e.role = principal.role.map(|r| r.code().into());
        e.source_ip = Some(source_ip.into());
        e.patient = g.patient.clone();
        e.details =
            json!({"reason": g.reason, "grant_id": g.id, "expires_at": g.expires_at.to_rfc3339()});
        self.store.append_audit(e)?;
        Ok(g)
    }
}
