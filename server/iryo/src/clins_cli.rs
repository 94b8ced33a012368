//! `iryo clins …`: host-side administration of the 電子カルテ情報共有サービス (docs/CLINS.md):
//! bind platform clients and users to their 医療機関番号 / 保険者番号, bind a clinic tenant
//! (for `$clins-submit` in process), point a tenant at a remote platform. Works on the store
//! of a running server: bindings are picked up within seconds.

use crate::security_cli::{SecArgs, SecurityHandle};
use crate::StoreArgs;
use anyhow::{bail, Context as _};
use clap::Subcommand;
use iryo_clins::{Binding, Bindings};
use iryo_security::audit::{AuditAction, AuditOutcome};
use iryo_security::store::NewAuditEntry;
use std::path::PathBuf;

/// The store tenant of the platform (as in `ClinsConfig::default()`).
const PLATFORM_TENANT: &str = "clins-platform";

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct Who {
    /// An account of the platform tenant `clins-platform` (tokens from `iryo token issue --tenant clins-platform --user U`).
    #[arg(long)]
    user: Option<String>,
    /// A backend client (tokens from `iryo token issue --tenant clins-platform --client C`).
    #[arg(long)]
    client: Option<String>,
    /// A clinic tenant of this server (its `$clins-submit` registers in process); institutions only.
    #[arg(long)]
    tenant: Option<String>,
}

#[derive(Subcommand)]
pub enum ClinsCmd {
    /// Bind a user, client or tenant to a 医療機関番号 (--institution) or 保険者番号 (--insurer).
    Bind {
        #[command(flatten)]
        sec: SecArgs,
        #[command(flatten)]
        who: Who,
        /// 10-digit 医療機関番号.
        #[arg(long, conflicts_with = "insurer", required_unless_present = "insurer")]
        institution: Option<String>,
        /// 8-digit 保険者番号.
        #[arg(long)]
        insurer: Option<String>,
    },
    /// Remove a binding.
    Unbind {
        #[command(flatten)]
        sec: SecArgs,
        #[command(flatten)]
        who: Who,
    },
    /// List the bindings.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Send a tenant's `$clins-submit` to a remote platform (tenant setting clins_remote).
    Remote {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        tenant: String,
        /// Base URL of the platform, e.g. https://clins.example.jp/clins/fhir (https; http only to loopback).
        #[arg(long, required_unless_present = "clear")]
        url: Option<String>,
        /// File holding the platform access token of this institution.
        #[arg(long, required_unless_present = "clear")]
        token_file: Option<PathBuf>,
        /// Remove the setting (submit in process again).
        #[arg(long, conflicts_with_all = ["url", "token_file"])]
        clear: bool,
    },
}

/// The platform client id of `who`, checked to exist.
fn client_of(h: &SecurityHandle, who: &Who) -> anyhow::Result<String> {
    if let Some(name) = &who.user {
        let u = h
            .store()
            .find_user_by_name(PLATFORM_TENANT, name)
            .map_err(|e| anyhow::anyhow!("{}", e.message_en))?
            .with_context(|| {
                format!("テナント {PLATFORM_TENANT} に利用者 {name} はいません (iryo user add --tenant {PLATFORM_TENANT}) / no user {name} in tenant {PLATFORM_TENANT}")
            })?;
        return Ok(u.user_id);
    }
    if let Some(c) = &who.client {
        if c.trim().is_empty() {
            bail!("クライアントIDが空です / empty client id");
        }
        // the subject `iryo token issue --client C` puts in its tokens
        return Ok(format!("client:{c}"));
    }
    let t = who.tenant.as_deref().unwrap_or_default();
    Ok(iryo_operation_clins_submit::tenant_client(t))
}

/// The security store (accounts, access log), the platform client id of `who`, the store.
async fn open(
    sec: &SecArgs,
    who: &Who,
) -> anyhow::Result<(SecurityHandle, String, iryo_db::Store)> {
    let sec2 = sec.clone();
    let h = tokio::task::spawn_blocking(move || SecurityHandle::open(&sec2)).await??;
    let client = client_of(&h, who)?;
    let store = iryo_db::Store::open(&sec.store.location())
        .await
        .context("opening the store")?;
    Ok((h, client, store))
}

fn log(h: &SecurityHandle, client: &str, what: serde_json::Value) {
    let mut e = NewAuditEntry::new(
        chrono::Utc::now(),
        PLATFORM_TENANT,
        "cli:iryo-clins",
        AuditAction::Update,
        AuditOutcome::Success,
    );
    e.resources = vec![format!("client/{client}")];
    e.details = what;
    if let Err(err) = h.store().append_audit(e) {
        eprintln!(
            "警告: 操作記録に書けませんでした / warning: access log write failed: {}",
            err.message_en
        );
    }
}

