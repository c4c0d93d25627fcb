//! `Access`: who is calling and what they may do, the one value every handler that reads
//! or changes data must hold. Only `identity` makes one (its fields are private and its
//! constructors are the module's own), after the caller proved who it is.
//!
//! Invariants:
//! - a machine client sees only its practices' data (`practices`), and only the
//!   interactions its granted scopes allow (`may`);
//! - a client acting through a trusted proxy acts for the one end-user organisation the
//!   proxy passed, and both identities reach the audit row;
//! - staff act under `/api` by role (`staff_may`); the `by` of what they do is their
//!   username (`actor_label`), never a request field;
//! - the open callers (`Developer` on loopback with nothing configured, `Unauthenticated`
//!   under `auth.mode = "none"`) may do everything, and say so in every audit row.

use crate::fhir::identifiers::OdsCode;
use crate::store::{AuditRecord, Visibility};

use super::scopes::{Interaction, Scopes};
use super::staff::StaffRole;

/// A request relayed by a trusted proxy (the BaRS proxy) for an end-user organisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyOrigin {
    /// The proxy's client id.
    pub proxy_client_id: String,
    /// The organisation the proxy says the request comes from
    /// (`NHSD-End-User-Organisation`).
    pub end_user_ods: OdsCode,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Nothing configured, serving on a loopback address: the developer on this
    /// machine. Everything is allowed.
    Developer,
    /// `auth.mode = "none"`: a proxy in front of Sprig authenticates. Everything is
    /// allowed.
    Unauthenticated,
    /// A machine client (a GP system, the BaRS proxy).
    Client {
        /// The client id.
        client_id: String,
        /// The organisations it acts for now (through a proxy: the end-user
        /// organisation only).
        ods_codes: Vec<OdsCode>,
        /// The scopes its token grants (never more than the registry allows now).
        scopes: Scopes,
        /// The proxy and end-user organisation, when relayed.
        proxy: Option<ProxyOrigin>,
    },
    /// A person of the service.
    Staff {
        /// The username: the person's stable id.
        username: String,
        /// Their role now.
        role: StaffRole,
    },
}

/// Which practices' data a caller may see under `/fhir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PracticeScope {
    /// Every practice's.
    All,
    /// These practices' only (possibly none).
    Only(Vec<OdsCode>),
}

impl PracticeScope {
    /// Whether `ods` is within the scope.
    pub fn includes(&self, ods: &OdsCode) -> bool {
        match self {
            PracticeScope::All => true,
            PracticeScope::Only(codes) => codes.contains(ods),
        }
    }
}

/// Something a person does under `/api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaffAction<'a> {
    /// See the worklist (every referral, without its detail).
    ViewWorklist,
    /// Open one referral, assigned to this username (or no one).
    ViewReferral {
        /// Its link worker.
        assigned_to: Option<&'a str>,
    },
    /// Move a referral to another stage.
    Transition {
        /// Its link worker.
        assigned_to: Option<&'a str>,
    },
    /// Record an outcome measure.
    RecordOutcome {
        /// Its link worker.
        assigned_to: Option<&'a str>,
    },
    /// Add a note.
    AddNote {
        /// Its link worker.
        assigned_to: Option<&'a str>,
    },
    /// Assign a referral to a link worker.
    Assign,
    /// Service reports: counts, no personal data.
    Reports,
    /// A report's detail export: the referrals, Observations and NHS numbers behind counts.
    ReportDetail,
    /// See the delivery queue and dead letters.
    Deliveries,
    /// Retry dead letters.
    RetryDelivery,
    /// See the endpoint and client registries.
    Registries,
    /// Read and export the audit log.
    Audit,
    /// See who can be assigned referrals, and stop or restart a person being assignable.
    People,
    /// Read `/metrics` (when it is served behind a token).
    Metrics,
    /// Erase a referral and everything that belongs to it (where the law requires it).
    Erase,
}

/// What an audit row records of the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditAgent {
    /// The client id (through a proxy: the proxy's own).
    pub client_id: Option<String>,
    /// The ODS code acted as (the end-user organisation through a proxy; the client's only
    /// code when it has one).
    pub ods_code: Option<String>,
    /// The staff person.
    pub staff_username: Option<String>,
    /// Their role.
    pub staff_role: Option<String>,
    /// The proxy's client id, when relayed.
    pub proxy_id: Option<String>,
    /// The end-user organisation the proxy passed.
    pub end_user_ods: Option<String>,
}

/// Who is calling and what they may do. Made only by `identity` (the authenticator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    caller: Caller,
    /// The access token's id, when the caller used one of Sprig's tokens (for logs).
    token_id: Option<String>,
    /// A link worker may open referrals assigned to others (`auth.link_workers_see_all_referrals`).
    link_workers_see_all: bool,
    /// The caller sent `NHSD-End-User-Organisation` without being a trusted proxy: the
    /// header was ignored, and the audit row says so.
    ignored_end_user_header: bool,
}

