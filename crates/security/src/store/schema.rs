//! All SQL of the security store, in one place.
//!
//! The statements are written to run unchanged on SQLite and PostgreSQL:
//! standard types (`TEXT`, `BIGINT`, `BOOLEAN`), numbered placeholders
//! `$1…$n` used in increasing order of first appearance (SQLite binds them
//! positionally), `ON CONFLICT DO NOTHING`, no `AUTOINCREMENT`, no
//! `INSERT OR …`. Times are Unix seconds (`BIGINT`) except the audit time,
//! which is RFC 3339 text with microseconds because it is part of the hashed
//! canonical form. Every primary key starts with `tenant`.
//!
//! Only the append-only guard of the audit table differs per engine:
//! [`SQLITE_AUDIT_GUARD`] here and [`POSTGRES_AUDIT_GUARD`] for the
//! PostgreSQL store.

/// Tables and indexes (idempotent).
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sec_user (
        tenant TEXT NOT NULL,
        user_id TEXT NOT NULL,
        username TEXT NOT NULL,
        display_name TEXT NOT NULL,
        role TEXT NOT NULL,
        is_admin BOOLEAN NOT NULL,
        patient_ref TEXT,
        password_hash TEXT NOT NULL,
        password_changed_at BIGINT NOT NULL,
        password_rotation BOOLEAN NOT NULL,
        must_change_password BOOLEAN NOT NULL,
        totp_secret TEXT,
        totp_enabled BOOLEAN NOT NULL,
        totp_last_step BIGINT,
        status TEXT NOT NULL,
        status_reason TEXT,
        expires_at BIGINT,
        failed_count BIGINT NOT NULL,
        locked_until BIGINT,
        created_at BIGINT NOT NULL,
        last_login_at BIGINT,
        PRIMARY KEY (tenant, user_id),
        UNIQUE (tenant, username)
    )",
    "CREATE TABLE IF NOT EXISTS sec_password_history (
        tenant TEXT NOT NULL,
        user_id TEXT NOT NULL,
        changed_at BIGINT NOT NULL,
        password_hash TEXT NOT NULL,
        PRIMARY KEY (tenant, user_id, password_hash)
    )",
    "CREATE TABLE IF NOT EXISTS sec_recovery_code (
        tenant TEXT NOT NULL,
        user_id TEXT NOT NULL,
        code_hash TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        used_at BIGINT,
        PRIMARY KEY (tenant, user_id, code_hash)
    )",
    "CREATE TABLE IF NOT EXISTS sec_session (
        tenant TEXT NOT NULL,
        session_hash TEXT NOT NULL,
        user_id TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        last_seen_at BIGINT NOT NULL,
        absolute_expires_at BIGINT NOT NULL,
        csrf_hash TEXT NOT NULL,
        source_ip TEXT,
        PRIMARY KEY (tenant, session_hash)
    )",
    "CREATE INDEX IF NOT EXISTS sec_session_user ON sec_session (tenant, user_id)",
    "CREATE TABLE IF NOT EXISTS sec_jti (
        tenant TEXT NOT NULL,
        client_id TEXT NOT NULL,
        jti TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (tenant, client_id, jti)
    )",
    "CREATE TABLE IF NOT EXISTS sec_auth_code (
        tenant TEXT NOT NULL,
        code_hash TEXT NOT NULL,
        client_id TEXT NOT NULL,
        redirect_uri TEXT NOT NULL,
        user_id TEXT NOT NULL,
        scope TEXT NOT NULL,
        patient_ref TEXT,
        code_challenge TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (tenant, code_hash)
    )",
    "CREATE TABLE IF NOT EXISTS sec_webauthn (
        tenant TEXT NOT NULL,
        credential_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        public_key TEXT NOT NULL,
        sign_count BIGINT NOT NULL,
        user_verified BOOLEAN NOT NULL,
        label TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (tenant, credential_id)
    )",
    "CREATE INDEX IF NOT EXISTS sec_webauthn_user ON sec_webauthn (tenant, user_id)",
    "CREATE TABLE IF NOT EXISTS sec_break_glass (
        tenant TEXT NOT NULL,
        grant_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        patient_ref TEXT,
        granted_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        reviewed_at BIGINT,
        reviewed_by TEXT,
        PRIMARY KEY (tenant, grant_id)
    )",
    "CREATE INDEX IF NOT EXISTS sec_break_glass_user ON sec_break_glass (tenant, user_id)",
    "CREATE TABLE IF NOT EXISTS sec_audit (
        tenant TEXT NOT NULL,
        seq BIGINT NOT NULL,
        recorded TEXT NOT NULL,
        actor TEXT NOT NULL,
        role TEXT,
        action TEXT NOT NULL,
        source_ip TEXT,
        patient_ref TEXT,
        resources TEXT NOT NULL,
        outcome TEXT NOT NULL,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (tenant, seq)
    )",
    "CREATE INDEX IF NOT EXISTS sec_audit_patient ON sec_audit (tenant, patient_ref)",
    "CREATE INDEX IF NOT EXISTS sec_audit_actor ON sec_audit (tenant, actor)",
    "CREATE INDEX IF NOT EXISTS sec_audit_action ON sec_audit (tenant, action, seq)",
];

