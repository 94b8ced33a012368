//! `iryo fee …`: the 共通算定モジュール (crate `iryo-fee`) on the command line.
//!
//! * `iryo fee masters import DIR` — import the 支払基金 masters into the master store.
//! * `iryo fee masters show CODE [--date D]` — what a code was worth on a date.
//! * `iryo fee calc VISIT.json` — calculate a visit (a `CalcRequest` JSON, or a FHIR Bundle
//!   with `--facility`).
//! * `iryo fee facility [--tenant T] [FILE]` — the tenant's facility (kind, beds, 施設基準),
//!   used by `$calculate-fee` and `receipt`.
//! * `iryo fee receipt --month YYYY-MM` — the month's UKE files from the clinic's FHIR data.
//!
//! The master store defaults to `DATA/fee-masters.db` (`--data`, default `./iryo-data`);
//! `--store PATH` overrides it.

use anyhow::{anyhow, bail, Context as _};
use chrono::{Datelike, NaiveDate};
use iryo_fee::uke::{Payer, UkeFile};
use iryo_fee::{
    CalcRequest, Facility, FeeError, ImportPhase, MasterStore, VisitInput, VisitResult,
};
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum FeeCmd {
    /// 支払基金 masters: import, look up.
    Masters {
        #[command(subcommand)]
        cmd: MastersCmd,
    },
    /// Calculate visits: a CalcRequest JSON ({facility, visit}) or a FHIR Bundle (with --facility).
    Calc {
        /// The input file.
        file: PathBuf,
        #[command(flatten)]
        masters: MasterArgs,
        /// Facility JSON (needed for a FHIR Bundle input).
        #[arg(long)]
        facility: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Show or set the tenant's facility (kind, beds, 施設基準), used by `$calculate-fee` and `receipt`.
    Facility(FacilityArgs),
    /// Write the month's UKE receipt files from the FHIR store.
    Receipt {
        /// 診療年月 (service month), YYYY-MM.
        #[arg(long)]
        month: String,
        /// 請求年月 (claim month), YYYY-MM; default: the month after --month.
        #[arg(long)]
        claim_month: Option<String>,
        /// Tenant (institution) whose visits are billed.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Use PostgreSQL instead of the embedded store under --data.
        #[arg(long, env = "IRYO_DATABASE")]
        database: Option<String>,
        #[command(flatten)]
        masters: MasterArgs,
        /// Facility JSON: 医療機関コード, name, 都道府県, kind, beds, 施設基準 (default: the
        /// tenant's setting, see `iryo fee facility`).
        #[arg(long)]
        facility: Option<PathBuf>,
        /// Output directory: OUT/shaho/RECEIPTC.UKE and/or OUT/kokuho/RECEIPTC.UKE.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct FacilityArgs {
    /// Tenant (institution) whose facility is shown or set.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// Facility JSON to store (omit to show the current setting).
    file: Option<PathBuf>,
    /// Directory of the embedded SQLite store.
    #[arg(long, default_value = "./iryo-data", env = "IRYO_DATA")]
    data: PathBuf,
    /// Use PostgreSQL instead (postgres://user@host/db).
    #[arg(long, env = "IRYO_DATABASE")]
    database: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum MastersCmd {
    /// Import the official master files of DIR (CSV or ZIP, change files applied in date order).
    Import {
        dir: PathBuf,
        #[command(flatten)]
        masters: MasterArgs,
    },
    /// Show a code's master entry valid on a date.
    Show {
        code: String,
        /// Date (YYYY-MM-DD), default today.
        #[arg(long)]
        date: Option<String>,
        #[command(flatten)]
        masters: MasterArgs,
    },
}

#[derive(clap::Args, Clone)]
pub struct MasterArgs {
    /// Data directory of iryo (the master store is DATA/fee-masters.db).
    #[arg(long, default_value = "./iryo-data", env = "IRYO_DATA")]
    data: PathBuf,
    /// Path of the fee master store (overrides --data).
    #[arg(long)]
    store: Option<PathBuf>,
}

impl MasterArgs {
    fn path(&self) -> PathBuf {
        self.store
            .clone()
            .unwrap_or_else(|| self.data.join("fee-masters.db"))
    }

    fn open(&self) -> anyhow::Result<MasterStore> {
        let p = self.path();
        if !p.exists() {
            bail!(
                "マスターストア {} がありません。先に `iryo fee masters import DIR` を実行してください / \
                 the master store {} does not exist: run `iryo fee masters import DIR` first",
                p.display(),
                p.display()
            );
        }
        MasterStore::open(&p).map_err(fee_err)
    }
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// A fee error as one line, Japanese then English.
fn fee_err(e: FeeError) -> anyhow::Error {
    anyhow!("{} / {}", e.message_ja(), e.message_en())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

pub async fn run(cmd: FeeCmd) -> anyhow::Result<()> {
    match cmd {
        FeeCmd::Masters {
            cmd: MastersCmd::Import { dir, masters },
        } => blocking(move || import(&dir, &masters.path())).await,
        FeeCmd::Masters {
            cmd:
                MastersCmd::Show {
                    code,
                    date,
                    masters,
                },
        } => blocking(move || show(&masters, &code, date.as_deref())).await,
        FeeCmd::Calc {
            file,
            masters,
            facility,
            format,
        } => blocking(move || calc(&file, &masters, facility.as_deref(), format)).await,
        FeeCmd::Facility(args) => facility(args).await,
        FeeCmd::Receipt {
            month,
            claim_month,
            tenant,
            database,
            masters,
            facility,
            out,
        } => {
            receipt(ReceiptArgs {
                month,
                claim_month,
                tenant,
                location: database.unwrap_or_else(|| masters.data.display().to_string()),
                masters,
                facility,
                out,
            })
            .await
        }
    }
}

// ------------------------------------------------------------------ masters

fn import(dir: &Path, store: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!(
            "{} はディレクトリではありません / {} is not a directory",
            dir.display(),
            dir.display()
        );
    }
    if let Some(parent) = store.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} files  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let result = iryo_fee::import_masters(dir, store, &mut |p| {
        bar.set_length(p.total_files as u64);
        bar.set_position(p.done_files as u64);
        match p.phase {
            ImportPhase::Reading => bar.set_message(format!("{} ({} rows)", p.file, p.rows_read)),
            ImportPhase::Writing => bar.set_message("書き込み中 (writing the store)"),
            ImportPhase::Done => bar.set_message("完了 (done)"),
        }
    });
    bar.finish_and_clear();
    let report = result.map_err(|e| {
        anyhow!(
            "{} / {}\nマスターストアは変更されていません (the master store was not changed)",
            e.message_ja(),
            e.message_en()
        )
    })?;
    let applied = report.files.iter().filter(|f| f.applied).count();
    println!(
        "マスター取り込み完了 (masters imported): {} files applied, {} skipped, {:.2} s → {}",
        applied,
        report.files.len() - applied,
        report.elapsed_ms as f64 / 1000.0,
        store.display()
    );
    let names = [
        ('S', "医科診療行為"),
        ('Y', "医薬品"),
        ('T', "特定器材"),
        ('C', "コメント"),
        ('B', "傷病名"),
        ('Z', "修飾語"),
    ];
    for (letter, name) in names {
        if let Some((codes, versions)) = report.codes.get(&letter) {
            println!("  {letter} {name}: {codes} codes, {versions} dated versions");
        }
    }
    let mut tables: Vec<_> = report.tables.iter().collect();
    tables.sort();
    for (t, n) in tables {
        println!("  電子点数表 {t}: {n} rows");
    }
    for f in report.files.iter().filter(|f| !f.applied) {
        println!("  skipped {}: {}", f.name, f.note);
    }
    if report.orphan_changes > 0 {
        println!(
            "  注意: 既存コードのない変更行 {} 件 (change rows for unknown codes, kept as given)",
            report.orphan_changes
        );
    }
    Ok(())
}

fn parse_day(s: &str, what: &str) -> anyhow::Result<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| {
        anyhow!("{what} '{s}' は YYYY-MM-DD 形式の日付ではありません / {what} '{s}' is not a YYYY-MM-DD date")
    })
}

fn show(masters: &MasterArgs, code: &str, date: Option<&str>) -> anyhow::Result<()> {
    let store = masters.open()?;
    let date = match date {
        Some(d) => parse_day(d, "--date")?,
        None => chrono::Local::now().date_naive(),
    };
    match store.price_on(code, date).map_err(fee_err)? {
        Some(p) => {
            println!(
                "{} [{}] {}: {} {} ({} – {})",
                p.code,
                p.master,
                p.name,
                p.amount,
                p.unit,
                p.valid_from.map(|d| d.to_string()).unwrap_or_default(),
                p.valid_to.map(|d| d.to_string()).unwrap_or_default()
            );
            Ok(())
        }
        None => bail!(
            "コード {code} は {date} 時点のマスターにありません / code {code} is not in the masters on {date}"
        ),
    }
}

// ------------------------------------------------------------------ calc

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| {
        anyhow!(
            "{} を読めません / cannot read {}: {e}",
            path.display(),
            path.display()
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        anyhow!(
            "{} は正しいJSONではありません / {} is not valid JSON: {e}",
            path.display(),
            path.display()
        )
    })
}

