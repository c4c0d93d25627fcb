//! The referral workflow: opening a referral from the GP's FHIR, moving it
//! through its stages, recording outcome measures and notes, and taking the
//! GP's amendments and withdrawals.
//!
//! Every operation runs inside the caller's [`WriteTx`], so the FHIR
//! resources, the record and the outbox commit together.
//!
//! Architecture invariants:
//! - every Task and Observation Sprig produces is validated against its
//!   Sprig profile before it is stored; one that fails is a defect
//!   (`WorkflowError::Defect`), never sent;
//! - a stage changes only along `Stage::allowed_next`;
//! - each change that the referrer must hear of adds one outbox row, in order.

use std::sync::Arc;

use serde_json::Value;
use thiserror::Error;

use crate::fhir::resource::same_content;
use crate::fhir::{FhirId, Instant, Issue, IssueType, ResourceType, VersionId};
use crate::mapping::{
    InboundResources, Mappings, ObservationInput, PatientRef, ResourceBuildError, ServiceRef,
    TaskInput, TaskOutput,
};
use crate::outcomes::Catalogue;
use crate::outcomes::definition::{DefinedScoreError, MeasureDefinition};
use crate::referral::milestone::{self, Milestone, MilestoneInput, StageMilestone};
use crate::referral::record::{
    MappedReferral, NoteSource, Outcome, ReceivedAs, Referral, ReferralFields,
};
use crate::referral::stage::Stage;
use crate::store::referrals::{NewStageChange, OutboxMessage};
use crate::store::{ResourceWrite, StoreError, StoredResource, Updated, Visibility, WriteTx};
use crate::validation::{TASK_PROFILE, Target, Validator};

/// Who the actor is when the gateway itself acts for the GP.
pub const GP_ACTOR: &str = "gp";

/// Why a workflow step was refused.
#[derive(Debug, Error)]
pub enum WorkflowError {
    /// The GP's FHIR does not give what the record needs (422).
    #[error("the referral cannot be mapped")]
    Unmappable(Vec<Issue>),
    /// The request is well formed but not acceptable (422).
    #[error("{0}")]
    Invalid(String),
    /// No such referral (404).
    #[error("referral {0} does not exist")]
    NotFound(String),
    /// The stage cannot change that way (409).
    #[error(
        "a referral that is {} cannot become {}; from {} it can become: {}",
        .from.as_str(), .to.as_str(), .from.as_str(), allowed_list(*.from)
    )]
    IllegalTransition {
        /// The current stage.
        from: Stage,
        /// The stage asked for.
        to: Stage,
    },
    /// The referral's state does not allow the request (409).
    #[error("{0}")]
    Conflict(String),
    /// Outcome answers out of range or miscounted (422).
    #[error(transparent)]
    Score(#[from] DefinedScoreError),
    /// Sprig produced something its own profile rejects: a bug (500).
    #[error("defect: {0}")]
    Defect(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The social prescribing service, as Tasks and Observations name it.
#[derive(Debug, Clone)]
pub struct ServiceIdentity {
    /// Its name.
    pub name: String,
    /// Its ODS code, if any.
    pub ods_code: Option<String>,
}

/// The workflow: mappings, validator and service identity.
#[derive(Clone)]
pub struct Workflow {
    mappings: Arc<Mappings>,
    catalogue: Arc<Catalogue>,
    validator: Arc<Validator>,
    service: ServiceIdentity,
}

impl std::fmt::Debug for Workflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflow").finish_non_exhaustive()
    }
}

/// Where a new referral came from.
#[derive(Debug)]
pub struct Arrival<'a> {
    /// The stored ServiceRequest.
    pub service_request_id: &'a FhirId,
    /// The Patient, when stored as its own resource.
    pub patient_id: Option<&'a FhirId>,
    /// The shape it came in.
    pub received_as: ReceivedAs,
    /// The request.
    pub request_id: &'a str,
}

