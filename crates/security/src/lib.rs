//! Security for medical institutions: passwords, TOTP, sessions, tokens, roles, tamper-evident audit log, encrypted backups.
