//! Host-side security commands (issue 4): `iryo user`, `iryo token issue`, `iryo audit verify`,
//! `iryo security report`, `iryo backup`, `iryo restore`, and the security setup of `serve`.
//!
//! The security store lives next to the FHIR store: `<data>/security.db` for SQLite, the same
//! PostgreSQL database (its own `sec_*` tables) with `--database`. The server key that signs
//! access tokens and seals TOTP seeds is `<data>/security.key` (or `--security-key`), created
//! with mode 0600 at first use. Everything here is blocking (the PostgreSQL client is the
//! blocking one): call it from `spawn_blocking`.

use anyhow::{bail, Context as _};
use chrono::Utc;
use clap::Subcommand;
use iryo_security::accounts::{Accounts, Actor, NewUser, SecurityConfig};
use iryo_security::audit::{AuditAction, AuditOutcome};
use iryo_security::backup;
use iryo_security::report::SYSTEM_TENANT;
use iryo_security::roles::Role;
use iryo_security::scopes::ScopeSet;
use iryo_security::store::{NewAuditEntry, PgSecurityStore, SecurityStore, SqliteSecurityStore};
use iryo_security::token::{TokenRequest, TokenService};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::StoreArgs;

/// Where the security data and key are.
#[derive(clap::Args, Clone)]
pub struct SecArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Server key file (32 bytes) signing tokens and sealing TOTP seeds; default <data>/security.key.
    #[arg(long, env = "IRYO_SECURITY_KEY")]
    pub security_key: Option<PathBuf>,
}

impl SecArgs {
    fn key_path(&self) -> PathBuf {
        self.security_key
            .clone()
            .unwrap_or_else(|| self.store.data.join("security.key"))
    }
}

