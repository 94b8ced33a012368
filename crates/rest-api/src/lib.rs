//! The FHIR R4 RESTful API (axum): interactions, search, batch/transaction, history, bulk export.
