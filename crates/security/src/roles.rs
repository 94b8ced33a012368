//! Roles by occupation (職種) and duty (担当業務), FHIR interactions and the
//! role → permission matrix.
//!
//! Resource types are grouped into [`ResourceCategory`]s; each role is granted a
//! set of interactions per category. Administrator rights (user management,
//! configuration) are a separate, explicit flag on the account and are *not*
//! implied by any role — not even [`Role::SystemAdministrator`], whose data
//! permissions are limited to non-clinical resources.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::error::SecurityError;

/// Occupation / duty of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// 医師
    Physician,
    /// 歯科医師
    Dentist,
    /// 薬剤師
    Pharmacist,
    /// 看護師
    Nurse,
    /// 医療事務
    MedicalClerk,
    /// システム管理者
    SystemAdministrator,
    /// 患者 (platform side)
    Patient,
    /// 保険者 (platform side)
    Insurer,
    /// 保健所・行政担当者 (platform side)
    PublicHealthOfficer,
    /// プラットフォーム運用者 (platform side)
    PlatformOperator,
}

impl Role {
    /// All roles, in display order.
    pub const ALL: [Role; 10] = [
        Role::Physician,
        Role::Dentist,
        Role::Pharmacist,
        Role::Nurse,
        Role::MedicalClerk,
        Role::SystemAdministrator,
        Role::Patient,
        Role::Insurer,
        Role::PublicHealthOfficer,
        Role::PlatformOperator,
    ];

    /// Stable code used in storage, tokens and the CLI.
    pub fn code(self) -> &'static str {
        match self {
            Role::Physician => "physician",
            Role::Dentist => "dentist",
            Role::Pharmacist => "pharmacist",
            Role::Nurse => "nurse",
            Role::MedicalClerk => "medical-clerk",
            Role::SystemAdministrator => "system-administrator",
            Role::Patient => "patient",
            Role::Insurer => "insurer",
            Role::PublicHealthOfficer => "public-health-officer",
            Role::PlatformOperator => "platform-operator",
        }
    }

    /// Japanese label.
    pub fn label_ja(self) -> &'static str {
        match self {
            Role::Physician => "医師",
            Role::Dentist => "歯科医師",
            Role::Pharmacist => "薬剤師",
            Role::Nurse => "看護師",
            Role::MedicalClerk => "医療事務",
            Role::SystemAdministrator => "システム管理者",
            Role::Patient => "患者",
            Role::Insurer => "保険者",
            Role::PublicHealthOfficer => "保健所・行政担当者",
            Role::PlatformOperator => "プラットフォーム運用者",
        }
    }

    /// English label.
    pub fn label_en(self) -> &'static str {
        match self {
            Role::Physician => "Physician",
            Role::Dentist => "Dentist",
            Role::Pharmacist => "Pharmacist",
            Role::Nurse => "Nurse",
            Role::MedicalClerk => "Medical clerk",
            Role::SystemAdministrator => "System administrator",
            Role::Patient => "Patient",
            Role::Insurer => "Insurer",
            Role::PublicHealthOfficer => "Public-health officer",
            Role::PlatformOperator => "Platform operator",
        }
    }

    /// Staff of a medical institution (2FA is mandatory for them).
    pub fn is_staff(self) -> bool {
        !matches!(self, Role::Patient)
    }

    /// Clinical professionals who may request break-glass access.
    pub fn is_clinical(self) -> bool {
        matches!(
            self,
            Role::Physician | Role::Dentist | Role::Pharmacist | Role::Nurse
        )
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Role {
    type Err = SecurityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        Role::ALL
            .iter()
            .copied()
            .find(|r| r.code() == t || r.label_ja() == t || r.label_en().eq_ignore_ascii_case(t))
            .ok_or_else(|| {
                SecurityError::invalid(format!("不明な職種です: {t}"), format!("unknown role: {t}"))
            })
    }
}

