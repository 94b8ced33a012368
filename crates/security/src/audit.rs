//! Tamper-evident access log.
//!
//! Every entry commits to the one before it:
//! `hash = SHA-256(prev_hash || canonical(entry))`, with `prev_hash` of the
//! first entry of a tenant = 32 zero bytes. [`verify`] recomputes the chain
//! and reports the first entry that was altered, deleted or inserted —
//! including changes made directly in the database. Truncation of the newest
//! entries is detected against an exported [`ChainHead`] checkpoint
//! ([`verify_against_head`]).
//!
//! Entries are shown to administrators as FHIR R4 `AuditEvent` resources in
//! the IHE Basic Audit Log Patterns (BALP) shape ([`to_fhir_audit_event`]).

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::error::SecurityError;

/// `prev_hash` of the first entry of a chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditAction {
    Login,
    Logout,
    LoginFailed,
    Read,
    Search,
    Create,
    Update,
    Delete,
    History,
    Export,
    BreakGlass,
    /// User management: add, disable, expire, role or admin change.
    UserAdmin,
    PasswordChange,
    TotpEnrol,
    SessionRevoke,
    ConfigChange,
    Backup,
    Restore,
    AuditExport,
    AuditVerify,
}

impl AuditAction {
    pub const ALL: [AuditAction; 20] = [
        AuditAction::Login,
        AuditAction::Logout,
        AuditAction::LoginFailed,
        AuditAction::Read,
        AuditAction::Search,
        AuditAction::Create,
        AuditAction::Update,
        AuditAction::Delete,
        AuditAction::History,
        AuditAction::Export,
        AuditAction::BreakGlass,
        AuditAction::UserAdmin,
        AuditAction::PasswordChange,
        AuditAction::TotpEnrol,
        AuditAction::SessionRevoke,
        AuditAction::ConfigChange,
        AuditAction::Backup,
        AuditAction::Restore,
        AuditAction::AuditExport,
        AuditAction::AuditVerify,
    ];

    pub fn code(self) -> &'static str {
        match self {
            AuditAction::Login => "login",
            AuditAction::Logout => "logout",
            AuditAction::LoginFailed => "login-failed",
            AuditAction::Read => "read",
            AuditAction::Search => "search",
            AuditAction::Create => "create",
            AuditAction::Update => "update",
            AuditAction::Delete => "delete",
            AuditAction::History => "history",
            AuditAction::Export => "export",
            AuditAction::BreakGlass => "break-glass",
            AuditAction::UserAdmin => "user-admin",
            AuditAction::PasswordChange => "password-change",
            AuditAction::TotpEnrol => "totp-enrol",
            AuditAction::SessionRevoke => "session-revoke",
            AuditAction::ConfigChange => "config-change",
            AuditAction::Backup => "backup",
            AuditAction::Restore => "restore",
            AuditAction::AuditExport => "audit-export",
            AuditAction::AuditVerify => "audit-verify",
        }
    }
}

impl FromStr for AuditAction {
    type Err = SecurityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::parse_code(
            &AuditAction::ALL,
            AuditAction::code,
            s,
            ("監査操作", "audit action"),
        )
    }
}

/// Outcome of the audited action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditOutcome {
    Success,
    /// Refused by policy or authentication (FHIR outcome 4).
    Denied,
    /// Failed by an error (FHIR outcome 8).
    Error,
}

impl AuditOutcome {
    pub fn code(self) -> &'static str {
        match self {
            AuditOutcome::Success => "success",
            AuditOutcome::Denied => "denied",
            AuditOutcome::Error => "error",
        }
    }
}

impl FromStr for AuditOutcome {
    type Err = SecurityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const ALL: [AuditOutcome; 3] = [
            AuditOutcome::Success,
            AuditOutcome::Denied,
            AuditOutcome::Error,
        ];
        crate::parse_code(&ALL, AuditOutcome::code, s, ("結果", "outcome"))
    }
}

