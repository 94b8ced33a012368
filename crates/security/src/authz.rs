//! Access decisions: tenant × role × SMART scopes × patient compartment,
//! plus break-glass emergency access.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, Result, SecurityError};
use crate::roles::{break_glass_permits, role_permits, Interaction, ResourceCategory, Role};
use crate::scopes::{ScopeContext, ScopeSet};

/// Default length of a break-glass grant.
pub const BREAK_GLASS_DEFAULT: Duration = Duration::minutes(60);
/// Longest break-glass grant that may be requested.
pub const BREAK_GLASS_MAX: Duration = Duration::hours(4);

/// A time-limited emergency access grant (非常時アクセス). While active it
/// gives a clinical professional physician-level access to patient, clinical
/// and medication data; every decision it enables is flagged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakGlassGrant {
    /// Random id, recorded in the audit log.
    pub id: String,
    pub reason: String,
    /// When set, the grant covers only this patient's compartment.
    pub patient: Option<String>,
    pub granted_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl BreakGlassGrant {
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        now >= self.granted_at && now < self.expires_at
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// Tenant (medical institution) of the account or client.
    pub tenant: String,
    /// User id, or client id for a backend system.
    pub subject: String,
    /// Occupation/duty; `None` for backend systems authorised by `system/` scopes only.
    pub role: Option<Role>,
    /// Explicit administrator rights (user management, configuration).
    pub is_admin: bool,
    /// OAuth scopes; `None` for an interactive web session (role only).
    pub scopes: Option<ScopeSet>,
    /// Patient id: the user's own record for [`Role::Patient`], or the
    /// SMART launch context for `patient/` scopes.
    pub patient: Option<String>,
    pub break_glass: Option<BreakGlassGrant>,
}

/// What is being done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessRequest<'a> {
    /// Tenant that owns the data addressed by the request.
    pub tenant: &'a str,
    pub interaction: Interaction,
    pub resource_type: &'a str,
    /// Patient whose compartment the target belongs to (instance
    /// interactions), or to which a search/history/export is limited. `None`
    /// when the target is in no patient compartment or the search is not
    /// limited to one patient.
    pub patient_compartment: Option<&'a str>,
    pub now: DateTime<Utc>,
}

/// Why access was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DenyReason {
    WrongTenant,
    RoleForbids,
    ScopeMissing,
    OutsideCompartment,
    NoPatientContext,
    BreakGlassExpired,
    NotAdministrator,
}

impl DenyReason {
    pub fn message_ja(self) -> &'static str {
        match self {
            DenyReason::WrongTenant => "他の医療機関のデータにはアクセスできません",
            DenyReason::RoleForbids => "この職種にはこの操作の権限がありません",
            DenyReason::ScopeMissing => "アクセストークンのスコープにこの操作が含まれていません",
            DenyReason::OutsideCompartment => "ご本人以外の患者のデータにはアクセスできません",
            DenyReason::NoPatientContext => "対象患者が指定されていません",
            DenyReason::BreakGlassExpired => "緊急時アクセスの有効期限が切れています",
            DenyReason::NotAdministrator => "管理者権限が必要です",
        }
    }
    pub fn message_en(self) -> &'static str {
        match self {
            DenyReason::WrongTenant => "data of another tenant is not accessible",
            DenyReason::RoleForbids => "the role does not permit this interaction",
            DenyReason::ScopeMissing => "the token's scopes do not cover this interaction",
            DenyReason::OutsideCompartment => "access outside the patient's own compartment",
            DenyReason::NoPatientContext => "no patient context",
            DenyReason::BreakGlassExpired => "the break-glass grant has expired",
            DenyReason::NotAdministrator => "administrator rights are required",
        }
    }
    /// As a crate error (kind Forbidden, or WrongTenant).
    pub fn to_error(self) -> SecurityError {
        let kind = if self == DenyReason::WrongTenant {
            ErrorKind::WrongTenant
        } else {
            ErrorKind::Forbidden
        };
        SecurityError::new(kind, self.message_ja(), self.message_en())
    }
}

