//! Response shaping: `_summary`, `_elements`, `_pretty`, and the SUBSETTED tag.

use iryo_search::query::Summary;
use serde_json::{json, Map, Value};

/// How a resource should be shaped on the way out.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    pub summary: Option<Summary>,
    pub elements: Vec<String>,
}

impl Shape {
    pub fn is_identity(&self) -> bool {
        self.elements.is_empty() && matches!(self.summary, None | Some(Summary::False))
    }
}

fn mark_subsetted(map: &mut Map<String, Value>) {
    let meta = map.entry("meta").or_insert_with(|| json!({}));
    if let Value::Object(m) = meta {
        let tags = m.entry("tag").or_insert_with(|| json!([]));
        if let Value::Array(a) = tags {
            a.push(json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}));
        }
    }
}

/// Apply `_summary` / `_elements` to a resource (top-level elements, as the spec requires).
pub fn shape(resource: Value, shape: &Shape) -> Value {
    if shape.is_identity() {
        return resource;
    }
    let Value::Object(map) = resource else {
        return resource;
    };
    let ty = map
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let model = iryo_fhir_spec::r4();
    let keep = |k: &str| -> bool {
        if matches!(k, "resourceType" | "id" | "meta") {
            return true;
        }
        let key = k.strip_prefix('_').unwrap_or(k);
        let el = model.child(&ty, key);
        let mandatory = el.as_ref().is_some_and(|c| c.element.min > 0);
        if !shape.elements.is_empty() {
            let name = el.as_ref().map(|c| c.element.name.as_str()).unwrap_or(key);
            return mandatory || shape.elements.iter().any(|e| e == name || e == key);
        }
        match shape.summary {
            Some(Summary::True) => mandatory || el.is_some_and(|c| c.element.is_summary),
            Some(Summary::Text) => mandatory || k == "text",
            Some(Summary::Data) => k != "text",
            _ => true,
        }
    };
    let mut out = Map::with_capacity(map.len());
    for (k, v) in map {
        if keep(&k) {
            out.insert(k, v);
        }
    }
    mark_subsetted(&mut out);
    Value::Object(out)
}

/// Serialize, pretty when asked.
pub fn to_bytes(v: &Value, pretty: bool) -> Vec<u8> {
    if pretty {
        serde_json::to_vec_pretty(v).unwrap_or_default()
    } else {
        serde_json::to_vec(v).unwrap_or_default()
    }
}