fn read_facility(path: &Path) -> anyhow::Result<Facility> {
    serde_json::from_value(read_json(path)?).map_err(|e| {
        anyhow!(
            "施設情報 {} が不正です / invalid facility file {}: {e}",
            path.display(),
            path.display()
        )
    })
}

fn calc(
    file: &Path,
    masters: &MasterArgs,
    facility: Option<&Path>,
    format: Format,
) -> anyhow::Result<()> {
    let input = read_json(file)?;
    let (facility, visits) = if input.get("resourceType").and_then(Value::as_str) == Some("Bundle")
    {
        let Some(f) = facility else {
            bail!("FHIR Bundle の計算には --facility FILE が必要です / a FHIR Bundle needs --facility FILE");
        };
        let visits = iryo_fee::fhir::visits_from_bundle(&input).map_err(fee_err)?;
        if visits.is_empty() {
            bail!("Bundle に外来受診 (Encounter) がありません / the Bundle holds no outpatient Encounter");
        }
        (read_facility(f)?, visits)
    } else {
        let req: CalcRequest = serde_json::from_value(input).map_err(|e| {
            anyhow!(
                "入力 {} が算定リクエストの形式ではありません / {} is not a calculation request ({{facility, visit}}): {e}",
                file.display(),
                file.display()
            )
        })?;
        let facility = match facility {
            Some(f) => read_facility(f)?,
            None => req.facility,
        };
        (facility, vec![req.visit])
    };
    let store = masters.open()?;
    let results = iryo_fee::calculate_month(&store, &facility, &visits).map_err(fee_err)?;
    match format {
        Format::Json => {
            let out = if results.len() == 1 {
                serde_json::to_string_pretty(&results[0])?
            } else {
                serde_json::to_string_pretty(&results)?
            };
            println!("{out}");
        }
        Format::Text => {
            for r in &results {
                print!("{}", render(r));
            }
        }
    }
    let errors = error_lines(&results);
    if !errors.is_empty() {
        bail!(
            "算定できない項目があります / the calculation reported errors:\n  {}",
            errors.join("\n  ")
        );
    }
    Ok(())
}

