//! `iryo`: the one binary. Subcommands: `serve`, `import`, `tenant`, and the security
//! commands `user`, `token`, `audit`, `security`, `backup`, `restore` (see docs/SECURITY.md).

/// mimalloc instead of glibc malloc: JSON values and index entries are many small, short-lived
/// allocations across threads, where glibc spent about a quarter of import CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod clins_cli;
mod fee;
mod import;
mod security_cli;
mod validate;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "iryo",
    version,
    about = "iryo — 全国医療情報プラットフォーム / 標準型電子カルテ on HL7 FHIR R4"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
pub struct StoreArgs {
    /// Directory of the embedded SQLite store.
    #[arg(long, default_value = "./iryo-data", env = "IRYO_DATA")]
    pub data: PathBuf,
    /// Use PostgreSQL instead (postgres://user@host/db).
    #[arg(long, env = "IRYO_DATABASE")]
    pub database: Option<String>,
}

impl StoreArgs {
    fn location(&self) -> String {
        match &self.database {
            Some(url) => url.clone(),
            None => self.data.display().to_string(),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate resources (files, directories, Bundles) against R4 / JP Core / JP-CLINS / eCheckup profiles.
    Validate(validate::ValidateArgs),
    /// Run the FHIR server.
    Serve {
        #[command(flatten)]
        sec: security_cli::SecArgs,
        /// Address to listen on. Non-loopback addresses need --behind-proxy (a TLS proxy).
        #[arg(long, default_value = "127.0.0.1:8080", env = "IRYO_LISTEN")]
        listen: SocketAddr,
        /// Largest request body in bytes.
        #[arg(long, default_value_t = 32 * 1024 * 1024)]
        max_body: usize,
        /// File holding a static system token (a backend client with system/*.cruds).
        #[arg(long, env = "IRYO_API_TOKEN_FILE")]
        api_token_file: Option<PathBuf>,
        /// Development only: requests from loopback without a token are let through (logged).
        #[arg(long)]
        insecure_loopback: bool,
        /// A TLS-terminating proxy is in front: allows a non-loopback address without TLS.
        #[arg(long)]
        behind_proxy: bool,
        /// TLS certificate chain (PEM); with --tls-key serves HTTPS (TLS 1.3, 1.2 allowed).
        #[arg(long, env = "IRYO_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM).
        #[arg(long, env = "IRYO_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// JSON file of SMART clients: Backend Services (keys) for [base]/auth/token, and
        /// public apps (redirect_uris) for [base]/auth/authorize.
        #[arg(long, env = "IRYO_SMART_CLIENTS")]
        smart_clients: Option<PathBuf>,
        /// Accounts not used for this many days are disabled (checked at start and hourly;
        /// R7 不要アカウントの無効化).
        #[arg(long, default_value_t = 90, env = "IRYO_DORMANT_DAYS")]
        dormant_days: u32,
        /// Public base URL (scheme://host[:port]) used in links.
        #[arg(long)]
        public_base: Option<String>,
    },
    /// Load NDJSON files and Bundles (gzip accepted, directories walked).
    Import {
        #[command(flatten)]
        store: StoreArgs,
        /// Tenant to load into.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Transactions in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// 共通算定モジュール: fee masters, calculation, UKE receipts.
    Fee {
        #[command(subcommand)]
        cmd: fee::FeeCmd,
    },
    /// 電子カルテ情報共有サービス: bind clients, users and tenants to institution / insurer numbers.
    Clins {
        #[command(subcommand)]
        cmd: clins_cli::ClinsCmd,
    },
    /// Manage tenants (one per institution).
    Tenant {
        #[command(subcommand)]
        cmd: TenantCmd,
    },
    #[command(flatten)]
    Sec(security_cli::SecCmd),
}

#[derive(Subcommand)]
enum TenantCmd {
    /// Create a tenant.
    Create {
        #[command(flatten)]
        store: StoreArgs,
        name: String,
    },
    /// List tenants.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Set a tenant's validation on write: off (structure only) | base (base R4 invariants and required bindings, default) | profiles (also meta.profile); 422 on error.
    Set {
        #[command(flatten)]
        store: StoreArgs,
        name: String,
        #[arg(long, value_parser = ["off", "base", "profiles"])]
        validation: String,
    },
}

/// No transparent huge pages for this process: mimalloc asks for them, and the kernel then
/// zeroes 2 MiB at each first touch (and again after each purge) — 13 % of import CPU
/// measured with perf. Applies to every later page fault of the process.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE) only sets a flag on this process; no pointers involved.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() {
    disable_transparent_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("エラー (error): {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve {
            sec,
            listen,
            max_body,
            api_token_file,
            public_base,
            insecure_loopback,
            behind_proxy,
            smart_clients,
            dormant_days,
            tls_cert,
            tls_key,
        } => {
            let store = sec.store.clone();
            let api_token = match &api_token_file {
                Some(p) => {
                    let t = std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read {}", p.display()))?;
                    let t = t.trim().to_string();
                    if t.len() < 32 {
                        bail!("APIトークンが短すぎます（32文字以上） / the API token must be at least 32 characters");
                    }
                    Some(t)
                }
                None => None,
            };
            let tls = match (&tls_cert, &tls_key) {
                (Some(c), Some(k)) => Some(security_cli::tls::server_config(c, k)?),
                _ => None,
            };
            if !listen.ip().is_loopback() && !behind_proxy && tls.is_none() {
                bail!(
                    "ループバック以外のアドレス {listen} で TLS なしに待ち受けることはできません（TLS 終端プロキシの背後なら --behind-proxy） / \
                     refusing to serve non-loopback {listen} without TLS (use --behind-proxy behind a TLS-terminating proxy; \
                     clients authenticate with access tokens or the --api-token-file system token)"
                );
            }
            if insecure_loopback && !listen.ip().is_loopback() {
                bail!("--insecure-loopback はループバックでのみ使えます / --insecure-loopback needs a loopback address");
            }
            let s = iryo_db::Store::open(&store.location())
                .await
                .context("opening the store")?;
            // the security store, the first administrator, the audit writer
            let sec2 = sec.clone();
            let (handle, shared, first_admin) = tokio::task::spawn_blocking(move || {
                let h = security_cli::SecurityHandle::open(&sec2)?;
                let first = security_cli::bootstrap(&h, "default")?;
                let shared = h.open_shared(&sec2)?;
                anyhow::Ok((h, shared, first))
            })
            .await??;
            if let Some((user, password)) = first_admin {
                eprintln!(
                    "\n初回起動: 管理者アカウントを作成しました / first start: administrator created\n  \
                     利用者名 (user): {user}\n  初回パスワード (one-time password, shown once): {password}\n"
                );
            }
            // 電子カルテ情報共有サービス at /clins/fhir, on the same store and access log
            let clins = iryo_clins::ClinsState::new(
                s.clone(),
                handle.tokens(),
                shared.clone(),
                iryo_clins::ClinsConfig::default(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("starting the sharing service: {e}"))?;
            clins.spawn_retention(std::time::Duration::from_secs(3600));
            let security = iryo_rest_api::auth::Security {
                tokens: handle.tokens(),
                audit: iryo_rest_api::auth::AuditSink::start(shared.clone()),
                store: shared.clone(),
                static_token: api_token.clone(),
                open_loopback: insecure_loopback,
                clients: match &smart_clients {
                    Some(p) => security_cli::load_clients(p)?,
                    None => Vec::new(),
                },
                accounts: Some(spawn_housekeeping(std::sync::Arc::new(
                    iryo_security::accounts::Accounts::new(
                        shared.clone(),
                        iryo_security::accounts::SecurityConfig {
                            dormant_after: chrono::Duration::days(i64::from(dormant_days)),
                            ..handle.config.clone()
                        },
                    ),
                ))),
                secure_cookies: tls.is_some() || behind_proxy,
            };
            // load the R4 model before the first request
            let _ = iryo_fhir_spec::r4();
            let config = iryo_rest_api::Config {
                max_body,
                api_token,
                public_base,
                security: Some(std::sync::Arc::new(security)),
                operations: operations(&store.data, &clins),
            };
            let app = iryo_rest_api::router(iryo_rest_api::AppState::new(s, config))
                .merge(iryo_clins::router(clins));
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            eprintln!(
                "iryo: FHIR R4 API at {}://{listen}/fhir (store: {}; authentication: {})",
                if tls.is_some() { "https" } else { "http" },
                if store.database.is_some() {
                    "PostgreSQL"
                } else {
                    "SQLite"
                },
                if insecure_loopback {
                    "OFF for loopback (--insecure-loopback)"
                } else {
                    "required"
                }
            );
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            match tls {
                Some(cfg) => {
                    use axum::serve::ListenerExt;
                    let l = security_cli::tls::TlsListener::new(listener, cfg)?.tap_io(|_| {});
                    axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>())
                        .with_graceful_shutdown(shutdown)
                        .await?
                }
                None => {
                    axum::serve(
                        listener,
                        app.into_make_service_with_connect_info::<SocketAddr>(),
                    )
                    .with_graceful_shutdown(shutdown)
                    .await?
                }
            }
            Ok(())
        }
        Cmd::Sec(cmd) => tokio::task::spawn_blocking(move || security_cli::run(cmd)).await?,
        Cmd::Import {
            store,
            tenant,
            concurrency,
            paths,
        } => {
            let s = iryo_db::Store::open(&store.location())
                .await
                .context("opening the store")?;
            import::run(s, &tenant, concurrency.max(1), &paths).await
        }
        Cmd::Fee { cmd } => fee::run(cmd).await,
        Cmd::Clins { cmd } => clins_cli::run(cmd).await,
        Cmd::Validate(args) => std::process::exit(validate::run(args)),
        Cmd::Tenant { cmd } => match cmd {
            TenantCmd::Create { store, name } => {
                let s = iryo_db::Store::open(&store.location())
                    .await
                    .context("opening the store")?;
                let t = s.tenant_create(&name).await?;
                println!(
                    "テナント {} を作成しました (id {}). Base URL: /t/{}/fhir",
                    t.name, t.id, t.name
                );
                Ok(())
            }
            TenantCmd::Set {
                store,
                name,
                validation,
            } => {
                let s = iryo_db::Store::open(&store.location())
                    .await
                    .context("opening the store")?;
                let Some(id) = s.tenant_id(&name).await? else {
                    anyhow::bail!("テナント {name} はありません / unknown tenant {name}");
                };
                let mut settings = s.tenant_settings(id).await?;
                settings["validation"] = serde_json::json!(validation);
                s.tenant_set_settings(id, settings).await?;
                println!("テナント {name}: 書き込み時検証 (validation on write) = {validation}");
                Ok(())
            }
            TenantCmd::List { store } => {
                let s = iryo_db::Store::open(&store.location())
                    .await
                    .context("opening the store")?;
                println!("{:<6} {:<24} {}", "id", "name", "base");
                for t in s.tenant_list().await? {
                    let base = if t.name == "default" {
                        "/fhir".to_string()
                    } else {
                        format!("/t/{}/fhir", t.name)
                    };
                    println!("{:<6} {:<24} {}", t.id, t.name, base);
                }
                Ok(())
            }
        },
    }
}

/// The FHIR operations served besides the core interactions (each from its own crate).
fn operations(data: &std::path::Path, clins: &iryo_clins::ClinsState) -> iryo_rest_api::Operations {
    iryo_rest_api::Operations(vec![
        std::sync::Arc::new(iryo_operation_calculate_fee::CalculateFee::new(
            iryo_operation_calculate_fee::master_store_path(data),
        )),
        std::sync::Arc::new(iryo_operation_clins_submit::ClinsSubmit::in_process(
            clins.clone(),
        )),
    ])
}

/// The accounts' periodic job, on a thread of its own (the security store blocks): dormant
/// accounts disabled in every tenant (each one logged by the store), expired sessions purged —
/// at start, then hourly.
fn spawn_housekeeping<S>(
    acc: std::sync::Arc<iryo_security::accounts::Accounts<S>>,
) -> std::sync::Arc<iryo_security::accounts::Accounts<S>>
where
    S: iryo_security::store::SecurityStore + Send + Sync + 'static,
{
    let a = acc.clone();
    let spawned = std::thread::Builder::new()
        .name("iryo-housekeeping".into())
        .spawn(move || loop {
            match a.housekeeping(chrono::Utc::now()) {
                Ok((disabled, purged)) => {
                    for (tenant, user) in &disabled {
                        eprintln!(
                            "iryo: 長期間使われていないアカウントを無効にしました / dormant account disabled: {tenant}/{user}"
                        );
                    }
                    tracing::debug!("housekeeping: {} sessions purged", purged);
                }
                Err(e) => tracing::warn!("housekeeping failed: {}", e.message_en),
            }
            std::thread::sleep(std::time::Duration::from_secs(3600));
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the housekeeping thread: {e}");
    }
    acc
}
