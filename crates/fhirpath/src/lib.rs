//! FHIRPath (N1 + R4 additions) parser and evaluator over serde_json resources.
