//! The platform service: report units stored as FHIR Bundles in the platform tenant, consent,
//! views and retention. HTTP lives in [`crate::http`]; everything here is callable directly.

use crate::checks::{self, check_submission, operation_outcome, Issue, Kind};
use crate::ids::{self, PatientKey};
use crate::views;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use iryo_db::{SearchRequest, Store, StoredResource, WriteOp};
use iryo_search::query::{parse_query, Handling};
use iryo_security::audit::{AuditAction, AuditOutcome};
use iryo_security::store::{NewAuditEntry, SecurityStore};
use iryo_security::token::TokenService;
use iryo_validator::Validator;
use parking_lot::RwLock;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Index tags the service puts on what it stores (system → code).
pub(crate) const T_PATIENT: &str = "urn:iryo:clins:patient";
pub(crate) const T_SOURCE: &str = "urn:iryo:clins:source";
pub(crate) const T_KIND: &str = "urn:iryo:clins:kind";
pub(crate) const T_DEST: &str = "urn:iryo:clins:destination";
pub(crate) const T_INSURER: &str = "urn:iryo:clins:insurer";
pub(crate) const T_REGISTERED: &str = "urn:iryo:clins:registered";
pub(crate) const T_FETCHED: &str = "urn:iryo:clins:fetched";
/// A fresh value on every write of a unit: views cache parsed units by (id, stamp).
pub(crate) const T_STAMP: &str = "urn:iryo:clins:stamp";
/// Extension of the per-patient index resource holding its entries as JSON text.
const INDEX_EXT: &str = "urn:iryo:clins:index";
/// Attempts of a write that lost a race on the per-patient index.
const INDEX_ATTEMPTS: usize = 8;
pub(crate) const T_CONSENT_OK: &str = "urn:iryo:clins:referral-consent";

/// Configuration of the platform.
#[derive(Debug, Clone)]
pub struct ClinsConfig {
    /// The store tenant holding the platform's data (created at start).
    pub tenant: String,
    /// How long a referral is kept after its destination fetched it (jp-clins.md §7: ≈1 week).
    pub referral_retention: Duration,
    /// Items are kept this long from registration (jp-clins.md §7: 5 years).
    pub retention: Duration,
    /// Validate submissions against the JP-CLINS profiles with `iryo-validator`.
    pub validate_profiles: bool,
}

impl Default for ClinsConfig {
    fn default() -> Self {
        ClinsConfig {
            tenant: "clins-platform".into(),
            referral_retention: Duration::days(7),
            retention: Duration::days(5 * 365 + 1),
            validate_profiles: true,
        }
    }
}

/// Who calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A medical institution, bound to its 10-digit number.
    Institution { client: String, number: String },
    /// A patient account linked to a patient key.
    Patient { subject: String, key: PatientKey },
    /// An insurer account linked to its 8-digit 保険者番号.
    Insurer { client: String, number: String },
    /// The platform operator (retention runs).
    Operator { subject: String },
}

impl Actor {
    fn name(&self) -> &str {
        match self {
            Actor::Institution { client, .. }
            | Actor::Insurer { client, .. }
            | Actor::Patient {
                subject: client, ..
            }
            | Actor::Operator { subject: client } => client,
        }
    }
    fn role(&self) -> &'static str {
        match self {
            Actor::Institution { .. } => "institution",
            Actor::Patient { .. } => "patient",
            Actor::Insurer { .. } => "insurer",
            Actor::Operator { .. } => "platform-operator",
        }
    }
}

/// What an account is bound to on the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    Institution(String),
    Insurer(String),
}

/// A refused request: HTTP status and the issues.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: u16,
    pub issues: Vec<Issue>,
}

impl Refusal {
    pub fn new(status: u16, issue: Issue) -> Self {
        Refusal {
            status,
            issues: vec![issue],
        }
    }
    pub fn outcome(&self) -> Value {
        operation_outcome(&self.issues)
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        Refusal::new(
            500,
            Issue::error(
                "CLINS-INTERNAL",
                "",
                format!("内部エラーです: {e}"),
                format!("internal error: {e}"),
            ),
        )
    }
}

/// What the retention job removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Report units removed entirely.
    pub removed_units: Vec<String>,
    /// Units kept only for their LTS items.
    pub trimmed_units: Vec<String>,
    /// Referrals removed after fetch.
    pub removed_referrals: Vec<String>,
}