/// Every `error` message of the results, one line each: visit, date, Japanese / English.
fn error_lines(results: &[VisitResult]) -> Vec<String> {
    results
        .iter()
        .flat_map(|r| {
            r.messages
                .iter()
                .filter(|m| m.level == iryo_fee::calc::model::Level::Error)
                .map(move |m| {
                    format!(
                        "{} ({}): {} / {}",
                        r.visit_id, r.date, m.message_ja, m.message_en
                    )
                })
        })
        .collect()
}

fn yen(v: i64) -> String {
    let s = v.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// One visit's result as text: every line, totals, copay, messages.
fn render(r: &VisitResult) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "受診 (visit) {}  {}  患者 (patient) {}  負担割合 (burden) {}%",
        r.visit_id, r.date, r.patient_id, r.burden_percent
    );
    let _ = writeln!(
        s,
        "  識別 コード     名称                                   点数 × 回数 = 合計  理由 (reason)"
    );
    for l in &r.lines {
        for (i, it) in l.items.iter().enumerate() {
            let qty = it
                .quantity
                .as_ref()
                .map(|q| format!(" {q}{}", it.unit.as_deref().unwrap_or("")))
                .unwrap_or_default();
            let name = format!("{}{qty}", it.name);
            if i + 1 == l.items.len() {
                let _ = writeln!(
                    s,
                    "  {:02}   {} {}  {} × {} = {}  {}",
                    l.shikibetsu,
                    it.code,
                    pad(&name, 36),
                    l.points,
                    l.count,
                    l.total,
                    l.reason_ja
                );
            } else {
                let _ = writeln!(s, "  {:02}   {} {}", l.shikibetsu, it.code, name);
            }
        }
    }
    for c in &r.comments {
        let _ = writeln!(
            s,
            "  {:02}   {} {} {}",
            c.shikibetsu, c.code, c.name, c.text
        );
    }
    let _ = writeln!(s, "  合計点数 (total points): {}", r.total_points);
    let _ = writeln!(s, "  医療費 (medical cost): {} 円", yen(r.total_yen));
    let _ = writeln!(s, "  窓口負担 (copay): {} 円", yen(r.copay_yen));
    if r.public_expense_yen != 0 {
        let _ = writeln!(
            s,
            "  保険の一部負担金 (insurance copay): {} 円, 公費 (public expense): {} 円",
            yen(r.insurance_copay_yen),
            yen(r.public_expense_yen)
        );
    }
    for m in &r.messages {
        let level = match m.level {
            iryo_fee::calc::model::Level::Info => "情報 info",
            iryo_fee::calc::model::Level::Warning => "警告 warning",
            iryo_fee::calc::model::Level::Error => "エラー error",
        };
        let _ = writeln!(
            s,
            "  [{level}] {}{}: {} / {}",
            m.rule,
            m.code.as_ref().map(|c| format!(" {c}")).unwrap_or_default(),
            m.message_ja,
            m.message_en
        );
    }
    s
}