/// Conditions attached to an allowed access that the caller must enforce.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Grant {
    /// Searches/history/export must be limited to this patient's compartment
    /// (and included resources filtered likewise).
    pub restrict_to_patient: Option<String>,
    /// SMART v2 search-parameter constraints to add to the search, and to
    /// check against read results.
    pub constraints: Vec<(String, String)>,
    /// Set when the access is only allowed through break-glass: the caller
    /// must log it as such and alert administrators.
    pub break_glass: Option<BreakGlassGrant>,
}

/// Result of [`authorize`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Decision {
    Allow(Grant),
    Deny(DenyReason),
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
    /// `Ok(grant)` or the denial as an error.
    pub fn into_result(self) -> Result<Grant> {
        match self {
            Decision::Allow(g) => Ok(g),
            Decision::Deny(r) => Err(r.to_error()),
        }
    }
}

fn in_compartment_category(resource_type: &str) -> bool {
    matches!(
        ResourceCategory::of(resource_type),
        ResourceCategory::Patient
            | ResourceCategory::Clinical
            | ResourceCategory::Medication
            | ResourceCategory::Administrative
            | ResourceCategory::Security
    )
}

/// Checks that a request stays in `patient`'s compartment. Returns the
/// restriction to apply, or the denial.
fn compartment_check(
    patient: &str,
    req: &AccessRequest<'_>,
) -> std::result::Result<Option<String>, DenyReason> {
    if !in_compartment_category(req.resource_type) {
        // Directory and definitional resources are not patient data.
        return Ok(None);
    }
    match req.patient_compartment {
        Some(c) if c == patient => Ok(None),
        Some(_) => Err(DenyReason::OutsideCompartment),
        None => match req.interaction {
            // Type-level search/history: allowed but limited to the compartment.
            Interaction::Search | Interaction::History | Interaction::Export => {
                Ok(Some(patient.to_string()))
            }
            // Instance access to data in no compartment, or creation without a patient.
            _ => Err(DenyReason::OutsideCompartment),
        },
    }
}

/// Decides whether `principal` may perform `req`.
///
/// Order of checks: tenant; role permission (or an active break-glass grant
/// for clinical staff); the patient user's own compartment; SMART scopes when
/// the principal came with a token (`patient/` scopes additionally limit
/// access to the launch patient, `system/` scopes apply only to backend
/// clients, never widening a user's role).
pub fn authorize(principal: &Principal, req: &AccessRequest<'_>) -> Decision {
    if principal.tenant != req.tenant || req.tenant.is_empty() {
        return Decision::Deny(DenyReason::WrongTenant);
    }
    let mut grant = Grant::default();

    // 1. Role.
    match principal.role {
        Some(role) => {
            if !role_permits(role, req.interaction, req.resource_type) {
                match &principal.break_glass {
                    Some(bg)
                        if role.is_clinical()
                            && break_glass_permits(req.interaction, req.resource_type) =>
                    {
                        if !bg.is_active(req.now) {
                            return Decision::Deny(DenyReason::BreakGlassExpired);
                        }
                        if let Some(p) = &bg.patient {
                            if let Err(r) = compartment_check(p, req) {
                                return Decision::Deny(r);
                            }
                            grant.restrict_to_patient = compartment_check(p, req).ok().flatten();
                        }
                        grant.break_glass = Some(bg.clone());
                    }
                    _ => return Decision::Deny(DenyReason::RoleForbids),
                }
            }
            if role == Role::Patient {
                let Some(p) = principal.patient.as_deref() else {
                    return Decision::Deny(DenyReason::NoPatientContext);
                };
                match compartment_check(p, req) {
                    Ok(r) => {
                        if r.is_some() {
                            grant.restrict_to_patient = r;
                        }
                    }
                    Err(e) => return Decision::Deny(e),
                }
            }
        }
        None => {
            // A backend client without a role acts only through system/ scopes.
            if principal.scopes.is_none() {
                return Decision::Deny(DenyReason::ScopeMissing);
            }
        }
    }

    // 2. Scopes.
    if let Some(scopes) = &principal.scopes {
        let contexts: &[ScopeContext] = if principal.role.is_none() {
            &[ScopeContext::System]
        } else {
            &[ScopeContext::User, ScopeContext::Patient]
        };
        let Some(sg) = scopes.grant(contexts, req.interaction, req.resource_type) else {
            return Decision::Deny(DenyReason::ScopeMissing);
        };
        if sg.context == ScopeContext::Patient {
            let Some(p) = principal.patient.as_deref() else {
                return Decision::Deny(DenyReason::NoPatientContext);
            };
            match compartment_check(p, req) {
                Ok(Some(r)) => grant.restrict_to_patient = Some(r),
                Ok(None) => {}
                Err(e) => return Decision::Deny(e),
            }
        }
        grant.constraints = sg.constraints;
    }
    Decision::Allow(grant)
}

