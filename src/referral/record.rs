//! The internal referral record: what the social prescribing service works
//! on, as stored in the `referrals` tables and served by `/api/referrals`.
//!
//! Plain data. The FHIR resources it came from are kept verbatim beside it
//! (the ServiceRequest and its versions, and every submission's body).

use serde::Serialize;
use time::OffsetDateTime;

use super::stage::Stage;

/// How a referral arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReceivedAs {
    /// `POST /fhir/ServiceRequest`, related resources contained.
    Resource,
    /// `POST /fhir` with a transaction Bundle.
    Transaction,
    /// `POST /fhir/$process-message` with a BaRS-style message Bundle.
    Message,
}

impl ReceivedAs {
    /// The code stored in `referrals.received_as`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceivedAs::Resource => "resource",
            ReceivedAs::Transaction => "transaction",
            ReceivedAs::Message => "message",
        }
    }

    /// Reads a stored code.
    pub fn parse(code: &str) -> Option<Self> {
        [
            ReceivedAs::Resource,
            ReceivedAs::Transaction,
            ReceivedAs::Message,
        ]
        .into_iter()
        .find(|r| r.as_str() == code)
    }
}

/// The GP system's business identifier for the referral.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BusinessIdentifier {
    /// `Identifier.system`.
    pub system: String,
    /// `Identifier.value`.
    pub value: String,
}

/// The patient, as far as the service needs to reach them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PatientContact {
    /// NHS number (10 digits, check digit valid: the profile enforces it).
    pub nhs_number: Option<String>,
    /// Given name(s).
    pub given_name: Option<String>,
    /// Family name.
    pub family_name: Option<String>,
    /// Date of birth (FHIR date).
    pub birth_date: Option<String>,
    /// Telephone number.
    pub phone: Option<String>,
    /// Email address.
    pub email: Option<String>,
    /// Postal address lines and town, joined.
    pub address: Option<String>,
    /// Postcode.
    pub postcode: Option<String>,
}

/// One reason for referral.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// Code system.
    pub system: Option<String>,
    /// Code.
    pub code: Option<String>,
    /// The code's display.
    pub display: Option<String>,
    /// The GP's own words.
    pub text: Option<String>,
}

/// The referral's fields that come from the GP's FHIR (through the inbound
/// mapping), and may be amended by the GP later.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReferralFields {
    /// `ServiceRequest.status` as sent.
    pub fhir_status: String,
    /// `ServiceRequest.intent`.
    pub intent: Option<String>,
    /// `ServiceRequest.priority`.
    pub priority: Option<String>,
    /// `ServiceRequest.authoredOn`.
    pub authored_on: Option<String>,
    /// The referring practice's ODS code.
    pub practice_ods_code: Option<String>,
    /// The referring practice's name.
    pub practice_name: Option<String>,
    /// Who referred.
    pub referrer_name: Option<String>,
    /// The referrer's identifier (e.g. an SDS user id).
    pub referrer_identifier: Option<String>,
    /// `Consent.status`.
    pub consent_status: Option<String>,
    /// `Consent.dateTime`.
    pub consent_date: Option<String>,
    /// Where replies go (a BaRS `source.endpoint`), if the GP said.
    pub reply_to: Option<String>,
    /// The patient.
    pub patient: PatientContact,
    /// Why the patient was referred.
    pub reasons: Vec<Reason>,
    /// The GP's notes (`ServiceRequest.note`). Served in the detail's
    /// `notes`, beside the service's own.
    #[serde(skip_serializing)]
    pub notes: Vec<String>,
}

/// A referral as the inbound mapping reads it from the GP's FHIR, before
/// it is stored: what makes it unique, and everything else it records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MappedReferral {
    /// The GP system's identifier (the idempotency key).
    pub identifier: BusinessIdentifier,
    /// The record's fields.
    pub fields: ReferralFields,
}

/// A referral as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Referral {
    /// The referral's id: its ServiceRequest's id.
    pub id: String,
    /// The GP system's identifier.
    pub identifier: BusinessIdentifier,
    /// Where the referral is in the workflow.
    pub stage: Stage,
    /// How it arrived.
    pub received_as: ReceivedAs,
    /// When Sprig received it.
    pub received_at: String,
    /// When the record last changed.
    pub updated_at: String,
    /// The Patient resource, when one was stored on its own.
    pub patient_id: Option<String>,
    /// The Task reporting its progress.
    pub task_id: String,
    /// Bumped on every change.
    pub version: i64,
    /// The link worker (staff username) it is assigned to; `None` while unassigned.
    pub assigned_to: Option<String>,
    /// What came from the GP.
    #[serde(flatten)]
    pub fields: ReferralFields,
}

