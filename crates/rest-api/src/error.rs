//! Errors as FHIR OperationOutcomes with the right HTTP status, messages in Japanese and English.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// One issue of an OperationOutcome.
#[derive(Debug, Clone)]
pub struct Issue {
    pub severity: &'static str,
    pub code: &'static str,
    pub message_ja: String,
    pub message_en: String,
    pub expression: Option<String>,
}

impl Issue {
    pub fn error(code: &'static str, ja: impl Into<String>, en: impl Into<String>) -> Self {
        Issue {
            severity: "error",
            code,
            message_ja: ja.into(),
            message_en: en.into(),
            expression: None,
        }
    }
    pub fn at(mut self, expr: impl Into<String>) -> Self {
        self.expression = Some(expr.into());
        self
    }
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "severity": self.severity,
            "code": self.code,
            "details": {"text": self.message_ja},
            "diagnostics": self.message_en,
        });
        if let Some(e) = &self.expression {
            v["expression"] = json!([e]);
        }
        v
    }
}

/// An error response.
#[derive(Debug, Clone)]
pub struct FhirError {
    pub status: StatusCode,
    pub issues: Vec<Issue>,
}

impl FhirError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        ja: impl Into<String>,
        en: impl Into<String>,
    ) -> Self {
        FhirError {
            status,
            issues: vec![Issue::error(code, ja, en)],
        }
    }
    pub fn bad_request(ja: impl Into<String>, en: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", ja, en)
    }
    pub fn not_found(ty: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("{ty}/{id} は見つかりません"),
            format!("{ty}/{id} not found"),
        )
    }
    pub fn outcome(&self) -> Value {
        operation_outcome(&self.issues)
    }
}

pub fn operation_outcome(issues: &[Issue]) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(Issue::to_json).collect::<Vec<_>>(),
    })
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.outcome()).unwrap_or_default();
        (
            self.status,
            [(axum::http::header::CONTENT_TYPE, crate::FHIR_JSON)],
            body,
        )
            .into_response()
    }
}

impl From<iryo_db::DbError> for FhirError {
    fn from(e: iryo_db::DbError) -> Self {
        use iryo_db::DbError as E;
        match e {
            E::VersionConflict {
                ty,
                id,
                expected,
                current,
            } => FhirError::new(
                StatusCode::PRECONDITION_FAILED,
                "conflict",
                format!("{ty}/{id} の版が一致しません（指定 {expected}、現在 {current}）"),
                format!("version conflict on {ty}/{id}: If-Match {expected}, current {current}"),
            ),
            E::AlreadyExists { ty, id } => FhirError::new(
                StatusCode::CONFLICT,
                "duplicate",
                format!("{ty}/{id} は既に存在します"),
                format!("{ty}/{id} already exists"),
            ),
            E::NotFound { ty, id } => FhirError::new(
                StatusCode::GONE,
                "not-found",
                format!("{ty} {id} は見つからないか期限切れです"),
                format!("{ty} {id} not found or expired"),
            ),
            E::Invalid(m) => FhirError::new(StatusCode::BAD_REQUEST, "not-supported", m.clone(), m),
            E::UnknownTenant(t) => FhirError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("テナント {t} はありません"),
                format!("unknown tenant {t}"),
            ),
            other => {
                tracing::error!("storage error: {other}");
                FhirError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "exception",
                    "保存領域でエラーが発生しました",
                    format!("storage error: {other}"),
                )
            }
        }
    }
}

impl From<iryo_search::query::QueryError> for FhirError {
    fn from(e: iryo_search::query::QueryError) -> Self {
        let mut err = FhirError::bad_request(e.message_ja, e.message_en);
        err.issues[0].expression = Some(e.param);
        err
    }
}
