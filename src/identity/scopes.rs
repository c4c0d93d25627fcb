//! SMART scopes for backend (system) clients: parsing (v2 `system/Task.rs`, `system/*.cruds`;
//! v1 `.read`, `.write`, `.*`), what an interaction needs, and the down-scoping a token
//! request gets (the requested scopes intersected with those the client is allowed).
//!
//! Invariants:
//! - only `system/` scopes grant anything: a backend client acts for its organisation,
//!   never as a patient or user, so `patient/` and `user/` scopes are refused in a client's
//!   registry entry and never granted at the token endpoint;
//! - a resource type is an R4 type name or `*`; v2 permissions are a non-empty subset of
//!   `cruds` written in that order; search-parameter-restricted v2 scopes (`?category=…`)
//!   are not supported and are refused rather than widened;
//! - a granted set is never wider than the allowed set (`Scopes::intersect`).

use std::fmt;

use thiserror::Error;

use crate::fhir::ResourceType;

/// What a caller asks to do, as far as scopes are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    /// `POST /fhir/{type}`, a transaction's create entries: `c`.
    Create,
    /// `GET /fhir/{type}/{id}`: `r`.
    Read,
    /// `GET /fhir/{type}/{id}/_history/{vid}`: `r`.
    Vread,
    /// `GET /fhir/{type}?…`, `POST /fhir/{type}/_search`: `s`.
    Search,
    /// `GET /fhir/{type}/{id}/_history`: `r` (it reads versions of one resource).
    History,
    /// `PUT /fhir/{type}/{id}` (an amendment or withdrawal): `u`.
    Update,
    /// Deletion: `d` (not served over HTTP today).
    Delete,
    /// `$process-message`: `c` on ServiceRequest (a message brings a referral; the
    /// handler checks `u` as well for an `update` message, as for `PUT`).
    ProcessMessage,
    /// `$validate`: nothing beyond a valid token. It reads no stored data and its answer
    /// is a function of the body alone.
    Validate,
}

impl Interaction {
    /// The permission the interaction needs on the resource type it names, if any.
    pub fn needs(self) -> Option<Permission> {
        match self {
            Interaction::Create | Interaction::ProcessMessage => Some(Permission::Create),
            Interaction::Read | Interaction::Vread | Interaction::History => Some(Permission::Read),
            Interaction::Search => Some(Permission::Search),
            Interaction::Update => Some(Permission::Update),
            Interaction::Delete => Some(Permission::Delete),
            Interaction::Validate => None,
        }
    }

    /// The resource type the interaction's permission is checked on, when the interaction
    /// fixes it (`$process-message`: ServiceRequest), else the type the request names.
    pub fn checked_type(self, named: &str) -> &str {
        match self {
            Interaction::ProcessMessage => "ServiceRequest",
            _ => named,
        }
    }
}

/// One SMART v2 permission letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// `c`
    Create,
    /// `r`
    Read,
    /// `u`
    Update,
    /// `d`
    Delete,
    /// `s`
    Search,
}

/// The types whose versions have a Provenance (`api::provenance::RECORDED_TYPES`).
const PROVENANCE_TARGETS: [&str; 3] = ["ServiceRequest", "Task", "Observation"];

impl Permission {
    const ORDER: [(Permission, char); 5] = [
        (Permission::Create, 'c'),
        (Permission::Read, 'r'),
        (Permission::Update, 'u'),
        (Permission::Delete, 'd'),
        (Permission::Search, 's'),
    ];

    fn bit(self) -> u8 {
        match self {
            Permission::Create => 1,
            Permission::Read => 2,
            Permission::Update => 4,
            Permission::Delete => 8,
            Permission::Search => 16,
        }
    }
}

/// A set of permissions (`cruds` bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Permissions(u8);

impl Permissions {
    /// Every permission.
    pub const ALL: Permissions = Permissions(31);

    /// Whether `permission` is in the set.
    pub fn has(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    fn intersection(self, other: Permissions) -> Permissions {
        Permissions(self.0 & other.0)
    }

    /// v2 letters in `cruds` order.
    fn parse_v2(letters: &str) -> Option<Permissions> {
        let mut bits = 0;
        let mut order = Permission::ORDER.iter();
        for letter in letters.chars() {
            // Each letter must come after the previous one in `cruds`.
            let (permission, _) = order.find(|(_, l)| *l == letter)?;
            bits |= permission.bit();
        }
        (bits != 0).then_some(Permissions(bits))
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (permission, letter) in Permission::ORDER {
            if self.has(permission) {
                write!(f, "{letter}")?;
            }
        }
        Ok(())
    }
}

/// One `system/` scope: a resource type (or every type) and its permissions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// `None` for `*`.
    resource_type: Option<ResourceType>,
    permissions: Permissions,
}

