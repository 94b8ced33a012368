//! FHIR search: parameter parsing, index value extraction and query model (storage-independent).
