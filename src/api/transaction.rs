//! `POST /fhir` with a referral transaction Bundle: every entry is written
//! in one database transaction (all or nothing), `urn:uuid:` references are
//! rewritten to the ids Sprig assigns, conditional creates and updates
//! (`ifNoneExist`, `PUT Type?identifier=…`) find existing resources by
//! their business identifiers, and the answer is a `transaction-response`
//! Bundle with each entry's status and location.
//!
//! The write plan and its execution are shared with `$process-message`
//! (`api::message`), whose entries carry no `request` but are written the
//! same way.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::AppState;
use super::authenticate::{declared_organisation, require_practice, require_scope};
use super::capability::{arrives_with_referral, referral_bundle_types};
use super::error::ApiError;
use super::extract::{FhirBase, FhirBody};
use super::middleware::RequestContext;
use super::negotiate::ResponseFormat;
use super::pipeline;
use super::response::{already_received, received};
use crate::fhir::{FhirId, Instant, Issue, IssueType, OperationOutcome, ResourceType};
use crate::identity::{Access, Interaction as Scope};
use crate::mapping::intake::{Declared, SubmittedReferral};
use crate::referral::record::MappedReferral;
use crate::referral::record::{ReceivedAs, Referral};
use crate::search::SearchQuery;
use crate::store::referrals::Submission;
use crate::store::{
    CurrentVersion, Matched, ReadOutcome, ResourceWrite, StoreError, StoredResource, Visibility,
    WriteTx,
};
use crate::validation::REFERRAL_BUNDLE_PROFILE;
use crate::workflow::{Arrival, Opening, Workflow};

/// What to do with one entry.
#[derive(Debug)]
pub(super) enum Action {
    /// Create it under a new id.
    Create,
    /// Create it unless a resource matches (`ifNoneExist`).
    CreateUnlessExists(SearchQuery),
    /// Update the one match, or create it if none matches.
    UpdateMatching(SearchQuery),
    /// Create or update it under this id.
    Update(FhirId),
}

/// One entry to write.
#[derive(Debug)]
pub(super) struct PlannedEntry {
    /// `entry.fullUrl`, which other entries may reference.
    pub full_url: Option<String>,
    /// Its type.
    pub resource_type: ResourceType,
    /// The resource.
    pub resource: Value,
    /// What to do.
    pub action: Action,
}

impl PlannedEntry {
    /// The search a conditional entry matches by, `None` for an unconditional one.
    fn condition(&self) -> Option<&SearchQuery> {
        match &self.action {
            Action::CreateUnlessExists(query) | Action::UpdateMatching(query) => Some(query),
            Action::Create | Action::Update(_) => None,
        }
    }

    /// An entry of a Bundle, to be written as `action` says.
    pub(super) fn new(
        entry: &Value,
        resource_type: ResourceType,
        resource: Value,
        action: Action,
    ) -> Self {
        PlannedEntry {
            full_url: entry
                .get("fullUrl")
                .and_then(Value::as_str)
                .map(str::to_owned),
            resource_type,
            resource,
            action,
        }
    }
}

/// What happened to one entry.
#[derive(Debug)]
pub(super) struct EntryOutcome {
    /// The version now current.
    pub stored: StoredResource,
    /// `201 Created` or `200 OK`.
    pub created: bool,
    /// Whether a version was stored: not for a conditional create's match, nor for an
    /// update that changed nothing (`store::Updated::Unchanged`).
    pub written: bool,
}