/// One step of the referral's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageChange {
    /// The stage entered.
    pub stage: Stage,
    /// When.
    pub at: String,
    /// Who: the member of staff the service API was told (`by`), `service`
    /// when it was not told, or `gp` for the referrer's own changes.
    pub actor: String,
    /// Why (required for declines, withdrawals and unable-to-contact).
    pub reason: Option<String>,
    /// Free text.
    pub note: Option<String>,
    /// The Task version that reported it.
    pub task_version: i64,
}

/// Where a note came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NoteSource {
    /// The referring GP (`ServiceRequest.note`).
    Gp,
    /// The social prescribing service.
    Service,
}

impl NoteSource {
    /// The code stored in `referral_notes.source`.
    pub fn as_str(self) -> &'static str {
        match self {
            NoteSource::Gp => "gp",
            NoteSource::Service => "service",
        }
    }

    /// Reads a stored code.
    pub fn parse(code: &str) -> Option<Self> {
        [NoteSource::Gp, NoteSource::Service]
            .into_iter()
            .find(|s| s.as_str() == code)
    }
}

/// A note on the referral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    /// Where it came from.
    pub source: NoteSource,
    /// When it was written.
    pub at: String,
    /// Who wrote it, when known.
    pub author: Option<String>,
    /// The note.
    pub text: String,
}

/// A recorded outcome measure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The outcome's id, which is also its Observation's id.
    pub id: String,
    /// Which measure: its definition's code (`swemwbs`).
    pub measure: String,
    /// When the person answered.
    pub recorded_at: String,
    /// When it was entered.
    pub entered_at: String,
    /// Who entered it.
    pub actor: String,
    /// The item answers, in item order.
    pub answers: Vec<i64>,
    /// The sum of the answers, where the measure has a total (the definition scores it:
    /// the sum itself, or the mean).
    pub total: Option<i64>,
    /// The converted score (SWEMWBS's metric score), as exact decimal text.
    pub metric: Option<String>,
}

/// A referral with everything that happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReferralDetail {
    /// The record.
    #[serde(flatten)]
    pub referral: Referral,
    /// Every stage, oldest first.
    pub timeline: Vec<StageChange>,
    /// Notes, the GP's and the service's, oldest first.
    pub notes: Vec<Note>,
    /// Outcome measures, oldest first.
    pub outcomes: Vec<Outcome>,
}

/// What the outcomes and service reports need of one referral: the record's dates, stages
/// and measurements, nothing else (`store::Store::referral_facts`). Instants are parsed once,
/// when read (16 bytes each rather than a 24-byte `String` and its text): a quarterly report
/// holds these for every referral the service ever had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReferralFacts {
    /// The referral's id.
    pub id: String,
    /// The person's NHS number (a person counts once per metric).
    pub nhs_number: Option<String>,
    /// The referring practice's ODS code.
    pub practice: Option<String>,
    /// When Sprig received it.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// The first reason's code or text, for the service summary.
    pub reason: Option<String>,
    /// How many reasons the referral gives (a complexity rule may count them).
    pub reason_count: u32,
    /// The codes of its reasons that have one, in the GP's order (a complexity rule may
    /// name some).
    pub reason_codes: Vec<String>,
    /// Every stage it reached, in order, with the instant.
    pub stages: Vec<(Stage, OffsetDateTime)>,
    /// Its measurements, in recorded order.
    pub outcomes: Vec<OutcomeFact>,
    /// Its milestones, in the order they happened.
    pub milestones: Vec<MilestoneFact>,
}

/// One recorded milestone, for reports: what, the day, and (complexity) the flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MilestoneFact {
    /// What it records.
    pub kind: super::milestone::MilestoneKind,
    /// The day it happened.
    pub on: time::Date,
    /// Complexity: whether complex.
    pub complex: Option<bool>,
}

/// One recorded measurement, for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutcomeFact {
    /// The Observation's id.
    pub id: String,
    /// The measure's code.
    pub measure: String,
    /// When the answers were given.
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
    /// The sum of the answers, when the measure has a total (its definition scores it).
    pub total: Option<i64>,
}
