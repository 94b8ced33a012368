//! Extension point for FHIR operations (`$name`) implemented outside this crate.
//!
//! Each capability with its own crate (fee calculation, the clinic side of the sharing
//! service, …) implements [`Operation`]; `iryo serve` lists them in [`crate::Config::operations`].
//! The REST layer then routes `[base]/$name`, `[base]/[type]/$name` and
//! `[base]/[type]/[id]/$name` to it, enforces the access policy with the accesses the
//! operation declares ([`Operation::accesses`]), writes them to the audit log, and lists the
//! operation in the CapabilityStatement.
//!
//! ```
//! use iryo_rest_api::operation::{Level, Operation, OperationCall, OperationFuture, fhir_json};
//! use iryo_rest_api::auth::Access;
//! use iryo_security::roles::Interaction;
//!
//! /// `GET [base]/Patient/{id}/$hello`: answers with the patient's id.
//! struct Hello;
//! impl Operation for Hello {
//!     fn name(&self) -> &'static str { "hello" }
//!     fn level(&self) -> Level { Level::Instance("Patient") }
//!     fn accesses(&self, call: &OperationCall<'_>) -> Vec<Access> {
//!         vec![Access::new(Interaction::Read, "Patient").with_id(call.id.unwrap_or(""))]
//!     }
//!     fn call<'a>(&'a self, call: OperationCall<'a>) -> OperationFuture<'a> {
//!         Box::pin(async move {
//!             let v = serde_json::json!({"resourceType": "Parameters",
//!                 "parameter": [{"name": "id", "valueString": call.id}]});
//!             Ok(fhir_json(axum::http::StatusCode::OK, &v))
//!         })
//!     }
//! }
//! ```

use crate::auth::Access;
use crate::error::FhirError;
use crate::FHIR_JSON;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use iryo_security::authz::Principal;
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;

/// Where an operation is invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `[base]/$name`
    System,
    /// `[base]/[type]/$name`
    Type(&'static str),
    /// `[base]/[type]/[id]/$name`
    Instance(&'static str),
}

/// The future an operation returns.
pub type OperationFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Response, FhirError>> + Send + 'a>>;

/// One invocation, with everything the REST layer already parsed.
pub struct OperationCall<'a> {
    pub store: &'a iryo_db::Store,
    /// Internal tenant key (every store call takes it).
    pub tenant: i64,
    /// Tenant name as in `/t/{tenant}/fhir` (`default` for `/fhir`).
    pub tenant_name: &'a str,
    /// The FHIR base URL of the tenant (`http://host/t/x/fhir`).
    pub base: &'a str,
    pub method: &'a Method,
    /// The resource type of type- and instance-level calls.
    pub resource_type: Option<&'a str>,
    /// The id of instance-level calls (already checked to be a valid FHIR id).
    pub id: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// Query parameters (and form parameters of a POST with `application/x-www-form-urlencoded`).
    pub params: &'a [(String, String)],
    /// The request body (a `Parameters` resource or a resource, by the operation's definition).
    pub body: &'a [u8],
    /// The authenticated caller; `None` when security is off (tests, `--insecure-loopback`).
    pub principal: Option<&'a Principal>,
    pub pretty: bool,
}

impl OperationCall<'_> {
    /// The first query/form parameter named `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON; `None` when empty or form-encoded (its fields are in
    /// [`OperationCall::params`]); 400 OperationOutcome when malformed.
    pub fn body_json(&self) -> Result<Option<Value>, FhirError> {
        let form = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if form || self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(self.body).map(Some).map_err(|e| {
            FhirError::bad_request(
                format!("リクエスト本文が正しい JSON ではありません: {e}"),
                format!("the request body is not valid JSON: {e}"),
            )
        })
    }
}

/// A FHIR operation served by the REST layer.
pub trait Operation: Send + Sync {
    /// The name without `$` (`calculate-fee`).
    fn name(&self) -> &'static str;
    /// Where it is invoked.
    fn level(&self) -> Level;
    /// Canonical URL of its OperationDefinition, for the CapabilityStatement.
    fn definition(&self) -> Option<&'static str> {
        None
    }
    /// Whether `GET` is allowed (operations without side effects); `POST` always is.
    fn allows_get(&self) -> bool {
        true
    }
    /// The data accesses the call performs, checked against the caller's role and scopes
    /// and written to the access log before [`Operation::call`] runs. Callers restricted to
    /// one patient's compartment may only call operations whose accesses all name that patient.
    fn accesses(&self, call: &OperationCall<'_>) -> Vec<Access>;
    /// Runs the operation.
    fn call<'a>(&'a self, call: OperationCall<'a>) -> OperationFuture<'a>;
}

/// A FHIR JSON response.
pub fn fhir_json(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, FHIR_JSON)],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

/// The registered operation a path names, if any: `[$op]`, `[ty, $op]`, `[ty, id, $op]`.
pub fn find<'o>(
    ops: &'o [std::sync::Arc<dyn Operation>],
    segs: &[&str],
) -> Option<&'o dyn Operation> {
    let last = segs.last()?;
    let name = last.strip_prefix('$')?;
    ops.iter()
        .find(|op| {
            op.name() == name
                && match (op.level(), segs) {
                    (Level::System, [_]) => true,
                    (Level::Type(t), [ty, _]) => t == *ty,
                    (Level::Instance(t), [ty, _, _]) => t == *ty,
                    _ => false,
                }
        })
        .map(|op| op.as_ref())
}