/// `POST /fhir`: a referral transaction Bundle.
pub async fn transaction(
    State(state): State<AppState>,
    access: Access,
    context: RequestContext,
    format: ResponseFormat,
    base: FhirBase,
    body: FhirBody,
) -> Result<Response, ApiError> {
    // A referral transaction creates a ServiceRequest at least; each entry is checked
    // once planned.
    require_scope(
        &access,
        Scope::Create,
        ResourceType::SERVICE_REQUEST.as_str(),
    )?;
    let checked = pipeline::check(
        &state,
        &body,
        Some(ResourceType::BUNDLE),
        Some(REFERRAL_BUNDLE_PROFILE),
    )
    .await?;
    let mut bundle = checked.resource;
    let request_id = context.request_id.as_str();

    let referral_index = referral_entry(&bundle)?;
    let mapped = map_referral(&state, &access, &bundle, referral_index)?;
    let mut plan = plan_transaction(&mut bundle)?;
    for entry in &plan {
        require_scope(&access, Scope::Create, entry.resource_type.as_str())?;
    }
    require_practice(&access, mapped.fields.practice_ods_code.as_deref())?;
    let owner = mapped.fields.practice_ods_code.clone();
    let visibility = access.visibility();

    // A new referral's ids are settled, and its record and Task built and checked, on a
    // reader before the writer is taken; the writer confirms them (`open_referral`). A
    // Bundle already held is recognised inside the write transaction below, as before.
    let presettled = if state
        .store
        .committed_referral_by_identifier(owner.as_deref(), &mapped.identifier)
        .await?
        .is_some()
    {
        None
    } else {
        Some(
            presettle(
                &state,
                &plan,
                &conditions_visibility(&visibility, owner.as_deref()),
                referral_index,
                &mapped,
                request_id,
                ReceivedAs::Transaction,
            )
            .await?,
        )
    };
    let answering = Answering {
        context: &context,
        body: &body.0,
        base: &base,
        referral_index,
    };
    let as_seen = presettled.map(|presettled| {
        presettled.into_seen(
            &mut plan,
            referral_index,
            &visibility,
            owner.as_deref(),
            None,
        )
    });
    let (replanned, fresh, opening) = match as_seen {
        Some(WriteAs::Seen(seen)) => {
            // What the reader saw is written as it is, and confirmed on the writer just
            // before the statements run, so the Bundle's rows are built while others
            // hold the writer. Another write coming between keeps nothing of this one,
            // which is then written as below, matching under the writer.
            let written = write_as_seen(&state, &context, seen, async |tx, outcomes, referral| {
                answering.response(tx, outcomes, referral).await
            })
            .await?;
            match written {
                Some((response, text)) => return format.render_serialized(&response, text),
                None => {
                    tracing::info!(
                        "referral transaction met another write on the writer; writing it again from there"
                    );
                    // Its entries went into the write that was overtaken (moved, not
                    // copied: a large Bundle is not held twice): planned again from the
                    // request, as it came.
                    let mut bundle = pipeline::check(
                        &state,
                        &body,
                        Some(ResourceType::BUNDLE),
                        Some(REFERRAL_BUNDLE_PROFILE),
                    )
                    .await?
                    .resource;
                    (Some(plan_transaction(&mut bundle)?), None, None)
                }
            }
        }
        Some(WriteAs::Settled(Presettled { fresh, opening, .. })) => (None, Some(fresh), opening),
        None => (None, None, None),
    };
    if let Some(replanned) = replanned {
        plan = replanned;
    }

    let mut tx = state.store.begin_write().await?;
    if let Some(existing) = tx
        .referral_by_identifier(
            mapped.fields.practice_ods_code.as_deref(),
            &mapped.identifier,
        )
        .await?
    {
        Workflow::check_resubmission(&existing, &mapped.fields)?;
        // Only a transaction's own answer is replayed as one: a referral that first came as
        // a message (whose stored answer is the reply message) or alone is answered for
        // itself, so its stored answer is not read.
        let replay = if existing.received_as == ReceivedAs::Transaction {
            tx.first_response(&existing.id).await?
        } else {
            None
        };
        // What it found may be another request's write in the same SQLite batch,
        // not yet durable: the empty commit returns once that batch has committed.
        tx.commit().await?;
        tracing::info!(referral_id = %existing.id, "referral transaction resubmitted; answering as before");
        // `render` answers 200: nothing new was written.
        return format.render(&replayed(replay, &existing, referral_index)?);
    }
    let outcomes = execute_with(
        &mut tx,
        &mut plan,
        request_id,
        &visibility,
        owner.as_deref(),
        fresh.as_deref(),
        None,
    )
    .await?;
    let referral = open_referral(
        &state,
        &mut tx,
        mapped,
        &outcomes,
        ReceivedAs::Transaction,
        request_id,
        opening,
    )
    .await?;
    let (response, text) = answering.response(&mut tx, &outcomes, &referral).await?;
    context.audit.note_referral_record(&referral);
    context.audit.commit(tx, 200).await?;
    tracing::info!(
        referral_id = %referral.id,
        entries = outcomes.len(),
        "referral transaction committed"
    );
    format.render_serialized(&response, text)
}

/// What a referral Bundle is answered with, and the submission that keeps it.
struct Answering<'a> {
    context: &'a RequestContext,
    /// The request body, kept with the referral's submission.
    body: &'a [u8],
    base: &'a FhirBase,
    referral_index: usize,
}

impl Answering<'_> {
    /// The transaction-response for `outcomes`, stored with the referral's submission
    /// (its body and this answer, which a resubmission is answered with again); with
    /// its text as stored, which is sent (`ResponseFormat::render_serialized`).
    async fn response(
        &self,
        tx: &mut WriteTx,
        outcomes: &[EntryOutcome],
        referral: &Referral,
    ) -> Result<(Value, String), ApiError> {
        let response = transaction_response(self.base, outcomes, self.referral_index, referral);
        let response_text = response.to_string();
        tx.add_submission(&Submission {
            referral_id: &referral.id,
            received_at: &referral.received_at,
            received_as: ReceivedAs::Transaction.as_str(),
            request_id: &self.context.request_id,
            correlation_id: self.context.correlation_id.as_deref(),
            body: self.body,
            response: Some(&response_text),
        })
        .await?;
        Ok((response, response_text))
    }
}