/// SQLite: the audit table refuses UPDATE and DELETE.
pub const SQLITE_AUDIT_GUARD: &[&str] = &[
    "CREATE TRIGGER IF NOT EXISTS sec_audit_no_update BEFORE UPDATE ON sec_audit
     BEGIN SELECT RAISE(ABORT, 'sec_audit is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS sec_audit_no_delete BEFORE DELETE ON sec_audit
     BEGIN SELECT RAISE(ABORT, 'sec_audit is append-only'); END",
];

/// PostgreSQL equivalent of [`SQLITE_AUDIT_GUARD`] (for the PostgreSQL store;
/// additionally the application role should get only INSERT and SELECT on
/// `sec_audit`).
pub const POSTGRES_AUDIT_GUARD: &[&str] = &[
    "CREATE OR REPLACE FUNCTION sec_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
     $$ BEGIN RAISE EXCEPTION 'sec_audit is append-only'; END $$",
    "DROP TRIGGER IF EXISTS sec_audit_no_change ON sec_audit",
    "CREATE TRIGGER sec_audit_no_change BEFORE UPDATE OR DELETE ON sec_audit
     FOR EACH ROW EXECUTE FUNCTION sec_audit_append_only()",
];

/// Column list of user rows, in the order of [`INSERT_USER`].
const USER_SELECT: &str = "SELECT tenant, user_id, username, display_name, role, is_admin, \
     patient_ref, password_hash, password_changed_at, password_rotation, must_change_password, \
     totp_secret, totp_enabled, totp_last_step, status, status_reason, expires_at, failed_count, \
     locked_until, created_at, last_login_at FROM sec_user";

pub const INSERT_USER: &str = "INSERT INTO sec_user (tenant, user_id, username, display_name, role, \
     is_admin, patient_ref, password_hash, password_changed_at, password_rotation, \
     must_change_password, totp_secret, totp_enabled, totp_last_step, status, status_reason, \
     expires_at, failed_count, locked_until, created_at, last_login_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)";

/// Updates every mutable column; keyed by (tenant, user_id) at the end.
pub const UPDATE_USER: &str = "UPDATE sec_user SET username = $1, display_name = $2, role = $3, \
     is_admin = $4, patient_ref = $5, password_hash = $6, password_changed_at = $7, \
     password_rotation = $8, must_change_password = $9, totp_secret = $10, totp_enabled = $11, \
     totp_last_step = $12, status = $13, status_reason = $14, expires_at = $15, failed_count = $16, \
     locked_until = $17, last_login_at = $18 WHERE tenant = $19 AND user_id = $20";

pub fn select_user_by_id() -> String {
    format!("{USER_SELECT} WHERE tenant = $1 AND user_id = $2")
}
pub fn select_user_by_name() -> String {
    format!("{USER_SELECT} WHERE tenant = $1 AND username = $2")
}
pub fn select_users() -> String {
    format!("{USER_SELECT} WHERE tenant = $1 ORDER BY username")
}

pub const SELECT_TENANTS: &str = "SELECT DISTINCT tenant FROM sec_user ORDER BY tenant";
pub const SELECT_AUDIT_TENANTS: &str = "SELECT DISTINCT tenant FROM sec_audit ORDER BY tenant";

/// Atomic failure counter increment.
pub const INCREMENT_FAILURES: &str =
    "UPDATE sec_user SET failed_count = failed_count + 1 WHERE tenant = $1 AND user_id = $2";
pub const SELECT_FAILURES: &str =
    "SELECT failed_count FROM sec_user WHERE tenant = $1 AND user_id = $2";
pub const SET_LOCKED_UNTIL: &str =
    "UPDATE sec_user SET locked_until = $1 WHERE tenant = $2 AND user_id = $3";
/// Atomic TOTP step advance: succeeds only when the step is newer.
pub const ADVANCE_TOTP_STEP: &str = "UPDATE sec_user SET totp_last_step = $1 WHERE tenant = $2 \
     AND user_id = $3 AND (totp_last_step IS NULL OR totp_last_step < $1)";

pub const INSERT_PASSWORD_HISTORY: &str =
    "INSERT INTO sec_password_history (tenant, user_id, changed_at, \
     password_hash) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
pub const SELECT_PASSWORD_HISTORY: &str = "SELECT password_hash FROM sec_password_history \
     WHERE tenant = $1 AND user_id = $2 ORDER BY changed_at DESC LIMIT $3";

pub const DELETE_RECOVERY_CODES: &str =
    "DELETE FROM sec_recovery_code WHERE tenant = $1 AND user_id = $2";
pub const INSERT_RECOVERY_CODE: &str =
    "INSERT INTO sec_recovery_code (tenant, user_id, code_hash, \
     created_at, used_at) VALUES ($1, $2, $3, $4, NULL)";
pub const USE_RECOVERY_CODE: &str = "UPDATE sec_recovery_code SET used_at = $1 \
     WHERE tenant = $2 AND user_id = $3 AND code_hash = $4 AND used_at IS NULL";
pub const COUNT_RECOVERY_CODES: &str = "SELECT COUNT(*) FROM sec_recovery_code \
     WHERE tenant = $1 AND user_id = $2 AND used_at IS NULL";

pub const INSERT_SESSION: &str = "INSERT INTO sec_session (tenant, session_hash, user_id, created_at, \
     last_seen_at, absolute_expires_at, csrf_hash, source_ip) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
pub const SELECT_SESSION: &str = "SELECT tenant, session_hash, user_id, created_at, last_seen_at, \
     absolute_expires_at, csrf_hash, source_ip FROM sec_session WHERE tenant = $1 AND session_hash = $2";
pub const TOUCH_SESSION: &str =
    "UPDATE sec_session SET last_seen_at = $1 WHERE tenant = $2 AND session_hash = $3";
pub const DELETE_SESSION: &str = "DELETE FROM sec_session WHERE tenant = $1 AND session_hash = $2";
pub const DELETE_USER_SESSIONS: &str = "DELETE FROM sec_session WHERE tenant = $1 AND user_id = $2";
pub const DELETE_EXPIRED_SESSIONS: &str =
    "DELETE FROM sec_session WHERE absolute_expires_at <= $1 OR last_seen_at <= $2";
pub const COUNT_USER_SESSIONS: &str =
    "SELECT COUNT(*) FROM sec_session WHERE tenant = $1 AND user_id = $2";

pub const INSERT_JTI: &str = "INSERT INTO sec_jti (tenant, client_id, jti, expires_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
pub const DELETE_EXPIRED_JTI: &str = "DELETE FROM sec_jti WHERE expires_at < $1";

pub const INSERT_AUTH_CODE: &str = "INSERT INTO sec_auth_code (tenant, code_hash, client_id, \
     redirect_uri, user_id, scope, patient_ref, code_challenge, expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
pub const SELECT_AUTH_CODE: &str = "SELECT tenant, code_hash, client_id, redirect_uri, user_id, \
     scope, patient_ref, code_challenge, expires_at FROM sec_auth_code \
     WHERE tenant = $1 AND code_hash = $2";
pub const DELETE_AUTH_CODE: &str = "DELETE FROM sec_auth_code WHERE tenant = $1 AND code_hash = $2";
pub const INSERT_WEBAUTHN: &str = "INSERT INTO sec_webauthn (tenant, credential_id, user_id, \
     public_key, sign_count, user_verified, label, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
pub const SELECT_WEBAUTHN: &str = "SELECT tenant, user_id, credential_id, public_key, sign_count, \
     user_verified, label, created_at FROM sec_webauthn WHERE tenant = $1 AND user_id = $2 \
     ORDER BY created_at, credential_id";
/// Only a larger counter is stored (or 0 for authenticators without one): a concurrent or
/// replayed assertion with the same counter loses.
pub const ADVANCE_WEBAUTHN_COUNT: &str = "UPDATE sec_webauthn SET sign_count = $1 \
     WHERE tenant = $2 AND credential_id = $3 AND (sign_count < $1 OR ($1 = 0 AND sign_count = 0))";
pub const DELETE_EXPIRED_AUTH_CODES: &str = "DELETE FROM sec_auth_code WHERE expires_at < $1";

pub const INSERT_BREAK_GLASS: &str =
    "INSERT INTO sec_break_glass (tenant, grant_id, user_id, reason, \
     patient_ref, granted_at, expires_at, reviewed_at, reviewed_by) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL)";
pub const SELECT_ACTIVE_BREAK_GLASS: &str = "SELECT grant_id, reason, patient_ref, granted_at, expires_at \
     FROM sec_break_glass WHERE tenant = $1 AND user_id = $2 AND granted_at <= $3 AND expires_at > $3 \
     ORDER BY expires_at DESC";
pub const SELECT_UNREVIEWED_BREAK_GLASS: &str = "SELECT user_id, grant_id, reason, patient_ref, \
     granted_at, expires_at FROM sec_break_glass WHERE tenant = $1 AND reviewed_at IS NULL \
     ORDER BY granted_at";
/// PostgreSQL only: session lock held while creating the schema.
pub const POSTGRES_SCHEMA_LOCK: &str = "SELECT pg_advisory_lock(hashtext('iryo-security-schema'))";
pub const POSTGRES_SCHEMA_UNLOCK: &str =
    "SELECT pg_advisory_unlock(hashtext('iryo-security-schema'))";
/// PostgreSQL only: serialises appends to one tenant's chain.
pub const POSTGRES_AUDIT_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext($1))";
pub const REVIEW_BREAK_GLASS: &str =
    "UPDATE sec_break_glass SET reviewed_at = $1, reviewed_by = $2 \
     WHERE tenant = $3 AND grant_id = $4 AND reviewed_at IS NULL";

