//! The referral record's tables (`migrations/sqlite/0003_referrals.sql`):
//! writes inside a [`WriteTx`], reads on the reader pool.
//!
//! Architecture invariant: the record is only written through a `WriteTx`,
//! in the same transaction as the FHIR resources it describes and the outbox
//! rows that report the change.

use super::write::WriteTx;
use super::{Store, StoreError, dispatch, dispatch_write};
use crate::referral::record::{
    BusinessIdentifier, NoteSource, Outcome, Referral, ReferralDetail, ReferralFields,
};
use crate::referral::stage::Stage;

/// A stage change to record.
#[derive(Debug)]
pub struct NewStageChange<'a> {
    /// The referral.
    pub referral_id: &'a str,
    /// The stage entered.
    pub stage: Stage,
    /// When.
    pub at: &'a str,
    /// Who.
    pub actor: &'a str,
    /// Why.
    pub reason: Option<&'a str>,
    /// Free text.
    pub note: Option<&'a str>,
    /// The Task version reporting it.
    pub task_version: i64,
}

/// A submission to keep verbatim.
#[derive(Debug)]
pub struct Submission<'a> {
    /// The referral it created or changed.
    pub referral_id: &'a str,
    /// When it arrived.
    pub received_at: &'a str,
    /// `resource`, `transaction`, `message` or `update`.
    pub received_as: &'a str,
    /// `X-Request-ID`.
    pub request_id: &'a str,
    /// `X-Correlation-ID`.
    pub correlation_id: Option<&'a str>,
    /// The body, byte for byte.
    pub body: &'a [u8],
    /// What Sprig answered, when a resubmission should get the same answer.
    pub response: Option<&'a str>,
}

/// A change that must travel back to the referrer.
#[derive(Debug)]
pub struct OutboxMessage<'a> {
    /// The referral it belongs to (delivery keeps each referral's order).
    pub referral_id: &'a str,
    /// What changed.
    pub resource_type: &'a str,
    /// Its id.
    pub resource_id: &'a str,
    /// The version to send.
    pub version_id: i64,
    /// The referring practice (the endpoint registry's key).
    pub destination_ods: Option<&'a str>,
    /// The reply address the GP gave, if any.
    pub reply_to: Option<&'a str>,
    /// When.
    pub created_at: &'a str,
}

/// A remembered `$process-message` answer, keyed by `X-Request-ID`.
#[derive(Debug, Clone)]
pub struct MessageRequest {
    /// The body that came with the id.
    pub body: Vec<u8>,
    /// The HTTP status answered.
    pub status: u16,
    /// The answer's body.
    pub response: String,
}

/// Filters for listing referrals.
#[derive(Debug, Clone, Default)]
pub struct ReferralFilter {
    /// Only this stage.
    pub stage: Option<Stage>,
    /// Only from this practice (ODS code).
    pub practice: Option<String>,
    /// Received at or after (a FHIR instant, UTC).
    pub received_from: Option<String>,
    /// Received before.
    pub received_to: Option<String>,
    /// Whose referrals (by `assigned_to`).
    pub assignee: Assignee,
    /// Only those with a reason of this code (any system).
    pub reason: Option<String>,
    /// Only those not yet contacted (`received` or `accepted`) and received before this
    /// instant: overdue for first contact when it is the target's cut-off.
    pub not_contacted_before: Option<String>,
    /// Only the person with this NHS number (exact), or whose family name starts with
    /// this text (case-insensitive).
    pub person: Option<PersonSearch>,
    /// Only these referrals (the console's follow-up filter: ids computed from the
    /// outcome schedule); an empty list matches none.
    pub ids: Option<Vec<String>>,
    /// Resume after this (received_at, id), from the previous page's cursor.
    pub after: Option<(String, String)>,
    /// Page size.
    pub limit: u32,
}

/// A referral as the administrators' audit pages name it: ids, the sender and the
/// date received, nothing about the person or their care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferralHandle {
    /// The referral's id.
    pub id: String,
    /// Its business identifier's system.
    pub identifier_system: String,
    /// Its business identifier's value.
    pub identifier_value: String,
    /// The sending practice's ODS code.
    pub practice_ods_code: Option<String>,
    /// When it was received (a FHIR instant).
    pub received_at: String,
}

/// (assignee, practice ODS code, received at, first contacted at) of one referral.
pub type FirstContact = (Option<String>, Option<String>, String, String);

/// Whose referrals a list holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Assignee {
    /// Everyone's and no one's.
    #[default]
    Any,
    /// Unassigned ones only.
    Nobody,
    /// This person's only.
    Only(String),
    /// This person's and the unassigned ones (a link worker's worklist).
    MineOrNobody(String),
}

/// A search for one person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersonSearch {
    /// An NHS number, exactly.
    NhsNumber(String),
    /// The start of a family name, any case.
    FamilyName(String),
}