impl Scope {
    fn covers(&self, resource_type: &str) -> bool {
        self.resource_type
            .is_none_or(|own| own.as_str() == resource_type)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.resource_type.map_or("*", ResourceType::as_str);
        write!(f, "system/{name}.{}", self.permissions)
    }
}

/// A scope that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScopeError {
    /// `patient/` or `user/`: not for a backend client.
    #[error(
        "{0:?}: a backend client's scopes are system/ scopes (patient/ and user/ scopes are for apps acting for a person)"
    )]
    NotSystem(String),
    /// Not a SMART resource scope at all.
    #[error("{0:?} is not a SMART scope (system/Type.cruds or system/Type.read)")]
    Malformed(String),
    /// The resource type is not an R4 type.
    #[error("{0:?}: the resource type is not an R4 resource type")]
    UnknownType(String),
    /// v2 search-parameter restrictions.
    #[error("{0:?}: scopes restricted by search parameters are not supported")]
    Restricted(String),
    /// Nothing at all.
    #[error("no scopes given")]
    Empty,
}

/// A set of `system/` scopes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    /// Parses a space-separated scope list strictly, as a registry entry is: every entry
    /// must be a usable `system/` scope, and there must be one.
    pub fn parse(text: &str) -> Result<Scopes, ScopeError> {
        let mut scopes = Vec::new();
        for word in text.split_whitespace() {
            scopes.push(parse_one(word)?);
        }
        if scopes.is_empty() {
            return Err(ScopeError::Empty);
        }
        Ok(Scopes(scopes).normalised())
    }

    /// Parses the `scope` of a token request: the `system/` scopes understood are kept,
    /// anything else (other SMART scopes, `openid`, `patient/…`, typos) is ignored, as
    /// OAuth lets a server grant less than asked.
    pub fn parse_requested(text: &str) -> Scopes {
        Scopes(
            text.split_whitespace()
                .filter_map(|word| parse_one(word).ok())
                .collect(),
        )
        .normalised()
    }

    /// No scopes.
    pub fn none() -> Scopes {
        Scopes(Vec::new())
    }

    /// Every permission on every type (a developer on loopback, `auth.mode = "none"`).
    pub fn everything() -> Scopes {
        Scopes(vec![Scope {
            resource_type: None,
            permissions: Permissions::ALL,
        }])
    }

    /// Whether nothing is granted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What these scopes allow on `resource_type`.
    pub fn permissions_on(&self, resource_type: &str) -> Permissions {
        self.0
            .iter()
            .filter(|s| s.covers(resource_type))
            .fold(Permissions::default(), |acc, s| acc.union(s.permissions))
    }

    /// Whether these scopes allow `interaction` on `resource_type` (the type the request
    /// names; `$process-message` is checked on ServiceRequest whatever is named).
    /// Provenance is read with a scope on Provenance, or with the same permission on a
    /// type it records: whoever may read a referral's resources may read who changed them
    /// (the store's practice visibility still applies). Sprig alone writes Provenance.
    pub fn permits(&self, interaction: Interaction, resource_type: &str) -> bool {
        match interaction.needs() {
            None => true,
            Some(permission) => {
                let checked = interaction.checked_type(resource_type);
                self.permissions_on(checked).has(permission)
                    || (checked == "Provenance"
                        && matches!(permission, Permission::Read | Permission::Search)
                        && PROVENANCE_TARGETS
                            .iter()
                            .any(|t| self.permissions_on(t).has(permission)))
            }
        }
    }

    /// The scopes to grant for `requested`: each requested scope cut down to what these
    /// (allowed) scopes give on its type. `system/*.rs` requested by a client allowed
    /// `system/Task.rs` grants `system/Task.rs`. Empty when nothing requested is allowed.
    pub fn intersect(&self, requested: &Scopes) -> Scopes {
        let mut granted = Vec::new();
        for want in &requested.0 {
            match want.resource_type {
                Some(resource_type) => {
                    let permissions = self
                        .permissions_on(resource_type.as_str())
                        .intersection(want.permissions);
                    if !permissions.is_empty() {
                        granted.push(Scope {
                            resource_type: Some(resource_type),
                            permissions,
                        });
                    }
                }
                // `*` asked: each allowed scope, within what was asked.
                None => granted.extend(self.0.iter().filter_map(|allowed| {
                    let permissions = allowed.permissions.intersection(want.permissions);
                    (!permissions.is_empty()).then_some(Scope {
                        resource_type: allowed.resource_type,
                        permissions,
                    })
                })),
            }
        }
        Scopes(granted).normalised()
    }

    /// One scope per resource type (`*` first, then by name), permissions merged.
    fn normalised(self) -> Scopes {
        let mut merged: Vec<Scope> = Vec::new();
        for scope in self.0 {
            match merged
                .iter_mut()
                .find(|m| m.resource_type == scope.resource_type)
            {
                Some(existing) => {
                    existing.permissions = existing.permissions.union(scope.permissions);
                }
                None => merged.push(scope),
            }
        }
        merged.sort_by_key(|s| s.resource_type.map(ResourceType::as_str));
        Scopes(merged)
    }
}