/// A new referral made ready to write ([`Workflow::prepare_open`]).
#[derive(Debug)]
pub struct Opening {
    /// The record, in stage `received`.
    referral: Referral,
    /// Its Task's id.
    task_id: FhirId,
    /// Its Task (version 1), checked against Sprig's Task profile.
    task: Value,
    /// When it was received.
    now: String,
}

impl Opening {
    /// The record as it will be written.
    pub fn referral(&self) -> &Referral {
        &self.referral
    }
}

/// A stage change asked for by the service.
#[derive(Debug)]
pub struct TransitionRequest<'a> {
    /// The stage to move to.
    pub to: Stage,
    /// Why (required where the outbound mapping says so).
    pub reason: Option<&'a str>,
    /// Free text for the timeline.
    pub note: Option<&'a str>,
    /// Who.
    pub actor: &'a str,
    /// The request.
    pub request_id: &'a str,
    /// The milestones the move records (`referral::milestone::for_stage`), in the same
    /// transaction: both are stored or neither. `None`: the move records none.
    pub milestone: Option<StageMilestone<'a>>,
}

/// An outcome measure entered by the service.
#[derive(Debug)]
pub struct OutcomeRequest<'a> {
    /// Which measure, by its definition.
    pub measure: &'a MeasureDefinition,
    /// The item answers, in item order.
    pub answers: &'a [i64],
    /// When the person answered (a FHIR dateTime).
    pub recorded_at: &'a str,
    /// Who entered it.
    pub actor: &'a str,
    /// The request.
    pub request_id: &'a str,
}

impl Workflow {
    /// A workflow using these mappings and validator.
    pub fn new(
        mappings: Arc<Mappings>,
        catalogue: Arc<Catalogue>,
        validator: Arc<Validator>,
        service: ServiceIdentity,
    ) -> Self {
        Self {
            mappings,
            catalogue,
            validator,
            service,
        }
    }