/// Whether the principal may perform administrative actions (user management,
/// configuration, audit export) in `tenant`.
pub fn authorize_admin(principal: &Principal, tenant: &str) -> Decision {
    if principal.tenant != tenant {
        Decision::Deny(DenyReason::WrongTenant)
    } else if !principal.is_admin || principal.role.is_none() {
        Decision::Deny(DenyReason::NotAdministrator)
    } else {
        Decision::Allow(Grant::default())
    }
}

/// The audit entry for an access decision: the interaction as action, the
/// patient and resources touched, `denied` with the reason when refused, and
/// the break-glass grant when it was needed. One entry per request; for
/// searches pass every returned resource in `resources`.
pub fn access_audit_entry(
    principal: &Principal,
    req: &AccessRequest<'_>,
    decision: &Decision,
    resources: Vec<String>,
    source_ip: Option<&str>,
) -> crate::store::NewAuditEntry {
    use crate::audit::{AuditAction, AuditOutcome};
    let action = match req.interaction {
        Interaction::Read => AuditAction::Read,
        Interaction::Search => AuditAction::Search,
        Interaction::Create => AuditAction::Create,
        Interaction::Update => AuditAction::Update,
        Interaction::Delete => AuditAction::Delete,
        Interaction::History => AuditAction::History,
        Interaction::Export => AuditAction::Export,
    };
    let outcome = if decision.is_allowed() {
        AuditOutcome::Success
    } else {
        AuditOutcome::Denied
    };
    let mut e =
        crate::store::NewAuditEntry::new(req.now, req.tenant, &principal.subject, action, outcome);
    e.role = principal.role.map(|r| r.code().to_string());
    e.source_ip = source_ip.map(str::to_string);
    e.patient = req.patient_compartment.map(str::to_string);
    e.resources = resources;
    let mut details = serde_json::Map::new();
    details.insert("resource_type".into(), req.resource_type.into());
    if principal.tenant != req.tenant {
        details.insert("principal_tenant".into(), principal.tenant.clone().into());
    }
    match decision {
        Decision::Deny(r) => {
            details.insert("reason".into(), r.message_en().into());
            details.insert(
                "reason_code".into(),
                serde_json::to_value(r).unwrap_or_default(),
            );
        }
        Decision::Allow(g) => {
            if let Some(bg) = &g.break_glass {
                details.insert("break_glass".into(), bg.id.clone().into());
                details.insert("reason".into(), bg.reason.clone().into());
            }
            if let Some(p) = &g.restrict_to_patient {
                details.insert("restricted_to_patient".into(), p.clone().into());
            }
        }
    }
    e.details = serde_json::Value::Object(details);
    e
}