/// One access-log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the tenant's chain, from 1.
    pub seq: u64,
    /// UTC time from the system clock, microsecond precision.
    pub time: DateTime<Utc>,
    pub tenant: String,
    /// User id, client id, or `system`.
    pub actor: String,
    /// Role code of the actor, when a user.
    pub role: Option<String>,
    pub action: AuditAction,
    pub source_ip: Option<String>,
    /// Patient whose data was touched.
    pub patient: Option<String>,
    /// Resources touched, as `Type/id` or `Type/id/_history/v`.
    pub resources: Vec<String>,
    pub outcome: AuditOutcome,
    /// Free-form details (query string, reason, counts …), a JSON object.
    pub details: Value,
}

/// An entry as stored, with its chain hashes (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
}

/// Truncates a time to whole microseconds (what storage keeps).
pub fn truncate_time(t: DateTime<Utc>) -> DateTime<Utc> {
    let micros = t.nanosecond() / 1_000 * 1_000;
    t.with_nanosecond(micros).unwrap_or(t)
}

/// Time as written in the canonical form and in storage.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&m[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Canonical serialization: JSON, object keys sorted (recursively), no white
/// space, time as RFC 3339 UTC with microseconds.
pub fn canonical(entry: &AuditEntry) -> String {
    let v = json!({
        "seq": entry.seq,
        "time": format_time(entry.time),
        "tenant": entry.tenant,
        "actor": entry.actor,
        "role": entry.role,
        "action": entry.action.code(),
        "source_ip": entry.source_ip,
        "patient": entry.patient,
        "resources": entry.resources,
        "outcome": entry.outcome.code(),
        "details": entry.details,
    });
    let mut s = String::new();
    write_canonical(&v, &mut s);
    s
}

/// `SHA-256(prev_hash || canonical(entry))`, hex. `prev_hash` is hex; its
/// 32 raw bytes are hashed (an undecodable value is hashed as text, which
/// can never match a correct chain).
pub fn chain_hash(prev_hash: &str, entry: &AuditEntry) -> String {
    let mut h = Sha256::new();
    match hex::decode(prev_hash) {
        Ok(b) if b.len() == 32 => h.update(&b),
        _ => h.update(prev_hash.as_bytes()),
    }
    h.update(canonical(entry).as_bytes());
    hex::encode(h.finalize())
}

/// Builds the record for `entry` appended after `prev` (or first).
pub fn seal(entry: AuditEntry, prev: Option<&AuditRecord>) -> AuditRecord {
    let prev_hash = prev
        .map(|p| p.hash.clone())
        .unwrap_or_else(|| GENESIS_HASH.to_string());
    let hash = chain_hash(&prev_hash, &entry);
    AuditRecord {
        entry,
        prev_hash,
        hash,
    }
}

/// How the chain is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakKind {
    Altered,
    Deleted,
    Inserted,
}

/// First break found in a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChainBreak {
    /// Sequence number where the break was found (for `Deleted`: the
    /// missing number).
    pub seq: u64,
    pub kind: BreakKind,
}

impl ChainBreak {
    pub fn message_ja(&self) -> String {
        let what = match self.kind {
            BreakKind::Altered => "改ざん",
            BreakKind::Deleted => "削除",
            BreakKind::Inserted => "挿入",
        };
        format!(
            "アクセスログの{}番の記録に{}が検出されました",
            self.seq, what
        )
    }
    pub fn message_en(&self) -> String {
        let what = match self.kind {
            BreakKind::Altered => "altered",
            BreakKind::Deleted => "deleted",
            BreakKind::Inserted => "inserted",
        };
        format!("audit log entry {} was {what}", self.seq)
    }
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message_en())
    }
}

impl std::error::Error for ChainBreak {}

/// Verifies a complete chain (starting at seq 1) in seq order as read from
/// storage.
pub fn verify(records: &[AuditRecord]) -> Result<(), ChainBreak> {
    verify_from(records, 1, GENESIS_HASH)
}