pub const INSERT_AUDIT: &str =
    "INSERT INTO sec_audit (tenant, seq, recorded, actor, role, action, \
     source_ip, patient_ref, resources, outcome, details, prev_hash, hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";
/// Column list of audit rows as read back.
const AUDIT_SELECT: &str = "SELECT seq, recorded, tenant, actor, role, action, source_ip, \
     patient_ref, resources, outcome, details, prev_hash, hash FROM sec_audit";
pub fn select_audit_last() -> String {
    format!("{AUDIT_SELECT} WHERE tenant = $1 ORDER BY seq DESC LIMIT 1")
}
pub fn select_audit_range() -> String {
    format!("{AUDIT_SELECT} WHERE tenant = $1 AND seq >= $2 ORDER BY seq LIMIT $3")
}
pub fn select_audit_last_of_action() -> String {
    format!("{AUDIT_SELECT} WHERE tenant = $1 AND action = $2 AND outcome = $3 ORDER BY seq DESC LIMIT 1")
}
/// Search; NULL parameters mean "any" (the casts give PostgreSQL the
/// parameter types). Times compare as RFC 3339 text (all
/// written in the same fixed UTC format).
pub fn search_audit() -> String {
    format!(
        "{AUDIT_SELECT} WHERE tenant = $1 \
         AND (CAST($2 AS TEXT) IS NULL OR patient_ref = $2) \
         AND (CAST($3 AS TEXT) IS NULL OR actor = $3) \
         AND (CAST($4 AS TEXT) IS NULL OR action = $4) \
         AND (CAST($5 AS TEXT) IS NULL OR recorded >= $5) \
         AND (CAST($6 AS TEXT) IS NULL OR recorded < $6) ORDER BY seq LIMIT $7"
    )
}
