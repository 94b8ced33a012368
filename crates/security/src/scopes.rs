//! SMART App Launch scopes (v2 grammar, v1 `read`/`write`/`*` accepted).
//!
//! `patient/Observation.rs`, `user/*.cruds`, `system/*.rs`,
//! `patient/Observation.rs?category=laboratory`, `patient/*.read` (v1).
//! Non-resource scopes (`openid`, `fhirUser`, `launch/patient`,
//! `offline_access`, …) are kept as [`Scope::Other`].

use serde::Serialize;
use std::fmt;

use crate::error::{Result, SecurityError};
use crate::roles::Interaction;

/// The launch context a resource scope applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeContext {
    /// Data of the patient in context only.
    Patient,
    /// Data the current user may access.
    User,
    /// Backend system access (SMART Backend Services).
    System,
}

/// Permission letters of a v2 scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Permissions {
    pub create: bool,
    pub read: bool,
    pub update: bool,
    pub delete: bool,
    pub search: bool,
}

impl Permissions {
    /// Whether these permissions cover an interaction. `history` needs `r`;
    /// bulk `export` needs both `r` and `s`.
    pub fn allows(&self, i: Interaction) -> bool {
        match i {
            Interaction::Read | Interaction::History => self.read,
            Interaction::Search => self.search,
            Interaction::Create => self.create,
            Interaction::Update => self.update,
            Interaction::Delete => self.delete,
            Interaction::Export => self.read && self.search,
        }
    }

    fn letters(&self) -> String {
        let mut s = String::new();
        for (on, c) in [
            (self.create, 'c'),
            (self.read, 'r'),
            (self.update, 'u'),
            (self.delete, 'd'),
            (self.search, 's'),
        ] {
            if on {
                s.push(c);
            }
        }
        s
    }
}

/// A resource access scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ResourceScope {
    pub context: ScopeContext,
    /// Resource type, or `None` for `*`.
    pub resource_type: Option<String>,
    pub permissions: Permissions,
    /// v2 search-parameter narrowing (`?category=laboratory`), as (name, value)
    /// pairs. The caller must add them to searches and check them on reads.
    pub constraints: Vec<(String, String)>,
}

/// One scope of a space-separated scope string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Scope {
    Resource(ResourceScope),
    /// `openid`, `fhirUser`, `launch`, `launch/patient`, `offline_access`, …
    Other(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Other(s) => f.write_str(s),
            Scope::Resource(r) => {
                let ctx = match r.context {
                    ScopeContext::Patient => "patient",
                    ScopeContext::User => "user",
                    ScopeContext::System => "system",
                };
                write!(
                    f,
                    "{ctx}/{}.{}",
                    r.resource_type.as_deref().unwrap_or("*"),
                    r.permissions.letters()
                )?;
                for (i, (k, v)) in r.constraints.iter().enumerate() {
                    write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
                }
                Ok(())
            }
        }
    }
}

fn bad(scope: &str, why_en: &str) -> SecurityError {
    SecurityError::invalid(
        format!("スコープの形式が正しくありません: {scope}"),
        format!("invalid scope '{scope}': {why_en}"),
    )
}

/// Longest accepted scope string (guards against oversized input).
const MAX_SCOPE_STRING: usize = 4096;

