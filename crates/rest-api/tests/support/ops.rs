//! Operations used by the tests of the operation extension point (included with `#[path]`).

use iryo_rest_api::auth::Access;
use iryo_rest_api::operation::{fhir_json, Level, Operation, OperationCall, OperationFuture};
use iryo_rest_api::Operations;
use iryo_security::roles::Interaction;
use serde_json::{json, Value};
use std::sync::Arc;

/// `[base]/Patient/{id}/$name-length`: reads the patient from the store and returns how many
/// characters its first family name has, plus the `greeting` parameter — enough to see that
/// the call reaches the right tenant, id, parameters and body.
struct NameLength;

impl Operation for NameLength {
    fn name(&self) -> &'static str {
        "name-length"
    }
    fn level(&self) -> Level {
        Level::Instance("Patient")
    }
    fn accesses(&self, call: &OperationCall<'_>) -> Vec<Access> {
        vec![Access::new(Interaction::Read, "Patient").with_id(call.id.unwrap_or_default())]
    }
    fn call<'a>(&'a self, call: OperationCall<'a>) -> OperationFuture<'a> {
        Box::pin(async move {
            let id = call.id.expect("instance level");
            let Some(r) = call.store.read(call.tenant, "Patient", id).await? else {
                return Err(iryo_rest_api::FhirError::new(
                    axum::http::StatusCode::NOT_FOUND,
                    "not-found",
                    format!("Patient/{id} はありません"),
                    format!("no Patient/{id}"),
                ));
            };
            let p: Value = serde_json::from_slice(r.json.as_deref().expect("live")).expect("json");
            let family = p["name"][0]["family"].as_str().unwrap_or_default();
            let body_note = call
                .body_json()?
                .and_then(|b| b["note"].as_str().map(str::to_string));
            let v = json!({"resourceType": "Parameters", "parameter": [
                {"name": "length", "valueInteger": family.chars().count()},
                {"name": "tenant", "valueString": call.tenant_name},
                {"name": "greeting", "valueString": call.param("greeting").unwrap_or("")},
                {"name": "note", "valueString": body_note.unwrap_or_default()},
            ]});
            Ok(fhir_json(axum::http::StatusCode::OK, &v))
        })
    }
}

/// `POST [base]/$touch` (system level, no GET).
struct Touch;

impl Operation for Touch {
    fn name(&self) -> &'static str {
        "touch"
    }
    fn level(&self) -> Level {
        Level::System
    }
    fn allows_get(&self) -> bool {
        false
    }
    fn definition(&self) -> Option<&'static str> {
        Some("https://iryo.example.jp/fhir/OperationDefinition/touch")
    }
    fn accesses(&self, _call: &OperationCall<'_>) -> Vec<Access> {
        vec![Access::new(Interaction::Create, "Basic")]
    }
    fn call<'a>(&'a self, _call: OperationCall<'a>) -> OperationFuture<'a> {
        Box::pin(async move {
            Ok(fhir_json(
                axum::http::StatusCode::OK,
                &json!({"resourceType": "Parameters"}),
            ))
        })
    }
}

pub fn test_operations() -> Operations {
    Operations(vec![Arc::new(NameLength), Arc::new(Touch)])
}