/// Pad to a display width (full-width characters count 2).
fn pad(s: &str, width: usize) -> String {
    let w: usize = s.chars().map(|c| if c.is_ascii() { 1 } else { 2 }).sum();
    format!("{s}{}", " ".repeat(width.saturating_sub(w)))
}

// ------------------------------------------------------------------ receipt

struct ReceiptArgs {
    month: String,
    claim_month: Option<String>,
    tenant: String,
    location: String,
    masters: MasterArgs,
    facility: Option<PathBuf>,
    out: PathBuf,
}

fn parse_month(s: &str, what: &str) -> anyhow::Result<NaiveDate> {
    NaiveDate::parse_from_str(&format!("{s}-01"), "%Y-%m-%d").map_err(|_| {
        anyhow!("{what} '{s}' は YYYY-MM 形式ではありません / {what} '{s}' is not YYYY-MM")
    })
}

/// A FHIR error (from the store searches) as one line, Japanese then English.
fn fhir_err(e: iryo_rest_api::FhirError) -> anyhow::Error {
    let msgs: Vec<String> = e
        .issues
        .iter()
        .map(|i| format!("{} / {}", i.message_ja, i.message_en))
        .collect();
    anyhow!("{}", msgs.join("; "))
}

/// The tenant's facility setting (`iryo fee facility`), or an error saying how to set it.
async fn tenant_facility(
    store: &iryo_db::Store,
    tenant: i64,
    name: &str,
) -> anyhow::Result<Facility> {
    let settings = store.tenant_settings(tenant).await?;
    if settings
        .get(iryo_operation_calculate_fee::FACILITY_SETTING)
        .is_none_or(Value::is_null)
    {
        bail!(
            "テナント {name} の施設情報がありません。--facility FILE を指定するか `iryo fee facility --tenant {name} FILE` で設定してください / \
             tenant {name} has no facility: pass --facility FILE or set it with `iryo fee facility --tenant {name} FILE`"
        );
    }
    iryo_operation_calculate_fee::facility_of(&settings).map_err(fhir_err)
}

/// `iryo fee facility [--tenant T] [FILE]`: store the facility in the tenant settings
/// (`fee_facility`), or print it.
async fn facility(a: FacilityArgs) -> anyhow::Result<()> {
    let location = a
        .database
        .clone()
        .unwrap_or_else(|| a.data.display().to_string());
    let store = iryo_db::Store::open(&location)
        .await
        .context("opening the store")?;
    let tenant = store.tenant_id(&a.tenant).await?.ok_or_else(|| {
        anyhow!(
            "テナント {} がありません / no tenant named {}",
            a.tenant,
            a.tenant
        )
    })?;
    let mut settings = store.tenant_settings(tenant).await?;
    match &a.file {
        None => {
            let f = tenant_facility(&store, tenant, &a.tenant).await?;
            println!("{}", serde_json::to_string_pretty(&f)?);
        }
        Some(path) => {
            let f = read_facility(path)?;
            settings[iryo_operation_calculate_fee::FACILITY_SETTING] = serde_json::to_value(&f)?;
            store.tenant_set_settings(tenant, settings).await?;
            println!(
                "テナント {}: 施設情報を設定しました (facility set): {} {} ({:?}, {} beds, 施設基準 {})",
                a.tenant,
                f.code,
                f.name,
                f.kind,
                f.beds,
                if f.standards.is_empty() {
                    "-".to_string()
                } else {
                    f.standards.join(",")
                }
            );
        }
    }
    Ok(())
}