/// How a new referral's entries are written ([`Presettled::into_seen`]).
pub(super) enum WriteAs<'a> {
    /// As a reader saw the store ([`write_as_seen`]).
    Seen(Seen<'a>),
    /// Under the writer, from what was settled before it.
    Settled(Presettled),
}

/// A new referral's entries as a reader saw the store (`presettle`).
pub(super) struct Seen<'a> {
    /// Its entries, each resource taken by the write.
    plan: &'a mut [PlannedEntry],
    /// The id each entry gets if it is created.
    fresh: Vec<FhirId>,
    /// What each condition matched.
    seen: Vec<Matched>,
    /// The record and Task built for the ids those give.
    opening: Opening,
    /// What the caller sees.
    visibility: &'a Visibility,
    /// The referring practice, which owns what is written.
    owner: Option<&'a str>,
    /// A message's `X-Request-ID` and whose it is (`Access::sender_key`), claimed for
    /// its answer (`WriteTx::claim_message_request`).
    request: Option<(&'a str, &'a str)>,
}

/// Writes a new referral's entries as a reader saw the store: its identifier claimed
/// and its conditions expected to match what `seen` says, each confirmed on SQLite's
/// writer just before the statements run (`WriteTx::claim_identifier`,
/// `WriteTx::expect_matching`), and a message's request id too, its record and Task
/// those built for it, then what `finish` adds (the submission and the answer, which it
/// returns), audited and committed. So its rows are built before it takes the writer
/// (`Store::begin_deferred_write`). `None` when another write came between (the
/// identifier taken, a condition matching otherwise, the request id answered):
/// nothing of this one is kept, and the caller writes it again under the writer, from
/// entries planned again (the resources of these were taken by this write). On
/// PostgreSQL the claim and the conditions are checked at once, under their locks.
pub(super) async fn write_as_seen<T>(
    state: &AppState,
    context: &RequestContext,
    new: Seen<'_>,
    finish: impl AsyncFnOnce(&mut WriteTx, &[EntryOutcome], &Referral) -> Result<T, ApiError>,
) -> Result<Option<T>, ApiError> {
    let request_id = context.request_id.as_str();
    let identifier = new.opening.referral().identifier.clone();
    let mut tx = state.store.begin_deferred_write().await?;
    let written = async {
        // The request id before the identifier, as the write under the writer locks
        // them (PostgreSQL), so two writes of one message never wait on each other.
        if let Some((sender, request_id)) = new.request {
            tx.claim_message_request(sender, request_id).await?;
        }
        tx.claim_identifier(new.owner, &identifier).await?;
        let outcomes = execute_with(
            &mut tx,
            new.plan,
            request_id,
            new.visibility,
            new.owner,
            Some(&new.fresh),
            Some(new.seen),
        )
        .await?;
        if !opening_fits(&new.opening, &outcomes)? {
            // The entries got the ids the reader's matches gave, which the record was
            // built for; anything else is another write's doing.
            return Err(ApiError::Unavailable(StoreError::Overtaken(
                "the entries got other ids than those its record was built for",
            )));
        }
        let referral = state
            .workflow
            .write_opened(&mut tx, new.opening, request_id)
            .await?;
        let answer = finish(&mut tx, &outcomes, &referral).await?;
        context.audit.commit_opened(tx, 200, &referral).await?;
        tracing::info!(
            referral_id = %referral.id,
            entries = outcomes.len(),
            "new referral committed"
        );
        Ok(answer)
    }
    .await;
    match written {
        Ok(answer) => Ok(Some(answer)),
        Err(ApiError::Unavailable(StoreError::IdentifierHeld(_) | StoreError::Overtaken(_))) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Whether a new referral's Bundle can be written as a reader saw the store
/// ([`write_as_seen`]): every entry is created or matched by a condition (an
/// entry naming its own id is read under the writer), each condition matched nothing
/// or one resource, and the referral's own entry matched nothing (a match is answered
/// with a conflict, decided under the writer).
fn confirmable(plan: &[PlannedEntry], seen: &[Matched], referral_index: usize) -> bool {
    let mut seen = seen.iter();
    plan.iter()
        .enumerate()
        .all(|(index, entry)| match &entry.action {
            Action::Create => true,
            Action::Update(_) => false,
            Action::CreateUnlessExists(_) | Action::UpdateMatching(_) => {
                seen.next().is_some_and(|matched| {
                    matched.is_confirmable() && (index != referral_index || matched.ids.is_empty())
                })
            }
        })
}

/// The index of the one ServiceRequest entry (the profile requires it).
pub(super) fn referral_entry(bundle: &Value) -> Result<usize, ApiError> {
    entries(bundle)
        .iter()
        .position(|entry| resource_type_of(entry.get("resource")) == Some("ServiceRequest"))
        .ok_or_else(|| {
            ApiError::Unprocessable(vec![Issue::error(
                IssueType::Required,
                "bundle-no-referral",
                "The Bundle holds no ServiceRequest: a referral Bundle must carry the referral",
            )])
        })
}

/// Maps the referral entry, its references followed within the Bundle.
pub(super) fn map_referral(
    state: &AppState,
    access: &Access,
    bundle: &Value,
    referral_index: usize,
) -> Result<MappedReferral, ApiError> {
    let referral = entries(bundle)
        .get(referral_index)
        .and_then(|e| e.get("resource"))
        .ok_or_else(|| {
            ApiError::internal(
                "mapping a Bundle's referral",
                format!("entry {referral_index} holds no resource"),
            )
        })?;
    let declared = declared_organisation(access);
    let inputs = SubmittedReferral {
        referral,
        bundle: Some(bundle),
    }
    .inputs_with(Declared {
        end_user_organisation: declared.as_ref(),
    });
    Ok(state.workflow.map_inbound(&inputs)?)
}

fn entries(bundle: &Value) -> &[Value] {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn resource_type_of(resource: Option<&Value>) -> Option<&str> {
    resource?.get("resourceType")?.as_str()
}

/// Reads each entry's `request` into an action.
fn plan_transaction(bundle: &mut Value) -> Result<Vec<PlannedEntry>, ApiError> {
    let entries = bundle
        .get_mut("entry")
        .and_then(Value::as_array_mut)
        .map(std::mem::take)
        .unwrap_or_default();
    let mut plan = Vec::with_capacity(entries.len());
    for (index, mut entry) in entries.into_iter().enumerate() {
        // Moved out of the Bundle, not copied: the Bundle is not read again.
        let resource = entry
            .get_mut("resource")
            .map(Value::take)
            .unwrap_or(Value::Null);
        let resource_type = ResourceType::parse(resource_type_of(Some(&resource)).unwrap_or(""))
            .map_err(|e| bad_entry(index, "transaction-entry-type", e.to_string()))?;
        if !arrives_with_referral(resource_type) {
            return Err(bad_entry(
                index,
                "transaction-entry-type",
                format!(
                    "A referral transaction carries the referral and what comes with it ({}); Sprig does not take {resource_type} resources here",
                    referral_bundle_types()
                ),
            ));
        }
        let request = entry.get("request");
        let method = request
            .and_then(|r| r.get("method"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let url = request
            .and_then(|r| r.get("url"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let action = match (method, url.split_once('?')) {
            ("POST", _) => match request
                .and_then(|r| r.get("ifNoneExist"))
                .and_then(Value::as_str)
            {
                Some(query) => Action::CreateUnlessExists(query_for(index, resource_type, query)?),
                None => Action::Create,
            },
            ("PUT", Some(_)) if resource_type == ResourceType::SERVICE_REQUEST => {
                return Err(bad_entry(
                    index,
                    "transaction-referral-method",
                    "A referral is sent with POST; amend one Sprig holds with PUT /fhir/ServiceRequest/{id} and If-Match".to_owned(),
                ));
            }
            ("PUT", Some((_, query))) => {
                Action::UpdateMatching(query_for(index, resource_type, query)?)
            }
            ("PUT", None) => {
                // Without If-Match, a PUT by id would overwrite whatever
                // Sprig holds under that id, whoever sent it.
                return Err(bad_entry(
                    index,
                    "transaction-put-by-id",
                    format!(
                        "request.url {url} names a resource by id: use POST, or a conditional PUT on a business identifier ({resource_type}?identifier=system|value)"
                    ),
                ));
            }
            (other, _) => {
                return Err(bad_entry(
                    index,
                    "transaction-method-not-supported",
                    format!(
                        "request.method {other} is not supported in a referral transaction: use POST or a conditional PUT"
                    ),
                ));
            }
        };
        // The path is the type and nothing else (a create and a conditional
        // update both name only the type): `ServiceRequest/../../Patient`
        // must not pass for `ServiceRequest`.
        let target = url.split('?').next().unwrap_or("");
        if target != resource_type.as_str() {
            let target_type = target.split('/').next().unwrap_or("");
            let message = if target_type == resource_type.as_str() {
                format!(
                    "request.url must name only the resource type ({resource_type}, with an optional ?query), not a path below it"
                )
            } else {
                format!(
                    "request.url '{target_type}…' does not name the entry's resource type {resource_type}"
                )
            };
            return Err(bad_entry(index, "transaction-entry-url", message));
        }
        plan.push(PlannedEntry::new(&entry, resource_type, resource, action));
    }
    Ok(plan)
}

fn query_for(
    index: usize,
    resource_type: ResourceType,
    query: &str,
) -> Result<SearchQuery, ApiError> {
    let query = query.rsplit('?').next().unwrap_or(query);
    SearchQuery::parse_condition(resource_type, query).map_err(|issues| {
        ApiError::BadRequest(
            issues
                .into_iter()
                .map(|mut issue| {
                    issue.expression = Some(format!("Bundle.entry[{index}].request"));
                    issue
                })
                .collect(),
        )
    })
}

fn bad_entry(index: usize, message_id: &'static str, message: String) -> ApiError {
    let mut issue = Issue::error(IssueType::Invalid, message_id, message);
    issue.expression = Some(format!("Bundle.entry[{index}]"));
    ApiError::BadRequest(vec![issue])
}

/// Writes every entry in `tx`: ids are settled first (conditional matches,
/// new ids), then references are rewritten, then each entry is written.
/// Conditions match, and updates reach, only what `visibility` sees; what is
/// written belongs to `owner` (the referral's practice).
pub(super) async fn execute(
    tx: &mut WriteTx,
    plan: &mut [PlannedEntry],
    request_id: &str,
    visibility: &Visibility,
    owner: Option<&str>,
) -> Result<Vec<EntryOutcome>, ApiError> {
    execute_with(tx, plan, request_id, visibility, owner, None, None).await
}

/// What conditions match in a referral's Bundle. It writes its practice's resources,
/// so its conditions match only those, even for a caller that sees every practice
/// (staff, the open developer mode): one practice's referral never matches or updates
/// another's Patient or ServiceRequest, whichever of two concurrent Bundles commits
/// first.
pub(super) fn conditions_visibility(visibility: &Visibility, owner: Option<&str>) -> Visibility {
    match owner {
        Some(practice) => visibility.within(practice),
        None => visibility.clone(),
    }
}

/// [`execute`], giving a new resource the id `fresh` holds at its entry's index (ids
/// [`presettle`] chose, so a record and Task built before the writer name them), and
/// with `seen`, the conditions expected to match what a reader found
/// (`WriteTx::expect_matching`) rather than matched under the writer.
async fn execute_with(
    tx: &mut WriteTx,
    plan: &mut [PlannedEntry],
    request_id: &str,
    visibility: &Visibility,
    owner: Option<&str>,
    fresh: Option<&[FhirId]>,
    seen: Option<Vec<Matched>>,
) -> Result<Vec<EntryOutcome>, ApiError> {
    let narrowed = conditions_visibility(visibility, owner);
    let visibility = &narrowed;
    let new_id = |index: usize| {
        fresh
            .and_then(|ids| ids.get(index))
            .cloned()
            .unwrap_or_else(FhirId::generate)
    };
    // 1. Settle each entry's id, and whether it is written at all. Every condition is
    // matched in one statement, with the one match's current version, so that a
    // conditional entry costs no further round trip with the writer held.
    let conditions: Vec<&SearchQuery> = plan.iter().filter_map(PlannedEntry::condition).collect();
    let mut matches = match seen {
        Some(seen) => tx.expect_matching(&conditions, visibility, seen).await?,
        None => tx.matching_current(&conditions, visibility).await?,
    }
    .into_iter();
    let mut settled: Vec<(FhirId, Option<bool>)> = Vec::with_capacity(plan.len());
    // The current version of each entry that matched one resource.
    let mut currents: Vec<Option<CurrentVersion>> = Vec::with_capacity(plan.len());
    for (index, entry) in plan.iter().enumerate() {
        let mut current = None;
        settled.push(match &entry.action {
            Action::Create => (new_id(index), Some(true)),
            Action::Update(id) => {
                if tx.exists_unseen(entry.resource_type, id, visibility).await? {
                    // Another practice's resource: not this caller's to overwrite, and
                    // the answer must not say whose it is.
                    let mut issue = Issue::error(
                        IssueType::Conflict,
                        "transaction-id-unavailable",
                        format!(
                            "{}/{id} cannot be written by this client; let Sprig choose the id (POST)",
                            entry.resource_type
                        ),
                    );
                    issue.expression = Some(format!("Bundle.entry[{index}].request"));
                    return Err(ApiError::Conflict(vec![issue]));
                }
                (
                    id.clone(),
                    Some(!exists(tx, entry.resource_type, id, visibility).await?),
                )
            }
            Action::CreateUnlessExists(_) | Action::UpdateMatching(_) => {
                let matched = matches.next().ok_or_else(|| {
                    ApiError::internal(
                        "matching a transaction's conditions",
                        format!("no answer for entry {index}'s condition"),
                    )
                })?;
                let updates = matches!(entry.action, Action::UpdateMatching(_));
                match one_match(matched.ids, index)? {
                    Some(id) => {
                        current = matched.current;
                        (id, updates.then_some(false))
                    }
                    None => (new_id(index), Some(true)),
                }
            }
        });
        currents.push(current);
    }
    // 2. Every fullUrl now has a `Type/id`.
    let mut targets: HashMap<String, String> = HashMap::new();
    for (entry, (id, _)) in plan.iter().zip(&settled) {
        if let Some(full_url) = &entry.full_url {
            targets.insert(full_url.clone(), format!("{}/{id}", entry.resource_type));
        }
    }
    // 3. Write: a match is read, an update written alone, and every new resource in one
    // statement per table (`create_all`): each statement is a round trip with the single
    // SQLite writer held, and a referral's Bundle is mostly new resources.
    let (ids, writes): (Vec<FhirId>, Vec<Option<bool>>) = settled.into_iter().unzip();
    let mut outcomes: Vec<Option<EntryOutcome>> = Vec::with_capacity(plan.len());
    let mut creates: Vec<(usize, ResourceWrite<'_>)> = Vec::new();
    for (index, (((entry, id), write), current)) in plan
        .iter_mut()
        .zip(&ids)
        .zip(writes)
        .zip(currents)
        .enumerate()
    {
        // Taken, not copied: a large Bundle is not held twice. A write that meets another
        // on the writer is written again from entries planned again.
        let mut resource = std::mem::take(&mut entry.resource);
        rewrite_references(&mut resource, &targets);
        let new_version = ResourceWrite {
            resource_type: entry.resource_type,
            id,
            resource,
            // The Bundle's body is kept once, with its submission (same request id): a
            // copy in every entry's version made a Bundle's cost grow with the square of
            // its size (issue 20 §4).
            received: None,
            request_id,
            owner,
        };
        outcomes.push(match write {
            None => match current {
                // Read with the match, in this transaction.
                Some(current) => Some(EntryOutcome {
                    stored: current.into_stored(),
                    created: false,
                    written: false,
                }),
                None => {
                    return Err(ApiError::internal(
                        "reading a conditional entry's match",
                        format!("{}/{id} matched but cannot be read", entry.resource_type),
                    ));
                }
            },
            Some(true) => {
                creates.push((index, new_version));
                None
            }
            Some(false) => {
                // An update that changes nothing stores nothing: the entry is answered
                // with the version held (`200 OK`, its ETag), as a no-op update is.
                let updated = match current {
                    Some(current) => tx.update_from(new_version, current).await?,
                    None => tx.update(new_version, None).await?,
                };
                Some(EntryOutcome {
                    written: updated.changed(),
                    stored: updated.into_stored(),
                    created: false,
                })
            }
        });
    }
    let (indexes, creates): (Vec<usize>, Vec<ResourceWrite<'_>>) = creates.into_iter().unzip();
    for (index, stored) in indexes.into_iter().zip(tx.create_all(creates).await?) {
        if let Some(slot) = outcomes.get_mut(index) {
            *slot = Some(EntryOutcome {
                stored,
                created: true,
                written: true,
            });
        }
    }
    outcomes
        .into_iter()
        .map(|outcome| {
            outcome.ok_or_else(|| {
                ApiError::internal("writing a Bundle's entries", "an entry was not written")
            })
        })
        .collect()
}

/// A referral Bundle's ids and record as expected before the write transaction.
pub(super) struct Presettled {
    /// For each entry, the id it gets if it is created.
    pub fresh: Vec<FhirId>,
    /// The referral's record and Task for the ServiceRequest's and the Patient's
    /// expected ids; `None` when they could not be told (a condition matched several).
    pub opening: Option<Opening>,
    /// What each condition matched, in the plan's order.
    pub seen: Vec<Matched>,
}

impl Presettled {
    /// The write of `plan` as a reader saw the store ([`write_as_seen`]), by a caller
    /// seeing `visibility`, for the practice `owner`, with a message's `request` id,
    /// when the plan and what was seen allow one ([`confirmable`]); otherwise what was
    /// settled, for the write under the writer.
    pub(super) fn into_seen<'a>(
        self,
        plan: &'a mut [PlannedEntry],
        referral_at: usize,
        visibility: &'a Visibility,
        owner: Option<&'a str>,
        request: Option<(&'a str, &'a str)>,
    ) -> WriteAs<'a> {
        match self {
            Presettled {
                fresh,
                opening: Some(opening),
                seen,
            } if confirmable(plan, &seen, referral_at) => WriteAs::Seen(Seen {
                plan,
                fresh,
                seen,
                opening,
                visibility,
                owner,
                request,
            }),
            unconfirmable => WriteAs::Settled(unconfirmable),
        }
    }
}

/// Settles on a reader what a referral Bundle's entries are expected to become, and
/// builds and checks its record and Task for that, so the single SQLite writer is held
/// for the statements only. A guess: a resource may be written or deleted before the
/// writer is taken, so `execute_with` settles every condition again inside the write
/// transaction, and `open_referral` uses the prepared Task only if the ServiceRequest
/// and its Patient got the ids it names (otherwise it builds it there, as before).
pub(super) async fn presettle(
    state: &AppState,
    plan: &[PlannedEntry],
    visibility: &Visibility,
    referral_index: usize,
    mapped: &MappedReferral,
    request_id: &str,
    received_as: ReceivedAs,
) -> Result<Presettled, ApiError> {
    let fresh: Vec<FhirId> = plan.iter().map(|_| FhirId::generate()).collect();
    let conditions: Vec<&SearchQuery> = plan.iter().filter_map(PlannedEntry::condition).collect();
    let seen = state
        .store
        .committed_matching_current(&conditions, visibility)
        .await?;
    let mut matches = seen.iter();
    let mut expected: Vec<Option<FhirId>> = Vec::with_capacity(plan.len());
    for (entry, new) in plan.iter().zip(&fresh) {
        expected.push(match &entry.action {
            Action::Create => Some(new.clone()),
            Action::Update(id) => Some(id.clone()),
            Action::CreateUnlessExists(_) | Action::UpdateMatching(_) => {
                match matches.next().map(|matched| matched.ids.as_slice()) {
                    Some([]) => Some(new.clone()),
                    Some([id]) => Some(id.clone()),
                    _ => None,
                }
            }
        });
    }
    let mut targets: HashMap<String, String> = HashMap::new();
    for (entry, id) in plan.iter().zip(&expected) {
        if let (Some(full_url), Some(id)) = (&entry.full_url, id) {
            targets.insert(full_url.clone(), format!("{}/{id}", entry.resource_type));
        }
    }
    let (Some(Some(service_request_id)), Some(referral)) =
        (expected.get(referral_index), plan.get(referral_index))
    else {
        return Ok(Presettled {
            fresh,
            opening: None,
            seen,
        });
    };
    let mut subject = referral
        .resource
        .get("subject")
        .cloned()
        .unwrap_or(Value::Null);
    rewrite_references(&mut subject, &targets);
    let patient_id = patient_of(&subject);
    let opening = state.workflow.prepare_open(
        mapped.clone(),
        &Arrival {
            service_request_id,
            patient_id: patient_id.as_ref(),
            received_as,
            request_id,
        },
    )?;
    Ok(Presettled {
        fresh,
        opening: Some(opening),
        seen,
    })
}

/// The Patient a ServiceRequest's `subject` names by `Patient/id` (references to Bundle
/// entries already rewritten).
fn patient_of(subject: &Value) -> Option<FhirId> {
    subject
        .get("reference")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("Patient/"))
        .and_then(|id| FhirId::parse(id).ok())
}

async fn exists(
    tx: &mut WriteTx,
    resource_type: ResourceType,
    id: &FhirId,
    visibility: &Visibility,
) -> Result<bool, ApiError> {
    Ok(matches!(
        tx.read(resource_type, id, visibility).await?,
        ReadOutcome::Found(_)
    ))
}

/// The one id a condition matched, `None` for none; several are an error (which one
/// was meant cannot be told).
fn one_match(mut ids: Vec<FhirId>, index: usize) -> Result<Option<FhirId>, ApiError> {
    match ids.len() {
        0 | 1 => Ok(ids.pop()),
        n => {
            let mut issue = Issue::error(
                IssueType::MultipleMatches,
                "conditional-multiple-matches",
                format!(
                    "The entry's condition matches {n} resources, so Sprig cannot tell which one is meant; make it more specific"
                ),
            );
            issue.expression = Some(format!("Bundle.entry[{index}].request"));
            Err(ApiError::PreconditionFailed(issue))
        }
    }
}

/// Replaces each `reference` naming a Bundle entry's `fullUrl` with the
/// entry's `Type/id`.
fn rewrite_references(value: &mut Value, targets: &HashMap<String, String>) {
    match value {
        Value::Object(map) => rewrite_object(map, targets),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| rewrite_references(item, targets)),
        _ => {}
    }
}

fn rewrite_object(map: &mut Map<String, Value>, targets: &HashMap<String, String>) {
    for (key, value) in map.iter_mut() {
        if key == "reference"
            && let Value::String(reference) = value
        {
            if let Some(target) = targets.get(reference.as_str()) {
                *reference = target.clone();
            }
            continue;
        }
        rewrite_references(value, targets);
    }
}

/// Opens the referral for the ServiceRequest just written (a referral
/// Bundle holds exactly one: its profile says so), with the Patient its
/// `subject` now names.
pub(super) async fn open_referral(
    state: &AppState,
    tx: &mut WriteTx,
    mapped: MappedReferral,
    outcomes: &[EntryOutcome],
    received_as: ReceivedAs,
    request_id: &str,
    prepared: Option<Opening>,
) -> Result<Referral, ApiError> {
    let referral = outcomes
        .iter()
        .find(|o| o.stored.resource_type == ResourceType::SERVICE_REQUEST)
        .ok_or_else(|| {
            ApiError::internal(
                "opening a Bundle's referral",
                "no ServiceRequest was written",
            )
        })?;
    if !referral.created {
        // A conditional create (`request.ifNoneExist`) found a ServiceRequest Sprig holds:
        // another referral, as a resubmission of this one is recognised by its identifier
        // before anything is written. One ServiceRequest cannot be two referrals.
        return Err(ApiError::Conflict(vec![Issue::error(
            IssueType::Conflict,
            "transaction-referral-matched",
            format!(
                "The referral's request.ifNoneExist matches ServiceRequest/{}, which is another referral. A new referral is always created (Sprig recognises a resubmission by its identifier): send it without request.ifNoneExist",
                referral.stored.id
            ),
        )]));
    }
    let patient_id = written_patient(referral)?;
    // Built before the writer for the ids the entries were expected to get: used only if
    // they got them (a Patient written or deleted meanwhile gives another).
    if let Some(opening) = prepared
        && fits(&opening, referral, patient_id.as_ref())
    {
        return Ok(state.workflow.write_opened(tx, opening, request_id).await?);
    }
    Ok(state
        .workflow
        .open(
            tx,
            mapped,
            &Arrival {
                service_request_id: &referral.stored.id,
                patient_id: patient_id.as_ref(),
                received_as,
                request_id,
            },
        )
        .await?)
}

/// The Patient the ServiceRequest as written names (its `subject`, references to
/// Bundle entries rewritten).
fn written_patient(referral: &EntryOutcome) -> Result<Option<FhirId>, ApiError> {
    let service_request: Value = serde_json::from_str(&referral.stored.json)
        .map_err(|e| ApiError::internal("reading a stored referral's JSON", e))?;
    Ok(service_request.get("subject").and_then(patient_of))
}

/// Whether a record and Task built before the write (`opening`) name the ServiceRequest
/// created and the Patient it names.
fn fits(opening: &Opening, referral: &EntryOutcome, patient_id: Option<&FhirId>) -> bool {
    referral.created
        && opening.referral().id == referral.stored.id.as_str()
        && opening.referral().patient_id.as_deref() == patient_id.map(FhirId::as_str)
}

/// [`fits`] for a Bundle's written entries.
fn opening_fits(opening: &Opening, outcomes: &[EntryOutcome]) -> Result<bool, ApiError> {
    let Some(referral) = outcomes
        .iter()
        .find(|o| o.stored.resource_type == ResourceType::SERVICE_REQUEST)
    else {
        return Ok(false);
    };
    Ok(fits(opening, referral, written_patient(referral)?.as_ref()))
}

fn transaction_response(
    base: &FhirBase,
    outcomes: &[EntryOutcome],
    referral_index: usize,
    referral: &Referral,
) -> Value {
    let entries: Vec<Value> = outcomes
        .iter()
        .enumerate()
        .map(|(index, outcome)| {
            let stored = &outcome.stored;
            let mut response = json!({
                "status": if outcome.created { "201 Created" } else { "200 OK" },
                "location": format!(
                    "{}/{}/_history/{}",
                    stored.resource_type, stored.id, stored.version_id
                ),
                "etag": format!("W/\"{}\"", stored.version_id),
                "lastModified": stored.last_updated.to_fhir(),
            });
            if index == referral_index {
                response["outcome"] = information("referral-received", received(referral));
            }
            json!({
                "fullUrl": format!("{}/{}/{}", base.as_str(), stored.resource_type, stored.id),
                "response": response,
            })
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "id": FhirId::generate().as_str(),
        "meta": {"lastUpdated": Instant::now().to_fhir()},
        "type": "transaction-response",
        "entry": entries,
    })
}

fn information(message_id: &'static str, message: String) -> Value {
    OperationOutcome::new(vec![Issue::information(message_id, message)]).to_json(None)
}

/// The first answer again (`first`: the transaction-response stored when the referral first
/// came as a transaction), each entry now `200 OK`: nothing new was written.
fn replayed(
    first: Option<String>,
    existing: &Referral,
    referral_index: usize,
) -> Result<Value, ApiError> {
    let first: Option<Value> = first
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| ApiError::internal("reading a stored transaction answer", e))?;
    // The outcome goes on the referral's entry (the only one when the
    // referral first came another way).
    let outcome_index = if first.is_some() { referral_index } else { 0 };
    let mut response: Value = match first {
        Some(response) => response,
        None => json!({
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [{"response": {"location": format!("ServiceRequest/{}", existing.id)}}],
        }),
    };
    response["id"] = json!(FhirId::generate().as_str());
    if let Some(entries) = response.get_mut("entry").and_then(Value::as_array_mut) {
        for (index, entry) in entries.iter_mut().enumerate() {
            entry["response"]["status"] = json!("200 OK");
            if index == outcome_index {
                entry["response"]["outcome"] =
                    information("referral-already-received", already_received(existing));
            }
        }
    }
    Ok(response)
}