#[derive(Subcommand)]
pub enum SecCmd {
    /// Accounts: add, list, disable.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Access tokens for integrations and tests.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// The hash-chained access log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// 令和7年度チェックリストの報告.
    Security {
        #[command(subcommand)]
        cmd: ReportCmd,
    },
    /// Encrypted backup of the data directory (SQLite) while the server runs.
    Backup {
        #[command(flatten)]
        sec: SecArgs,
        /// Directory receiving the encrypted container.
        #[arg(long)]
        to: PathBuf,
        /// Backup key file (created if missing; keep it apart from the backups).
        #[arg(long, default_value = "./iryo-backup.key")]
        key: PathBuf,
        /// Generations to keep.
        #[arg(long, default_value_t = 7)]
        keep: usize,
    },
    /// Restore a backup (verified completely before anything is replaced). Stop the server first.
    Restore {
        #[command(flatten)]
        sec: SecArgs,
        /// A backup container, or a directory (the newest container in it is used).
        #[arg(long)]
        from: PathBuf,
        /// Backup key file.
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Add an account; prints its one-time password once.
    Add {
        #[command(flatten)]
        sec: SecArgs,
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long)]
        username: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// physician, dentist, pharmacist, nurse, medical-clerk, system-administrator,
        /// patient, insurer, public-health-officer, platform-operator.
        #[arg(long)]
        role: String,
        /// Administrator rights (user management).
        #[arg(long)]
        admin: bool,
        /// For patient accounts: the Patient resource id.
        #[arg(long)]
        patient: Option<String>,
    },
    /// List the accounts of a tenant (role, admin, 2FA, last login).
    List {
        #[command(flatten)]
        sec: SecArgs,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Disable an account (its sessions end).
    Disable {
        #[command(flatten)]
        sec: SecArgs,
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long)]
        username: String,
        #[arg(long, default_value = "disabled by the operator")]
        reason: String,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Issue a signed access token (at most one hour).
    Issue {
        #[command(flatten)]
        sec: SecArgs,
        #[arg(long, default_value = "default")]
        tenant: String,
        /// An existing account (its role, admin flag and patient are used).
        #[arg(long, conflicts_with = "client")]
        user: Option<String>,
        /// A backend client id (no role; system/ scopes only).
        #[arg(long)]
        client: Option<String>,
        /// SMART scopes, e.g. "user/*.cruds" or "system/*.rs".
        #[arg(long)]
        scopes: String,
        /// Lifetime in seconds (default 300, at most 3600).
        #[arg(long, default_value_t = 300)]
        lifetime: i64,
    },
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Verify the hash chain of one tenant or of all.
    Verify {
        #[command(flatten)]
        sec: SecArgs,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Export the access log for review: every entry as a FHIR AuditEvent (IHE BALP), one per
    /// line (NDJSON), in chain order; prints each chain's head (keep it off-host).
    Export {
        #[command(flatten)]
        sec: SecArgs,
        /// One tenant; default all.
        #[arg(long)]
        tenant: Option<String>,
        /// Output file (NDJSON).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum ReportCmd {
    /// The checklist evidence report (Japanese table).
    Report {
        #[command(flatten)]
        sec: SecArgs,
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// The account service on either engine.
pub enum Acc {
    Lite(Accounts<SqliteSecurityStore>),
    Pg(Accounts<PgSecurityStore>),
}

/// Runs `$body` with `$a` bound to the `Accounts` of either engine.
macro_rules! with_acc {
    ($h:expr, $a:ident => $body:expr) => {
        match &$h.acc {
            Acc::Lite($a) => $body,
            Acc::Pg($a) => $body,
        }
    };
}

/// The open security store with its key.
pub struct SecurityHandle {
    pub acc: Acc,
    pub key: [u8; 32],
    pub config: SecurityConfig,
    sqlite_path: Option<PathBuf>,
}

impl SecurityHandle {
    /// Opens (creating if needed) the security store and key of `args`.
    pub fn open(args: &SecArgs) -> anyhow::Result<SecurityHandle> {
        let key_path = args.key_path();
        let key = if key_path.exists() {
            backup::read_key_file(&key_path)
        } else {
            if let Some(dir) = key_path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            backup::generate_key_file(&key_path)
        }
        .map_err(sec_err)
        .with_context(|| format!("server key {}", key_path.display()))?;
        let config = SecurityConfig {
            secret_key: Some(key),
            ..Default::default()
        };
        let sqlite_path = match &args.store.database {
            Some(_) => None,
            None => {
                std::fs::create_dir_all(&args.store.data)
                    .with_context(|| format!("cannot create {}", args.store.data.display()))?;
                Some(args.store.data.join("security.db"))
            }
        };
        let acc = match (&args.store.database, &sqlite_path) {
            (Some(url), _) => Acc::Pg(Accounts::new(
                PgSecurityStore::connect(url).map_err(sec_err)?,
                config.clone(),
            )),
            (None, Some(p)) => Acc::Lite(Accounts::new(
                SqliteSecurityStore::open(p).map_err(sec_err)?,
                config.clone(),
            )),
            (None, None) => bail!("no store"),
        };
        Ok(SecurityHandle {
            acc,
            key,
            config,
            sqlite_path,
        })
    }

    /// The store, whichever the engine.
    pub fn store(&self) -> &dyn SecurityStore {
        with_acc!(self, a => a.store() as &dyn SecurityStore)
    }

    /// A second, shared connection to the same store (for the server's audit writer).
    pub fn open_shared(&self, args: &SecArgs) -> anyhow::Result<Arc<dyn SecurityStore>> {
        Ok(match (&args.store.database, &self.sqlite_path) {
            (Some(url), _) => Arc::new(PgSecurityStore::connect(url).map_err(sec_err)?),
            (None, Some(p)) => Arc::new(SqliteSecurityStore::open(p).map_err(sec_err)?),
            (None, None) => bail!("no store"),
        })
    }

    pub fn tokens(&self) -> TokenService {
        TokenService::new(
            self.key,
            iryo_rest_api::auth::TOKEN_ISSUER,
            iryo_rest_api::auth::TOKEN_AUDIENCE,
        )
    }
}

/// A library error as an anyhow error with both messages.
pub fn sec_err(e: iryo_security::SecurityError) -> anyhow::Error {
    anyhow::anyhow!("{} / {}", e.message_ja, e.message_en)
}

fn operator() -> String {
    std::env::var("USER").unwrap_or_else(|_| "operator".into())
}

/// Creates the first administrator of `tenant` when it has no account; returns the
/// one-time password to print once.
pub fn bootstrap(h: &SecurityHandle, tenant: &str) -> anyhow::Result<Option<(String, String)>> {
    let created = with_acc!(h, a => a.bootstrap_admin(tenant, Utc::now())).map_err(sec_err)?;
    Ok(created.and_then(|c| c.one_time_password.map(|p| (c.user.username, p))))
}

/// Runs one security command (blocking).
pub fn run(cmd: SecCmd) -> anyhow::Result<()> {
    let now = Utc::now();
    match cmd {
        SecCmd::User { cmd } => match cmd {
            UserCmd::Add {
                sec,
                tenant,
                username,
                name,
                role,
                admin,
                patient,
            } => {
                let h = SecurityHandle::open(&sec)?;
                let role: Role = role.parse().map_err(sec_err)?;
                let op = operator();
                let new = NewUser {
                    tenant: tenant.clone(),
                    username: username.clone(),
                    display_name: name,
                    role,
                    is_admin: admin,
                    patient,
                    password: None,
                    expires_at: None,
                };
                let created =
                    with_acc!(h, a => a.add_user(Actor::Host(&op), new, now)).map_err(sec_err)?;
                println!(
                    "利用者 {username} を作成しました（{}、テナント {tenant}） / user {username} created",
                    role.label_ja()
                );
                if let Some(p) = created.one_time_password {
                    println!("初回パスワード（一度だけ表示、初回ログイン時に変更） / one-time password: {p}");
                }
                Ok(())
            }
            UserCmd::List { sec, tenant } => {
                let h = SecurityHandle::open(&sec)?;
                let rows = with_acc!(h, a => a.account_report(&tenant, now)).map_err(sec_err)?;
                println!(
                    "{:<20} {:<24} {:<6} {:<6} {:<10} 最終ログイン",
                    "利用者名", "職種", "管理者", "2要素", "状態"
                );
                for r in rows {
                    println!(
                        "{:<20} {:<24} {:<6} {:<6} {:<10} {}",
                        r.username,
                        r.role_ja,
                        if r.is_admin { "はい" } else { "いいえ" },
                        if r.two_factor { "有効" } else { "無効" },
                        r.status.code(),
                        r.last_login_at
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_else(|| "-".into())
                    );
                }
                Ok(())
            }
            UserCmd::Disable {
                sec,
                tenant,
                username,
                reason,
            } => {
                let h = SecurityHandle::open(&sec)?;
                let op = operator();
                with_acc!(h, a => a.disable_user(Actor::Host(&op), &tenant, &username, &reason, now))
                    .map_err(sec_err)?;
                println!("利用者 {username} を無効にしました / user {username} disabled");
                Ok(())
            }
        },
        SecCmd::Token {
            cmd:
                TokenCmd::Issue {
                    sec,
                    tenant,
                    user,
                    client,
                    scopes,
                    lifetime,
                },
        } => {
            let h = SecurityHandle::open(&sec)?;
            let scopes = ScopeSet::parse(&scopes).map_err(sec_err)?;
            let req = match (user, client) {
                (Some(name), None) => {
                    let u = h
                        .store()
                        .find_user_by_name(&tenant, &name)
                        .map_err(sec_err)?
                        .with_context(|| format!("利用者 {name} はいません / no user {name}"))?;
                    if u.status != iryo_security::store::AccountStatus::Active
                        || u.expires_at.is_some_and(|e| e <= now)
                    {
                        bail!("利用者 {name} は無効です / user {name} is not active");
                    }
                    TokenRequest {
                        tenant: tenant.clone(),
                        subject: u.user_id.clone(),
                        role: Some(u.role),
                        is_admin: u.is_admin,
                        scopes,
                        patient: u.patient.clone(),
                        lifetime: Some(chrono::Duration::seconds(lifetime)),
                    }
                }
                (None, Some(c)) => TokenRequest {
                    tenant: tenant.clone(),
                    subject: format!("client:{c}"),
                    role: None,
                    is_admin: false,
                    scopes,
                    patient: None,
                    lifetime: Some(chrono::Duration::seconds(lifetime)),
                },
                _ => bail!(
                    "--user か --client のどちらかを指定してください / give --user or --client"
                ),
            };
            let t = h.tokens().issue_token(&req, now).map_err(sec_err)?;
            let mut e = NewAuditEntry::new(
                now,
                &tenant,
                &format!("host:{}", operator()),
                AuditAction::UserAdmin,
                AuditOutcome::Success,
            );
            e.details = serde_json::json!({"event": "token-issued", "subject": req.subject,
                "scope": t.scope, "jti": t.jti, "expires_at": t.expires_at.to_rfc3339()});
            h.store().append_audit(e).map_err(sec_err)?;
            println!("{}", t.access_token);
            Ok(())
        }
        SecCmd::Audit {
            cmd: AuditCmd::Verify { sec, tenant },
        } => {
            let h = SecurityHandle::open(&sec)?;
            let tenants = match tenant {
                Some(t) => vec![t],
                None => h.store().audit_tenants().map_err(sec_err)?,
            };
            let mut broken = 0;
            for t in &tenants {
                match h.store().verify_audit_chain(t).map_err(sec_err)? {
                    Ok(n) => println!("{t}: 正常 {n} 件 / ok, {n} entries"),
                    Err(b) => {
                        broken += 1;
                        println!(
                            "{t}: 改ざん検出 / BROKEN: {} / {}",
                            b.message_ja(),
                            b.message_en()
                        );
                    }
                }
            }
            let mut e = NewAuditEntry::new(
                now,
                SYSTEM_TENANT,
                &format!("host:{}", operator()),
                AuditAction::AuditVerify,
                if broken == 0 {
                    AuditOutcome::Success
                } else {
                    AuditOutcome::Error
                },
            );
            e.details = serde_json::json!({"tenants": tenants, "broken": broken});
            h.store().append_audit(e).map_err(sec_err)?;
            if broken > 0 {
                bail!("監査ログの改ざんを検出しました / audit chain broken in {broken} tenant(s)");
            }
            Ok(())
        }
        SecCmd::Audit {
            cmd: AuditCmd::Export { sec, tenant, out },
        } => {
            use std::io::Write as _;
            let h = SecurityHandle::open(&sec)?;
            let tenants = match tenant {
                Some(t) => vec![t],
                None => h.store().audit_tenants().map_err(sec_err)?,
            };
            let file = std::fs::File::create(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let mut w = std::io::BufWriter::new(file);
            let mut total = 0u64;
            for t in &tenants {
                let mut next = 0u64;
                let mut n = 0u64;
                let mut head = None;
                loop {
                    let page = h.store().audit_range(t, next, 1000).map_err(sec_err)?;
                    let Some(last) = page.last() else { break };
                    next = last.entry.seq + 1;
                    head = Some(iryo_security::audit::ChainHead::of(last));
                    w.write_all(iryo_security::audit::to_ndjson(&page).as_bytes())?;
                    n += page.len() as u64;
                }
                total += n;
                match head {
                    Some(hd) => println!(
                        "{t}: {n} 件 / entries; chain head seq {} hash {}",
                        hd.seq, hd.hash
                    ),
                    None => println!("{t}: 0 件 / entries"),
                }
            }
            w.flush()?;
            let mut e = NewAuditEntry::new(
                now,
                SYSTEM_TENANT,
                &format!("host:{}", operator()),
                AuditAction::AuditExport,
                AuditOutcome::Success,
            );
            e.details = serde_json::json!({"tenants": tenants, "entries": total,
                "file": out.display().to_string()});
            h.store().append_audit(e).map_err(sec_err)?;
            println!(
                "監査ログを書き出しました / access log exported: {} ({total} entries)",
                out.display()
            );
            Ok(())
        }
        SecCmd::Security {
            cmd: ReportCmd::Report { sec, tenant },
        } => {
            let h = SecurityHandle::open(&sec)?;
            let tenants = match tenant {
                Some(t) => vec![t],
                None => h.store().list_tenants().map_err(sec_err)?,
            };
            for t in tenants {
                let rows = iryo_security::report::security_report(h.store(), &h.config, &t, now)
                    .map_err(sec_err)?;
                println!("## {t}");
                println!("{}", iryo_security::report::render_table(&rows));
            }
            Ok(())
        }
        SecCmd::Backup { sec, to, key, keep } => {
            let h = SecurityHandle::open(&sec)?;
            run_backup(&h, &sec, &to, &key, keep)
        }
        SecCmd::Restore { sec, from, key } => run_restore(&sec, &from, &key),
    }
}

fn system_entry(
    action: AuditAction,
    outcome: AuditOutcome,
    details: serde_json::Value,
) -> NewAuditEntry {
    let mut e = NewAuditEntry::new(
        Utc::now(),
        SYSTEM_TENANT,
        &format!("host:{}", operator()),
        action,
        outcome,
    );
    e.details = details;
    e
}

/// SQLite: every `*.db` file of the data directory through the online backup API, other
/// regular files copied; PostgreSQL: every table from one snapshot ([`pg_snapshot`]) plus the
/// data directory's files; then encrypted into one container.
fn run_backup(
    h: &SecurityHandle,
    sec: &SecArgs,
    to: &Path,
    key: &Path,
    keep: usize,
) -> anyhow::Result<()> {
    let now = Utc::now();
    let key_bytes = if key.exists() {
        backup::read_key_file(key).map_err(sec_err)?
    } else {
        eprintln!(
            "バックアップ鍵 {} を作成しました。バックアップとは別の場所に保管してください / created backup key {}: keep it apart from the backups",
            key.display(),
            key.display()
        );
        backup::generate_key_file(key).map_err(sec_err)?
    };
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let data = &sec.store.data;
    let staging = tempfile::Builder::new()
        .prefix(".iryo-backup-staging")
        .tempdir_in(to)
        .context("staging directory")?;
    let snap = staging.path().join("data");
    std::fs::create_dir_all(&snap)?;
    if let Some(url) = &sec.store.database {
        let n = pg_snapshot(url, &snap)?;
        eprintln!("PostgreSQL: {n} 表を一貫したスナップショットで複製しました / {n} tables copied from one snapshot");
    }
    let entries = if sec.store.database.is_some() && !data.exists() {
        Vec::new() // PostgreSQL without a local data directory (server key kept elsewhere)
    } else {
        std::fs::read_dir(data)
            .with_context(|| format!("cannot read {}", data.display()))?
            .collect::<Vec<_>>()
    };
    for entry in entries {
        let entry = entry?;
        let p = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !p.is_file()
            || name.ends_with("-wal")
            || name.ends_with("-shm")
            || name.ends_with("-journal")
        {
            continue;
        }
        if name.ends_with(".db") {
            let src = rusqlite::Connection::open_with_flags(
                &p,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            backup::sqlite_snapshot(&src, &snap.join(&name)).map_err(sec_err)?;
        } else {
            std::fs::copy(&p, snap.join(&name))?;
        }
    }
    let dest = to.join(backup::backup_file_name(now));
    let res = backup::encrypt_dir(&snap, &dest, &key_bytes, now);
    drop(staging);
    let manifest = match res {
        Ok(m) => m,
        Err(e) => {
            let _ = h.store().append_audit(system_entry(
                AuditAction::Backup,
                AuditOutcome::Error,
                serde_json::json!({"error": e.message_en}),
            ));
            return Err(sec_err(e));
        }
    };
    let removed = backup::rotate_generations(to, keep.max(1)).map_err(sec_err)?;
    h.store()
        .append_audit(system_entry(
            AuditAction::Backup,
            AuditOutcome::Success,
            serde_json::json!({"container": dest.display().to_string(),
                "files": manifest.files.len(), "bytes": manifest.total_size,
                "removed_generations": removed.len(), "sqlite": h.sqlite_path.is_some()}),
        ))
        .map_err(sec_err)?;
    println!(
        "バックアップを作成しました / backup written: {} ({} files, {} bytes; {} old generation(s) removed)",
        dest.display(),
        manifest.files.len(),
        manifest.total_size,
        removed.len()
    );
    Ok(())
}

/// The file of a PostgreSQL backup that holds the sequences' values (its presence marks one).
const PG_SEQUENCES: &str = "pg-sequences.json";

/// A table name as found in `pg_tables` or a backup: lower-case letters, digits, `_`.
fn plain_table_name(t: &str) -> bool {
    !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// PostgreSQL: every table of the schema (FHIR store, security store) copied with `COPY … TO
/// STDOUT (FORMAT binary)` inside one `REPEATABLE READ READ ONLY` transaction — one consistent
/// snapshot while servers keep writing — as `pg-<table>.copy`, plus the sequences' values.
fn pg_snapshot(url: &str, dest: &Path) -> anyhow::Result<usize> {
    use std::io::Write as _;
    let mut c = postgres::Client::connect(url, postgres::NoTls)
        .with_context(|| "PostgreSQL に接続できません / cannot connect to PostgreSQL")?;
    let mut tx = c
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let tables: Vec<String> = tx
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1",
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .filter(|t: &String| plain_table_name(t))
        .collect();
    for t in &tables {
        let mut r = tx.copy_out(&format!("COPY \"{t}\" TO STDOUT (FORMAT binary)"))?;
        let mut f = std::fs::File::create(dest.join(format!("pg-{t}.copy")))?;
        std::io::copy(&mut r, &mut f)?;
        f.flush()?;
    }
    let mut seqs = serde_json::Map::new();
    for r in tx.query(
        "SELECT sequencename::text, last_value FROM pg_sequences WHERE schemaname = current_schema()",
        &[],
    )? {
        let name: String = r.get(0);
        let value: Option<i64> = r.get(1);
        seqs.insert(name, serde_json::json!(value));
    }
    std::fs::write(
        dest.join(PG_SEQUENCES),
        serde_json::to_vec(&serde_json::Value::Object(seqs))?,
    )?;
    tx.commit()?;
    Ok(tables.len())
}

/// Loads a PostgreSQL backup in one transaction: every table in it emptied and filled again
/// (`COPY … FROM STDIN`), the sequences set. Schemas are created first if the database is new.
fn pg_load(sec: &SecArgs, url: &str, src: &Path) -> anyhow::Result<()> {
    // the FHIR and security schemas (a fresh database has none)
    drop(iryo_db::Store::open_blocking(url).map_err(|e| anyhow::anyhow!("{e}"))?);
    drop(SecurityHandle::open(sec)?);
    let mut tables = vec![];
    for f in std::fs::read_dir(src)?.filter_map(|e| e.ok()) {
        let name = f.file_name().to_string_lossy().into_owned();
        if let Some(t) = name
            .strip_prefix("pg-")
            .and_then(|n| n.strip_suffix(".copy"))
        {
            if !plain_table_name(t) {
                bail!("バックアップの表名 {t} が不正です / bad table name {t} in the backup");
            }
            tables.push(t.to_string());
        }
    }
    tables.sort();
    let seqs: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(src.join(PG_SEQUENCES))?)?;
    let mut c = postgres::Client::connect(url, postgres::NoTls)
        .with_context(|| "PostgreSQL に接続できません / cannot connect to PostgreSQL")?;
    let mut tx = c.transaction()?;
    let list = tables
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    tx.batch_execute(&format!("TRUNCATE {list}"))?;
    for t in &tables {
        let mut w = tx.copy_in(&format!("COPY \"{t}\" FROM STDIN (FORMAT binary)"))?;
        let mut f = std::fs::File::open(src.join(format!("pg-{t}.copy")))?;
        std::io::copy(&mut f, &mut w)?;
        w.finish()
            .with_context(|| format!("表 {t} を読み込めません / cannot load table {t}"))?;
    }
    for (name, v) in &seqs {
        if let (true, Some(v)) = (plain_table_name(name), v.as_i64()) {
            tx.execute("SELECT setval($1::text::regclass, $2)", &[name, &v])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The newest container of a directory, or the file itself.
fn container_of(from: &Path) -> anyhow::Result<PathBuf> {
    if from.is_file() {
        return Ok(from.to_path_buf());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(from)
        .with_context(|| format!("cannot read {}", from.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("iryo-backup-") && n.ends_with(".ibk"))
        })
        .collect();
    found.sort();
    found.pop().with_context(|| {
        format!(
            "{} にバックアップがありません / no backup in {}",
            from.display(),
            from.display()
        )
    })
}

/// Verifies the container, extracts it beside the data directory, then swaps it in (the
/// previous directory is kept as `<data>.before-restore-<time>`).
fn run_restore(sec: &SecArgs, from: &Path, key: &Path) -> anyhow::Result<()> {
    let container = container_of(from)?;
    let key_bytes = backup::read_key_file(key).map_err(sec_err)?;
    let manifest = backup::verify_backup(&container, &key_bytes).map_err(sec_err)?;
    let data = sec.store.data.clone();
    let name = data
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "iryo-data".into());
    let parent = data
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    let incoming = parent.join(format!(".{name}.restored-{stamp}"));
    backup::decrypt_to(&container, &incoming, &key_bytes).map_err(sec_err)?;
    let has_pg = incoming.join(PG_SEQUENCES).exists();
    match (&sec.store.database, has_pg) {
        (Some(url), true) => {
            // the database first, in one transaction: if it fails, nothing is replaced
            if let Err(e) = pg_load(sec, url, &incoming) {
                let _ = std::fs::remove_dir_all(&incoming);
                return Err(e);
            }
            for f in std::fs::read_dir(&incoming)?.filter_map(|e| e.ok()) {
                if f.file_name().to_string_lossy().starts_with("pg-") {
                    std::fs::remove_file(f.path())?;
                }
            }
        }
        (None, true) | (Some(_), false) => {
            let _ = std::fs::remove_dir_all(&incoming);
            bail!(
                "このバックアップは {} のものです（--database の有無を確認してください） / this backup is of {} (check --database)",
                if has_pg { "PostgreSQL" } else { "SQLite" },
                if has_pg { "a PostgreSQL store" } else { "an SQLite store" }
            );
        }
        (None, false) => {}
    }
    // restored files are owner-only (the server key refuses wider permissions)
    #[cfg(unix)]
    for f in std::fs::read_dir(&incoming)?.filter_map(|e| e.ok()) {
        use std::os::unix::fs::PermissionsExt;
        if f.path().is_file() {
            std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    let old = parent.join(format!("{name}.before-restore-{stamp}"));
    if data.exists() {
        std::fs::rename(&data, &old)
            .with_context(|| format!("cannot move {} aside", data.display()))?;
    }
    std::fs::rename(&incoming, &data)
        .with_context(|| format!("cannot move the restored data to {}", data.display()))?;
    // the restore test is evidence for the checklist report: log it in the restored store
    let h = SecurityHandle::open(sec)?;
    h.store()
        .append_audit(system_entry(
            AuditAction::Restore,
            AuditOutcome::Success,
            serde_json::json!({"container": container.display().to_string(),
                "files": manifest.files.len(), "bytes": manifest.total_size}),
        ))
        .map_err(sec_err)?;
    println!(
        "復元しました / restored {} files ({} bytes) into {}{}",
        manifest.files.len(),
        manifest.total_size,
        data.display(),
        if old.exists() {
            format!("; previous data kept in {}", old.display())
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Loads SMART Backend Services client registrations from a JSON file:
/// `[{"tenant": "default", "client_id": "lab", "scopes": "system/Observation.cruds",
///    "jwks": {"keys": [...]}}]` or, instead of `jwks`, `"pem": "<public key PEM>"` with
/// `"alg": "ES384"|"RS384"`.
pub fn load_clients(path: &Path) -> anyhow::Result<Vec<iryo_security::token::ClientRegistration>> {
    use iryo_security::token::{ClientKeys, ClientRegistration};
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let Some(list) = v.as_array() else {
        bail!(
            "{}: クライアント登録の配列が必要です / expected an array of client registrations",
            path.display()
        );
    };
    let mut out = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let s = |k: &str| c.get(k).and_then(serde_json::Value::as_str);
        let (Some(tenant), Some(client_id), Some(scopes)) =
            (s("tenant"), s("client_id"), s("scopes"))
        else {
            bail!("{}[{i}]: tenant, client_id, scopes が必要です / tenant, client_id and scopes are required", path.display());
        };
        let redirect_uris: Vec<String> = match c.get("redirect_uris") {
            None => Vec::new(),
            Some(v) => match v.as_array() {
                Some(a) if a.iter().all(|u| u.as_str().is_some_and(|u| u.starts_with("https://") || u.starts_with("http://127.0.0.1") || u.starts_with("http://localhost"))) => {
                    a.iter().filter_map(|u| u.as_str().map(str::to_string)).collect()
                }
                _ => bail!(
                    "{}[{i}]: redirect_uris は https:// (または http://127.0.0.1, http://localhost) の URL の配列 / redirect_uris must be an array of https:// (or loopback http://) URLs",
                    path.display()
                ),
            },
        };
        let keys = match (c.get("jwks"), s("pem")) {
            (Some(j), _) => {
                ClientKeys::Jwks(ClientRegistration::parse_jwks(&j.to_string()).map_err(sec_err)?)
            }
            (None, Some(pem)) => {
                let algorithm = match s("alg") {
                    Some("RS384") => jsonwebtoken::Algorithm::RS384,
                    Some("ES384") => jsonwebtoken::Algorithm::ES384,
                    _ => bail!(
                        "{}[{i}]: alg は RS384 か ES384 / alg must be RS384 or ES384",
                        path.display()
                    ),
                };
                ClientKeys::Pem {
                    algorithm,
                    pem: pem.to_string(),
                }
            }
            (None, None) if !redirect_uris.is_empty() => ClientKeys::Public,
            _ => bail!(
                "{}[{i}]: jwks か pem、または redirect_uris(公開クライアント)が必要です / jwks or pem, or redirect_uris (public client) is required",
                path.display()
            ),
        };
        out.push(ClientRegistration {
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            keys,
            allowed_scopes: ScopeSet::parse(scopes).map_err(sec_err)?,
            redirect_uris,
        });
    }
    Ok(out)
}

/// TLS for `iryo serve --tls-cert/--tls-key`: rustls with the ring provider, TLS 1.3 and 1.2,
/// ALPN h2 and http/1.1.
pub mod tls {
    use anyhow::Context as _;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::server::TlsStream;

    /// Handshakes slower than this are dropped.
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

    /// The server configuration from PEM files (certificate chain, private key).
    pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("cannot read {}", cert.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| {
                format!(
                    "証明書 {} が読めません / bad certificate PEM",
                    cert.display()
                )
            })?;
        if certs.is_empty() {
            anyhow::bail!(
                "{} に証明書がありません / no certificate in {}",
                cert.display(),
                cert.display()
            );
        }
        let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
            format!(
                "秘密鍵 {} が読めません / bad private key PEM",
                key.display()
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("証明書と秘密鍵が対応していません / certificate and key do not match")?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// A listener yielding finished TLS connections; handshakes run in their own tasks so a
    /// slow client cannot hold up others.
    pub struct TlsListener {
        rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
        local: SocketAddr,
    }

    impl TlsListener {
        pub fn new(tcp: TcpListener, cfg: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
            let local = tcp.local_addr()?;
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            tokio::spawn(async move {
                loop {
                    let (stream, peer) = match tcp.accept().await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let acceptor = acceptor.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                        {
                            Ok(Ok(tls)) => {
                                let _ = tx.send((tls, peer)).await;
                            }
                            Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                            Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                        }
                    });
                }
            });
            Ok(TlsListener { rx, local })
        }
    }

    impl axum::serve::Listener for TlsListener {
        type Io = TlsStream<TcpStream>;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            match self.rx.recv().await {
                Some(c) => c,
                // the accept task never ends while the listener lives
                None => std::future::pending().await,
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            Ok(self.local)
        }
    }
}