fn payer_dir(p: Payer) -> &'static str {
    match p {
        Payer::Shaho => "shaho",
        Payer::Kokuho => "kokuho",
    }
}

async fn receipt(a: ReceiptArgs) -> anyhow::Result<()> {
    let month = parse_month(&a.month, "--month")?;
    let claim = match &a.claim_month {
        Some(c) => parse_month(c, "--claim-month")?,
        None => month
            .checked_add_months(chrono::Months::new(1))
            .ok_or_else(|| anyhow!("--month out of range"))?,
    };
    if claim < month {
        bail!("請求年月は診療年月より前にできません / the claim month cannot precede the service month");
    }
    let masters = a.masters.open()?;
    let store = iryo_db::Store::open(&a.location)
        .await
        .context("opening the store")?;
    let tenant = store.tenant_id(&a.tenant).await?.ok_or_else(|| {
        anyhow!(
            "テナント {} がありません / no tenant named {}",
            a.tenant,
            a.tenant
        )
    })?;
    let t0 = std::time::Instant::now();
    let facility = match &a.facility {
        Some(f) => read_facility(f)?,
        None => tenant_facility(&store, tenant, &a.tenant).await?,
    };
    let resources = iryo_operation_calculate_fee::resources::month_resources(&store, tenant, month)
        .await
        .map_err(fhir_err)?;
    eprintln!(
        "FHIRストアから {} リソースを読み込みました / read {} resources from the store: {:.2} s",
        resources.len(),
        resources.len(),
        t0.elapsed().as_secs_f64()
    );
    let out = a.out.clone();
    let t1 = std::time::Instant::now();
    blocking(move || write_receipts(&masters, &facility, month, claim, &resources, &out)).await?;
    eprintln!(
        "算定とUKE出力 / calculation and UKE: {:.2} s",
        t1.elapsed().as_secs_f64()
    );
    Ok(())
}

fn write_receipts(
    masters: &MasterStore,
    facility: &Facility,
    month: NaiveDate,
    claim: NaiveDate,
    resources: &[Value],
    out: &Path,
) -> anyhow::Result<()> {
    let visits: Vec<VisitInput> = iryo_fee::fhir::visits_from_resources(resources)
        .map_err(fee_err)?
        .into_iter()
        .filter(|v| v.date.year() == month.year() && v.date.month() == month.month())
        .collect();
    if visits.is_empty() {
        bail!(
            "{} 年 {} 月の外来受診がありません / no outpatient visits in {}",
            month.year(),
            month.month(),
            month.format("%Y-%m")
        );
    }
    let monthly = iryo_fee::monthly_receipts(masters, facility, claim, &visits).map_err(fee_err)?;
    let errors = error_lines(&monthly.results);
    if !errors.is_empty() {
        bail!(
            "算定エラーのある受診があるため、レセプトを書き出しません / receipts not written, visits have calculation errors:\n  {}",
            errors.join("\n  ")
        );
    }
    let patients: HashSet<&str> = visits.iter().map(|v| v.patient.id.as_str()).collect();
    let points: i64 = monthly.results.iter().map(|r| r.total_points).sum();
    let copay: i64 = monthly.results.iter().map(|r| r.copay_yen).sum();
    println!(
        "診療年月 {} / 請求年月 {}: 受診 {} 件, 患者 {} 人, 合計 {} 点, 窓口負担 {} 円 \
         (visits {}, patients {}, total points {}, copay {} yen)",
        month.format("%Y-%m"),
        claim.format("%Y-%m"),
        visits.len(),
        patients.len(),
        points,
        yen(copay),
        visits.len(),
        patients.len(),
        points,
        copay
    );
    for (payer, bytes) in &monthly.files {
        // what is written is what the parser reads back
        let parsed = UkeFile::parse(bytes).map_err(fee_err)?;
        let dir = out.join(payer_dir(*payer));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("RECEIPTC.UKE");
        let tmp = dir.join(format!("RECEIPTC.UKE.tmp-{}", std::process::id()));
        std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        println!(
            "  {} {}: レセプト {} 件, {} 点, {} bytes (receipts {}, points {})",
            match payer {
                Payer::Shaho => "社保 (支払基金)",
                Payer::Kokuho => "国保 (国保連合会)",
            },
            path.display(),
            parsed.receipts.len(),
            parsed.total_points,
            bytes.len(),
            parsed.receipts.len(),
            parsed.total_points
        );
    }
    Ok(())
}