/// FHIR interactions subject to access control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Interaction {
    Read,
    Search,
    Create,
    Update,
    Delete,
    History,
    Export,
}

impl Interaction {
    pub const ALL: [Interaction; 7] = [
        Interaction::Read,
        Interaction::Search,
        Interaction::Create,
        Interaction::Update,
        Interaction::Delete,
        Interaction::History,
        Interaction::Export,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::Search => "search",
            Interaction::Create => "create",
            Interaction::Update => "update",
            Interaction::Delete => "delete",
            Interaction::History => "history",
            Interaction::Export => "export",
        }
    }

    /// Short letter used in the permission table (R S C U D H E).
    fn letter(self) -> char {
        match self {
            Interaction::Read => 'R',
            Interaction::Search => 'S',
            Interaction::Create => 'C',
            Interaction::Update => 'U',
            Interaction::Delete => 'D',
            Interaction::History => 'H',
            Interaction::Export => 'E',
        }
    }
}

impl FromStr for Interaction {
    type Err = SecurityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::parse_code(
            &Interaction::ALL,
            Interaction::code,
            s,
            ("操作", "interaction"),
        )
    }
}

/// Groups of FHIR resource types that share access rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceCategory {
    /// The Patient resource itself.
    Patient,
    /// Clinical record: observations, conditions, procedures, documents …
    Clinical,
    /// Medication orders, dispenses, administrations.
    Medication,
    /// Reception and billing: coverage, claims, appointments, accounts.
    Administrative,
    /// Directory: organizations, practitioners, locations, endpoints.
    Directory,
    /// Conformance and terminology: CodeSystem, ValueSet, StructureDefinition …
    Definitional,
    /// Security records: AuditEvent, Provenance, Consent.
    Security,
}

impl ResourceCategory {
    pub const ALL: [ResourceCategory; 7] = [
        ResourceCategory::Patient,
        ResourceCategory::Clinical,
        ResourceCategory::Medication,
        ResourceCategory::Administrative,
        ResourceCategory::Directory,
        ResourceCategory::Definitional,
        ResourceCategory::Security,
    ];

    pub fn label_ja(self) -> &'static str {
        match self {
            ResourceCategory::Patient => "患者基本情報",
            ResourceCategory::Clinical => "診療記録",
            ResourceCategory::Medication => "処方・調剤・投薬",
            ResourceCategory::Administrative => "受付・会計・保険",
            ResourceCategory::Directory => "施設・職員名簿",
            ResourceCategory::Definitional => "定義・用語",
            ResourceCategory::Security => "監査・同意",
        }
    }

    /// Category of a FHIR R4 resource type. Unknown types are treated as
    /// clinical, the most protected data category, so that nothing new is
    /// exposed by accident.
    pub fn of(resource_type: &str) -> ResourceCategory {
        use ResourceCategory::*;
        match resource_type {
            "Patient" => Patient,
            "MedicationRequest"
            | "MedicationDispense"
            | "MedicationAdministration"
            | "MedicationStatement"
            | "Medication"
            | "MedicationKnowledge" => Medication,
            "Coverage"
            | "Claim"
            | "ClaimResponse"
            | "ExplanationOfBenefit"
            | "Account"
            | "ChargeItem"
            | "Invoice"
            | "Appointment"
            | "AppointmentResponse"
            | "Schedule"
            | "Slot"
            | "CoverageEligibilityRequest"
            | "CoverageEligibilityResponse"
            | "PaymentNotice"
            | "PaymentReconciliation"
            | "EnrollmentRequest"
            | "EnrollmentResponse" => Administrative,
            "Organization"
            | "Practitioner"
            | "PractitionerRole"
            | "Location"
            | "Endpoint"
            | "HealthcareService"
            | "OrganizationAffiliation"
            | "Device" => Directory,
            "CodeSystem"
            | "ValueSet"
            | "ConceptMap"
            | "NamingSystem"
            | "StructureDefinition"
            | "StructureMap"
            | "CapabilityStatement"
            | "OperationDefinition"
            | "SearchParameter"
            | "CompartmentDefinition"
            | "ImplementationGuide"
            | "Questionnaire"
            | "PlanDefinition"
            | "ActivityDefinition"
            | "Library"
            | "Measure"
            | "TerminologyCapabilities"
            | "GraphDefinition" => Definitional,
            "AuditEvent" | "Provenance" | "Consent" => Security,
            _ => Clinical,
        }
    }
}