/// Requests a break-glass grant. The reason is mandatory (at least 5
/// characters), the duration is limited to [`BREAK_GLASS_MAX`], and only
/// clinical professionals may break the glass. The caller must write the
/// returned grant to the audit log and alert administrators.
pub fn request_break_glass(
    principal: &Principal,
    reason: &str,
    patient: Option<&str>,
    duration: Duration,
    now: DateTime<Utc>,
) -> Result<BreakGlassGrant> {
    if !principal.role.is_some_and(|r| r.is_clinical()) {
        return Err(SecurityError::new(
            ErrorKind::Forbidden,
            "緊急時アクセスは医師・歯科医師・薬剤師・看護師のみ利用できます",
            "only clinical professionals may request break-glass access",
        ));
    }
    let reason = reason.trim();
    let n = reason.chars().count();
    if !(5..=1000).contains(&n) {
        return Err(SecurityError::invalid(
            "緊急時アクセスの理由を5文字以上1000文字以内で入力してください",
            "a break-glass reason of 5 to 1000 characters is required",
        ));
    }
    if duration <= Duration::zero() || duration > BREAK_GLASS_MAX {
        return Err(SecurityError::invalid(
            "緊急時アクセスの有効時間は4時間以内です",
            "break-glass duration must be positive and at most 4 hours",
        ));
    }
    Ok(BreakGlassGrant {
        id: crate::random_token(16),
        reason: reason.to_string(),
        patient: patient.map(str::to_string),
        granted_at: now,
        expires_at: now + duration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 9, 0, 0).unwrap()
    }

    fn user(role: Role) -> Principal {
        Principal {
            tenant: "clinic-a".into(),
            subject: "u1".into(),
            role: Some(role),
            is_admin: false,
            scopes: None,
            patient: None,
            break_glass: None,
        }
    }

    fn req<'a>(i: Interaction, t: &'a str, c: Option<&'a str>) -> AccessRequest<'a> {
        AccessRequest {
            tenant: "clinic-a",
            interaction: i,
            resource_type: t,
            patient_compartment: c,
            now: now(),
        }
    }

    #[test]
    fn cross_tenant_is_denied_for_every_interaction() {
        let p = user(Role::Physician);
        for i in Interaction::ALL {
            let mut r = req(i, "Observation", Some("p1"));
            r.tenant = "clinic-b";
            assert_eq!(authorize(&p, &r), Decision::Deny(DenyReason::WrongTenant));
        }
        let mut r = req(Interaction::Read, "Observation", None);
        r.tenant = "";
        let mut p2 = p.clone();
        p2.tenant = String::new();
        assert_eq!(authorize(&p2, &r), Decision::Deny(DenyReason::WrongTenant));
    }

    #[test]
    fn role_rules_apply() {
        let d = authorize(
            &user(Role::Physician),
            &req(Interaction::Create, "Observation", Some("p1")),
        );
        assert!(d.is_allowed());
        let d = authorize(
            &user(Role::SystemAdministrator),
            &req(Interaction::Read, "Observation", Some("p1")),
        );
        assert_eq!(d, Decision::Deny(DenyReason::RoleForbids));
        let e = d.into_result().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Forbidden);
        assert!(!e.message_ja.is_empty());
    }

    #[test]
    fn patient_user_limited_to_own_compartment() {
        let mut p = user(Role::Patient);
        p.patient = Some("pat-1".into());
        assert!(authorize(&p, &req(Interaction::Read, "Observation", Some("pat-1"))).is_allowed());
        assert_eq!(
            authorize(&p, &req(Interaction::Read, "Observation", Some("pat-2"))),
            Decision::Deny(DenyReason::OutsideCompartment)
        );
        // A search without a patient is narrowed to the own compartment.
        match authorize(&p, &req(Interaction::Search, "Observation", None)) {
            Decision::Allow(g) => assert_eq!(g.restrict_to_patient.as_deref(), Some("pat-1")),
            d => panic!("{d:?}"),
        }
        // Read by id of a resource in no compartment (or an unknown one) is refused.
        assert_eq!(
            authorize(&p, &req(Interaction::Read, "Observation", None)),
            Decision::Deny(DenyReason::OutsideCompartment)
        );
        // Directory data is fine.
        assert!(authorize(&p, &req(Interaction::Read, "Practitioner", None)).is_allowed());
        // No writes, no export.
        assert!(
            !authorize(&p, &req(Interaction::Update, "Observation", Some("pat-1"))).is_allowed()
        );
        assert!(
            !authorize(&p, &req(Interaction::Export, "Observation", Some("pat-1"))).is_allowed()
        );
        // Patient account without a linked record.
        p.patient = None;
        assert_eq!(
            authorize(&p, &req(Interaction::Read, "Observation", Some("pat-1"))),
            Decision::Deny(DenyReason::NoPatientContext)
        );
    }

    #[test]
    fn scopes_never_widen_the_role() {
        let mut p = user(Role::Nurse);
        p.scopes = Some(ScopeSet::parse("user/*.cruds").unwrap());
        assert!(authorize(&p, &req(Interaction::Create, "Observation", Some("x"))).is_allowed());
        assert_eq!(
            authorize(
                &p,
                &req(Interaction::Create, "MedicationRequest", Some("x"))
            ),
            Decision::Deny(DenyReason::RoleForbids)
        );
        p.scopes = Some(ScopeSet::parse("user/Observation.r").unwrap());
        assert_eq!(
            authorize(&p, &req(Interaction::Search, "Observation", None)),
            Decision::Deny(DenyReason::ScopeMissing)
        );
        // system/ scopes do not apply to users.
        p.scopes = Some(ScopeSet::parse("system/*.cruds").unwrap());
        assert_eq!(
            authorize(&p, &req(Interaction::Read, "Observation", Some("x"))),
            Decision::Deny(DenyReason::ScopeMissing)
        );
    }

    #[test]
    fn patient_scopes_need_launch_context() {
        let mut p = user(Role::Physician);
        p.scopes = Some(ScopeSet::parse("patient/*.rs").unwrap());
        assert_eq!(
            authorize(&p, &req(Interaction::Read, "Observation", Some("a"))),
            Decision::Deny(DenyReason::NoPatientContext)
        );
        p.patient = Some("a".into());
        assert!(authorize(&p, &req(Interaction::Read, "Observation", Some("a"))).is_allowed());
        assert_eq!(
            authorize(&p, &req(Interaction::Read, "Observation", Some("b"))),
            Decision::Deny(DenyReason::OutsideCompartment)
        );
        match authorize(&p, &req(Interaction::Search, "Condition", None)) {
            Decision::Allow(g) => assert_eq!(g.restrict_to_patient.as_deref(), Some("a")),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn system_clients_use_system_scopes_only() {
        let p = Principal {
            tenant: "clinic-a".into(),
            subject: "lab-system".into(),
            role: None,
            is_admin: false,
            scopes: Some(ScopeSet::parse("system/Observation.cru system/Patient.rs").unwrap()),
            patient: None,
            break_glass: None,
        };
        assert!(authorize(&p, &req(Interaction::Create, "Observation", Some("x"))).is_allowed());
        assert!(authorize(&p, &req(Interaction::Search, "Patient", None)).is_allowed());
        assert_eq!(
            authorize(&p, &req(Interaction::Delete, "Observation", Some("x"))),
            Decision::Deny(DenyReason::ScopeMissing)
        );
        let mut p2 = p.clone();
        p2.scopes = None;
        assert!(!authorize(&p2, &req(Interaction::Read, "Patient", None)).is_allowed());
        p2.scopes = Some(ScopeSet::parse("patient/*.rs user/*.rs").unwrap());
        assert!(!authorize(&p2, &req(Interaction::Read, "Patient", Some("x"))).is_allowed());
    }

    #[test]
    fn break_glass_is_time_limited_and_flagged() {
        let mut nurse = user(Role::Nurse);
        let denied = authorize(
            &nurse,
            &req(Interaction::Create, "MedicationRequest", Some("p9")),
        );
        assert_eq!(denied, Decision::Deny(DenyReason::RoleForbids));

        assert!(request_break_glass(&nurse, "  ", None, BREAK_GLASS_DEFAULT, now()).is_err());
        assert!(
            request_break_glass(&nurse, "心肺停止のため", None, Duration::hours(5), now()).is_err()
        );
        assert!(request_break_glass(
            &user(Role::MedicalClerk),
            "心肺停止のため",
            None,
            BREAK_GLASS_DEFAULT,
            now()
        )
        .is_err());

        let g = request_break_glass(
            &nurse,
            "心肺停止のため",
            Some("p9"),
            BREAK_GLASS_DEFAULT,
            now(),
        )
        .unwrap();
        nurse.break_glass = Some(g.clone());
        match authorize(
            &nurse,
            &req(Interaction::Create, "MedicationRequest", Some("p9")),
        ) {
            Decision::Allow(grant) => assert_eq!(
                grant.break_glass.as_ref().map(|b| b.id.as_str()),
                Some(g.id.as_str())
            ),
            d => panic!("{d:?}"),
        }
        // Limited to the named patient.
        assert_eq!(
            authorize(
                &nurse,
                &req(Interaction::Create, "MedicationRequest", Some("p10"))
            ),
            Decision::Deny(DenyReason::OutsideCompartment)
        );
        // Normal permissions are not flagged.
        match authorize(&nurse, &req(Interaction::Read, "Observation", Some("p9"))) {
            Decision::Allow(grant) => assert!(grant.break_glass.is_none()),
            d => panic!("{d:?}"),
        }
        // Expired.
        let mut late = req(Interaction::Create, "MedicationRequest", Some("p9"));
        late.now = now() + Duration::minutes(61);
        assert_eq!(
            authorize(&nurse, &late),
            Decision::Deny(DenyReason::BreakGlassExpired)
        );
        // Never opens non-clinical data or delete.
        assert!(
            !authorize(&nurse, &req(Interaction::Delete, "Observation", Some("p9"))).is_allowed()
        );
        assert!(!authorize(&nurse, &req(Interaction::Read, "AuditEvent", None)).is_allowed());
    }

    #[test]
    fn access_decisions_become_audit_entries() {
        use crate::audit::{AuditAction, AuditOutcome};
        let p = user(Role::MedicalClerk);
        let mut r = req(Interaction::Read, "Observation", Some("p1"));
        r.tenant = "clinic-b";
        let d = authorize(&p, &r);
        let e = access_audit_entry(
            &p,
            &r,
            &d,
            vec!["Observation/1".into()],
            Some("198.51.100.2"),
        );
        assert_eq!(e.action, AuditAction::Read);
        assert_eq!(e.outcome, AuditOutcome::Denied);
        assert_eq!(e.tenant, "clinic-b");
        assert_eq!(e.details["reason_code"], "wrong-tenant");
        assert_eq!(e.details["principal_tenant"], "clinic-a");
        let mut nurse = user(Role::Nurse);
        nurse.break_glass = Some(
            request_break_glass(&nurse, "急変のため対応", None, BREAK_GLASS_DEFAULT, now())
                .unwrap(),
        );
        let r = req(Interaction::Create, "MedicationRequest", Some("p1"));
        let d = authorize(&nurse, &r);
        let e = access_audit_entry(&nurse, &r, &d, vec![], None);
        assert_eq!(e.outcome, AuditOutcome::Success);
        assert_eq!(e.details["reason"], "急変のため対応");
        assert_eq!(e.patient.as_deref(), Some("p1"));
    }

    #[test]
    fn admin_rights_are_explicit() {
        let mut p = user(Role::SystemAdministrator);
        assert_eq!(
            authorize_admin(&p, "clinic-a"),
            Decision::Deny(DenyReason::NotAdministrator)
        );
        p.is_admin = true;
        assert!(authorize_admin(&p, "clinic-a").is_allowed());
        assert_eq!(
            authorize_admin(&p, "clinic-b"),
            Decision::Deny(DenyReason::WrongTenant)
        );
        let mut doc = user(Role::Physician);
        doc.is_admin = true;
        assert!(authorize_admin(&doc, "clinic-a").is_allowed());
    }
}