/// Verifies a chain segment whose first record should have `first_seq` and
/// link to `prev_hash` (the hash of the record before the segment).
pub fn verify_from(
    records: &[AuditRecord],
    first_seq: u64,
    prev_hash: &str,
) -> Result<(), ChainBreak> {
    let mut expected_prev = prev_hash.to_string();
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for (expected_seq, r) in (first_seq..).zip(records.iter()) {
        let seq = r.entry.seq;
        if seq < expected_seq {
            return Err(ChainBreak {
                seq,
                kind: BreakKind::Inserted,
            });
        }
        if seq > expected_seq {
            return Err(ChainBreak {
                seq: expected_seq,
                kind: BreakKind::Deleted,
            });
        }
        if chain_hash(&r.prev_hash, &r.entry) != r.hash {
            // A row renumbered to hide a deletion or an insertion still
            // hashes correctly with its original number.
            let mut e = r.entry.clone();
            e.seq = seq + 1;
            if chain_hash(&r.prev_hash, &e) == r.hash {
                return Err(ChainBreak {
                    seq,
                    kind: BreakKind::Deleted,
                });
            }
            if seq > 1 {
                e.seq = seq - 1;
                if chain_hash(&r.prev_hash, &e) == r.hash {
                    return Err(ChainBreak {
                        seq: seq - 1,
                        kind: BreakKind::Inserted,
                    });
                }
            }
            return Err(ChainBreak {
                seq,
                kind: BreakKind::Altered,
            });
        }
        if r.prev_hash != expected_prev {
            if let Some(s) = seen.get(r.prev_hash.as_str()) {
                // This row links to an earlier one: the rows between were added.
                return Err(ChainBreak {
                    seq: s + 1,
                    kind: BreakKind::Inserted,
                });
            }
            // The previous row was rewritten with a recomputed hash.
            return Err(ChainBreak {
                seq: if seq > first_seq { seq - 1 } else { seq },
                kind: BreakKind::Altered,
            });
        }
        seen.insert(r.hash.as_str(), seq);
        expected_prev = r.hash.clone();
    }
    Ok(())
}

/// A checkpoint of a tenant's chain, to be exported off-host (printed,
/// e-mailed to the security officer, written to WORM storage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub tenant: String,
    pub seq: u64,
    pub hash: String,
}

/// Verifies the chain and that it still contains the checkpoint `head`
/// (detects truncation or rewriting of the newest entries since then).
pub fn verify_against_head(records: &[AuditRecord], head: &ChainHead) -> Result<(), ChainBreak> {
    verify(records)?;
    match records.iter().find(|r| r.entry.seq == head.seq) {
        Some(r) if r.hash == head.hash => Ok(()),
        Some(_) => Err(ChainBreak {
            seq: head.seq,
            kind: BreakKind::Altered,
        }),
        None => Err(ChainBreak {
            seq: records.last().map(|r| r.entry.seq + 1).unwrap_or(1),
            kind: BreakKind::Deleted,
        }),
    }
}

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const AUDIT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const RESTFUL: &str = "http://hl7.org/fhir/restful-interaction";
const BALP: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/";
/// Extension carrying the chain position and hash of an AuditEvent.
pub const CHAIN_EXTENSION_URL: &str = "urn:iryo:fhir:StructureDefinition:audit-chain";

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"system": system, "code": code, "display": display})
}

