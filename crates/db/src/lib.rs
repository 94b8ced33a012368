//! Versioned, tenant-keyed FHIR resource store on embedded SQLite or PostgreSQL, with search indexes and group commit.