impl WriteTx {
    /// The referral `practice` sent with this business identifier, if one was received.
    /// An identifier is the sender's: two practices may use the same one for two
    /// referrals (a practice with no ODS code is one more sender, `None`).
    pub async fn referral_by_identifier(
        &mut self,
        practice: Option<&str>,
        identifier: &BusinessIdentifier,
    ) -> Result<Option<Referral>, StoreError> {
        dispatch_write!(self, b => b.referral_by_identifier(practice, identifier).await)
    }

    /// Claims `identifier` (as `practice` sent it) for the referral this transaction
    /// opens: if another referral holds it, the transaction fails with
    /// [`StoreError::IdentifierHeld`] and keeps nothing. Call it before writing the
    /// referral. The check runs where two writers of one identifier cannot both pass
    /// it: PostgreSQL checks now, under a lock on the identifier held to the commit;
    /// SQLite at the commit, on the writer, just before the transaction's statements,
    /// so the rows are built without the writer held (the error then comes from the
    /// commit, once the holder's batch is durable).
    pub async fn claim_identifier(
        &mut self,
        practice: Option<&str>,
        identifier: &BusinessIdentifier,
    ) -> Result<(), StoreError> {
        dispatch_write!(self, b => b.claim_identifier(practice, identifier).await)
    }

    /// The referral, read inside this transaction (to change it).
    pub async fn referral(&mut self, id: &str) -> Result<Option<Referral>, StoreError> {
        dispatch_write!(self, b => b.referral(id).await)
    }

    /// Records a new referral, with its patient, reasons and GP notes, and
    /// the `received` stage.
    pub async fn insert_referral(&mut self, referral: &Referral) -> Result<(), StoreError> {
        dispatch_write!(self, b => b.insert_referral(referral).await)
    }

    /// Replaces what came from the GP (an amendment), bumping the version.
    pub async fn update_referral_fields(
        &mut self,
        id: &str,
        fields: &ReferralFields,
        at: &str,
    ) -> Result<(), StoreError> {
        dispatch_write!(self, b => b.update_referral_fields(id, fields, at).await)
    }

    /// Moves the referral to `stage`, bumping its version.
    pub async fn set_stage(&mut self, id: &str, stage: Stage, at: &str) -> Result<(), StoreError> {
        dispatch_write!(self, b => b.set_stage(id, stage, at).await)
    }

    /// Adds a step to the timeline.
    pub async fn add_stage_change(
        &mut self,
        change: &NewStageChange<'_>,
    ) -> Result<(), StoreError> {
        dispatch_write!(self, b => b.add_stage_change(change).await)
    }

    /// Adds a note.
    pub async fn add_note(
        &mut self,
        referral_id: &str,
        source: NoteSource,
        author: Option<&str>,
        text: &str,
        at: &str,
    ) -> Result<(), StoreError> {
        dispatch_write!(self, b => b.add_note(referral_id, source, author, text, at).await)
    }

    /// Records an outcome measure and its answers.
    pub async fn add_outcome(
        &mut self,
        referral_id: &str,
        outcome: &Outcome,
    ) -> Result<(), StoreError> {
        dispatch_write!(self, b => b.add_outcome(referral_id, outcome).await)
    }

    /// The referral's outcome Observations (measure and id), in the order
    /// they were entered: the Task's `output`.
    pub async fn outcome_ids(
        &mut self,
        referral_id: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        dispatch_write!(self, b => b.outcome_ids(referral_id).await)
    }

    /// The reason given for the referral's current stage, if any.
    pub async fn current_reason(
        &mut self,
        referral_id: &str,
    ) -> Result<Option<String>, StoreError> {
        dispatch_write!(self, b => b.current_reason(referral_id).await)
    }

    /// Marks the record changed (a note or an outcome), bumping its version.
    pub async fn touch_referral(&mut self, id: &str, at: &str) -> Result<(), StoreError> {
        dispatch_write!(self, b => b.touch_referral(id, at).await)
    }

    /// Keeps a submission verbatim.
    pub async fn add_submission(&mut self, submission: &Submission<'_>) -> Result<(), StoreError> {
        dispatch_write!(self, b => b.add_submission(submission).await)
    }

    /// The answer given to the submission that created the referral, to
    /// answer a resubmission the same way.
    pub async fn first_response(
        &mut self,
        referral_id: &str,
    ) -> Result<Option<String>, StoreError> {
        dispatch_write!(self, b => b.first_response(referral_id).await)
    }

    /// Records that a change must travel back.
    pub async fn enqueue(&mut self, message: &OutboxMessage<'_>) -> Result<(), StoreError> {
        dispatch_write!(self, b => b.enqueue(message).await)
    }

    /// The answer remembered for an `X-Request-ID`, as this transaction sees
    /// it (the last word: writes are serialised).
    pub async fn message_request(
        &mut self,
        sender: &str,
        request_id: &str,
    ) -> Result<Option<MessageRequest>, StoreError> {
        dispatch_write!(self, b => b.message_request(sender, request_id).await)
    }