impl Access {
    pub(super) fn new(
        caller: Caller,
        token_id: Option<String>,
        link_workers_see_all: bool,
    ) -> Self {
        Access {
            caller,
            token_id,
            link_workers_see_all,
            ignored_end_user_header: false,
        }
    }

    pub(super) fn with_ignored_end_user_header(mut self) -> Self {
        self.ignored_end_user_header = true;
        self
    }

    /// The developer on loopback, for unit tests of the layers above.
    #[cfg(test)]
    pub fn developer_for_tests() -> Self {
        Access::new(Caller::Developer, None, false)
    }

    /// Who is calling.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The id of the access token used, if one of Sprig's.
    pub fn token_id(&self) -> Option<&str> {
        self.token_id.as_deref()
    }

    /// Whether the caller sent `NHSD-End-User-Organisation` without being allowed to.
    pub fn ignored_end_user_header(&self) -> bool {
        self.ignored_end_user_header
    }

    /// Whether the caller may do `interaction` on `resource_type` under `/fhir` (scopes).
    /// Staff work under `/api` and have no `/fhir` access.
    pub fn may(&self, interaction: Interaction, resource_type: &str) -> bool {
        match &self.caller {
            Caller::Developer | Caller::Unauthenticated => true,
            Caller::Client { scopes, .. } => scopes.permits(interaction, resource_type),
            Caller::Staff { .. } => false,
        }
    }

    /// Whose data the caller may see under `/fhir`.
    pub fn practices(&self) -> PracticeScope {
        match &self.caller {
            Caller::Developer | Caller::Unauthenticated | Caller::Staff { .. } => {
                PracticeScope::All
            }
            Caller::Client { ods_codes, .. } => PracticeScope::Only(ods_codes.clone()),
        }
    }

    /// Whose stored resources the caller's reads may return: a client sees its
    /// practices' only; everyone else, all (staff reach `/fhir` data only through
    /// `/api`, which checks roles).
    pub fn visibility(&self) -> Visibility {
        match self.practices() {
            PracticeScope::All => Visibility::All,
            PracticeScope::Only(codes) => {
                Visibility::Practices(codes.iter().map(|c| c.as_str().to_owned()).collect())
            }
        }
    }

    /// The practice that owns a resource the caller creates outside a referral: a
    /// client's one practice (the end-user organisation through a proxy); no
    /// practice when it acts for several, or is not a client.
    pub fn owner_of_new(&self) -> Option<&str> {
        match &self.caller {
            Caller::Client { ods_codes, .. } => match ods_codes.as_slice() {
                [only] => Some(only.as_str()),
                _ => None,
            },
            _ => None,
        }
    }

    /// Who sent a request, for keying what a sender names (its `X-Request-ID`s): the
    /// client id (with the end-user organisation through a proxy), the person, or the
    /// open mode.
    pub fn sender_key(&self) -> String {
        match &self.caller {
            Caller::Staff { username, .. } => format!("staff:{username}"),
            _ => self.actor_label(),
        }
    }

    /// Whether the caller may act as (send referrals for, read the data of) `ods`.
    pub fn may_act_for(&self, ods: &OdsCode) -> bool {
        match &self.caller {
            Caller::Staff { .. } => false,
            _ => self.practices().includes(ods),
        }
    }

    /// Whether the caller may do `action` under `/api`. Link workers: the worklist, and
    /// the referrals assigned to them or to no one (others' too when the service allows
    /// it, for viewing); service managers: every referral, assignment, reports;
    /// administrators: deliveries, registries, audit, metrics, and no referral's detail.
    /// Machine clients: nothing.
    pub fn staff_may(&self, action: StaffAction<'_>) -> bool {
        let (username, role) = match &self.caller {
            Caller::Developer | Caller::Unauthenticated => return true,
            Caller::Client { .. } => return false,
            Caller::Staff { username, role } => (username.as_str(), *role),
        };
        let own_or_free = |assigned_to: Option<&str>| assigned_to.is_none_or(|a| a == username);
        match role {
            StaffRole::LinkWorker => match action {
                StaffAction::ViewWorklist => true,
                StaffAction::ViewReferral { assigned_to } => {
                    self.link_workers_see_all || own_or_free(assigned_to)
                }
                StaffAction::Transition { assigned_to }
                | StaffAction::RecordOutcome { assigned_to }
                | StaffAction::AddNote { assigned_to } => own_or_free(assigned_to),
                _ => false,
            },
            StaffRole::ServiceManager => matches!(
                action,
                StaffAction::ViewWorklist
                    | StaffAction::ViewReferral { .. }
                    | StaffAction::Transition { .. }
                    | StaffAction::RecordOutcome { .. }
                    | StaffAction::AddNote { .. }
                    | StaffAction::Assign
                    | StaffAction::Reports
                    | StaffAction::ReportDetail
            ),
            StaffRole::Administrator => matches!(
                action,
                StaffAction::Reports
                    | StaffAction::Deliveries
                    | StaffAction::RetryDelivery
                    | StaffAction::Registries
                    | StaffAction::Audit
                    | StaffAction::People
                    | StaffAction::Metrics
                    | StaffAction::Erase
            ),
        }
    }