/// Renders a record as a FHIR R4 AuditEvent in the IHE BALP shape.
pub fn to_fhir_audit_event(rec: &AuditRecord) -> Value {
    let e = &rec.entry;
    let has_patient = e.patient.is_some();
    let rest = |sub: &str, act: &str, profile: &str| {
        (
            coding(AUDIT_TYPE, "rest", "RESTful Operation"),
            Some(coding(RESTFUL, sub, sub)),
            act.to_string(),
            Some(format!(
                "{BALP}IHE.BasicAudit.{}{profile}",
                if has_patient { "Patient" } else { "" }
            )),
        )
    };
    let (ty, subtype, action, profile) = match e.action {
        AuditAction::Read => rest("read", "R", "Read"),
        AuditAction::History => rest("history-instance", "R", "Read"),
        AuditAction::Search => rest("search-type", "E", "Query"),
        AuditAction::Create => rest("create", "C", "Create"),
        AuditAction::Update => rest("update", "U", "Update"),
        AuditAction::Delete => rest("delete", "D", "Delete"),
        AuditAction::Export => (coding(DCM, "110106", "Export"), None, "R".into(), None),
        AuditAction::Login | AuditAction::LoginFailed => (
            coding(DCM, "110114", "User Authentication"),
            Some(coding(DCM, "110122", "Login")),
            "E".into(),
            None,
        ),
        AuditAction::Logout | AuditAction::SessionRevoke => (
            coding(DCM, "110114", "User Authentication"),
            Some(coding(DCM, "110123", "Logout")),
            "E".into(),
            None,
        ),
        AuditAction::BreakGlass => (
            coding(DCM, "110113", "Security Alert"),
            None,
            "E".into(),
            None,
        ),
        AuditAction::UserAdmin | AuditAction::PasswordChange | AuditAction::TotpEnrol => (
            coding(DCM, "110137", "User Security Attributes Changed"),
            None,
            "U".into(),
            None,
        ),
        AuditAction::ConfigChange => (
            coding(DCM, "110100", "Application Activity"),
            None,
            "U".into(),
            None,
        ),
        AuditAction::Backup
        | AuditAction::Restore
        | AuditAction::AuditExport
        | AuditAction::AuditVerify => (
            coding(DCM, "110100", "Application Activity"),
            None,
            "E".into(),
            None,
        ),
    };
    let outcome = match e.outcome {
        AuditOutcome::Success => "0",
        AuditOutcome::Denied => "4",
        AuditOutcome::Error => "8",
    };
    let mut agent = Map::new();
    agent.insert(
        "type".into(),
        json!({"coding": [coding("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "IRCP", "information recipient")]}),
    );
    agent.insert(
        "who".into(),
        json!({"identifier": {"system": format!("urn:iryo:tenant:{}:user", e.tenant), "value": e.actor}}),
    );
    agent.insert("requestor".into(), Value::Bool(true));
    if let Some(role) = &e.role {
        let display = role
            .parse::<crate::roles::Role>()
            .map(|r| r.label_ja().to_string())
            .unwrap_or_else(|_| role.clone());
        agent.insert(
            "role".into(),
            json!([{"coding": [coding("urn:iryo:role", role, &display)]}]),
        );
    }
    if let Some(ip) = &e.source_ip {
        agent.insert("network".into(), json!({"address": ip, "type": "2"}));
    }
    let mut entities = Vec::new();
    if let Some(p) = &e.patient {
        entities.push(json!({
            "what": {"reference": format!("Patient/{p}")},
            "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "1", "Person"),
            "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "1", "Patient"),
        }));
    }
    for r in &e.resources {
        entities.push(json!({
            "what": {"reference": r},
            "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2", "System Object"),
            "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "4", "Domain Resource"),
        }));
    }
    if let Some(q) = e.details.get("query").and_then(Value::as_str) {
        entities.push(json!({
            "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2", "System Object"),
            "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "24", "Query"),
            "query": base64::engine::general_purpose::STANDARD.encode(q.as_bytes()),
        }));
    }
    let mut ev = Map::new();
    ev.insert("resourceType".into(), json!("AuditEvent"));
    ev.insert("id".into(), json!(format!("{}-{}", e.tenant, e.seq)));
    if let Some(p) = profile {
        ev.insert("meta".into(), json!({"profile": [p]}));
    }
    ev.insert(
        "extension".into(),
        json!([{"url": CHAIN_EXTENSION_URL, "extension": [
            {"url": "seq", "valueInteger": e.seq},
            {"url": "prevHash", "valueString": rec.prev_hash},
            {"url": "hash", "valueString": rec.hash},
        ]}]),
    );
    ev.insert("type".into(), ty);
    if let Some(s) = subtype {
        ev.insert("subtype".into(), json!([s]));
    }
    ev.insert("action".into(), json!(action));
    ev.insert("recorded".into(), json!(format_time(e.time)));
    ev.insert("outcome".into(), json!(outcome));
    if let Some(desc) = e.details.get("reason").and_then(Value::as_str) {
        ev.insert("outcomeDesc".into(), json!(desc));
    }
    if e.action == AuditAction::BreakGlass {
        ev.insert(
            "purposeOfEvent".into(),
            json!([{"coding": [coding("http://terminology.hl7.org/CodeSystem/v3-ActReason", "BTG", "break the glass")]}]),
        );
    }
    ev.insert("agent".into(), json!([Value::Object(agent)]));
    ev.insert(
        "source".into(),
        json!({
            "site": e.tenant,
            "observer": {"display": "iryo"},
            "type": [coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4", "Application Server")],
        }),
    );
    if !entities.is_empty() {
        ev.insert("entity".into(), Value::Array(entities));
    }
    Value::Object(ev)
}

/// A FHIR `searchset` Bundle of AuditEvents for an `/AuditEvent` search.
/// `base` is the FHIR base URL used for `fullUrl`.
pub fn to_fhir_bundle(records: &[AuditRecord], base: &str) -> Value {
    let entries: Vec<Value> = records
        .iter()
        .map(|r| {
            let ev = to_fhir_audit_event(r);
            json!({
                "fullUrl": format!("{}/AuditEvent/{}", base.trim_end_matches('/'), ev["id"].as_str().unwrap_or_default()),
                "resource": ev,
                "search": {"mode": "match"},
            })
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": records.len(),
        "entry": entries,
    })
}

/// Export for review: one AuditEvent per line (FHIR NDJSON), in chain order.
pub fn to_ndjson(records: &[AuditRecord]) -> String {
    let mut out = String::new();
    for r in records {
        out.push_str(&to_fhir_audit_event(r).to_string());
        out.push('\n');
    }
    out
}

impl ChainHead {
    /// The checkpoint of the newest record of a chain.
    pub fn of(record: &AuditRecord) -> ChainHead {
        ChainHead {
            tenant: record.entry.tenant.clone(),
            seq: record.entry.seq,
            hash: record.hash.clone(),
        }
    }

    /// One line to print or send off-host: `iryo-audit-head <tenant> <seq> <hash>`.
    pub fn to_line(&self) -> String {
        format!("iryo-audit-head {} {} {}", self.tenant, self.seq, self.hash)
    }

    /// Parses [`Self::to_line`].
    pub fn parse_line(line: &str) -> Result<ChainHead, SecurityError> {
        let bad = || {
            SecurityError::invalid(
                "チェックポイントの形式が正しくありません",
                "malformed audit checkpoint line",
            )
        };
        let mut it = line.split_whitespace();
        if it.next() != Some("iryo-audit-head") {
            return Err(bad());
        }
        let tenant = it.next().ok_or_else(bad)?.to_string();
        let seq = it.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let hash = it.next().ok_or_else(bad)?.to_string();
        if it.next().is_some() || hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(ChainHead { tenant, seq, hash })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn entry(seq: u64, action: AuditAction) -> AuditEntry {
        AuditEntry {
            seq,
            time: Utc
                .with_ymd_and_hms(2026, 11, 25, 9, 0, seq as u32 % 60)
                .unwrap(),
            tenant: "clinic-a".into(),
            actor: "dr-1".into(),
            role: Some("physician".into()),
            action,
            source_ip: Some("192.0.2.10".into()),
            patient: Some("p1".into()),
            resources: vec![format!("Observation/{seq}")],
            outcome: AuditOutcome::Success,
            details: serde_json::from_str(r#"{"z": 1, "a": {"y": "日本語", "b": [1.50, 2]}}"#)
                .unwrap(),
        }
    }

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut v: Vec<AuditRecord> = Vec::new();
        for i in 1..=n {
            let r = seal(entry(i, AuditAction::Read), v.last());
            v.push(r);
        }
        v
    }

    #[test]
    fn canonical_is_sorted_and_stable() {
        let c = canonical(&entry(1, AuditAction::Read));
        assert!(c.starts_with("{\"action\":\"read\",\"actor\":\"dr-1\",\"details\":{\"a\":{\"b\":[1.50,2],\"y\":\"日本語\"},\"z\":1}"));
        assert!(c.contains("\"time\":\"2026-11-25T09:00:01.000000Z\""));
        let mut e = entry(1, AuditAction::Read);
        e.details =
            serde_json::from_str(r#"{"a": {"b": [1.50, 2], "y": "日本語"}, "z": 1}"#).unwrap();
        assert_eq!(canonical(&e), c);
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(10);
        assert_eq!(c[0].prev_hash, GENESIS_HASH);
        assert_eq!(c[1].prev_hash, c[0].hash);
        verify(&c).unwrap();
        verify(&[]).unwrap();
        verify_from(&c[4..], 5, &c[3].hash).unwrap();
    }

    #[test]
    fn altered_entry_detected() {
        let mut c = chain(10);
        c[4].entry.outcome = AuditOutcome::Denied;
        assert_eq!(
            verify(&c),
            Err(ChainBreak {
                seq: 5,
                kind: BreakKind::Altered
            })
        );
        // Altered and re-hashed: the next entry no longer links.
        let mut c = chain(10);
        c[4].entry.patient = Some("p2".into());
        c[4].hash = chain_hash(&c[4].prev_hash, &c[4].entry);
        assert_eq!(
            verify(&c),
            Err(ChainBreak {
                seq: 5,
                kind: BreakKind::Altered
            })
        );
        // Altered hash only.
        let mut c = chain(3);
        c[2].hash = GENESIS_HASH.into();
        assert_eq!(verify(&c).unwrap_err().kind, BreakKind::Altered);
    }

    #[test]
    fn deleted_entry_detected() {
        let mut c = chain(10);
        c.remove(3);
        assert_eq!(
            verify(&c),
            Err(ChainBreak {
                seq: 4,
                kind: BreakKind::Deleted
            })
        );
        // Deleted and later rows renumbered.
        let mut c = chain(10);
        c.remove(3);
        for r in c.iter_mut().skip(3) {
            r.entry.seq -= 1;
        }
        assert_eq!(
            verify(&c),
            Err(ChainBreak {
                seq: 4,
                kind: BreakKind::Deleted
            })
        );
        // The first entry deleted.
        let c = chain(3);
        assert_eq!(
            verify(&c[1..]),
            Err(ChainBreak {
                seq: 1,
                kind: BreakKind::Deleted
            })
        );
    }

    #[test]
    fn inserted_entry_detected() {
        // Forged row linked properly, later rows renumbered.
        let mut c = chain(10);
        let mut forged = entry(4, AuditAction::Delete);
        forged.actor = "intruder".into();
        let forged = seal(forged, Some(&c[2]));
        c.insert(3, forged);
        for r in c.iter_mut().skip(4) {
            r.entry.seq += 1;
        }
        assert_eq!(
            verify(&c),
            Err(ChainBreak {
                seq: 4,
                kind: BreakKind::Inserted
            })
        );
        // Duplicate seq.
        let mut c = chain(5);
        let dup = seal(entry(3, AuditAction::Delete), Some(&c[1]));
        c.insert(3, dup);
        assert_eq!(
            verify(&c),
            Err(ChainBreak {
                seq: 3,
                kind: BreakKind::Inserted
            })
        );
        // Forged rows appended in the middle with fresh hashes and all later
        // rows renumbered and re-hashed except the link of the next original row.
        let c = chain(6);
        let f4 = seal(entry(4, AuditAction::Export), Some(&c[2]));
        let mut orig4 = c[3].clone();
        orig4.entry.seq = 5;
        orig4.hash = chain_hash(&orig4.prev_hash, &orig4.entry);
        let tampered = vec![c[0].clone(), c[1].clone(), c[2].clone(), f4, orig4];
        assert_eq!(
            verify(&tampered),
            Err(ChainBreak {
                seq: 4,
                kind: BreakKind::Inserted
            })
        );
    }

    #[test]
    fn bundle_ndjson_and_head_lines() {
        let c = chain(3);
        let b = to_fhir_bundle(&c, "https://iryo.example.jp/fhir/");
        assert_eq!(b["type"], "searchset");
        assert_eq!(b["total"], 3);
        assert_eq!(
            b["entry"][1]["fullUrl"],
            "https://iryo.example.jp/fhir/AuditEvent/clinic-a-2"
        );
        let nd = to_ndjson(&c);
        assert_eq!(nd.lines().count(), 3);
        for l in nd.lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["resourceType"], "AuditEvent");
        }
        let h = ChainHead::of(&c[2]);
        assert_eq!(ChainHead::parse_line(&h.to_line()).unwrap(), h);
        verify_against_head(&c, &ChainHead::parse_line(&h.to_line()).unwrap()).unwrap();
        for bad in [
            "",
            "iryo-audit-head a 1",
            "iryo-audit-head a x 00",
            "other a 1 00",
            &format!("{} extra", h.to_line()),
        ] {
            assert!(ChainHead::parse_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn head_checkpoint_detects_truncation() {
        let c = chain(8);
        let head = ChainHead {
            tenant: "clinic-a".into(),
            seq: 8,
            hash: c[7].hash.clone(),
        };
        verify_against_head(&c, &head).unwrap();
        assert_eq!(
            verify_against_head(&c[..6], &head),
            Err(ChainBreak {
                seq: 7,
                kind: BreakKind::Deleted
            })
        );
        let mut rewritten = c[..7].to_vec();
        rewritten.push(seal(entry(8, AuditAction::Login), rewritten.last()));
        assert_eq!(
            verify_against_head(&rewritten, &head).unwrap_err().kind,
            BreakKind::Altered
        );
    }

    #[test]
    fn fhir_audit_event_balp_shape() {
        let c = chain(1);
        let ev = to_fhir_audit_event(&c[0]);
        assert_eq!(ev["resourceType"], "AuditEvent");
        assert_eq!(
            ev["meta"]["profile"][0],
            "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"
        );
        assert_eq!(ev["type"]["code"], "rest");
        assert_eq!(ev["subtype"][0]["code"], "read");
        assert_eq!(ev["action"], "R");
        assert_eq!(ev["outcome"], "0");
        assert_eq!(ev["recorded"], "2026-11-25T09:00:01.000000Z");
        assert_eq!(ev["agent"][0]["who"]["identifier"]["value"], "dr-1");
        assert_eq!(ev["agent"][0]["role"][0]["coding"][0]["display"], "医師");
        assert_eq!(ev["agent"][0]["network"]["address"], "192.0.2.10");
        assert_eq!(ev["entity"][0]["what"]["reference"], "Patient/p1");
        assert_eq!(ev["entity"][0]["role"]["code"], "1");
        assert_eq!(ev["entity"][1]["what"]["reference"], "Observation/1");
        assert_eq!(
            ev["extension"][0]["extension"][2]["valueString"],
            c[0].hash.as_str()
        );

        let mut e = entry(1, AuditAction::Search);
        e.patient = None;
        e.outcome = AuditOutcome::Denied;
        e.details = json!({"query": "Observation?code=1234"});
        let ev = to_fhir_audit_event(&seal(e, None));
        assert_eq!(
            ev["meta"]["profile"][0],
            "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Query"
        );
        assert_eq!(ev["outcome"], "4");
        assert_eq!(ev["action"], "E");
        let q = ev["entity"].as_array().unwrap().last().unwrap();
        assert_eq!(q["role"]["code"], "24");
        assert_eq!(q["query"], "T2JzZXJ2YXRpb24/Y29kZT0xMjM0");

        let mut e = entry(1, AuditAction::BreakGlass);
        e.details = json!({"reason": "心肺停止"});
        let ev = to_fhir_audit_event(&seal(e, None));
        assert_eq!(ev["purposeOfEvent"][0]["coding"][0]["code"], "BTG");
        assert_eq!(ev["outcomeDesc"], "心肺停止");
        for a in AuditAction::ALL {
            assert_eq!(a.code().parse::<AuditAction>().unwrap(), a);
            let ev = to_fhir_audit_event(&seal(entry(1, a), None));
            assert!(ev["type"]["code"].is_string());
        }
    }
}