    /// Checks, before anything is served, that every measure's Observation is one Sprig can
    /// send: for each definition, the Observations of its lowest and of its highest answers
    /// are built and validated against the profile the definition names and against the
    /// definition's own rules. The first failure names the definition's file, line and
    /// column, the measure and what failed (a profile that Sprig does not hold, an item
    /// range the profile refuses, a coding its required binding does not allow…).
    pub fn check_measures(&self) -> Result<(), String> {
        let sample_referral = "measure-check";
        for definition in self.catalogue.iter() {
            let (file, (line, column)) = (&definition.file, definition.at);
            let fail = |what: String| {
                format!(
                    "{file}:{line}:{column}: measure '{}': {what}",
                    definition.code
                )
            };
            for answers in [
                definition.items.iter().map(|i| i.min).collect::<Vec<_>>(),
                definition.items.iter().map(|i| i.max).collect(),
            ] {
                let observation = self
                    .mappings
                    .outbound
                    .observation(&ObservationInput {
                        observation_id: sample_referral,
                        measure: definition,
                        answers: &answers,
                        referral_id: sample_referral,
                        patient: PatientRef::Id(sample_referral),
                        effective: "2026-01-01T00:00:00Z",
                        service: self.service_ref(),
                    })
                    .map_err(|e| fail(e.to_string()))?;
                let profile = &definition.observation.profile;
                if self.validator.profile_type(profile) != Some("Observation") {
                    return Err(fail(format!(
                        "observation.profile '{profile}' is not an Observation profile Sprig holds"
                    )));
                }
                self.check_own(ResourceType::OBSERVATION, profile, &observation)
                    .and_then(|()| check_against_definition(definition, &observation))
                    .map_err(|e| fail(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// The mappings in force.
    pub fn mappings(&self) -> &Mappings {
        &self.mappings
    }

    /// Maps the GP's FHIR to the record's fields (pure).
    pub fn map_inbound(
        &self,
        input: &InboundResources<'_>,
    ) -> Result<MappedReferral, WorkflowError> {
        let mapped = self
            .mappings
            .inbound
            .apply(input)
            .map_err(WorkflowError::Unmappable)?;
        // Every Task and Observation names the person (`Task.for` is 1..1):
        // whatever the mapping says is optional, a referral whose Patient
        // cannot be read from the submission cannot be worked on.
        if mapped.fields.patient.nhs_number.is_none() {
            let mut issue = Issue::error(
                IssueType::Required,
                "referral-patient-not-found",
                "The referral's Patient (with its NHS number) is not in the submission: contain it in the ServiceRequest, or send it in the same Bundle",
            );
            issue.expression = Some("ServiceRequest.subject".into());
            return Err(WorkflowError::Unmappable(vec![issue]));
        }
        Ok(mapped)
    }

    /// Opens a new referral: the record in stage `received`, its Task
    /// (version 1, `requested`), the timeline's first step, and an outbox row
    /// for the Task. The ServiceRequest is already stored in `tx`.
    pub async fn open(
        &self,
        tx: &mut WriteTx,
        mapped: MappedReferral,
        arrival: &Arrival<'_>,
    ) -> Result<Referral, WorkflowError> {
        let opening = self.prepare_open(mapped, arrival)?;
        self.write_opened(tx, opening, arrival.request_id).await
    }

    /// Everything [`Workflow::open`] writes that does not depend on the store: the
    /// record and its Task, built and checked against Sprig's Task profile. Done
    /// before the write transaction begins, so the single SQLite writer is not held
    /// while the Task is built and validated.
    pub fn prepare_open(
        &self,
        mapped: MappedReferral,
        arrival: &Arrival<'_>,
    ) -> Result<Opening, WorkflowError> {
        let now = Instant::now().to_fhir();
        let task_id = FhirId::generate();
        let referral = Referral {
            id: arrival.service_request_id.to_string(),
            identifier: mapped.identifier,
            stage: Stage::Received,
            received_as: arrival.received_as,
            received_at: now.clone(),
            updated_at: now.clone(),
            patient_id: arrival.patient_id.map(ToString::to_string),
            task_id: task_id.to_string(),
            version: 1,
            assigned_to: None,
            fields: mapped.fields,
        };
        let task = self.task(&referral, Stage::Received, None, &[], &now)?;
        Ok(Opening {
            referral,
            task_id,
            task,
            now,
        })
    }

    /// Writes a referral [`Workflow::prepare_open`] made ready: the record, its Task,
    /// the timeline's first step and the Task's outbox row. The ServiceRequest
    /// (`Arrival::service_request_id`) is already stored in `tx`.
    pub async fn write_opened(
        &self,
        tx: &mut WriteTx,
        opening: Opening,
        request_id: &str,
    ) -> Result<Referral, WorkflowError> {
        let Opening {
            referral,
            task_id,
            task,
            now,
        } = opening;
        tx.insert_referral(&referral).await?;
        let stored = tx
            .create(ResourceWrite {
                resource_type: ResourceType::TASK,
                id: &task_id,
                resource: task,
                received: None,
                request_id,
                owner: referral.fields.practice_ods_code.as_deref(),
            })
            .await?;
        tx.add_stage_change(&NewStageChange {
            referral_id: &referral.id,
            stage: Stage::Received,
            at: &now,
            actor: GP_ACTOR,
            reason: None,
            note: None,
            task_version: stored.version_id.get(),
        })
        .await?;
        self.enqueue(
            tx,
            &referral,
            ResourceType::TASK,
            &task_id,
            stored.version_id,
            &now,
        )
        .await?;
        Ok(referral)
    }

    /// Moves a referral to another stage: a new Task version, the record's
    /// stage, a timeline step and an outbox row.
    pub async fn transition(
        &self,
        tx: &mut WriteTx,
        referral_id: &str,
        request: &TransitionRequest<'_>,
    ) -> Result<Referral, WorkflowError> {
        let referral = tx
            .referral(referral_id)
            .await?
            .ok_or_else(|| WorkflowError::NotFound(referral_id.to_owned()))?;
        self.move_to(tx, referral, request).await
    }

    async fn move_to(
        &self,
        tx: &mut WriteTx,
        mut referral: Referral,
        request: &TransitionRequest<'_>,
    ) -> Result<Referral, WorkflowError> {
        if !referral.stage.can_move_to(request.to) {
            return Err(WorkflowError::IllegalTransition {
                from: referral.stage,
                to: request.to,
            });
        }
        let reason = request.reason.map(str::trim).filter(|r| !r.is_empty());
        if reason.is_none()
            && self
                .mappings
                .outbound
                .stage(request.to)
                .status_reason_required
        {
            return Err(WorkflowError::Invalid(format!(
                "moving a referral to '{}' needs a reason: the GP is told why",
                request.to.as_str()
            )));
        }
        // The milestones first: a wrong one refuses the move before anything is written.
        let milestones = match &request.milestone {
            Some(given) => {
                let today = crate::outcomes::schedule::uk_date(time::OffsetDateTime::now_utc());
                let received = received_day(&referral)?;
                let inputs = milestone::for_move(referral.stage, request.to, given)
                    .map_err(|e| WorkflowError::Invalid(e.to_string()))?;
                inputs
                    .iter()
                    .map(|input| {
                        milestone::check(input, received, today)
                            .map_err(|e| WorkflowError::Invalid(e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => Vec::new(),
        };
        let now = Instant::now().to_fhir();
        for checked in milestones {
            let recorded = recorded_milestone(checked, request.actor, &now);
            tx.add_milestone(&referral.id, &recorded).await?;
        }
        let outputs = tx.outcome_ids(&referral.id).await?;
        let task_version = self
            .write_task(
                tx,
                &referral,
                request.to,
                reason,
                &outputs,
                &now,
                request.request_id,
            )
            .await?;
        tx.set_stage(&referral.id, request.to, &now).await?;
        tx.add_stage_change(&NewStageChange {
            referral_id: &referral.id,
            stage: request.to,
            at: &now,
            actor: request.actor,
            reason,
            note: request.note,
            task_version: task_version.get(),
        })
        .await?;
        referral.stage = request.to;
        referral.updated_at = now;
        referral.version += 1;
        Ok(referral)
    }

    /// Records an outcome measure: scored, stored as an Observation, listed
    /// in a new Task version's `output`, both queued for the referrer.
    pub async fn record_outcome(
        &self,
        tx: &mut WriteTx,
        referral_id: &str,
        request: &OutcomeRequest<'_>,
    ) -> Result<Outcome, WorkflowError> {
        let referral = tx
            .referral(referral_id)
            .await?
            .ok_or_else(|| WorkflowError::NotFound(referral_id.to_owned()))?;
        if !accepts_outcomes(referral.stage) {
            return Err(WorkflowError::Conflict(format!(
                "outcome measures are recorded once the person has been contacted; this referral is {}",
                referral.stage.as_str()
            )));
        }
        let definition = request.measure;
        let score = definition.score(request.answers)?;
        let now = Instant::now().to_fhir();
        let observation_id = FhirId::generate();
        let observation = self.mappings.outbound.observation(&ObservationInput {
            observation_id: observation_id.as_str(),
            measure: definition,
            answers: request.answers,
            referral_id: &referral.id,
            patient: patient_ref(&referral)?,
            effective: request.recorded_at,
            service: self.service_ref(),
        })?;
        self.check_own(
            ResourceType::OBSERVATION,
            &definition.observation.profile,
            &observation,
        )?;
        check_against_definition(definition, &observation)?;
        let stored = tx
            .create(ResourceWrite {
                resource_type: ResourceType::OBSERVATION,
                id: &observation_id,
                resource: observation,
                received: None,
                request_id: request.request_id,
                owner: referral.fields.practice_ods_code.as_deref(),
            })
            .await?;
        let outcome = Outcome {
            id: observation_id.to_string(),
            measure: definition.code.clone(),
            // In UTC, so the record sorts outcomes by when they were taken
            // (the Observation keeps the time as given, with its offset).
            recorded_at: Instant::parse(request.recorded_at)
                .map_or_else(|_| request.recorded_at.to_owned(), Instant::to_fhir),
            entered_at: now.clone(),
            actor: request.actor.to_owned(),
            answers: request.answers.to_vec(),
            total: score.total.is_some().then(|| request.answers.iter().sum()),
            metric: score.converted.map(|m| m.to_string()),
        };
        tx.add_outcome(&referral.id, &outcome).await?;
        self.enqueue(
            tx,
            &referral,
            ResourceType::OBSERVATION,
            &observation_id,
            stored.version_id,
            &now,
        )
        .await?;
        // The Task lists every outcome, so the referrer sees the new one.
        let outputs = tx.outcome_ids(&referral.id).await?;
        let reason = tx.current_reason(&referral.id).await?;
        self.write_task(
            tx,
            &referral,
            referral.stage,
            reason.as_deref(),
            &outputs,
            &now,
            request.request_id,
        )
        .await?;
        tx.touch_referral(&referral.id, &now).await?;
        Ok(outcome)
    }

    /// Adds a note from the service.
    pub async fn add_note(
        &self,
        tx: &mut WriteTx,
        referral_id: &str,
        author: &str,
        text: &str,
    ) -> Result<(), WorkflowError> {
        if tx.referral(referral_id).await?.is_none() {
            return Err(WorkflowError::NotFound(referral_id.to_owned()));
        }
        let text = text.trim();
        if text.is_empty() {
            return Err(WorkflowError::Invalid("a note needs some text".into()));
        }
        let now = Instant::now().to_fhir();
        tx.add_note(referral_id, NoteSource::Service, Some(author), text, &now)
            .await?;
        tx.touch_referral(referral_id, &now).await?;
        Ok(())
    }

    /// Records a milestone (`referral::milestone`) by `actor`, checked against the
    /// referral's received day and `today` (UK dates). The stage does not move and the GP
    /// is not told: a milestone is the service's evidence for its contract.
    pub async fn record_milestone(
        &self,
        tx: &mut WriteTx,
        referral_id: &str,
        actor: &str,
        input: &MilestoneInput<'_>,
        today: time::Date,
    ) -> Result<Milestone, WorkflowError> {
        let referral = tx
            .referral(referral_id)
            .await?
            .ok_or_else(|| WorkflowError::NotFound(referral_id.to_owned()))?;
        let received = received_day(&referral)?;
        let checked = milestone::check(input, received, today)
            .map_err(|e| WorkflowError::Invalid(e.to_string()))?;
        let now = Instant::now().to_fhir();
        let recorded = recorded_milestone(checked, actor, &now);
        tx.add_milestone(referral_id, &recorded).await?;
        tx.touch_referral(referral_id, &now).await?;
        Ok(recorded)
    }

    /// Assigns a referral to a link worker (`Some(username)`, whom the caller checked is
    /// one) or unassigns it (`None`), leaving a service note saying so by `actor`. The GP
    /// is not told: assignment is the service's own business, so no Task version.
    pub async fn assign(
        &self,
        tx: &mut WriteTx,
        referral_id: &str,
        assignee: Option<&str>,
        actor: &str,
    ) -> Result<Referral, WorkflowError> {
        let referral = tx
            .referral(referral_id)
            .await?
            .ok_or_else(|| WorkflowError::NotFound(referral_id.to_owned()))?;
        if !referral.stage.is_open() {
            return Err(WorkflowError::Conflict(format!(
                "the referral is {} and can no longer be assigned",
                referral.stage.as_str()
            )));
        }
        let now = Instant::now().to_fhir();
        tx.set_assignee(referral_id, assignee, &now).await?;
        let text = match assignee {
            Some(who) => format!("Assigned to {who}"),
            None => "Unassigned".to_owned(),
        };
        tx.add_note(referral_id, NoteSource::Service, Some(actor), &text, &now)
            .await?;
        Ok(Referral {
            assigned_to: assignee.map(str::to_owned),
            updated_at: now,
            version: referral.version + 1,
            ..referral
        })
    }

    /// Whether `received`, sent with an identifier Sprig already holds, is a resubmission of
    /// `held`: the same referral from the same practice about the same patient. Anything else
    /// is a conflict whose message reveals nothing of what is held (not the patient, not the
    /// practice, not the referral's id), as the identifier may have been guessed.
    pub fn check_resubmission(
        held: &Referral,
        received: &ReferralFields,
    ) -> Result<(), WorkflowError> {
        let same_patient = held.fields.patient.nhs_number == received.patient.nhs_number;
        let same_practice = held.fields.practice_ods_code == received.practice_ods_code;
        if same_patient && same_practice {
            Ok(())
        } else {
            Err(WorkflowError::Conflict(
                "a different referral with this identifier has already been received: give each referral its own identifier"
                    .into(),
            ))
        }
    }

    /// Takes the GP's new version of the referral: a withdrawal when its
    /// status is `revoked` (or `entered-in-error`), otherwise an amendment
    /// of the record's fields. The ServiceRequest version is already in `tx`.
    pub async fn amend(
        &self,
        tx: &mut WriteTx,
        referral: Referral,
        mapped: MappedReferral,
        request_id: &str,
    ) -> Result<Referral, WorkflowError> {
        if mapped.identifier != referral.identifier {
            return Err(WorkflowError::Invalid(
                "the referral's identifier cannot change: send a new referral instead".into(),
            ));
        }
        if mapped.fields.patient.nhs_number != referral.fields.patient.nhs_number {
            return Err(WorkflowError::Invalid(
                "the patient's NHS number cannot change: withdraw this referral and send a new one"
                    .into(),
            ));
        }
        // The practice decides where every later update (with the patient's NHS number) is
        // delivered and who may read the referral: an amendment must never move it.
        if mapped.fields.practice_ods_code != referral.fields.practice_ods_code {
            return Err(WorkflowError::Invalid(
                "the referring practice cannot change: withdraw this referral and have the other practice send its own"
                    .into(),
            ));
        }
        let withdrawing = matches!(
            mapped.fields.fhir_status.as_str(),
            "revoked" | "entered-in-error"
        );
        if !withdrawing && mapped.fields.fhir_status != "active" {
            return Err(WorkflowError::Invalid(format!(
                "a referrer may set a referral's status to 'revoked' (withdraw it) or keep it 'active'; '{}' is the service's to set",
                mapped.fields.fhir_status
            )));
        }
        if !referral.stage.is_open() {
            return Err(WorkflowError::Conflict(format!(
                "the referral is {} and can no longer be changed",
                referral.stage.as_str()
            )));
        }
        let now = Instant::now().to_fhir();
        tx.update_referral_fields(&referral.id, &mapped.fields, &now)
            .await?;
        let mut referral = Referral {
            fields: mapped.fields,
            updated_at: now,
            version: referral.version + 1,
            ..referral
        };
        if withdrawing {
            referral = self
                .move_to(
                    tx,
                    referral,
                    &TransitionRequest {
                        to: Stage::Withdrawn,
                        reason: Some("Withdrawn by the referrer"),
                        note: None,
                        actor: GP_ACTOR,
                        request_id,
                        milestone: None,
                    },
                )
                .await?;
        }
        Ok(referral)
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_task(
        &self,
        tx: &mut WriteTx,
        referral: &Referral,
        stage: Stage,
        reason: Option<&str>,
        outputs: &[(String, String)],
        now: &str,
        request_id: &str,
    ) -> Result<VersionId, WorkflowError> {
        let task_id = task_id_of(referral)?;
        // Sprig's own work on the referral: every resource is its to read.
        let Some(current) = tx
            .read_current(ResourceType::TASK, &task_id, &Visibility::All)
            .await?
        else {
            return Err(WorkflowError::Defect(format!(
                "referral {} has no Task",
                referral.id
            )));
        };
        let task = self.task(referral, stage, reason, outputs, now)?;
        if same_task(current.stored(), &task) {
            // Nothing the referrer would see has changed: no version, nothing queued.
            return Ok(current.stored().version_id);
        }
        // The version read above, expected: a transaction that changed the Task (and so
        // the referral) since is a conflict, not overwritten.
        let stored = match tx
            .update_current(
                ResourceWrite {
                    resource_type: ResourceType::TASK,
                    id: &task_id,
                    resource: task,
                    received: None,
                    request_id,
                    owner: referral.fields.practice_ods_code.as_deref(),
                },
                current,
            )
            .await?
        {
            Updated::Written(stored) => stored,
            Updated::Unchanged(current) => return Ok(current.version_id),
        };
        // Every Task version travels to the referrer, in order.
        self.enqueue(
            tx,
            referral,
            ResourceType::TASK,
            &task_id,
            stored.version_id,
            now,
        )
        .await?;
        Ok(stored.version_id)
    }

    fn task(
        &self,
        referral: &Referral,
        stage: Stage,
        reason: Option<&str>,
        outputs: &[(String, String)],
        now: &str,
    ) -> Result<Value, WorkflowError> {
        let outputs: Vec<TaskOutput<'_>> = outputs
            .iter()
            .map(|(measure, id)| {
                // Every folder of measures defines the required ones, and a definition
                // cannot be removed while the record holds its outcomes without this
                // being a configuration defect.
                let measure = self.catalogue.get(measure).ok_or_else(|| {
                    WorkflowError::Defect(format!(
                        "outcome {id} is of measure '{measure}', which no loaded definition defines"
                    ))
                })?;
                Ok(TaskOutput {
                    measure,
                    observation_id: id,
                })
            })
            .collect::<Result<_, WorkflowError>>()?;
        let task = self.mappings.outbound.task(&TaskInput {
            task_id: &referral.task_id,
            stage,
            reason,
            referral_id: &referral.id,
            patient: patient_ref(referral)?,
            practice_ods_code: referral.fields.practice_ods_code.as_deref(),
            service: self.service_ref(),
            authored_on: &referral.received_at,
            last_modified: now,
            note: None,
            outputs: &outputs,
        })?;
        self.check_own(ResourceType::TASK, TASK_PROFILE, &task)?;
        Ok(task)
    }

    fn service_ref(&self) -> ServiceRef<'_> {
        ServiceRef {
            name: &self.service.name,
            ods_code: self.service.ods_code.as_deref(),
        }
    }

    /// A resource Sprig made must meet its own profile.
    fn check_own(
        &self,
        resource_type: ResourceType,
        profile: &str,
        resource: &Value,
    ) -> Result<(), WorkflowError> {
        let profiles = [profile.to_owned()];
        let issues = self.validator.validate(
            &Target {
                resource_type,
                profiles: &profiles,
            },
            resource,
        );
        // A defect is logged, and validation messages may quote the resource
        // (an NHS number, a name): name each failure by its id and place only.
        let errors: Vec<String> = issues
            .iter()
            .filter(|i| i.severity.is_error())
            .map(|i| match &i.expression {
                Some(at) => format!("{} at {at}", i.message_id),
                None => i.message_id.to_owned(),
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(WorkflowError::Defect(format!(
                "a {resource_type} Sprig made fails {profile}: {}",
                errors.join("; ")
            )))
        }
    }

    async fn enqueue(
        &self,
        tx: &mut WriteTx,
        referral: &Referral,
        resource_type: ResourceType,
        id: &FhirId,
        version: VersionId,
        now: &str,
    ) -> Result<(), WorkflowError> {
        tx.enqueue(&OutboxMessage {
            referral_id: &referral.id,
            resource_type: resource_type.as_str(),
            resource_id: id.as_str(),
            version_id: version.get(),
            destination_ods: referral.fields.practice_ods_code.as_deref(),
            reply_to: referral.fields.reply_to.as_deref(),
            created_at: now,
        })
        .await?;
        Ok(())
    }
}

/// Whether the Task built for a change says what the stored one says, its `lastModified`
/// aside: Sprig sets that to the time of every change, so on its own it tells the
/// referrer nothing, and a version carrying only it would be a phantom change in their
/// pull and a delivery for nothing. (With the shipped mapping every stage has its own
/// business status, so a move always changes the Task; a service's mapping may report
/// two stages alike.)
fn same_task(stored: &StoredResource, task: &Value) -> bool {
    let without_modified = |value: &Value| {
        let mut value = value.clone();
        if let Some(fields) = value.as_object_mut() {
            fields.shift_remove("lastModified");
        }
        value
    };
    serde_json::from_str::<Value>(&stored.json)
        .is_ok_and(|held| same_content(&without_modified(&held), &without_modified(task)))
}

/// The stages a referral in `stage` can move to, for messages.
pub fn allowed_list(stage: Stage) -> String {
    let next = stage.allowed_next();
    if next.is_empty() {
        "nothing (it is closed)".to_owned()
    } else {
        next.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The definition's own rules on an Observation built from it (on top of its profile).
fn check_against_definition(
    definition: &MeasureDefinition,
    observation: &Value,
) -> Result<(), WorkflowError> {
    let issues = definition.observation_issues(observation);
    if issues.is_empty() {
        Ok(())
    } else {
        Err(WorkflowError::Defect(format!(
            "breaks the rules of measure '{}': {}",
            definition.code,
            issues.join("; ")
        )))
    }
}

/// Outcome measures are taken once the person has been reached.
fn accepts_outcomes(stage: Stage) -> bool {
    matches!(
        stage,
        Stage::Contacted
            | Stage::AssessmentDone
            | Stage::PlanAgreed
            | Stage::InSupport
            | Stage::Completed
    )
}

fn task_id_of(referral: &Referral) -> Result<FhirId, WorkflowError> {
    FhirId::parse(&referral.task_id)
        .map_err(|e| WorkflowError::Defect(format!("stored task id: {e}")))
}

/// The Patient resource when Sprig holds one, else the NHS number (the
/// profile requires one, so a referral without either is a defect).
fn patient_ref(referral: &Referral) -> Result<PatientRef<'_>, WorkflowError> {
    match (&referral.patient_id, &referral.fields.patient.nhs_number) {
        (Some(id), _) => Ok(PatientRef::Id(id)),
        (None, Some(nhs_number)) => Ok(PatientRef::NhsNumber(nhs_number)),
        (None, None) => Err(WorkflowError::Defect(format!(
            "referral {} has neither a Patient nor an NHS number",
            referral.id
        ))),
    }
}

impl From<ResourceBuildError> for WorkflowError {
    fn from(error: ResourceBuildError) -> Self {
        match error {
            ResourceBuildError::ReasonRequired { .. } => WorkflowError::Invalid(error.to_string()),
            ResourceBuildError::Score(error) => WorkflowError::Score(error),
        }
    }
}

/// The UK day a referral was received (milestones are dated between it and today).
fn received_day(referral: &Referral) -> Result<time::Date, WorkflowError> {
    time::OffsetDateTime::parse(
        &referral.received_at,
        &time::format_description::well_known::Rfc3339,
    )
    .map(crate::outcomes::schedule::uk_date)
    .map_err(|_| WorkflowError::Invalid("the referral's received time is unreadable".into()))
}

/// A checked milestone as recorded by `actor` at `now`.
fn recorded_milestone(checked: milestone::CheckedMilestone, actor: &str, now: &str) -> Milestone {
    let (kind, on, complex, basis, reason) = checked;
    Milestone {
        id: FhirId::generate().to_string(),
        kind,
        on,
        complex,
        basis,
        reason,
        recorded_at: now.to_owned(),
        recorded_by: actor.to_owned(),
    }
}