    /// Who did it, for the `by` of a stage change, an outcome or a note: the person's
    /// username, the client id (`client via proxy` when relayed), or `developer` /
    /// `unauthenticated` for the open modes.
    pub fn actor_label(&self) -> String {
        match &self.caller {
            Caller::Developer => "developer".into(),
            Caller::Unauthenticated => "unauthenticated".into(),
            Caller::Client {
                client_id, proxy, ..
            } => match proxy {
                Some(proxy) => format!("{} via {client_id}", proxy.end_user_ods.as_str()),
                None => client_id.clone(),
            },
            Caller::Staff { username, .. } => username.clone(),
        }
    }

    /// The caller's part of an audit row.
    pub fn audit_agent(&self) -> AuditAgent {
        match &self.caller {
            Caller::Developer => AuditAgent {
                client_id: Some("developer".into()),
                ..AuditAgent::default()
            },
            Caller::Unauthenticated => AuditAgent {
                client_id: Some("unauthenticated".into()),
                ..AuditAgent::default()
            },
            Caller::Client {
                client_id,
                ods_codes,
                proxy,
                ..
            } => AuditAgent {
                client_id: Some(client_id.clone()),
                ods_code: match ods_codes.as_slice() {
                    [only] => Some(only.as_str().to_owned()),
                    _ => None,
                },
                proxy_id: proxy.as_ref().map(|p| p.proxy_client_id.clone()),
                end_user_ods: proxy.as_ref().map(|p| p.end_user_ods.as_str().to_owned()),
                ..AuditAgent::default()
            },
            Caller::Staff { username, role } => AuditAgent {
                staff_username: Some(username.clone()),
                staff_role: Some(role.as_str().to_owned()),
                ..AuditAgent::default()
            },
        }
    }

