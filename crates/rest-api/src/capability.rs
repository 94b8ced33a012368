//! `GET [base]/metadata`: a CapabilityStatement generated from what this server really does.

use iryo_fhir_spec::SearchParamType as K;
use serde_json::{json, Value};

static STATEMENT: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| build(""));

/// The CapabilityStatement for a base URL (built once, then copied with the base and date).
pub fn capability_statement(base: &str) -> Value {
    let mut v = STATEMENT.clone();
    v["implementation"]["url"] = json!(base);
    v["date"] = json!(crate::handlers::instant(iryo_db::now_ms()));
    v
}

/// Lists the registered operations ([`crate::operation::Operation`]) at the level they are
/// invoked: system ones in `rest.operation`, type and instance ones on their resource.
pub fn add_operations(cs: &mut Value, ops: &[std::sync::Arc<dyn crate::operation::Operation>]) {
    use crate::operation::Level;
    for op in ops {
        let mut entry = json!({"name": op.name()});
        if let Some(d) = op.definition() {
            entry["definition"] = json!(d);
        }
        let list = match op.level() {
            Level::System => cs["rest"][0].get_mut("operation"),
            Level::Type(t) | Level::Instance(t) => cs["rest"][0]["resource"]
                .as_array_mut()
                .and_then(|rs| rs.iter_mut().find(|r| r["type"] == t))
                .map(|r| {
                    if r.get("operation").is_none() {
                        r["operation"] = json!([]);
                    }
                    &mut r["operation"]
                }),
        };
        if let Some(Value::Array(a)) = list {
            a.push(entry);
        }
    }
}

fn build(base: &str) -> Value {
    let model = iryo_search::model();
    let mut resources = vec![];
    for ty in model.resource_types() {
        let params = model.search_params(ty);
        let mut sp = vec![];
        let mut includes = vec![];
        for p in &params {
            if p.kind == K::Special
                || p.expression_for(ty).is_none()
                    && !matches!(p.code.as_str(), "_id" | "_lastUpdated")
            {
                continue;
            }
            sp.push(json!({"name": p.code, "definition": p.url, "type": kind_code(p.kind)}));
            if p.kind == K::Reference {
                includes.push(format!("{ty}:{}", p.code));
            }
        }
        let mut revincludes = vec![];
        for other in model.resource_types() {
            for p in model.search_params(other) {
                if p.kind == K::Reference
                    && p.target.iter().any(|t| t == ty)
                    && p.expression_for(other).is_some()
                {
                    revincludes.push(format!("{other}:{}", p.code));
                }
            }
        }
        let interactions: Vec<Value> = [
            "read",
            "vread",
            "update",
            "patch",
            "delete",
            "history-instance",
            "history-type",
            "create",
            "search-type",
        ]
        .iter()
        .map(|c| json!({"code": c}))
        .collect();
        let mut r = json!({
            "type": ty,
            "profile": format!("http://hl7.org/fhir/StructureDefinition/{ty}"),
            "interaction": interactions,
            "versioning": "versioned-update",
            "readHistory": true,
            "updateCreate": true,
            "conditionalCreate": true,
            "conditionalRead": "not-supported",
            "conditionalUpdate": true,
            "conditionalDelete": "single",
            "searchInclude": includes,
            "searchRevInclude": revincludes,
            "searchParam": sp,
        });
        if ty == "Patient" || ty == "Group" {
            r["operation"] = json!([{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"}]);
        }
        resources.push(r);
    }
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": crate::handlers::instant(iryo_db::now_ms()),
        "publisher": "iryo",
        "kind": "instance",
        "software": {"name": "iryo", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "iryo FHIR server", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "search-system"}, {"code": "history-system"}],
            "searchParam": [
                {"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"},
                {"name": "_lastUpdated", "type": "date", "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"}
            ],
            "operation": [{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}],
        }],
    })
}

fn kind_code(k: K) -> &'static str {
    match k {
        K::Number => "number",
        K::Date => "date",
        K::String => "string",
        K::Token => "token",
        K::Reference => "reference",
        K::Composite => "composite",
        K::Quantity => "quantity",
        K::Uri => "uri",
        K::Special => "special",
    }
}
