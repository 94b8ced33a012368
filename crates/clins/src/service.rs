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
pub(crate) const T_CONSENT_OK: &str = "urn:iryo:clins:referral-consent";
const CLIENT_SYSTEM: &str = "urn:iryo:clins:client-id";
const INSURER_SYSTEM: &str = "http://jpfhir.jp/fhir/core/mhlw/IdSystem/InsurerNumber";

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

pub(crate) struct Inner {
    pub store: Store,
    pub tenant: i64,
    pub config: ClinsConfig,
    pub tokens: TokenService,
    pub audit: Arc<dyn SecurityStore>,
    pub validator: Option<Arc<Validator>>,
    clients: RwLock<HashMap<String, Binding>>,
    /// Parsed stored units by id, with their version (views parse nothing already seen).
    parsed: parking_lot::Mutex<HashMap<String, (i64, Arc<Value>)>>,
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
        Ok(ClinsState {
            inner: Arc::new(Inner {
                store,
                tenant,
                config,
                tokens,
                audit,
                validator,
                clients: RwLock::new(HashMap::new()),
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
    /// Stored as an Organization in the platform tenant.
    pub async fn bind_client(&self, client: &str, binding: Binding) -> Result<(), String> {
        let (system, value) = match &binding {
            Binding::Institution(n) if ids::is_institution_number(n) => {
                (ids::INSTITUTION_SYSTEM, n)
            }
            Binding::Insurer(n) if n.len() == 8 && n.bytes().all(|b| b.is_ascii_digit()) => {
                (INSURER_SYSTEM, n)
            }
            _ => return Err(format!("invalid binding {binding:?}")),
        };
        let org = json!({
            "resourceType": "Organization",
            "id": unit_resource_id("client-", client),
            "identifier": [{"system": CLIENT_SYSTEM, "value": client}, {"system": system, "value": value}],
            "name": client,
        });
        self.inner
            .store
            .write(self.inner.tenant, vec![WriteOp::put(org)])
            .await
            .map_err(|e| e.to_string())?;
        self.inner
            .clients
            .write()
            .insert(client.to_string(), binding);
        Ok(())
    }

    pub(crate) async fn binding(&self, client: &str) -> Option<Binding> {
        if let Some(b) = self.inner.clients.read().get(client) {
            return Some(b.clone());
        }
        let r = self
            .inner
            .store
            .read(
                self.inner.tenant,
                "Organization",
                &unit_resource_id("client-", client),
            )
            .await
            .ok()??;
        let v: Value = serde_json::from_slice(r.json.as_deref()?).ok()?;
        let b = v["identifier"].as_array()?.iter().find_map(|i| {
            let val = i["value"].as_str()?.to_string();
            match i["system"].as_str()? {
                ids::INSTITUTION_SYSTEM => Some(Binding::Institution(val)),
                INSURER_SYSTEM => Some(Binding::Insurer(val)),
                _ => None,
            }
        })?;
        self.inner
            .clients
            .write()
            .insert(client.to_string(), b.clone());
        Some(b)
    }

    /// Append to the access log (never fails the request; a failure is traced).
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
        let audit = self.inner.audit.clone();
        let r = tokio::task::spawn_blocking(move || audit.append_audit(e)).await;
        if !matches!(r, Ok(Ok(_))) {
            tracing::error!("clins: access log append failed");
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

    /// Search the platform tenant; follows pages up to `limit` matches.
    pub(crate) async fn find(&self, ty: &str, qs: &str) -> Result<Vec<Arc<Value>>, Refusal> {
        let query = parse_query(iryo_search::model(), Some(ty), qs, Handling::Strict)
            .map_err(|e| Refusal::internal(format!("{e:?}")))?;
        let mut req = SearchRequest {
            query,
            page_token: None,
            base_url: "urn:iryo:clins".into(),
        };
        let mut out = vec![];
        loop {
            let page = self
                .inner
                .store
                .search(self.inner.tenant, req.clone())
                .await
                .map_err(Refusal::internal)?;
            out.extend(page.matches.iter().filter_map(|r| self.parsed(r)));
            if !page.has_next || out.len() >= 100_000 {
                break;
            }
            req.page_token = page.token.clone();
            req.query.offset = page.offset + page.count;
        }
        Ok(out)
    }

    /// The parsed JSON of a stored resource, from the cache when this version was seen.
    fn parsed(&self, r: &StoredResource) -> Option<Arc<Value>> {
        const MAX_CACHED: usize = 4096;
        if let Some((v, json)) = self.inner.parsed.lock().get(&r.id) {
            if *v == r.version {
                return Some(json.clone());
            }
        }
        let json = Arc::new(parse_stored(r)?);
        let mut cache = self.inner.parsed.lock();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(r.id.clone(), (r.version, json.clone()));
        Some(json)
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
        let mut ops = vec![];
        if let Some((pk, ident)) = withdraw {
            ops.extend(self.withdraw_ops(&inst, pk, ident).await?.1);
        }
        let unit_id = unit_resource_id("u", &sub.unit.value);
        let key = sub.patient_key.clone();
        if let Some(old) = self.read_unit(&unit_id).await? {
            if tag_of(&old, T_PATIENT) != Some(&key.hash()) {
                return Err(Refusal::new(
                    409,
                    Issue::error(
                        "CLINS-UNIT-PATIENT",
                        "Bundle.identifier",
                        "同じ識別子の報告単位が別の患者で登録されています",
                        "a report unit with this identifier is registered for another patient",
                    ),
                ));
            }
        }
        if sub.kind.full_list() {
            let qs = tag_query(&[
                (T_PATIENT, &key.hash()),
                (T_SOURCE, &inst),
                (T_KIND, sub.kind.code()),
            ]);
            for old in self.find("Bundle", &qs).await? {
                if let Some(id) = old["id"].as_str().filter(|id| *id != unit_id) {
                    ops.push(WriteOp::Delete {
                        ty: "Bundle".into(),
                        id: id.into(),
                        if_match: None,
                    });
                }
            }
        }
        let now = ts(Utc::now());
        let mut tags = vec![
            tag(T_PATIENT, &key.hash()),
            tag(T_SOURCE, &inst),
            tag(T_KIND, sub.kind.code()),
            tag(T_INSURER, key.insurer()),
            tag(T_REGISTERED, &now),
        ];
        if let Some(d) = &sub.destination {
            tags.push(tag(T_DEST, d));
        }
        if sub.referral_consent {
            tags.push(tag(T_CONSENT_OK, "true"));
        }
        let mut stored = bundle;
        stored["id"] = json!(unit_id);
        set_platform_tags(&mut stored, tags.clone());
        let rx_id = unit_resource_id("p", &sub.unit.value);
        ops.retain(
            |op| !matches!(op, WriteOp::Delete { id, .. } if *id == rx_id || *id == unit_id),
        );
        ops.push(WriteOp::put(stored));
        if sub.prescriptions.is_empty() {
            ops.push(WriteOp::Delete {
                ty: "Bundle".into(),
                id: rx_id,
                if_match: None,
            });
        } else {
            let patient = views::patient_of(&ops_last_bundle(&ops));
            let mut entries =
                vec![json!({"fullUrl": "urn:iryo-clins:patient", "resource": patient})];
            for (n, mut rx) in sub.prescriptions.into_iter().enumerate() {
                ensure_institution(&mut rx, &inst);
                entries.push(json!({"fullUrl": format!("urn:iryo-clins:rx:{n}"), "resource": rx}));
            }
            tags[2] = tag(T_KIND, Kind::Prescription.code());
            let mut rx = json!({
                "resourceType": "Bundle", "id": rx_id, "type": "collection",
                "identifier": {"system": ids::BUNDLE_ID_SYSTEM, "value": sub.unit.value},
                "entry": entries,
            });
            set_platform_tags(&mut rx, tags);
            ops.push(WriteOp::put(rx));
        }
        self.inner
            .store
            .write(self.inner.tenant, ops)
            .await
            .map_err(Refusal::internal)?;
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
        let del = |id: String| WriteOp::Delete {
            ty: "Bundle".into(),
            id,
            if_match: None,
        };
        Ok((
            key,
            vec![del(unit_id), del(unit_resource_id("p", identifier))],
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
            let (key, ops) = self.withdraw_ops(&inst, patient_key, identifier).await?;
            self.inner
                .store
                .write(self.inner.tenant, ops)
                .await
                .map_err(Refusal::internal)?;
            Ok::<_, Refusal>(key)
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

    /// All report units of a patient.
    pub(crate) async fn units_of(&self, key: &PatientKey) -> Result<Vec<Arc<Value>>, Refusal> {
        self.find("Bundle", &tag_query(&[(T_PATIENT, &key.hash())]))
            .await
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
        let r: Result<(PatientKey, Value), (Option<PatientKey>, Refusal)> = async {
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
                .units_of(&key)
                .await
                .map_err(|e| (Some(key.clone()), e))?;
            let view = views::six_info(&key, &units, now, false);
            Ok((key, view))
        }
        .await;
        match r {
            Ok((key, b)) => {
                self.log(
                    actor,
                    AuditAction::Read,
                    AuditOutcome::Success,
                    Some(&key),
                    vec![],
                    json!({"operation": "$clins-view", "entries": b["entry"].as_array().map_or(0, Vec::len)}),
                )
                .await;
                Ok(b)
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
        let units = self.units_of(key).await?;
        let mut b = views::six_info(key, &units, now, true);
        let checkups = units
            .iter()
            .filter(|u| tag_of(u, T_KIND) == Some(Kind::Checkup.code()))
            .map(|u| json!({"fullUrl": format!("urn:iryo-clins:{}", u["id"].as_str().unwrap_or("")), "resource": views::clean_unit(u)}));
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
            .map(|u| json!({"fullUrl": format!("urn:iryo-clins:{}", u["id"].as_str().unwrap_or("")), "resource": views::checkup_for_insurer(u)}))
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
        json!({"resourceType": "Bundle", "type": "searchset", "total": entries.len(), "entry": entries})
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
        let cutoff = now - self.inner.config.retention;
        let mut report = RetentionReport::default();
        let mut ops = vec![];
        let qs = format!("_lastUpdated=lt{}&_count=1000", enc(&ts(cutoff)));
        for u in self.find("Bundle", &qs).await? {
            let (Some(id), Some(reg)) = (u["id"].as_str(), tag_of(&u, T_REGISTERED)) else {
                continue;
            };
            if views::date_ms(reg).is_none_or(|r| r >= cutoff.timestamp_millis()) {
                continue;
            }
            match views::keep_lts(&u) {
                Some(trimmed) => {
                    if trimmed != *u {
                        report.trimmed_units.push(id.to_string());
                        ops.push(WriteOp::put(trimmed));
                    }
                }
                None => {
                    report.removed_units.push(id.to_string());
                    ops.push(WriteOp::Delete {
                        ty: "Bundle".into(),
                        id: id.into(),
                        if_match: None,
                    });
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
                    ops.push(WriteOp::Delete {
                        ty: "Bundle".into(),
                        id: id.into(),
                        if_match: None,
                    });
                }
            }
        }
        if !ops.is_empty() {
            self.inner
                .store
                .write(self.inner.tenant, ops)
                .await
                .map_err(Refusal::internal)?;
        }
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

fn ops_last_bundle(ops: &[WriteOp]) -> Value {
    ops.iter()
        .rev()
        .find_map(|op| match op {
            WriteOp::Put { resource, .. } => Some(resource.clone()),
            _ => None,
        })
        .unwrap_or(Value::Null)
}