    /// Copies the caller's part into an audit row.
    pub fn fill_audit(&self, record: &mut AuditRecord) {
        let agent = self.audit_agent();
        record.client_id = agent.client_id;
        record.ods_code = agent.ods_code;
        record.staff_username = agent.staff_username;
        record.staff_role = agent.staff_role;
        record.proxy_id = agent.proxy_id;
        record.end_user_ods = agent.end_user_ods;
        record.ignored_end_user_header = self.ignored_end_user_header;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ods(code: &str) -> OdsCode {
        OdsCode::parse(code).expect("ODS code")
    }

    fn staff(role: StaffRole) -> Access {
        Access::new(
            Caller::Staff {
                username: "amara".into(),
                role,
            },
            None,
            false,
        )
    }

    fn client(scopes: &str) -> Access {
        Access::new(
            Caller::Client {
                client_id: "gp-a".into(),
                ods_codes: vec![ods("A81001")],
                scopes: Scopes::parse(scopes).expect("scopes"),
                proxy: None,
            },
            Some("token-1".into()),
            false,
        )
    }

    #[test]
    fn each_role_may_do_what_the_issue_gives_it() {
        use StaffAction::*;
        let mine = Some("amara");
        let theirs = Some("bea");
        // (action, link worker, service manager, administrator)
        let table: &[(StaffAction<'_>, bool, bool, bool)] = &[
            (ViewWorklist, true, true, false),
            (ViewReferral { assigned_to: mine }, true, true, false),
            (ViewReferral { assigned_to: None }, true, true, false),
            (
                ViewReferral {
                    assigned_to: theirs,
                },
                false,
                true,
                false,
            ),
            (Transition { assigned_to: mine }, true, true, false),
            (Transition { assigned_to: None }, true, true, false),
            (
                Transition {
                    assigned_to: theirs,
                },
                false,
                true,
                false,
            ),
            (RecordOutcome { assigned_to: mine }, true, true, false),
            (
                RecordOutcome {
                    assigned_to: theirs,
                },
                false,
                true,
                false,
            ),
            (AddNote { assigned_to: None }, true, true, false),
            (
                AddNote {
                    assigned_to: theirs,
                },
                false,
                true,
                false,
            ),
            (Assign, false, true, false),
            (Reports, false, true, true),
            (ReportDetail, false, true, false),
            (Deliveries, false, false, true),
            (RetryDelivery, false, false, true),
            (Registries, false, false, true),
            (Audit, false, false, true),
            (People, false, false, true),
            (Metrics, false, false, true),
        ];
        let (lw, sm, admin) = (
            staff(StaffRole::LinkWorker),
            staff(StaffRole::ServiceManager),
            staff(StaffRole::Administrator),
        );
        let developer = Access::new(Caller::Developer, None, false);
        let open = Access::new(Caller::Unauthenticated, None, false);
        let gp = client("system/*.cruds");
        for (action, link_worker, manager, administrator) in table {
            assert_eq!(
                lw.staff_may(*action),
                *link_worker,
                "link worker {action:?}"
            );
            assert_eq!(sm.staff_may(*action), *manager, "manager {action:?}");
            assert_eq!(admin.staff_may(*action), *administrator, "admin {action:?}");
            assert!(developer.staff_may(*action), "developer {action:?}");
            assert!(open.staff_may(*action), "unauthenticated {action:?}");
            assert!(!gp.staff_may(*action), "client {action:?}");
        }
        // The service may let link workers open others' referrals (not act on them).
        let sees_all = Access::new(
            Caller::Staff {
                username: "amara".into(),
                role: StaffRole::LinkWorker,
            },
            None,
            true,
        );
        assert!(sees_all.staff_may(ViewReferral {
            assigned_to: theirs
        }));
        assert!(!sees_all.staff_may(Transition {
            assigned_to: theirs
        }));
    }

    #[test]
    fn a_client_is_held_to_its_scopes_and_practices() {
        let gp = client("system/ServiceRequest.cr system/Task.rs");
        assert!(gp.may(Interaction::Create, "ServiceRequest"));
        assert!(gp.may(Interaction::ProcessMessage, "Bundle"));
        assert!(gp.may(Interaction::Search, "Task"));
        assert!(!gp.may(Interaction::Update, "ServiceRequest"));
        assert!(!gp.may(Interaction::Read, "Patient"));
        assert!(gp.may(Interaction::Validate, "Patient"));
        assert_eq!(gp.practices(), PracticeScope::Only(vec![ods("A81001")]));
        assert!(gp.may_act_for(&ods("A81001")));
        assert!(!gp.may_act_for(&ods("B82001")));
        assert_eq!(gp.actor_label(), "gp-a");
        assert_eq!(gp.token_id(), Some("token-1"));
        let agent = gp.audit_agent();
        assert_eq!(agent.client_id.as_deref(), Some("gp-a"));
        assert_eq!(agent.ods_code.as_deref(), Some("A81001"));
        assert_eq!(agent.proxy_id, None);

        let relayed = Access::new(
            Caller::Client {
                client_id: "bars-proxy".into(),
                ods_codes: vec![ods("B82001")],
                scopes: Scopes::parse("system/ServiceRequest.c").expect("scopes"),
                proxy: Some(ProxyOrigin {
                    proxy_client_id: "bars-proxy".into(),
                    end_user_ods: ods("B82001"),
                }),
            },
            None,
            false,
        );
        assert!(relayed.may_act_for(&ods("B82001")));
        assert!(!relayed.may_act_for(&ods("A81001")));
        assert_eq!(relayed.actor_label(), "B82001 via bars-proxy");
        let mut record = AuditRecord::new("create", 201);
        relayed.fill_audit(&mut record);
        assert_eq!(record.proxy_id.as_deref(), Some("bars-proxy"));
        assert_eq!(record.end_user_ods.as_deref(), Some("B82001"));
        assert_eq!(record.ods_code.as_deref(), Some("B82001"));
    }

    #[test]
    fn staff_have_no_fhir_access_and_open_callers_have_all() {
        let manager = staff(StaffRole::ServiceManager);
        assert!(!manager.may(Interaction::Read, "ServiceRequest"));
        assert!(!manager.may_act_for(&ods("A81001")));
        assert_eq!(manager.actor_label(), "amara");
        let agent = manager.audit_agent();
        assert_eq!(agent.staff_username.as_deref(), Some("amara"));
        assert_eq!(agent.staff_role.as_deref(), Some("service_manager"));

        for (open, label) in [
            (Access::new(Caller::Developer, None, false), "developer"),
            (
                Access::new(Caller::Unauthenticated, None, false),
                "unauthenticated",
            ),
        ] {
            assert!(open.may(Interaction::Update, "Patient"));
            assert_eq!(open.practices(), PracticeScope::All);
            assert!(open.may_act_for(&ods("Z99999")));
            assert_eq!(open.actor_label(), label);
            assert_eq!(open.audit_agent().client_id.as_deref(), Some(label));
        }
    }
}