/// Resource types a nurse may write besides reading the clinical record.
const NURSE_WRITABLE: &[&str] = &[
    "Observation",
    "MedicationAdministration",
    "CarePlan",
    "Goal",
    "Flag",
    "Communication",
    "QuestionnaireResponse",
    "Task",
];

/// Clinical types a medical clerk may read (needed for claims / レセプト).
const CLERK_READABLE_CLINICAL: &[&str] = &[
    "Encounter",
    "Condition",
    "Procedure",
    "ServiceRequest",
    "MedicationRequest",
    "EpisodeOfCare",
];

/// Clinical types a public-health officer may read (notifiable diseases,
/// vaccination records).
const PUBLIC_HEALTH_READABLE: &[&str] = &["Immunization", "Condition", "Observation", "Encounter"];

/// Types a pharmacist may write.
const PHARMACIST_WRITABLE: &[&str] = &[
    "MedicationDispense",
    "MedicationStatement",
    "MedicationAdministration",
    "Communication",
    "Observation",
];

use Interaction as I;
const READ_ONLY: &[Interaction] = &[I::Read, I::Search, I::History];
const READ_WRITE: &[Interaction] = &[I::Read, I::Search, I::History, I::Create, I::Update];
const ALL_BUT_EXPORT: &[Interaction] = &[
    I::Read,
    I::Search,
    I::History,
    I::Create,
    I::Update,
    I::Delete,
];

/// Whether `role` may perform `interaction` on `resource_type` (role rule only;
/// tenant, compartment and scope checks are in [`crate::authz::authorize`]).
pub fn role_permits(role: Role, interaction: Interaction, resource_type: &str) -> bool {
    use ResourceCategory as C;
    let cat = ResourceCategory::of(resource_type);
    let allowed: &[Interaction] = match (role, cat) {
        (_, C::Definitional) => match role {
            Role::SystemAdministrator | Role::PlatformOperator => ALL_BUT_EXPORT,
            _ => READ_ONLY,
        },
        (Role::Physician | Role::Dentist, C::Patient | C::Clinical | C::Medication) => READ_WRITE,
        (Role::Physician | Role::Dentist, C::Administrative | C::Directory) => READ_ONLY,
        (Role::Physician | Role::Dentist, C::Security) => {
            if resource_type == "Consent" {
                READ_WRITE
            } else {
                &[]
            }
        }
        (Role::Pharmacist, C::Patient | C::Clinical | C::Directory | C::Administrative) => {
            READ_ONLY
        }
        (Role::Pharmacist, C::Medication) => {
            if PHARMACIST_WRITABLE.contains(&resource_type) {
                READ_WRITE
            } else {
                READ_ONLY
            }
        }
        (Role::Nurse, C::Patient | C::Directory | C::Administrative) => READ_ONLY,
        (Role::Nurse, C::Clinical | C::Medication) => {
            if NURSE_WRITABLE.contains(&resource_type) {
                READ_WRITE
            } else {
                READ_ONLY
            }
        }
        (Role::MedicalClerk, C::Patient | C::Administrative) => READ_WRITE,
        (Role::MedicalClerk, C::Directory) => READ_ONLY,
        (Role::MedicalClerk, C::Clinical | C::Medication) => {
            if CLERK_READABLE_CLINICAL.contains(&resource_type) {
                READ_ONLY
            } else {
                &[]
            }
        }
        (Role::SystemAdministrator, C::Directory) => ALL_BUT_EXPORT,
        (Role::SystemAdministrator, C::Security) => {
            if resource_type == "AuditEvent" {
                &[I::Read, I::Search, I::Export]
            } else {
                &[]
            }
        }
        (Role::Patient, C::Patient | C::Clinical | C::Medication | C::Administrative) => READ_ONLY,
        (Role::Patient, C::Directory) => &[I::Read, I::Search],
        (Role::Insurer, C::Administrative) => {
            if matches!(
                resource_type,
                "Claim"
                    | "ClaimResponse"
                    | "ExplanationOfBenefit"
                    | "Coverage"
                    | "CoverageEligibilityRequest"
                    | "CoverageEligibilityResponse"
            ) {
                if resource_type == "ClaimResponse"
                    || resource_type == "CoverageEligibilityResponse"
                {
                    READ_WRITE
                } else {
                    READ_ONLY
                }
            } else {
                &[]
            }
        }
        (Role::Insurer, C::Patient | C::Directory) => &[I::Read, I::Search],
        (Role::PublicHealthOfficer, C::Clinical) => {
            if PUBLIC_HEALTH_READABLE.contains(&resource_type) {
                &[I::Read, I::Search, I::Export]
            } else {
                &[]
            }
        }
        (Role::PublicHealthOfficer, C::Patient) => &[I::Read, I::Search, I::Export],
        (Role::PublicHealthOfficer, C::Directory) => &[I::Read, I::Search],
        (Role::PlatformOperator, C::Directory) => ALL_BUT_EXPORT,
        (Role::PlatformOperator, C::Security) => {
            if resource_type == "AuditEvent" {
                &[I::Read, I::Search, I::Export]
            } else {
                &[]
            }
        }
        _ => &[],
    };
    allowed.contains(&interaction)
}

