//! `[base]/Encounter/{id}/$calculate-fee`: the 共通算定モジュール (`iryo-fee`) over the tenant's
//! FHIR data, as an [`iryo_rest_api::operation::Operation`].
//!
//! The operation reads the Encounter, its Patient, the Coverages, Conditions, and the
//! ChargeItems, MedicationRequests and ServiceRequests of the encounter, maps them with
//! [`iryo_fee::fhir::visits_from_resources`], and calculates the visit against the masters of
//! the server's data directory (`DATA/fee-masters.db`, written by `iryo fee masters import`).
//! The patient's earlier Encounters of the month (and of the same week) are calculated first,
//! so the once-a-month rules (判断料, 特定疾患処方管理加算, 算定回数, 背反, 公費 monthly cap) see
//! them. The facility (病院/診療所, beds, 施設基準) is the tenant setting `fee_facility`.
//!
//! The answer is a `Parameters` resource ([`result::parameters`]); errors are
//! OperationOutcomes: 404 unknown Encounter, 422 input that cannot be mapped or calculated
//! (naming the resource and element), 409 when no masters are imported. The request/response
//! shapes are in `docs/FEE.md`.

pub mod resources;
pub mod result;

use axum::http::StatusCode;
use chrono::{Datelike, NaiveDate};
use iryo_fee::{Facility, FeeError, MasterStore, VisitResult};
use iryo_rest_api::auth::Access;
use iryo_rest_api::operation::{Level, Operation, OperationCall, OperationFuture};
use iryo_rest_api::FhirError;
use iryo_security::roles::Interaction;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Canonical URL of the operation's definition (listed in the CapabilityStatement).
pub const DEFINITION: &str =
    "https://iryo.example.jp/fhir/OperationDefinition/Encounter-calculate-fee";

/// The tenant setting holding the facility (a `iryo_fee::Facility` JSON object).
pub const FACILITY_SETTING: &str = "fee_facility";

/// The master store file inside a data directory.
pub fn master_store_path(data_dir: &Path) -> PathBuf {
    data_dir.join("fee-masters.db")
}

/// The master store, opened on first use and reopened when `iryo fee masters import` has
/// replaced the file (the import renames a new file over the old one).
struct Masters {
    path: PathBuf,
    open: Mutex<Option<(Stamp, Arc<MasterStore>)>>,
}

type Stamp = (SystemTime, u64);

impl Masters {
    fn get(&self) -> Result<Arc<MasterStore>, FhirError> {
        let meta = std::fs::metadata(&self.path).map_err(|_| no_masters(&self.path))?;
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        let mut cur = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, m)) = cur.as_ref() {
            if *s == stamp {
                return Ok(m.clone());
            }
        }
        let m = Arc::new(MasterStore::open(&self.path).map_err(|e| {
            FhirError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                format!("点数マスターを開けません: {}", e.message_ja()),
                format!("cannot open the fee masters: {}", e.message_en()),
            )
        })?);
        *cur = Some((stamp, m.clone()));
        Ok(m)
    }
}

fn no_masters(path: &Path) -> FhirError {
    FhirError::new(
        StatusCode::CONFLICT,
        "processing",
        format!(
            "点数マスターが取り込まれていません（{}）。サーバーのデータディレクトリに対して `iryo fee masters import DIR` を実行してください",
            path.display()
        ),
        format!(
            "no fee masters are imported ({}): run `iryo fee masters import DIR` for the server's data directory",
            path.display()
        ),
    )
}

/// The `$calculate-fee` operation.
pub struct CalculateFee {
    masters: Masters,
}

impl CalculateFee {
    /// The operation over the master store at `master_store` (usually
    /// [`master_store_path`] of the server's data directory). The file need not exist yet.
    pub fn new(master_store: PathBuf) -> CalculateFee {
        CalculateFee {
            masters: Masters {
                path: master_store,
                open: Mutex::new(None),
            },
        }
    }
}