impl Scope {
    /// Parses one scope token.
    pub fn parse(s: &str) -> Result<Scope> {
        if s.is_empty() || s.len() > 512 || !s.is_ascii() || s.chars().any(|c| c.is_ascii_control())
        {
            return Err(bad(s, "empty, too long or not printable ASCII"));
        }
        let Some((ctx, rest)) = s.split_once('/') else {
            return Ok(Scope::Other(s.to_string()));
        };
        let context = match ctx {
            "patient" => ScopeContext::Patient,
            "user" => ScopeContext::User,
            "system" => ScopeContext::System,
            // `launch/patient`, `launch/encounter` …
            _ => return Ok(Scope::Other(s.to_string())),
        };
        let (body, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let (ty, perm) = body
            .split_once('.')
            .ok_or_else(|| bad(s, "missing '.' between type and permissions"))?;
        let resource_type = if ty == "*" {
            None
        } else if !ty.is_empty()
            && ty.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && ty.chars().all(|c| c.is_ascii_alphanumeric())
        {
            Some(ty.to_string())
        } else {
            return Err(bad(s, "resource type must be '*' or a FHIR type name"));
        };
        let permissions = match perm {
            "read" => Permissions {
                read: true,
                search: true,
                ..Default::default()
            },
            "write" => Permissions {
                create: true,
                update: true,
                delete: true,
                ..Default::default()
            },
            "*" => Permissions {
                create: true,
                read: true,
                update: true,
                delete: true,
                search: true,
            },
            letters => {
                // v2: subset of c r u d s, in this order, no repeats.
                let order = ['c', 'r', 'u', 'd', 's'];
                let mut p = Permissions::default();
                let mut last: Option<usize> = None;
                if letters.is_empty() {
                    return Err(bad(s, "no permissions"));
                }
                for ch in letters.chars() {
                    let idx = order
                        .iter()
                        .position(|o| *o == ch)
                        .ok_or_else(|| bad(s, "permissions must be letters of 'cruds'"))?;
                    if last.is_some_and(|l| idx <= l) {
                        return Err(bad(s, "permission letters must follow the order c r u d s"));
                    }
                    last = Some(idx);
                    match ch {
                        'c' => p.create = true,
                        'r' => p.read = true,
                        'u' => p.update = true,
                        'd' => p.delete = true,
                        _ => p.search = true,
                    }
                }
                p
            }
        };
        let mut constraints = Vec::new();
        if let Some(q) = query {
            if perm.chars().any(|c| !"cruds".contains(c)) {
                return Err(bad(s, "search parameters need v2 permissions"));
            }
            for pair in q.split('&') {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| bad(s, "search parameter without '='"))?;
                if k.is_empty() || v.is_empty() {
                    return Err(bad(s, "empty search parameter name or value"));
                }
                constraints.push((k.to_string(), v.to_string()));
            }
        }
        Ok(Scope::Resource(ResourceScope {
            context,
            resource_type,
            permissions,
            constraints,
        }))
    }
}

/// A parsed scope string.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ScopeSet {
    pub scopes: Vec<Scope>,
}

/// What a scope set grants for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeGrant {
    /// The context of the granting scope (patient scopes require the caller
    /// to restrict access to the patient in context).
    pub context: ScopeContext,
    /// Search-parameter constraints to apply (empty when a scope without
    /// constraints grants the request).
    pub constraints: Vec<(String, String)>,
}

impl ScopeSet {
    /// Parses a space-separated scope string. Unknown non-resource scopes are
    /// kept; malformed resource scopes are an error.
    pub fn parse(s: &str) -> Result<ScopeSet> {
        if s.len() > MAX_SCOPE_STRING {
            return Err(bad("…", "scope string too long"));
        }
        let scopes = s
            .split_ascii_whitespace()
            .map(Scope::parse)
            .collect::<Result<Vec<_>>>()?;
        Ok(ScopeSet { scopes })
    }

    pub fn contains_other(&self, name: &str) -> bool {
        self.scopes
            .iter()
            .any(|s| matches!(s, Scope::Other(o) if o == name))
    }

    /// The resource scopes.
    pub fn resource_scopes(&self) -> impl Iterator<Item = &ResourceScope> {
        self.scopes.iter().filter_map(|s| match s {
            Scope::Resource(r) => Some(r),
            Scope::Other(_) => None,
        })
    }