/// Clinical permissions granted to clinical staff during a break-glass grant
/// (physician level on patient, clinical and medication data).
pub(crate) fn break_glass_permits(interaction: Interaction, resource_type: &str) -> bool {
    matches!(
        ResourceCategory::of(resource_type),
        ResourceCategory::Patient | ResourceCategory::Clinical | ResourceCategory::Medication
    ) && READ_WRITE.contains(&interaction)
}

/// One row of the role permission table (for documentation and reports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PermissionRow {
    pub role: Role,
    pub category: ResourceCategory,
    /// Letters R S C U D H E for the interactions allowed on the category's
    /// representative types, e.g. `"RSHCU"`; empty when nothing is allowed.
    pub interactions: String,
}

/// Representative resource type of each category (used for the table).
fn representative(cat: ResourceCategory) -> &'static [&'static str] {
    match cat {
        ResourceCategory::Patient => &["Patient"],
        ResourceCategory::Clinical => &[
            "Observation",
            "Condition",
            "Immunization",
            "DocumentReference",
        ],
        ResourceCategory::Medication => &["MedicationRequest", "MedicationDispense"],
        ResourceCategory::Administrative => &["Coverage", "Claim", "ClaimResponse", "Appointment"],
        ResourceCategory::Directory => &["Practitioner", "Organization"],
        ResourceCategory::Definitional => &["ValueSet"],
        ResourceCategory::Security => &["AuditEvent", "Consent"],
    }
}

