//! Test kit: starts a real iryo server (SQLite or PostgreSQL) on a loopback port for integration tests.