impl fmt::Display for Scopes {
    /// Space-separated v2 scopes, the form tokens carry.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{scope}")?;
        }
        Ok(())
    }
}

fn parse_one(word: &str) -> Result<Scope, ScopeError> {
    let owned = || word.to_owned();
    let Some((context, rest)) = word.split_once('/') else {
        return Err(ScopeError::Malformed(owned()));
    };
    match context {
        "system" => {}
        "patient" | "user" => return Err(ScopeError::NotSystem(owned())),
        _ => return Err(ScopeError::Malformed(owned())),
    }
    if rest.contains('?') {
        return Err(ScopeError::Restricted(owned()));
    }
    let Some((name, access)) = rest.split_once('.') else {
        return Err(ScopeError::Malformed(owned()));
    };
    let resource_type = match name {
        "*" => None,
        _ => Some(ResourceType::parse(name).map_err(|_| ScopeError::UnknownType(owned()))?),
    };
    let permissions = match access {
        // v1
        "read" => Permissions(Permission::Read.bit() | Permission::Search.bit()),
        "write" => Permissions(
            Permission::Create.bit() | Permission::Update.bit() | Permission::Delete.bit(),
        ),
        "*" => Permissions::ALL,
        v2 => Permissions::parse_v2(v2).ok_or_else(|| ScopeError::Malformed(owned()))?,
    };
    Ok(Scope {
        resource_type,
        permissions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_as_the_smart_specification_writes_them() {
        // (text, type asked about, interaction, permitted)
        let table: &[(&str, &str, Interaction, bool)] = &[
            (
                "system/ServiceRequest.cr",
                "ServiceRequest",
                Interaction::Create,
                true,
            ),
            (
                "system/ServiceRequest.cr",
                "ServiceRequest",
                Interaction::Read,
                true,
            ),
            (
                "system/ServiceRequest.cr",
                "ServiceRequest",
                Interaction::Vread,
                true,
            ),
            (
                "system/ServiceRequest.cr",
                "ServiceRequest",
                Interaction::History,
                true,
            ),
            (
                "system/ServiceRequest.cr",
                "ServiceRequest",
                Interaction::Search,
                false,
            ),
            (
                "system/ServiceRequest.cr",
                "ServiceRequest",
                Interaction::Update,
                false,
            ),
            ("system/ServiceRequest.cr", "Task", Interaction::Read, false),
            ("system/Task.rs", "Task", Interaction::Search, true),
            ("system/Task.rs", "Task", Interaction::Create, false),
            ("system/*.rs", "Observation", Interaction::Search, true),
            ("system/*.rs", "Patient", Interaction::Read, true),
            ("system/*.rs", "Patient", Interaction::Update, false),
            ("system/*.cruds", "Patient", Interaction::Delete, true),
            ("system/Patient.read", "Patient", Interaction::Search, true),
            ("system/Patient.read", "Patient", Interaction::Create, false),
            (
                "system/ServiceRequest.write",
                "ServiceRequest",
                Interaction::Update,
                true,
            ),
            (
                "system/ServiceRequest.write",
                "ServiceRequest",
                Interaction::Read,
                false,
            ),
            ("system/Task.*", "Task", Interaction::Search, true),
            ("system/*.*", "Consent", Interaction::Update, true),
            // $process-message needs c on ServiceRequest, whatever the route names.
            (
                "system/ServiceRequest.c",
                "Bundle",
                Interaction::ProcessMessage,
                true,
            ),
            (
                "system/Bundle.c",
                "Bundle",
                Interaction::ProcessMessage,
                false,
            ),
            (
                "system/MessageHeader.c",
                "MessageHeader",
                Interaction::ProcessMessage,
                false,
            ),
            // $validate needs only a valid token.
            ("system/Task.r", "Patient", Interaction::Validate, true),
            // Several scopes add up.
            (
                "system/Task.r system/Task.s",
                "Task",
                Interaction::Search,
                true,
            ),
        ];
        for (text, resource_type, interaction, permitted) in table {
            let scopes = Scopes::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                scopes.permits(*interaction, resource_type),
                *permitted,
                "{text} {interaction:?} {resource_type}"
            );
        }
    }

    #[test]
    fn unusable_scopes_are_refused_in_a_registry() {
        type Expected = fn(&ScopeError) -> bool;
        let table: &[(&str, Expected)] = &[
            ("patient/Observation.rs", |e| {
                matches!(e, ScopeError::NotSystem(_))
            }),
            ("user/*.cruds", |e| matches!(e, ScopeError::NotSystem(_))),
            ("system/Nonsense.rs", |e| {
                matches!(e, ScopeError::UnknownType(_))
            }),
            ("system/Task.sr", |e| matches!(e, ScopeError::Malformed(_))),
            ("system/Task.rr", |e| matches!(e, ScopeError::Malformed(_))),
            ("system/Task.x", |e| matches!(e, ScopeError::Malformed(_))),
            ("system/Task.", |e| matches!(e, ScopeError::Malformed(_))),
            ("system/Task", |e| matches!(e, ScopeError::Malformed(_))),
            ("openid", |e| matches!(e, ScopeError::Malformed(_))),
            ("system/Observation.rs?category=laboratory", |e| {
                matches!(e, ScopeError::Restricted(_))
            }),
            ("", |e| matches!(e, ScopeError::Empty)),
            ("   ", |e| matches!(e, ScopeError::Empty)),
        ];
        for (text, expected) in table {
            let error = Scopes::parse(text).expect_err(text);
            assert!(expected(&error), "{text}: {error:?}");
        }
    }

    #[test]
    fn scopes_print_as_v2_merged_per_type() {
        let scopes = Scopes::parse(
            "system/Task.read system/ServiceRequest.c system/ServiceRequest.r system/*.s",
        )
        .expect("parse");
        assert_eq!(
            scopes.to_string(),
            "system/*.s system/ServiceRequest.cr system/Task.rs"
        );
        assert_eq!(Scopes::parse(&scopes.to_string()).expect("again"), scopes);
    }

    #[test]
    fn a_token_request_is_down_scoped_to_what_the_client_may_have() {
        let allowed =
            Scopes::parse("system/ServiceRequest.cr system/Task.rs system/Patient.r").expect("ok");
        let grant = |asked: &str| {
            allowed
                .intersect(&Scopes::parse_requested(asked))
                .to_string()
        };
        assert_eq!(grant("system/Task.rs"), "system/Task.rs");
        assert_eq!(grant("system/Task.cruds"), "system/Task.rs");
        assert_eq!(grant("system/Task.read"), "system/Task.rs");
        assert_eq!(
            grant("system/*.rs"),
            "system/Patient.r system/ServiceRequest.r system/Task.rs"
        );
        assert_eq!(
            grant("system/*.cruds"),
            "system/Patient.r system/ServiceRequest.cr system/Task.rs"
        );
        // Not allowed, or not a system scope: nothing granted.
        assert_eq!(grant("system/Observation.rs"), "");
        assert_eq!(grant("patient/Task.rs"), "");
        assert_eq!(grant("openid launch"), "");
        assert!(
            allowed
                .intersect(&Scopes::parse_requested("system/Consent.c"))
                .is_empty()
        );
        // Something allowed among things that are not.
        assert_eq!(
            grant("openid system/Task.s patient/Task.rs system/Observation.r"),
            "system/Task.s"
        );

        // A client allowed everything gets exactly what it asks for.
        let everything = Scopes::parse("system/*.cruds").expect("ok");
        assert_eq!(
            everything
                .intersect(&Scopes::parse_requested("system/Task.rs"))
                .to_string(),
            "system/Task.rs"
        );
    }
}