    /// Claims `sender`'s `X-Request-ID` for the message this transaction answers (and
    /// remembers, `remember_message_request`): if a copy of it has been answered, the
    /// transaction fails with [`StoreError::Overtaken`] and keeps nothing. As
    /// [`WriteTx::claim_identifier`]: PostgreSQL checks now, under a lock held to the
    /// commit; SQLite at the commit, on the writer, just before the statements.
    pub async fn claim_message_request(
        &mut self,
        sender: &str,
        request_id: &str,
    ) -> Result<(), StoreError> {
        dispatch_write!(self, b => b.claim_message_request(sender, request_id).await)
    }

    /// Remembers the answer to `sender`'s `X-Request-ID`.
    pub async fn remember_message_request(
        &mut self,
        sender: &str,
        request_id: &str,
        body: &[u8],
        status: u16,
        response: &str,
        at: &str,
    ) -> Result<(), StoreError> {
        dispatch_write!(self, b => b.remember_message_request(sender, request_id, body, status, response, at).await)
    }
}

impl Store {
    /// The referral `practice` sent with this business identifier, if one has been
    /// received and committed (so durable), read without taking the writer: a
    /// resubmission is recognised before a write transaction begins. One still being
    /// written is not seen: [`WriteTx::referral_by_identifier`] is the check that holds.
    pub async fn committed_referral_by_identifier(
        &self,
        practice: Option<&str>,
        identifier: &BusinessIdentifier,
    ) -> Result<Option<Referral>, StoreError> {
        dispatch!(self, b => b.committed_referral_by_identifier(practice, identifier).await)
    }

    /// The answer remembered for an `X-Request-ID`, read without taking the
    /// writer: a resubmission is answered before anything is validated.
    pub async fn message_request(
        &self,
        sender: &str,
        request_id: &str,
    ) -> Result<Option<MessageRequest>, StoreError> {
        dispatch!(self, b => b.message_request(sender, request_id).await)
    }

    /// One referral with its timeline, notes and outcomes.
    pub async fn referral_detail(&self, id: &str) -> Result<Option<ReferralDetail>, StoreError> {
        dispatch!(self, b => b.referral_detail(id).await)
    }

    /// A page of referrals, oldest received first.
    pub async fn list_referrals(
        &self,
        filter: &ReferralFilter,
    ) -> Result<Vec<Referral>, StoreError> {
        dispatch!(self, b => b.list_referrals(filter).await)
    }
}

impl Store {
    /// How many referrals are in each stage, of those `assignee` names (stages with
    /// none are left out). One grouped scan of the stage index.
    pub async fn stage_counts(&self, assignee: &Assignee) -> Result<Vec<(Stage, i64)>, StoreError> {
        dispatch!(self, b => b.stage_counts(assignee).await)
    }

    /// The referrals whose id, or whose business identifier's value (any system, any
    /// practice), is `text`: at most `limit`, oldest first. Ids and dates only, never
    /// the person (the administrators' audit look-up).
    pub async fn referral_handles(
        &self,
        text: &str,
        limit: u32,
    ) -> Result<Vec<ReferralHandle>, StoreError> {
        dispatch!(self, b => b.referral_handles(text, limit).await)
    }

    /// Who a referral is assigned to: `None` when there is no such referral,
    /// `Some(None)` when it is unassigned.
    pub async fn referral_assignee(&self, id: &str) -> Result<Option<Option<String>>, StoreError> {
        dispatch!(self, b => b.referral_assignee(id).await)
    }

    /// Per practice (`None`: no ODS code): referrals received, how many have been
    /// contacted, and the mean days from receipt to the first contact of those.
    pub async fn practice_figures(
        &self,
    ) -> Result<Vec<(Option<String>, i64, i64, Option<f64>)>, StoreError> {
        dispatch!(self, b => b.practice_figures().await)
    }

    /// Open referrals per assignee (`None`: unassigned), for the managers' caseloads.
    pub async fn caseloads(&self) -> Result<Vec<(Option<String>, i64)>, StoreError> {
        dispatch!(self, b => b.caseloads().await)
    }

    /// Every contacted referral's (assignee, practice ODS code, received at, first
    /// contact at), the instants as stored: the managers' time to first contact in
    /// working days is computed from these (`console`).
    pub async fn first_contacts(&self) -> Result<Vec<FirstContact>, StoreError> {
        dispatch!(self, b => b.first_contacts().await)
    }
}

impl WriteTx {
    /// Sets (or clears) who a referral is assigned to. False when there is no such
    /// referral.
    pub async fn set_assignee(
        &mut self,
        id: &str,
        assignee: Option<&str>,
        at: &str,
    ) -> Result<bool, StoreError> {
        dispatch_write!(self, b => b.set_assignee(id, assignee, at).await)
    }
}