    /// Finds the best scope granting `interaction` on `resource_type` among
    /// scopes whose context is in `contexts`. A scope without constraints wins
    /// over constrained ones; `user` wins over `patient`.
    pub fn grant(
        &self,
        contexts: &[ScopeContext],
        interaction: Interaction,
        resource_type: &str,
    ) -> Option<ScopeGrant> {
        let mut best: Option<ScopeGrant> = None;
        for r in self.resource_scopes() {
            if !contexts.contains(&r.context)
                || !r.permissions.allows(interaction)
                || r.resource_type
                    .as_deref()
                    .is_some_and(|t| t != resource_type)
            {
                continue;
            }
            let cand = ScopeGrant {
                context: r.context,
                constraints: r.constraints.clone(),
            };
            let better = match &best {
                None => true,
                Some(b) => {
                    (b.constraints.len() > cand.constraints.len())
                        || (b.constraints.len() == cand.constraints.len()
                            && b.context == ScopeContext::Patient
                            && cand.context != ScopeContext::Patient)
                }
            };
            if better {
                best = Some(cand);
            }
        }
        best
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.scopes.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(s: &str) -> ResourceScope {
        match Scope::parse(s).unwrap() {
            Scope::Resource(r) => r,
            Scope::Other(o) => panic!("not a resource scope: {o}"),
        }
    }

    #[test]
    fn parses_v2_scopes() {
        let r = rs("patient/*.rs");
        assert_eq!(r.context, ScopeContext::Patient);
        assert_eq!(r.resource_type, None);
        assert!(r.permissions.read && r.permissions.search);
        assert!(!r.permissions.create);
        let r = rs("user/Observation.cruds");
        assert_eq!(r.resource_type.as_deref(), Some("Observation"));
        assert!(r.permissions.create && r.permissions.delete);
        let r = rs("system/*.rs");
        assert_eq!(r.context, ScopeContext::System);
        let r = rs("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory");
        assert_eq!(r.constraints.len(), 1);
        assert_eq!(r.constraints[0].0, "category");
    }

    #[test]
    fn parses_v1_scopes() {
        let r = rs("patient/*.read");
        assert!(r.permissions.read && r.permissions.search && !r.permissions.update);
        let r = rs("user/Patient.write");
        assert!(r.permissions.create && r.permissions.update && r.permissions.delete);
        assert!(!r.permissions.read);
        let r = rs("user/*.*");
        assert!(r.permissions.allows(Interaction::Export));
    }

    #[test]
    fn keeps_other_scopes() {
        let set =
            ScopeSet::parse("openid fhirUser launch/patient offline_access patient/*.rs").unwrap();
        assert!(set.contains_other("openid"));
        assert!(set.contains_other("launch/patient"));
        assert_eq!(set.resource_scopes().count(), 1);
        assert_eq!(
            set.to_string(),
            "openid fhirUser launch/patient offline_access patient/*.rs"
        );
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "patient/*.rx",
            "patient/*.sr",
            "patient/*.rr",
            "patient/*.",
            "patient/*",
            "patient/observation.rs",
            "user/Obs-ervation.rs",
            "patient/*.read?x=1",
            "patient/*.rs?x",
            "patient/*.rs?=1",
            "patient/*.r\u{0}s",
            "患者/*.rs",
        ] {
            assert!(Scope::parse(s).is_err(), "{s} should be rejected");
        }
        assert!(ScopeSet::parse(&"a ".repeat(3000)).is_err());
    }

    #[test]
    fn read_does_not_imply_search() {
        let set = ScopeSet::parse("patient/Observation.r").unwrap();
        let ctx = [ScopeContext::Patient];
        assert!(set.grant(&ctx, Interaction::Read, "Observation").is_some());
        assert!(set
            .grant(&ctx, Interaction::History, "Observation")
            .is_some());
        assert!(set
            .grant(&ctx, Interaction::Search, "Observation")
            .is_none());
        assert!(set.grant(&ctx, Interaction::Read, "Condition").is_none());
        assert!(set
            .grant(&[ScopeContext::User], Interaction::Read, "Observation")
            .is_none());
    }

    #[test]
    fn unconstrained_scope_wins() {
        let set =
            ScopeSet::parse("patient/Observation.rs?category=laboratory patient/*.rs").unwrap();
        let g = set
            .grant(&[ScopeContext::Patient], Interaction::Search, "Observation")
            .unwrap();
        assert!(g.constraints.is_empty());
        let set = ScopeSet::parse("patient/Observation.rs?category=laboratory").unwrap();
        let g = set
            .grant(&[ScopeContext::Patient], Interaction::Search, "Observation")
            .unwrap();
        assert_eq!(
            g.constraints,
            vec![("category".into(), "laboratory".into())]
        );
    }
}