/// A message to the access-log writer task.
enum LogMsg {
    Entry(Box<NewAuditEntry>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Largest number of access-log entries committed together.
const LOG_BATCH: usize = 256;
/// How long a cached client binding is trusted before it is read again (bindings written by
/// `iryo clins bind` into the store reach a running server within this time).
const BINDING_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// A parsed stored unit: (version, stamp, JSON).
type CachedUnit = (i64, String, Arc<Value>);

pub(crate) struct Inner {
    pub store: Store,
    pub tenant: i64,
    pub config: ClinsConfig,
    pub tokens: TokenService,
    pub validator: Option<Arc<Validator>>,
    clients: RwLock<HashMap<String, (Binding, std::time::Instant)>>,
    log_tx: tokio::sync::mpsc::UnboundedSender<LogMsg>,
    /// Parsed stored units by id, with their version (views parse nothing already seen).
    /// Parsed stored units by id: (version, stamp, JSON).
    parsed: parking_lot::Mutex<HashMap<String, CachedUnit>>,
}

/// The service state shared by all requests; cheap to clone.
#[derive(Clone)]
pub struct ClinsState {
    pub(crate) inner: Arc<Inner>,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn tag(system: &str, code: &str) -> Value {
    json!({"system": system, "code": code})
}

/// The tag code of `system` on a stored resource.
pub(crate) fn tag_of<'a>(r: &'a Value, system: &str) -> Option<&'a str> {
    r.pointer("/meta/tag")?
        .as_array()?
        .iter()
        .find(|t| t.get("system").and_then(Value::as_str) == Some(system))?
        .get("code")?
        .as_str()
}

fn unit_resource_id(prefix: &str, unit: &str) -> String {
    format!("{prefix}{}", ids::hash_hex(unit, 40))
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl ClinsState {
    /// Open the platform on `store` (creating its tenant), with the token service that signs
    /// platform tokens (tenant = `config.tenant`) and the audit store of the access log.
    pub async fn new(
        store: Store,
        tokens: TokenService,
        audit: Arc<dyn SecurityStore>,
        config: ClinsConfig,
    ) -> Result<ClinsState, String> {
        let tenant = match store.tenant_id(&config.tenant).await {
            Ok(Some(t)) => t,
            Ok(None) => match store.tenant_create(&config.tenant).await {
                Ok(t) => t.id,
                Err(iryo_db::DbError::AlreadyExists { .. }) => store
                    .tenant_id(&config.tenant)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("tenant vanished")?,
                Err(e) => return Err(e.to_string()),
            },
            Err(e) => return Err(e.to_string()),
        };
        let validator = config.validate_profiles.then(|| Arc::new(Validator::new()));
        let (log_tx, log_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(log_writer(audit.clone(), log_rx));
        Ok(ClinsState {
            inner: Arc::new(Inner {
                store,
                tenant,
                config,
                tokens,
                validator,
                clients: RwLock::new(HashMap::new()),
                log_tx,
                parsed: parking_lot::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The store holding the platform tenant.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn config(&self) -> &ClinsConfig {
        &self.inner.config
    }

    /// Bind a client id (the `sub` of its tokens) to an institution number or 保険者番号.
    /// Stored in the platform tenant's settings (`bindings`).
    pub async fn bind_client(&self, client: &str, binding: Binding) -> Result<(), String> {
        store_binding(&self.inner.store, self.inner.tenant, client, Some(&binding)).await?;
        self.inner
            .clients
            .write()
            .insert(client.to_string(), (binding, std::time::Instant::now()));
        Ok(())
    }

    /// What `client` is bound to on the platform, if anything.
    pub async fn client_binding(&self, client: &str) -> Option<Binding> {
        self.binding(client).await
    }

    pub(crate) async fn binding(&self, client: &str) -> Option<Binding> {
        if let Some((b, at)) = self.inner.clients.read().get(client) {
            if at.elapsed() < BINDING_TTL {
                return Some(b.clone());
            }
        }
        let b = read_binding(&self.inner.store, self.inner.tenant, client).await;
        let mut cache = self.inner.clients.write();
        match &b {
            Some(b) => {
                cache.insert(client.to_string(), (b.clone(), std::time::Instant::now()));
            }
            None => {
                cache.remove(client);
            }
        }
        b
    }

    /// Queue an entry for the access log. A writer task commits queued entries in batches
    /// (one hash-chain transaction per batch), so requests never wait for an fsync; a failed
    /// write is traced. [`ClinsState::flush_log`] waits for everything queued so far.
    pub(crate) async fn log(
        &self,
        actor: &Actor,
        action: AuditAction,
        outcome: AuditOutcome,
        patient: Option<&PatientKey>,
        resources: Vec<String>,
        details: Value,
    ) {
        let mut e = NewAuditEntry::new(
            Utc::now(),
            &self.inner.config.tenant,
            actor.name(),
            action,
            outcome,
        );
        e.role = Some(actor.role().to_string());
        e.patient = patient.map(|k| k.as_str().to_string());
        e.resources = resources;
        e.details = details;
        if self.inner.log_tx.send(LogMsg::Entry(Box::new(e))).is_err() {
            tracing::error!("clins: access log writer stopped; entry lost");
        }
    }

    /// Wait until every access-log entry queued before this call is committed.
    pub async fn flush_log(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.inner.log_tx.send(LogMsg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    pub(crate) async fn refuse(
        &self,
        actor: &Actor,
        action: AuditAction,
        patient: Option<&PatientKey>,
        refusal: Refusal,
    ) -> Refusal {
        let keys: Vec<&str> = refusal.issues.iter().map(|i| i.key.as_str()).collect();
        self.log(
            actor,
            action,
            AuditOutcome::Denied,
            patient,
            vec![],
            json!({"refused": keys}),
        )
        .await;
        refusal
    }

    /// Search the platform tenant; follows every page.
    pub(crate) async fn find(&self, ty: &str, qs: &str) -> Result<Vec<Arc<Value>>, Refusal> {
        let found = search_all(&self.inner.store, self.inner.tenant, ty, qs)
            .await
            .map_err(Refusal::internal)?;
        Ok(found.iter().filter_map(|r| self.parsed(r)).collect())
    }

    /// The parsed JSON of a stored resource, from the cache when this version was seen.
    fn parsed(&self, r: &StoredResource) -> Option<Arc<Value>> {
        if let Some((v, _, json)) = self.inner.parsed.lock().get(&r.id) {
            if *v == r.version {
                return Some(json.clone());
            }
        }
        let json = Arc::new(parse_stored(r)?);
        self.cache_parsed(r.id.clone(), r.version, json.clone());
        Some(json)
    }

    fn cache_parsed(&self, id: String, version: i64, json: Arc<Value>) {
        const MAX_CACHED: usize = 8192;
        let stamp = tag_of(&json, T_STAMP).unwrap_or("").to_string();
        let mut cache = self.inner.parsed.lock();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(id, (version, stamp, json));
    }

    // ------------------------------------------------------------------ per-patient index

    /// The index of a patient's units: its version (None when it is not stored yet) and its
    /// entries ([`views::index_entry`]). A patient without a stored index (units registered
    /// before the index existed) gets one rebuilt from a search of the units.
    async fn load_index(&self, hash: &str) -> Result<(Option<i64>, Vec<Value>), Refusal> {
        let r = self
            .inner
            .store
            .read(self.inner.tenant, "Basic", &index_id(hash))
            .await
            .map_err(Refusal::internal)?;
        if let Some(r) = r.filter(|r| !r.deleted) {
            let v = parse_stored(&r).unwrap_or(Value::Null);
            let entries = v["extension"][0]["valueString"]
                .as_str()
                .and_then(|t| serde_json::from_str::<Vec<Value>>(t).ok())
                .ok_or_else(|| Refusal::internal(format!("unreadable index {}", r.id)))?;
            return Ok((Some(r.version), entries));
        }
        let units = self
            .find("Bundle", &tag_query(&[(T_PATIENT, hash)]))
            .await?;
        Ok((
            None,
            units.iter().filter_map(|u| views::index_entry(u)).collect(),
        ))
    }

    /// The write that applies `removed` ids and `upserts` (units as stored) to the index of
    /// patient `hash`, guarded by the index version read (a concurrent change makes the
    /// whole write fail with a conflict, and the caller retries).
    async fn index_op(
        &self,
        hash: &str,
        removed: &[String],
        upserts: &[&Value],
    ) -> Result<WriteOp, Refusal> {
        let (version, mut entries) = self.load_index(hash).await?;
        let new: Vec<Value> = upserts
            .iter()
            .filter_map(|u| views::index_entry(u))
            .collect();
        entries.retain(|e| {
            let id = e["id"].as_str().unwrap_or("");
            !removed.iter().any(|r| r == id) && !new.iter().any(|n| n["id"] == id)
        });
        entries.extend(new);
        Ok(index_write(hash, version, &entries))
    }

    /// The stored units a view at `now` needs (through the index; parsed units are reused
    /// while their stamp is unchanged).
    async fn view_units(
        &self,
        key: &PatientKey,
        now: DateTime<Utc>,
        checkups: bool,
    ) -> Result<Vec<Arc<Value>>, Refusal> {
        let hash = key.hash();
        let (version, entries) = self.load_index(&hash).await?;
        if version.is_none() && !entries.is_empty() {
            // store the rebuilt index; losing a race with a writer is harmless
            let _ = self
                .inner
                .store
                .write(self.inner.tenant, vec![index_write(&hash, None, &entries)])
                .await;
        }
        let stamps: HashMap<&str, &str> = entries
            .iter()
            .filter_map(|e| Some((e["id"].as_str()?, e["stamp"].as_str().unwrap_or(""))))
            .collect();
        let mut out = vec![];
        let mut missing = vec![];
        {
            let cache = self.inner.parsed.lock();
            for id in views::units_needed(&entries, now, checkups) {
                match cache.get(&id) {
                    Some((_, stamp, json))
                        if !stamp.is_empty()
                            && Some(&stamp.as_str()) == stamps.get(id.as_str()) =>
                    {
                        out.push(json.clone())
                    }
                    _ => missing.push(("Bundle".to_string(), id)),
                }
            }
        }
        if !missing.is_empty() {
            let read = self
                .inner
                .store
                .read_many(self.inner.tenant, missing)
                .await
                .map_err(Refusal::internal)?;
            out.extend(read.iter().filter_map(|r| self.parsed(r)));
        }
        Ok(out)
    }

    async fn read_unit(&self, id: &str) -> Result<Option<Value>, Refusal> {
        let r = self
            .inner
            .store
            .read(self.inner.tenant, "Bundle", id)
            .await
            .map_err(Refusal::internal)?;
        Ok(r.as_ref().filter(|r| !r.deleted).and_then(parse_stored))
    }

    fn institution(actor: &Actor, action_en: &str) -> Result<String, Refusal> {
        match actor {
            Actor::Institution { number, .. } => Ok(number.clone()),
            _ => Err(Refusal::new(
                403,
                Issue::error(
                    "CLINS-FORBIDDEN",
                    "",
                    "この操作は医療機関だけが行えます",
                    format!("only institutions may {action_en}"),
                ),
            )),
        }
    }

    // ------------------------------------------------------------------ register

    /// `$register`: check, validate and store a report unit (replacing the same identifier and,
    /// for Allergy/Condition, the institution's earlier full list). Returns the OperationOutcome
    /// of the accepted unit (with validator warnings).
    pub async fn register(&self, actor: &Actor, bundle: Value) -> Result<Value, Refusal> {
        self.change(actor, None, bundle).await
    }

    /// Withdraw `(patient key, identifier)` and register `bundle` in one all-or-nothing write
    /// (`withdraw = None`: plain register).
    pub async fn change(
        &self,
        actor: &Actor,
        withdraw: Option<(&str, &str)>,
        bundle: Value,
    ) -> Result<Value, Refusal> {
        let r = self.change_inner(actor, withdraw, bundle).await;
        match r {
            Ok((key, unit, outcome)) => {
                self.log(
                    actor,
                    AuditAction::Create,
                    AuditOutcome::Success,
                    Some(&key),
                    vec![format!("Bundle/{unit}")],
                    json!({"operation": if withdraw.is_some() {"$change"} else {"$register"}}),
                )
                .await;
                Ok(outcome)
            }
            Err(e) => Err(self.refuse(actor, AuditAction::Create, None, e).await),
        }
    }

    async fn change_inner(
        &self,
        actor: &Actor,
        withdraw: Option<(&str, &str)>,
        bundle: Value,
    ) -> Result<(PatientKey, String, Value), Refusal> {
        let inst = Self::institution(actor, "register")?;
        let sub = check_submission(&bundle, &inst).map_err(|issues| Refusal {
            status: 422,
            issues,
        })?;
        let mut warnings = vec![];
        if let Some(v) = &self.inner.validator {
            let v = v.clone();
            let b = bundle.clone();
            let out = tokio::task::spawn_blocking(move || v.validate(&b, &[]))
                .await
                .map_err(Refusal::internal)?;
            let mut errors = vec![];
            for i in out.issues {
                let issue = Issue {
                    severity: i.severity.as_str(),
                    code: i.code,
                    key: i.key.unwrap_or_else(|| "CLINS-PROFILE".into()),
                    expression: i.expression,
                    message_ja: i.message_ja,
                    message_en: i.message_en,
                };
                if matches!(issue.severity, "error" | "fatal") {
                    errors.push(issue);
                } else {
                    warnings.push(issue);
                }
            }
            if !errors.is_empty() {
                return Err(Refusal {
                    status: 422,
                    issues: errors,
                });
            }
        }
        let mut attempt = 0;
        let (key, unit_id) = loop {
            attempt += 1;
            match self.store_unit(&inst, withdraw, &sub, &bundle).await {
                Err(Stored::Conflict) if attempt < INDEX_ATTEMPTS => continue,
                Err(Stored::Conflict) => {
                    return Err(Refusal::internal("the patient's index kept changing"))
                }
                Err(Stored::Refused(r)) => return Err(r),
                Ok(done) => break done,
            }
        };
        let mut info = vec![Issue {
            severity: "information",
            code: "informational",
            key: "CLINS-ACCEPTED".into(),
            expression: String::new(),
            message_ja: format!("報告単位 {} を登録しました", sub.unit.value),
            message_en: format!("report unit {} registered", sub.unit.value),
        }];
        info.extend(warnings);
        Ok((key, unit_id, operation_outcome(&info)))
    }

    /// One attempt at storing an accepted submission with its index updates.
    async fn store_unit(
        &self,
        inst: &str,
        withdraw: Option<(&str, &str)>,
        sub: &checks::Submission,
        bundle: &Value,
    ) -> Result<(PatientKey, String), Stored> {
        let mut ops = vec![];
        // index changes per patient hash: (removed ids, upserted units)
        let mut index: HashMap<String, (Vec<String>, Vec<Value>)> = HashMap::new();
        if let Some((pk, ident)) = withdraw {
            let (wkey, wops) = self.withdraw_ops(inst, pk, ident).await?;
            let removed = index.entry(wkey.hash()).or_default();
            removed.0.extend(wops.iter().filter_map(deleted_id));
            ops.extend(wops);
        }
        let unit_id = unit_resource_id("u", &sub.unit.value);
        let key = sub.patient_key.clone();
        let hash = key.hash();
        if let Some(old) = self.read_unit(&unit_id).await? {
            if tag_of(&old, T_PATIENT) != Some(&hash) {
                return Err(Stored::Refused(Refusal::new(
                    409,
                    Issue::error(
                        "CLINS-UNIT-PATIENT",
                        "Bundle.identifier",
                        "同じ識別子の報告単位が別の患者で登録されています",
                        "a report unit with this identifier is registered for another patient",
                    ),
                )));
            }
        }
        if sub.kind.full_list() {
            // the institution's earlier full list of this type is replaced
            let (_, entries) = self.load_index(&hash).await?;
            for e in entries {
                let id = e["id"].as_str().unwrap_or("");
                if e["k"] == sub.kind.code() && e["src"] == inst && id != unit_id {
                    ops.push(delete_bundle(id));
                    index
                        .entry(hash.clone())
                        .or_default()
                        .0
                        .push(id.to_string());
                }
            }
        }
        let now = ts(Utc::now());
        let mut tags = vec![
            tag(T_PATIENT, &hash),
            tag(T_SOURCE, inst),
            tag(T_KIND, sub.kind.code()),
            tag(T_INSURER, key.insurer()),
            tag(T_REGISTERED, &now),
            tag(T_STAMP, &new_stamp()),
        ];
        if let Some(d) = &sub.destination {
            tags.push(tag(T_DEST, d));
        }
        if sub.referral_consent {
            tags.push(tag(T_CONSENT_OK, "true"));
        }
        let mut stored = bundle.clone();
        stored["id"] = json!(unit_id);
        set_platform_tags(&mut stored, tags.clone());
        let items_id = unit_resource_id("p", &sub.unit.value);
        ops.retain(
            |op| !matches!(op, WriteOp::Delete { id, .. } if *id == items_id || *id == unit_id),
        );
        let changes = index.entry(hash.clone()).or_default();
        changes.0.retain(|id| *id != items_id && *id != unit_id);
        if sub.items.is_empty() {
            ops.push(delete_bundle(&items_id));
            changes.0.push(items_id);
        } else {
            let patient = views::patient_of(&stored);
            let mut entries = vec![views::entry("urn:iryo-clins:patient".into(), patient)];
            for (n, mut item) in sub.items.iter().cloned().enumerate() {
                ensure_institution(&mut item, inst);
                entries.push(views::entry(format!("urn:iryo-clins:item:{n}"), item));
            }
            tags[2] = tag(T_KIND, Kind::DocumentItems.code());
            tags[5] = tag(T_STAMP, &new_stamp());
            let mut items = json!({
                "resourceType": "Bundle", "id": items_id, "type": "collection",
                "identifier": {"system": ids::BUNDLE_ID_SYSTEM, "value": sub.unit.value},
            });
            items["entry"] = Value::Array(entries);
            set_platform_tags(&mut items, tags);
            changes.1.push(items.clone());
            ops.push(WriteOp::put(items));
        }
        changes.1.push(stored.clone());
        ops.push(WriteOp::put(stored));
        for (h, (removed, upserts)) in &index {
            let upserts: Vec<&Value> = upserts.iter().collect();
            ops.push(self.index_op(h, removed, &upserts).await?);
        }
        self.write_guarded(ops).await?;
        Ok((key, unit_id))
    }

    /// Write `ops`; a conflict on a per-patient index (a concurrent change of the same
    /// patient) is reported as [`Stored::Conflict`] so that the caller retries.
    async fn write_guarded(&self, ops: Vec<WriteOp>) -> Result<(), Stored> {
        match self.inner.store.write(self.inner.tenant, ops).await {
            Ok(_) => Ok(()),
            Err(
                iryo_db::DbError::VersionConflict { ty, .. }
                | iryo_db::DbError::AlreadyExists { ty, .. },
            ) if ty == "Basic" => Err(Stored::Conflict),
            // PostgreSQL: two transactions that passed the If-Match check at once collide on
            // the version key (23505), or are serialization / deadlock victims: the same race
            Err(iryo_db::DbError::Postgres(m))
                if ["(23505)", "(40001)", "(40P01)"]
                    .iter()
                    .any(|c| m.contains(c)) =>
            {
                Err(Stored::Conflict)
            }
            Err(e) => Err(Stored::Refused(Refusal::internal(e))),
        }
    }

    // ------------------------------------------------------------------ withdraw

    async fn withdraw_ops(
        &self,
        inst: &str,
        patient_key: &str,
        identifier: &str,
    ) -> Result<(PatientKey, Vec<WriteOp>), Refusal> {
        let key =
            checks::patient_key(patient_key, "patientKey").map_err(|i| Refusal::new(422, i))?;
        if ids::parse_unit_id(identifier).is_none() {
            return Err(Refusal::new(
                422,
                Issue::error(
                    "R2152",
                    "identifier",
                    format!("識別子 '{identifier}' の形式が不正です"),
                    format!("malformed identifier '{identifier}'"),
                ),
            ));
        }
        let unit_id = unit_resource_id("u", identifier);
        let not_found = || {
            Refusal::new(
                404,
                Issue::error(
                    "CLINS-NOT-FOUND",
                    "identifier",
                    "該当する報告単位がありません",
                    "no such report unit for this patient",
                ),
            )
        };
        let unit = self.read_unit(&unit_id).await?.ok_or_else(not_found)?;
        if tag_of(&unit, T_PATIENT) != Some(&key.hash()) {
            return Err(not_found());
        }
        if tag_of(&unit, T_SOURCE) != Some(inst) {
            return Err(Refusal::new(
                403,
                Issue::error(
                    "CLINS-NOT-OWNER",
                    "identifier",
                    "他の医療機関が登録した報告単位は取り消せません",
                    "only the registering institution may withdraw or change a report unit",
                ),
            ));
        }
        Ok((
            key,
            vec![
                delete_bundle(&unit_id),
                delete_bundle(&unit_resource_id("p", identifier)),
            ],
        ))
    }

    /// `$withdraw` of a report unit by (patient key, Bundle identifier); only the registering
    /// institution may.
    pub async fn withdraw(
        &self,
        actor: &Actor,
        patient_key: &str,
        identifier: &str,
    ) -> Result<Value, Refusal> {
        let r = async {
            let inst = Self::institution(actor, "withdraw")?;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let (key, mut ops) = self.withdraw_ops(&inst, patient_key, identifier).await?;
                let removed: Vec<String> = ops.iter().filter_map(deleted_id).collect();
                ops.push(self.index_op(&key.hash(), &removed, &[]).await?);
                match self.write_guarded(ops).await {
                    Ok(()) => break Ok::<_, Refusal>(key),
                    Err(Stored::Conflict) if attempt < INDEX_ATTEMPTS => continue,
                    Err(Stored::Conflict) => {
                        break Err(Refusal::internal("the patient's index kept changing"))
                    }
                    Err(Stored::Refused(r)) => break Err(r),
                }
            }
        }
        .await;
        match r {
            Ok(key) => {
                self.log(
                    actor,
                    AuditAction::Delete,
                    AuditOutcome::Success,
                    Some(&key),
                    vec![format!("Bundle/{}", unit_resource_id("u", identifier))],
                    json!({"operation": "$withdraw", "identifier": identifier}),
                )
                .await;
                Ok(operation_outcome(&[Issue {
                    severity: "information",
                    code: "informational",
                    key: "CLINS-WITHDRAWN".into(),
                    expression: String::new(),
                    message_ja: format!("報告単位 {identifier} を取り消しました"),
                    message_en: format!("report unit {identifier} withdrawn"),
                }]))
            }
            Err(e) => Err(self.refuse(actor, AuditAction::Delete, None, e).await),
        }
    }

    // ------------------------------------------------------------------ consent

    /// Record a patient's consent given at `actor`'s institution (face-auth card reader).
    /// `inpatient`: valid until [`ClinsState::discharge`]; otherwise 24 hours from `at`.
    pub async fn record_consent(
        &self,
        actor: &Actor,
        patient_key: &str,
        inpatient: bool,
        at: DateTime<Utc>,
    ) -> Result<Value, Refusal> {
        let r = async {
            let inst = Self::institution(actor, "record consent")?;
            let key =
                checks::patient_key(patient_key, "patientKey").map_err(|i| Refusal::new(422, i))?;
            let mut period = json!({"start": ts(at)});
            if !inpatient {
                period["end"] = json!(ts(at + Duration::hours(24)));
            }
            let consent = json!({
                "resourceType": "Consent",
                "id": consent_id(&key, &inst),
                "meta": {"tag": [tag(T_PATIENT, &key.hash()), tag(T_SOURCE, &inst)]},
                "status": "active",
                "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": if inpatient {"IMP"} else {"AMB"}}]}],
                "patient": {"identifier": {"system": ids::MEMBER_ID_SYSTEM, "value": key.as_str()}},
                "dateTime": ts(at),
                "policyRule": {"text": "電子カルテ情報共有サービス 6情報閲覧同意"},
                "provision": {
                    "type": "permit",
                    "period": period,
                    "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                               "reference": {"identifier": {"system": ids::INSTITUTION_SYSTEM, "value": inst}}}],
                },
            });
            self.inner
                .store
                .write(self.inner.tenant, vec![WriteOp::put(consent.clone())])
                .await
                .map_err(Refusal::internal)?;
            Ok::<_, Refusal>((key, consent))
        }
        .await;
        match r {
            Ok((key, c)) => {
                self.log(
                    actor,
                    AuditAction::Create,
                    AuditOutcome::Success,
                    Some(&key),
                    vec![format!("Consent/{}", c["id"].as_str().unwrap_or(""))],
                    json!({"operation": "consent"}),
                )
                .await;
                Ok(c)
            }
            Err(e) => Err(self.refuse(actor, AuditAction::Create, None, e).await),
        }
    }

    /// End an inpatient consent at discharge.
    pub async fn discharge(
        &self,
        actor: &Actor,
        patient_key: &str,
        at: DateTime<Utc>,
    ) -> Result<Value, Refusal> {
        let inst = Self::institution(actor, "record a discharge")?;
        let key =
            checks::patient_key(patient_key, "patientKey").map_err(|i| Refusal::new(422, i))?;
        let Some(mut c) = self.consent(&key, &inst).await? else {
            return Err(Refusal::new(
                404,
                Issue::error(
                    "CLINS-NO-CONSENT",
                    "patientKey",
                    "この患者の同意が記録されていません",
                    "no consent recorded for this patient",
                ),
            ));
        };
        c["provision"]["period"]["end"] = json!(ts(at));
        self.inner
            .store
            .write(self.inner.tenant, vec![WriteOp::put(c.clone())])
            .await
            .map_err(Refusal::internal)?;
        Ok(c)
    }

    async fn consent(&self, key: &PatientKey, inst: &str) -> Result<Option<Value>, Refusal> {
        let r = self
            .inner
            .store
            .read(self.inner.tenant, "Consent", &consent_id(key, inst))
            .await
            .map_err(Refusal::internal)?;
        Ok(r.as_ref().filter(|r| !r.deleted).and_then(parse_stored))
    }

    /// True when `inst` holds a consent of the patient valid at `now`.
    pub async fn has_consent(
        &self,
        key: &PatientKey,
        inst: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, Refusal> {
        let Some(c) = self.consent(key, inst).await? else {
            return Ok(false);
        };
        let p = &c["provision"]["period"];
        let start = p["start"].as_str().and_then(views::date_ms);
        let end = p["end"].as_str().and_then(views::date_ms);
        let t = now.timestamp_millis();
        Ok(c["status"] == "active" && start.is_some_and(|s| s <= t) && end.is_none_or(|e| t < e))
    }

    fn no_consent() -> Refusal {
        Refusal::new(
            403,
            Issue::error(
                "CLINS-NO-CONSENT",
                "patientKey",
                "患者の閲覧同意がありません(外来は同意から24時間、入院は退院まで有効)",
                "no valid patient consent for this institution (outpatient: 24 hours, inpatient: until discharge)",
            ),
        )
    }

    // ------------------------------------------------------------------ views

    /// Institution view: one Bundle with the patient's 6情報 from all institutions, under a
    /// valid consent for the calling institution.
    pub async fn institution_view(
        &self,
        actor: &Actor,
        patient_key: &str,
        now: DateTime<Utc>,
    ) -> Result<Value, Refusal> {
        self.institution_view_as(actor, patient_key, now, |key, units| {
            let v = views::six_info(key, units, now, false);
            let n = v["entry"].as_array().map_or(0, Vec::len);
            (v, n)
        })
        .await
    }

    /// [`ClinsState::institution_view`] serialized to JSON bytes, written straight from the
    /// stored units (what the HTTP answer sends; no copy of the items is made).
    pub async fn institution_view_json(
        &self,
        actor: &Actor,
        patient_key: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<u8>, Refusal> {
        self.institution_view_as(actor, patient_key, now, |key, units| {
            let view = views::six_info_view(key, units, now, false);
            (
                serde_json::to_vec(&view).unwrap_or_default(),
                view.entries(),
            )
        })
        .await
    }

    async fn institution_view_as<T>(
        &self,
        actor: &Actor,
        patient_key: &str,
        now: DateTime<Utc>,
        render: impl FnOnce(&PatientKey, &[Arc<Value>]) -> (T, usize),
    ) -> Result<T, Refusal> {
        let r: Result<(PatientKey, T, usize), (Option<PatientKey>, Refusal)> = async {
            let inst = Self::institution(actor, "view").map_err(|e| (None, e))?;
            let key = checks::patient_key(patient_key, "patientKey")
                .map_err(|i| (None, Refusal::new(422, i)))?;
            let ok = self
                .has_consent(&key, &inst, now)
                .await
                .map_err(|e| (Some(key.clone()), e))?;
            if !ok {
                return Err((Some(key), Self::no_consent()));
            }
            let units = self
                .view_units(&key, now, false)
                .await
                .map_err(|e| (Some(key.clone()), e))?;
            let (view, entries) = render(&key, &units);
            Ok((key, view, entries))
        }
        .await;
        match r {
            Ok((key, view, entries)) => {
                self.log(
                    actor,
                    AuditAction::Read,
                    AuditOutcome::Success,
                    Some(&key),
                    vec![],
                    json!({"operation": "$clins-view", "entries": entries}),
                )
                .await;
                Ok(view)
            }
            Err((key, e)) => Err(self.refuse(actor, AuditAction::Read, key.as_ref(), e).await),
        }
    }

    /// Patient view (マイナポータル): own 6情報 (UNINFORMED hidden) and checkup reports.
    pub async fn patient_view(&self, actor: &Actor, now: DateTime<Utc>) -> Result<Value, Refusal> {
        let Actor::Patient { key, .. } = actor else {
            let e = Refusal::new(
                403,
                Issue::error(
                    "CLINS-FORBIDDEN",
                    "",
                    "患者本人のアカウントが必要です",
                    "a patient account is required",
                ),
            );
            return Err(self.refuse(actor, AuditAction::Read, None, e).await);
        };
        let units = self.view_units(key, now, true).await?;
        let mut b = views::six_info(key, &units, now, true);
        let checkups = units
            .iter()
            .filter(|u| tag_of(u, T_KIND) == Some(Kind::Checkup.code()))
            .map(|u| {
                views::entry(
                    format!("urn:iryo-clins:{}", u["id"].as_str().unwrap_or("")),
                    views::clean_unit(u),
                )
            });
        if let Some(entries) = b["entry"].as_array_mut() {
            entries.extend(checkups);
        }
        self.log(
            actor,
            AuditAction::Read,
            AuditOutcome::Success,
            Some(key),
            vec![],
            json!({"operation": "$my-records"}),
        )
        .await;
        Ok(b)
    }

    /// Insurer view: checkup reports of the insurer's insured (insurer-run checkups in full,
    /// others reduced to 特定健診 items).
    pub async fn insurer_view(&self, actor: &Actor) -> Result<Value, Refusal> {
        let Actor::Insurer { number, .. } = actor else {
            let e = Refusal::new(
                403,
                Issue::error(
                    "CLINS-FORBIDDEN",
                    "",
                    "保険者のアカウントが必要です",
                    "an insurer account is required",
                ),
            );
            return Err(self.refuse(actor, AuditAction::Search, None, e).await);
        };
        let qs = tag_query(&[(T_INSURER, number.as_str()), (T_KIND, Kind::Checkup.code())]);
        let units = self.find("Bundle", &qs).await?;
        let entries: Vec<Value> = units
            .iter()
            .map(|u| {
                views::entry(
                    format!("urn:iryo-clins:{}", u["id"].as_str().unwrap_or("")),
                    views::checkup_for_insurer(u),
                )
            })
            .collect();
        Ok(self.searchset(actor, "$checkup-reports", entries).await)
    }

    /// A searchset Bundle of `entries`, logged as a search by `actor`.
    async fn searchset(&self, actor: &Actor, operation: &str, entries: Vec<Value>) -> Value {
        self.log(
            actor,
            AuditAction::Search,
            AuditOutcome::Success,
            None,
            vec![],
            json!({"operation": operation, "count": entries.len()}),
        )
        .await;
        let mut b = json!({"resourceType": "Bundle", "type": "searchset", "total": entries.len()});
        b["entry"] = Value::Array(entries);
        b
    }

    // ------------------------------------------------------------------ referrals

    async fn referral_allowed(&self, u: &Value, inst: &str, now: DateTime<Utc>) -> bool {
        if tag_of(u, T_CONSENT_OK) == Some("true") {
            return true;
        }
        let Some(key) = views::patient_key_of(u) else {
            return false;
        };
        self.has_consent(&key, inst, now).await.unwrap_or(false)
    }

    /// Referrals addressed to the calling institution that the patient agreed to.
    pub async fn referrals(&self, actor: &Actor, now: DateTime<Utc>) -> Result<Value, Refusal> {
        let inst = match Self::institution(actor, "list referrals") {
            Ok(i) => i,
            Err(e) => return Err(self.refuse(actor, AuditAction::Search, None, e).await),
        };
        let qs = tag_query(&[(T_DEST, inst.as_str()), (T_KIND, Kind::Referral.code())]);
        let mut entries = vec![];
        for u in self.find("Bundle", &qs).await? {
            if self.referral_allowed(&u, &inst, now).await {
                entries.push(json!({
                    "fullUrl": format!("urn:iryo-clins:{}", u["id"].as_str().unwrap_or("")),
                    "resource": {
                        "resourceType": "Basic",
                        "code": {"text": "診療情報提供書"},
                        "identifier": [u["identifier"].clone()],
                        "author": {"identifier": {"system": ids::INSTITUTION_SYSTEM, "value": tag_of(&u, T_SOURCE)}},
                        "created": tag_of(&u, T_REGISTERED).and_then(|t| t.get(..10)),
                    }
                }));
            }
        }
        Ok(self.searchset(actor, "$referrals", entries).await)
    }

    /// Fetch one referral addressed to the caller (marks it fetched, for retention).
    pub async fn fetch_referral(
        &self,
        actor: &Actor,
        identifier: &str,
        now: DateTime<Utc>,
    ) -> Result<Value, Refusal> {
        let r = async {
            let inst = Self::institution(actor, "fetch referrals")?;
            let not_found = || {
                Refusal::new(
                    404,
                    Issue::error(
                        "CLINS-NOT-FOUND",
                        "identifier",
                        "この医療機関宛ての診療情報提供書はありません",
                        "no referral with this identifier addressed to this institution",
                    ),
                )
            };
            let mut u = self
                .read_unit(&unit_resource_id("u", identifier))
                .await?
                .ok_or_else(not_found)?;
            if tag_of(&u, T_DEST) != Some(inst.as_str())
                || tag_of(&u, T_KIND) != Some(Kind::Referral.code())
            {
                return Err(not_found());
            }
            if !self.referral_allowed(&u, &inst, now).await {
                return Err(Self::no_consent());
            }
            if tag_of(&u, T_FETCHED).is_none() {
                let mut tags = u["meta"]["tag"].as_array().cloned().unwrap_or_default();
                tags.push(tag(T_FETCHED, &ts(now)));
                u["meta"]["tag"] = Value::Array(tags);
                self.inner
                    .store
                    .write(self.inner.tenant, vec![WriteOp::put(u.clone())])
                    .await
                    .map_err(Refusal::internal)?;
            }
            Ok(u)
        }
        .await;
        match r {
            Ok(u) => {
                let key = views::patient_key_of(&u);
                self.log(
                    actor,
                    AuditAction::Read,
                    AuditOutcome::Success,
                    key.as_ref(),
                    vec![format!("Bundle/{}", u["id"].as_str().unwrap_or(""))],
                    json!({"operation": "$referral"}),
                )
                .await;
                Ok(views::clean_unit(&u))
            }
            Err(e) => Err(self.refuse(actor, AuditAction::Read, None, e).await),
        }
    }

    // ------------------------------------------------------------------ retention

    /// Remove what is past retention at `now`: units registered more than
    /// `config.retention` ago (LTS-flagged items kept), and referrals fetched more than
    /// `config.referral_retention` ago. What was removed is logged.
    pub async fn run_retention(&self, now: DateTime<Utc>) -> Result<RetentionReport, Refusal> {
        let mut attempt = 0;
        let report = loop {
            attempt += 1;
            match self.retention_once(now).await {
                Err(Stored::Conflict) if attempt < INDEX_ATTEMPTS => continue,
                Err(Stored::Conflict) => {
                    return Err(Refusal::internal("patients' indexes kept changing"))
                }
                Err(Stored::Refused(r)) => return Err(r),
                Ok(r) => break r,
            }
        };
        tracing::info!(
            removed = report.removed_units.len(),
            trimmed = report.trimmed_units.len(),
            referrals = report.removed_referrals.len(),
            "clins retention run"
        );
        let resources = report
            .removed_units
            .iter()
            .chain(&report.trimmed_units)
            .chain(&report.removed_referrals)
            .map(|id| format!("Bundle/{id}"))
            .collect();
        self.log(
            &Actor::Operator {
                subject: "system".into(),
            },
            AuditAction::Delete,
            AuditOutcome::Success,
            None,
            resources,
            json!({"operation": "retention", "removed": report.removed_units, "trimmed": report.trimmed_units, "referrals": report.removed_referrals}),
        )
        .await;
        Ok(report)
    }

    /// One attempt at a retention run (one write, index updates included).
    async fn retention_once(&self, now: DateTime<Utc>) -> Result<RetentionReport, Stored> {
        let cutoff = now - self.inner.config.retention;
        let mut report = RetentionReport::default();
        let mut ops = vec![];
        let mut index: HashMap<String, (Vec<String>, Vec<Value>)> = HashMap::new();
        let qs = format!("_lastUpdated=lt{}&_count=1000", enc(&ts(cutoff)));
        for u in self.find("Bundle", &qs).await? {
            let (Some(id), Some(reg)) = (u["id"].as_str(), tag_of(&u, T_REGISTERED)) else {
                continue;
            };
            if views::date_ms(reg).is_none_or(|r| r >= cutoff.timestamp_millis()) {
                continue;
            }
            let hash = tag_of(&u, T_PATIENT).unwrap_or("").to_string();
            match views::keep_lts(&u) {
                Some(mut trimmed) => {
                    if trimmed != *u {
                        report.trimmed_units.push(id.to_string());
                        let mut tags: Vec<Value> = trimmed["meta"]["tag"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default();
                        tags.retain(|t| t["system"] != T_STAMP);
                        tags.push(tag(T_STAMP, &new_stamp()));
                        trimmed["meta"]["tag"] = Value::Array(tags);
                        index.entry(hash).or_default().1.push(trimmed.clone());
                        ops.push(WriteOp::put(trimmed));
                    }
                }
                None => {
                    report.removed_units.push(id.to_string());
                    index.entry(hash).or_default().0.push(id.to_string());
                    ops.push(delete_bundle(id));
                }
            }
        }
        let qs = tag_query(&[(T_KIND, Kind::Referral.code())]);
        let ref_cutoff = (now - self.inner.config.referral_retention).timestamp_millis();
        for u in self.find("Bundle", &qs).await? {
            let fetched = tag_of(&u, T_FETCHED).and_then(views::date_ms);
            if let (Some(f), Some(id)) = (fetched, u["id"].as_str()) {
                if f < ref_cutoff && !report.removed_units.iter().any(|r| r == id) {
                    report.removed_referrals.push(id.to_string());
                    let hash = tag_of(&u, T_PATIENT).unwrap_or("").to_string();
                    index.entry(hash).or_default().0.push(id.to_string());
                    ops.push(delete_bundle(id));
                }
            }
        }
        for (h, (removed, upserts)) in &index {
            let upserts: Vec<&Value> = upserts.iter().collect();
            ops.push(self.index_op(h, removed, &upserts).await?);
        }
        if !ops.is_empty() {
            self.write_guarded(ops).await?;
        }
        Ok(report)
    }

    /// Run [`ClinsState::run_retention`] every `every` on the Tokio runtime.
    pub fn spawn_retention(&self, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = this.run_retention(Utc::now()).await {
                    tracing::error!(?e.issues, "clins retention failed");
                }
            }
        })
    }
}

/// `_tag=…&_tag=…` (all must match), up to 1000 per page.
fn tag_query(tags: &[(&str, &str)]) -> String {
    let mut q: Vec<String> = tags
        .iter()
        .map(|(system, code)| format!("_tag={}", enc(&format!("{system}|{code}"))))
        .collect();
    q.push("_count=1000".into());
    q.join("&")
}

fn consent_id(key: &PatientKey, inst: &str) -> String {
    format!(
        "c{}",
        ids::hash_hex(&format!("{}|{inst}", key.as_str()), 40)
    )
}

fn parse_stored(r: &StoredResource) -> Option<Value> {
    serde_json::from_slice(r.json.as_deref()?).ok()
}

fn set_platform_tags(bundle: &mut Value, tags: Vec<Value>) {
    if !bundle["meta"].is_object() {
        bundle["meta"] = json!({});
    }
    let mut all: Vec<Value> = bundle["meta"]["tag"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter(|t| {
                    !t["system"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("urn:iryo:clins:"))
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    all.extend(tags);
    bundle["meta"]["tag"] = Value::Array(all);
}

/// Add the institution-number extension when missing (items taken out of documents).
pub(crate) fn ensure_institution(r: &mut Value, inst: &str) {
    if checks::institution_of(r).is_some() {
        return;
    }
    let ext = json!({"url": ids::INSTITUTION_EXT, "valueIdentifier": {"system": ids::INSTITUTION_SYSTEM, "value": inst}});
    match r["extension"].as_array_mut() {
        Some(a) => a.push(ext),
        None => r["extension"] = json!([ext]),
    }
}

/// Why one attempt at a write did not happen.
enum Stored {
    /// Lost a race on a per-patient index: try again.
    Conflict,
    Refused(Refusal),
}

impl From<Refusal> for Stored {
    fn from(r: Refusal) -> Self {
        Stored::Refused(r)
    }
}

fn delete_bundle(id: &str) -> WriteOp {
    WriteOp::Delete {
        ty: "Bundle".into(),
        id: id.into(),
        if_match: None,
    }
}

fn deleted_id(op: &WriteOp) -> Option<String> {
    match op {
        WriteOp::Delete { id, .. } => Some(id.clone()),
        _ => None,
    }
}

fn index_id(hash: &str) -> String {
    format!("ix{hash}")
}

/// The per-patient index resource (a `Basic` in the platform tenant) holding `entries`,
/// written over `version` (or created when None).
fn index_write(hash: &str, version: Option<i64>, entries: &[Value]) -> WriteOp {
    let text = serde_json::to_string(entries).unwrap_or_else(|_| "[]".into());
    WriteOp::Put {
        resource: json!({
            "resourceType": "Basic",
            "id": index_id(hash),
            "meta": {"tag": [tag(T_PATIENT, hash)]},
            "code": {"text": "電子カルテ情報共有サービス 患者別索引 (per-patient unit index)"},
            "extension": [{"url": INDEX_EXT, "valueString": text}],
        }),
        if_match: version,
        create_only: version.is_none(),
    }
}

/// A value never used before by this process (nor, practically, by another).
fn new_stamp() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    ids::hash_hex(&format!("{t}/{n}/{}", std::process::id()), 16)
}

/// The access-log writer: takes what is queued (up to [`LOG_BATCH`] entries) and appends it
/// in one store transaction on a blocking thread; flush requests are answered after the batch
/// queued before them is committed.
async fn log_writer(
    audit: Arc<dyn SecurityStore>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<LogMsg>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![];
        let mut waiters = vec![];
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                LogMsg::Entry(e) => batch.push(*e),
                LogMsg::Flush(w) => waiters.push(w),
            }
            if batch.len() < LOG_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let audit = audit.clone();
            let n = batch.len();
            let r = tokio::task::spawn_blocking(move || audit.append_audit_many(batch)).await;
            if !matches!(r, Ok(Ok(_))) {
                tracing::error!("clins: access log append of {n} entries failed");
            }
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}

/// Write a client binding into the settings of the platform tenant `tenant` of `store`
/// (`bindings`: client id → `{"institution": N}` or `{"insurer": N}`). Tenant settings and not
/// resources, so that `iryo clins bind` may write them while a server runs on the same store
/// (a second process must not allocate resource keys in a SQLite store a server writes to).
async fn store_binding(
    store: &Store,
    tenant: i64,
    client: &str,
    binding: Option<&Binding>,
) -> Result<bool, String> {
    let entry = match binding {
        Some(Binding::Institution(n)) if ids::is_institution_number(n) => {
            Some(json!({"institution": n}))
        }
        Some(Binding::Insurer(n)) if n.len() == 8 && n.bytes().all(|b| b.is_ascii_digit()) => {
            Some(json!({"insurer": n}))
        }
        Some(b) => {
            return Err(format!(
                "不正な紐付けです / invalid binding {b:?} (医療機関番号は10桁 [0-4][0-9][1-3][0-9]{{7}}、保険者番号は8桁)"
            ))
        }
        None => None,
    };
    if client.trim().is_empty() {
        return Err("クライアントIDが空です / empty client id".into());
    }
    let mut settings = store
        .tenant_settings(tenant)
        .await
        .map_err(|e| e.to_string())?;
    if !settings.is_object() {
        settings = json!({});
    }
    if !settings["bindings"].is_object() {
        settings["bindings"] = json!({});
    }
    let list = settings["bindings"].as_object_mut().expect("object");
    let changed = match entry {
        Some(e) => {
            list.insert(client.to_string(), e);
            true
        }
        None => list.remove(client).is_some(),
    };
    if changed {
        store
            .tenant_set_settings(tenant, settings)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(changed)
}

fn binding_of(v: &Value) -> Option<Binding> {
    if let Some(n) = v["institution"].as_str() {
        return Some(Binding::Institution(n.to_string()));
    }
    v["insurer"]
        .as_str()
        .map(|n| Binding::Insurer(n.to_string()))
}

async fn all_bindings(store: &Store, tenant: i64) -> Result<Vec<(String, Binding)>, String> {
    let settings = store
        .tenant_settings(tenant)
        .await
        .map_err(|e| e.to_string())?;
    let mut out: Vec<(String, Binding)> = settings["bindings"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(c, v)| Some((c.clone(), binding_of(v)?)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

async fn read_binding(store: &Store, tenant: i64, client: &str) -> Option<Binding> {
    let settings = store.tenant_settings(tenant).await.ok()?;
    binding_of(settings.get("bindings")?.get(client)?)
}

/// Host-side management of client bindings (`iryo clins bind`), on the store of a running
/// or stopped server: bindings are read by the server within [`BINDING_TTL`].
pub struct Bindings {
    store: Store,
    tenant: i64,
}

impl Bindings {
    /// Open the platform tenant `platform_tenant` (normally `clins-platform`) of `store`,
    /// creating it when missing.
    pub async fn open(store: Store, platform_tenant: &str) -> Result<Bindings, String> {
        let tenant = match store.tenant_id(platform_tenant).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                store
                    .tenant_create(platform_tenant)
                    .await
                    .map_err(|e| e.to_string())?
                    .id
            }
            Err(e) => return Err(e.to_string()),
        };
        Ok(Bindings { store, tenant })
    }

    /// Bind `client` (the `sub` of its platform tokens).
    pub async fn bind(&self, client: &str, binding: Binding) -> Result<(), String> {
        store_binding(&self.store, self.tenant, client, Some(&binding))
            .await
            .map(|_| ())
    }

    /// Remove the binding of `client`; false when there was none.
    pub async fn unbind(&self, client: &str) -> Result<bool, String> {
        store_binding(&self.store, self.tenant, client, None).await
    }

    /// Every binding, sorted by client id.
    pub async fn list(&self) -> Result<Vec<(String, Binding)>, String> {
        all_bindings(&self.store, self.tenant).await
    }
}

/// Every match of a search in `tenant` (all pages, at most 100 000).
async fn search_all(
    store: &Store,
    tenant: i64,
    ty: &str,
    qs: &str,
) -> Result<Vec<StoredResource>, String> {
    let query = parse_query(iryo_search::model(), Some(ty), qs, Handling::Strict)
        .map_err(|e| format!("{e:?}"))?;
    let mut req = SearchRequest {
        query,
        page_token: None,
        base_url: "urn:iryo:clins".into(),
    };
    let mut out = vec![];
    loop {
        let page = store
            .search(tenant, req.clone())
            .await
            .map_err(|e| e.to_string())?;
        out.extend(page.matches.iter().cloned());
        if !page.has_next || out.len() >= 100_000 {
            break;
        }
        req.page_token = page.token.clone();
        req.query.offset = page.offset + page.count;
    }
    Ok(out)
}
