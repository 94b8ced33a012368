//! Reading the resources a fee calculation needs from the tenant's FHIR store: one
//! Encounter (with the patient's earlier visits of the month, for the monthly rules) for
//! `$calculate-fee`, or every Encounter of a month for `iryo fee receipt`.
//!
//! Everything goes through ordinary store searches with `_include`/`_revinclude`, so the tenant
//! is bound in every statement exactly as for a REST search.

use chrono::NaiveDate;
use iryo_rest_api::FhirError;
use serde_json::Value;
use std::collections::HashSet;

/// Page size of the store searches (includes per page stay well under the store's limits).
const PAGE: usize = 200;

/// The includes that bring an Encounter's patient, diagnoses and orders along.
pub const ENCOUNTER_INCLUDES: &str = "_include=Encounter:subject&_include=Encounter:diagnosis\
     &_revinclude=ChargeItem:context&_revinclude=MedicationRequest:encounter\
     &_revinclude=ServiceRequest:encounter";

/// Resources gathered by several searches, each `Type/id` once.
#[derive(Default)]
pub struct Gathered {
    seen: HashSet<(String, String)>,
    pub resources: Vec<Value>,
}

impl Gathered {
    /// The ids of the gathered resources of `ty`.
    pub fn ids(&self, ty: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .seen
            .iter()
            .filter(|(t, _)| t == ty)
            .map(|(_, id)| id.clone())
            .collect();
        v.sort();
        v
    }

    /// All pages of the search `ty?qs` (matches and includes) added.
    pub async fn search(
        &mut self,
        store: &iryo_db::Store,
        tenant: i64,
        ty: &str,
        qs: &str,
    ) -> Result<(), FhirError> {
        let mut offset = 0;
        let mut token = None;
        loop {
            let query = iryo_search::query::parse_query(
                iryo_fhir_spec::r4(),
                Some(ty),
                &format!("{qs}&_count={PAGE}&_offset={offset}"),
                iryo_search::query::Handling::Strict,
            )?;
            let page = store
                .search(
                    tenant,
                    iryo_db::SearchRequest {
                        query,
                        page_token: token.clone(),
                        base_url: String::new(),
                    },
                )
                .await?;
            for r in page.matches.iter().chain(page.includes.iter()) {
                let Some(json) = &r.json else { continue };
                if self.seen.insert((r.ty.clone(), r.id.clone())) {
                    let v = serde_json::from_slice(json).map_err(|e| {
                        FhirError::new(
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            "exception",
                            format!("保存された {}/{} を読めません: {e}", r.ty, r.id),
                            format!("stored {}/{} is unreadable: {e}", r.ty, r.id),
                        )
                    })?;
                    self.resources.push(v);
                }
            }
            if !page.has_next || page.matches.is_empty() {
                return Ok(());
            }
            token = page.token.clone();
            offset += page.matches.len();
        }
    }

    /// The Coverages of the gathered patients (and the Organizations they name as payor),
    /// 100 patients per search: cheaper than an iterated `_revinclude`, which queries once
    /// per included resource.
    pub async fn coverages(
        &mut self,
        store: &iryo_db::Store,
        tenant: i64,
    ) -> Result<(), FhirError> {
        let patients: Vec<String> = self
            .ids("Patient")
            .into_iter()
            .map(|id| format!("Patient/{id}"))
            .collect();
        for chunk in patients.chunks(100) {
            let qs = format!("beneficiary={}&_include=Coverage:payor", chunk.join(","));
            self.search(store, tenant, "Coverage", &qs).await?;
        }
        Ok(())
    }
}

/// Every Encounter of the month starting `month` with its Patient, Conditions, ChargeItems,
/// MedicationRequests, ServiceRequests and the patients' Coverages (`iryo fee receipt`).
pub async fn month_resources(
    store: &iryo_db::Store,
    tenant: i64,
    month: NaiveDate,
) -> Result<Vec<Value>, FhirError> {
    let next_month = month
        .checked_add_months(chrono::Months::new(1))
        .ok_or_else(|| FhirError::bad_request("月が範囲外です", "month out of range"))?;
    let mut g = Gathered::default();
    // ge/lt rather than `date=YYYY-MM`: an Encounter without period.end has an open range and
    // would not be inside the month; visits are kept by period.start afterwards.
    let qs = format!(
        "date=ge{}&date=lt{}&{ENCOUNTER_INCLUDES}",
        month.format("%Y-%m-%d"),
        next_month.format("%Y-%m-%d"),
    );
    g.search(store, tenant, "Encounter", &qs).await?;
    g.coverages(store, tenant).await?;
    Ok(g.resources)
}

/// The patient's Encounters in `[from, to)` (for the history of one visit), with everything
/// [`ENCOUNTER_INCLUDES`] brings.
pub async fn patient_encounters(
    g: &mut Gathered,
    store: &iryo_db::Store,
    tenant: i64,
    patient_id: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<(), FhirError> {
    let qs = format!(
        "subject=Patient/{patient_id}&date=ge{}&date=lt{}&{ENCOUNTER_INCLUDES}",
        from.format("%Y-%m-%d"),
        to.format("%Y-%m-%d"),
    );
    g.search(store, tenant, "Encounter", &qs).await
}