/// What the operation reads, declared for the access policy and the audit log.
const SEARCHED: [&str; 5] = [
    "ChargeItem",
    "MedicationRequest",
    "ServiceRequest",
    "Coverage",
    "Encounter",
];

impl Operation for CalculateFee {
    fn name(&self) -> &'static str {
        "calculate-fee"
    }
    fn level(&self) -> Level {
        Level::Instance("Encounter")
    }
    fn definition(&self) -> Option<&'static str> {
        Some(DEFINITION)
    }
    fn accesses(&self, call: &OperationCall<'_>) -> Vec<Access> {
        let mut v = vec![
            Access::new(Interaction::Read, "Encounter").with_id(call.id.unwrap_or_default()),
            Access::new(Interaction::Read, "Patient"),
            Access::new(Interaction::Read, "Condition"),
            // the insurer of a Coverage may be an Organization (`_include=Coverage:payor`)
            Access::new(Interaction::Read, "Organization"),
        ];
        v.extend(SEARCHED.iter().map(|t| Access::new(Interaction::Search, t)));
        v
    }
    fn call<'a>(&'a self, call: OperationCall<'a>) -> OperationFuture<'a> {
        Box::pin(async move {
            let id = call.id.unwrap_or_default();
            let result = self.calculate(&call, id).await?;
            let body = result::parameters(&result, id);
            let bytes = if call.pretty {
                serde_json::to_vec_pretty(&body)
            } else {
                serde_json::to_vec(&body)
            }
            .unwrap_or_default();
            Ok(axum::response::IntoResponse::into_response((
                StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, iryo_rest_api::FHIR_JSON)],
                bytes,
            )))
        })
    }
}

fn unprocessable(ja: String, en: String, expression: Option<String>) -> FhirError {
    let mut e = FhirError::new(StatusCode::UNPROCESSABLE_ENTITY, "processing", ja, en);
    e.issues[0].expression = expression;
    e
}

/// A [`FeeError`] of the mapping or the calculation as an OperationOutcome.
fn fee_error(e: FeeError) -> FhirError {
    match &e {
        FeeError::InvalidInput { field, .. } => {
            unprocessable(e.message_ja(), e.message_en(), Some(field.clone()))
        }
        FeeError::UnknownCode { .. } => unprocessable(
            format!(
                "{}（取り込まれた点数マスターが診療日を含むか確認してください）",
                e.message_ja()
            ),
            format!(
                "{} (check that the imported masters cover the visit date)",
                e.message_en()
            ),
            None,
        ),
        _ => FhirError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            e.message_ja(),
            e.message_en(),
        ),
    }
}

/// The `Type/id` a literal reference names (`Patient/1`, `http://…/Patient/1`).
fn reference_id<'v>(reference: &'v str, ty: &str) -> Option<&'v str> {
    let r = reference.split("/_history/").next().unwrap_or(reference);
    let mut parts = r.rsplit('/');
    let id = parts.next()?;
    let t = parts.next()?;
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    (t == ty && valid).then_some(id)
}