async fn tenant_id(store: &iryo_db::Store, name: &str) -> anyhow::Result<i64> {
    store
        .tenant_id(name)
        .await?
        .with_context(|| format!("テナント {name} はありません / unknown tenant {name}"))
}

pub async fn run(cmd: ClinsCmd) -> anyhow::Result<()> {
    match cmd {
        ClinsCmd::Bind {
            sec,
            who,
            institution,
            insurer,
        } => {
            let binding = match (institution, insurer) {
                (Some(n), None) => Binding::Institution(n),
                (None, Some(n)) => Binding::Insurer(n),
                _ => bail!("--institution か --insurer を指定してください / give --institution or --insurer"),
            };
            if who.tenant.is_some() && !matches!(binding, Binding::Institution(_)) {
                bail!("テナントに紐付けられるのは医療機関番号だけです / a tenant binds to an institution number only");
            }
            let (h, client, store) = open(&sec, &who).await?;
            if let (Some(t), Binding::Institution(n)) = (&who.tenant, &binding) {
                let id = tenant_id(&store, t).await?;
                if !iryo_clins::ids::is_institution_number(n) {
                    bail!("医療機関番号 {n} は10桁 [0-4][0-9][1-3][0-9]{{7}} ではありません / invalid institution number {n}");
                }
                let mut settings = store.tenant_settings(id).await?;
                settings["clins_institution"] = serde_json::json!(n);
                store.tenant_set_settings(id, settings).await?;
            }
            let b = Bindings::open(store, PLATFORM_TENANT)
                .await
                .map_err(anyhow::Error::msg)?;
            b.bind(&client, binding.clone())
                .await
                .map_err(anyhow::Error::msg)?;
            let (kind, number) = match &binding {
                Binding::Institution(n) => ("医療機関番号 (institution)", n),
                Binding::Insurer(n) => ("保険者番号 (insurer)", n),
            };
            log(
                &h,
                &client,
                serde_json::json!({"operation": "clins bind", "binding": format!("{binding:?}")}),
            );
            println!("{client} を {kind} {number} に紐付けました / bound {client} to {number}");
            Ok(())
        }
        ClinsCmd::Unbind { sec, who } => {
            let (h, client, store) = open(&sec, &who).await?;
            let b = Bindings::open(store, PLATFORM_TENANT)
                .await
                .map_err(anyhow::Error::msg)?;
            if !b.unbind(&client).await.map_err(anyhow::Error::msg)? {
                bail!("{client} の紐付けはありません / {client} is not bound");
            }
            log(
                &h,
                &client,
                serde_json::json!({"operation": "clins unbind"}),
            );
            println!("{client} の紐付けを解除しました / unbound {client}");
            Ok(())
        }
        ClinsCmd::List { store } => {
            let store = iryo_db::Store::open(&store.location())
                .await
                .context("opening the store")?;
            let b = Bindings::open(store, PLATFORM_TENANT)
                .await
                .map_err(anyhow::Error::msg)?;
            println!("{:<40} {:<12} number", "client", "kind");
            for (client, binding) in b.list().await.map_err(anyhow::Error::msg)? {
                let (kind, n) = match binding {
                    Binding::Institution(n) => ("institution", n),
                    Binding::Insurer(n) => ("insurer", n),
                };
                println!("{client:<40} {kind:<12} {n}");
            }
            Ok(())
        }
        ClinsCmd::Remote {
            store,
            tenant,
            url,
            token_file,
            clear,
        } => {
            let store = iryo_db::Store::open(&store.location())
                .await
                .context("opening the store")?;
            let id = tenant_id(&store, &tenant).await?;
            let mut settings = store.tenant_settings(id).await?;
            if clear {
                if let Some(o) = settings.as_object_mut() {
                    o.remove("clins_remote");
                }
                store.tenant_set_settings(id, settings).await?;
                println!("テナント {tenant}: 共有サービスへの送信はこのサーバ内で行います / submissions in process");
                return Ok(());
            }
            let url = url.unwrap_or_default();
            if !iryo_operation_clins_submit::remote_url_ok(&url) {
                bail!("URL は https:// でなければなりません(http はループバックのみ) / the URL must be https:// (http only to loopback): {url}");
            }
            let p = token_file.unwrap_or_default();
            let token = std::fs::read_to_string(&p)
                .with_context(|| {
                    format!(
                        "トークンファイル {} を読めません / cannot read {}",
                        p.display(),
                        p.display()
                    )
                })?
                .trim()
                .to_string();
            if token.is_empty() {
                bail!(
                    "トークンファイル {} が空です / the token file is empty",
                    p.display()
                );
            }
            settings["clins_remote"] = serde_json::json!({"url": url, "token": token});
            store.tenant_set_settings(id, settings).await?;
            println!("テナント {tenant}: $clins-submit の送信先 {url} / submissions go to {url}");
            Ok(())
        }
    }
}