/// The permission matrix: for each role and category, the union of the
/// interactions allowed on the category's representative resource types.
pub fn permission_table() -> Vec<PermissionRow> {
    let mut rows = Vec::new();
    for role in Role::ALL {
        for cat in ResourceCategory::ALL {
            let letters: String = [
                I::Read,
                I::Search,
                I::History,
                I::Create,
                I::Update,
                I::Delete,
                I::Export,
            ]
            .iter()
            .filter(|i| {
                representative(cat)
                    .iter()
                    .any(|t| role_permits(role, **i, t))
            })
            .map(|i| i.letter())
            .collect();
            rows.push(PermissionRow {
                role,
                category: cat,
                interactions: letters,
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_parse_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.code().parse::<Role>().unwrap(), r);
            assert_eq!(r.label_ja().parse::<Role>().unwrap(), r);
        }
        assert_eq!(Role::Physician.label_ja(), "医師");
        assert_eq!(Role::MedicalClerk.label_ja(), "医療事務");
        assert!("surgeon".parse::<Role>().is_err());
        let e = "x".parse::<Interaction>().unwrap_err();
        assert_eq!(e.kind, crate::error::ErrorKind::Invalid);
    }

    #[test]
    fn matrix_core_rules() {
        assert!(role_permits(Role::Physician, I::Create, "Observation"));
        assert!(role_permits(
            Role::Physician,
            I::Update,
            "MedicationRequest"
        ));
        assert!(!role_permits(Role::Physician, I::Delete, "Observation"));
        assert!(!role_permits(Role::Physician, I::Export, "Observation"));
        assert!(!role_permits(Role::Physician, I::Read, "AuditEvent"));
        assert!(role_permits(Role::Nurse, I::Create, "Observation"));
        assert!(!role_permits(Role::Nurse, I::Create, "MedicationRequest"));
        assert!(role_permits(
            Role::Pharmacist,
            I::Create,
            "MedicationDispense"
        ));
        assert!(!role_permits(
            Role::Pharmacist,
            I::Create,
            "MedicationRequest"
        ));
        assert!(role_permits(Role::MedicalClerk, I::Update, "Coverage"));
        assert!(role_permits(Role::MedicalClerk, I::Read, "Condition"));
        assert!(!role_permits(Role::MedicalClerk, I::Read, "Observation"));
        // The system administrator manages the directory but sees no clinical data.
        assert!(role_permits(
            Role::SystemAdministrator,
            I::Delete,
            "Practitioner"
        ));
        assert!(!role_permits(
            Role::SystemAdministrator,
            I::Read,
            "Observation"
        ));
        assert!(!role_permits(Role::SystemAdministrator, I::Read, "Patient"));
        assert!(role_permits(
            Role::SystemAdministrator,
            I::Search,
            "AuditEvent"
        ));
        assert!(role_permits(Role::Insurer, I::Create, "ClaimResponse"));
        assert!(!role_permits(Role::Insurer, I::Read, "Observation"));
        assert!(role_permits(
            Role::PublicHealthOfficer,
            I::Export,
            "Immunization"
        ));
        assert!(!role_permits(
            Role::PublicHealthOfficer,
            I::Create,
            "Immunization"
        ));
        assert!(!role_permits(
            Role::PlatformOperator,
            I::Read,
            "Observation"
        ));
        assert!(!role_permits(Role::Patient, I::Create, "Observation"));
        // Unknown types are clinical: no access for non-clinical roles.
        assert_eq!(
            ResourceCategory::of("FutureResource"),
            ResourceCategory::Clinical
        );
        assert!(!role_permits(Role::Insurer, I::Read, "FutureResource"));
        // Nobody writes the audit trail through FHIR.
        for r in Role::ALL {
            for i in [I::Create, I::Update, I::Delete] {
                assert!(!role_permits(r, i, "AuditEvent"), "{r} {i:?}");
            }
        }
    }

    #[test]
    fn table_covers_every_role_and_category() {
        let t = permission_table();
        assert_eq!(t.len(), Role::ALL.len() * ResourceCategory::ALL.len());
        let row = t
            .iter()
            .find(|r| r.role == Role::Physician && r.category == ResourceCategory::Clinical)
            .unwrap();
        assert_eq!(row.interactions, "RSHCU");
        let row = t
            .iter()
            .find(|r| {
                r.role == Role::SystemAdministrator && r.category == ResourceCategory::Clinical
            })
            .unwrap();
        assert_eq!(row.interactions, "");
    }
}