/// `period.start` of an Encounter resource (sorting key of same-day visits).
fn start_of(enc: &Value) -> &str {
    enc.get("period")
        .and_then(|p| p.get("start"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Whether an earlier Encounter counts as an outpatient visit for the history (入院 and
/// other classes are not calculated here, so they cannot block this visit's calculation).
fn is_outpatient(enc: &Value) -> bool {
    match enc
        .get("class")
        .and_then(|c| c.get("code"))
        .and_then(Value::as_str)
    {
        None => true,
        Some(c) => matches!(c, "AMB" | "VR" | "HH"),
    }
}

/// Sunday of the week of `d` (the 週 unit of the 電子点数表).
fn week_start(d: NaiveDate) -> NaiveDate {
    d - chrono::Days::new(u64::from(d.weekday().num_days_from_sunday()))
}

impl CalculateFee {
    async fn calculate(
        &self,
        call: &OperationCall<'_>,
        id: &str,
    ) -> Result<VisitResult, FhirError> {
        let store = call.store;
        let tenant = call.tenant;
        // the Encounter itself: 404 when unknown (or deleted)
        let enc = match store.read(tenant, "Encounter", id).await? {
            Some(r) if !r.deleted => r,
            _ => return Err(FhirError::not_found("Encounter", id)),
        };
        let enc: Value =
            serde_json::from_slice(enc.json.as_deref().map(Vec::as_slice).unwrap_or(b"{}"))
                .map_err(|e| {
                    unprocessable(
                        format!("Encounter/{id} を読めません: {e}"),
                        format!("Encounter/{id} is unreadable: {e}"),
                        None,
                    )
                })?;
        for st in ["cancelled", "entered-in-error", "planned"] {
            if enc.get("status").and_then(Value::as_str) == Some(st) {
                return Err(unprocessable(
                    format!("Encounter/{id} の状態が {st} のため算定しません"),
                    format!("Encounter/{id} has status {st}: not calculated"),
                    Some(format!("Encounter/{id}.status")),
                ));
            }
        }
        let subject = enc
            .get("subject")
            .and_then(|s| s.get("reference"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                unprocessable(
                    format!("Encounter/{id}.subject（患者への参照）がありません"),
                    format!("Encounter/{id}.subject (the patient reference) is missing"),
                    Some(format!("Encounter/{id}.subject")),
                )
            })?;
        let patient_id = reference_id(subject, "Patient").ok_or_else(|| {
            unprocessable(
                format!("Encounter/{id}.subject は Patient への参照ではありません: {subject}"),
                format!("Encounter/{id}.subject is not a Patient reference: {subject}"),
                Some(format!("Encounter/{id}.subject")),
            )
        })?;
        let start = start_of(&enc).to_string();
        let date =
            NaiveDate::parse_from_str(start.get(..10).unwrap_or(""), "%Y-%m-%d").map_err(|_| {
                unprocessable(
                    format!("Encounter/{id}.period.start（診療日）がないか日付ではありません"),
                    format!(
                        "Encounter/{id}.period.start (the visit date) is missing or not a date"
                    ),
                    Some(format!("Encounter/{id}.period.start")),
                )
            })?;

        // the encounter with its orders, and the patient's earlier visits of the month / week
        let mut g = resources::Gathered::default();
        g.search(
            store,
            tenant,
            "Encounter",
            &format!("_id={id}&{}", resources::ENCOUNTER_INCLUDES),
        )
        .await?;
        let month_start = date.with_day(1).unwrap_or(date);
        let from = month_start.min(week_start(date));
        let to = date.succ_opt().unwrap_or(date);
        resources::patient_encounters(&mut g, store, tenant, patient_id, from, to).await?;
        g.coverages(store, tenant).await?;
        // keep this encounter and the ones before it (by period.start, then id)
        let key = (start.clone(), id.to_string());
        let from_text = from.format("%Y-%m-%d").to_string();
        let resources: Vec<Value> = g
            .resources
            .into_iter()
            .filter(|r| {
                r.get("resourceType").and_then(Value::as_str) != Some("Encounter") || {
                    let rid = r.get("id").and_then(Value::as_str).unwrap_or("");
                    // (an Encounter without period.end matches every later date range, so
                    // the window is checked on period.start here)
                    rid == id
                        || ((start_of(r).to_string(), rid.to_string()) < key
                            && start_of(r).get(..10).unwrap_or("") >= from_text.as_str()
                            && is_outpatient(r))
                }
            })
            .collect();
        let settings = store.tenant_settings(tenant).await?;
        let facility = facility_of(&settings)?;
        let masters = self.masters.get()?;
        let target = id.to_string();
        tokio::task::spawn_blocking(move || {
            calculate_visit(&masters, &facility, &resources, &target)
        })
        .await
        .map_err(|e| {
            FhirError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                format!("算定処理が異常終了しました: {e}"),
                format!("the calculation failed: {e}"),
            )
        })?
    }
}

/// The facility of the tenant setting [`FACILITY_SETTING`]; a clinic with no 施設基準 when unset.
pub fn facility_of(settings: &Value) -> Result<Facility, FhirError> {
    match settings.get(FACILITY_SETTING) {
        None | Some(Value::Null) => Ok(Facility::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
            FhirError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                format!("テナント設定 {FACILITY_SETTING}（施設情報）が不正です: {e}。`iryo fee facility` で設定し直してください"),
                format!("the tenant setting {FACILITY_SETTING} is invalid: {e}; set it again with `iryo fee facility`"),
            )
        }),
    }
}

/// Map the resources and calculate the visits of the patient in order; the result of
/// Encounter `target`. Error-level messages of the result become a 422 naming the resource
/// whose code caused them.
pub fn calculate_visit(
    masters: &MasterStore,
    facility: &Facility,
    resources: &[Value],
    target: &str,
) -> Result<VisitResult, FhirError> {
    let visits = iryo_fee::fhir::visits_from_resources(resources).map_err(fee_error)?;
    if !visits.iter().any(|v| v.id == target) {
        return Err(unprocessable(
            format!("Encounter/{target} は算定対象の外来受診ではありません"),
            format!("Encounter/{target} is not an outpatient visit that can be calculated"),
            Some(format!("Encounter/{target}")),
        ));
    }
    // Visits of the previous month (same week) count only as history (週 limits); the
    // month's visits are calculated in order, so the monthly rules and caps see each other.
    let (month_y, month_m) = visits
        .iter()
        .find(|v| v.id == target)
        .map(|v| (v.date.year(), v.date.month()))
        .unwrap_or_default();
    let (earlier, mut month): (Vec<_>, Vec<_>) = visits
        .into_iter()
        .partition(|v| (v.date.year(), v.date.month()) != (month_y, month_m));
    // same-day visits in the order they started
    let starts: std::collections::HashMap<&str, &str> = resources
        .iter()
        .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("Encounter"))
        .filter_map(|r| Some((r.get("id")?.as_str()?, start_of(r))))
        .collect();
    month.sort_by(|a, b| {
        (a.date, starts.get(a.id.as_str()), &a.id).cmp(&(b.date, starts.get(b.id.as_str()), &b.id))
    });
    if !earlier.is_empty() {
        let prior: Vec<_> = iryo_fee::calculate_month(masters, facility, &earlier)
            .map_err(fee_error)?
            .iter()
            .flat_map(VisitResult::history_lines)
            .collect();
        for v in &mut month {
            v.history.extend(prior.iter().cloned());
        }
    }
    let results = iryo_fee::calculate_month(masters, facility, &month).map_err(fee_error)?;
    let result = month
        .iter()
        .zip(results)
        .find(|(v, _)| v.id == target)
        .map(|(_, r)| r)
        .ok_or_else(|| {
            fee_error(FeeError::InvalidInput {
                field: format!("Encounter/{target}"),
                reason: "not calculated".into(),
            })
        })?;
    // errors of earlier visits only matter as history; this visit's errors refuse the result
    let errors: Vec<_> = result
        .messages
        .iter()
        .filter(|m| m.level == iryo_fee::calc::model::Level::Error)
        .collect();
    if !errors.is_empty() {
        return Err(FhirError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            issues: errors
                .iter()
                .map(|m| {
                    let mut i = iryo_rest_api::Issue::error(
                        "business-rule",
                        format!("{}（規則 {}）", m.message_ja, m.rule),
                        format!("{} (rule {})", m.message_en, m.rule),
                    );
                    i.expression = m
                        .code
                        .as_deref()
                        .and_then(|c| result::resource_with_code(resources, target, c))
                        .or_else(|| Some(format!("Encounter/{target}")));
                    i
                })
                .collect(),
        });
    }
    Ok(result)
}
