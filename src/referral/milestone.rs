//! Milestones an outcomes contract pays on, recorded as structured events beside the
//! stage (`referral_milestones`, migration 0013): initial assessment done, action plan
//! agreed (dated the day the plan was agreed), complexity assessed (a flag with its basis),
//! discharge (with a coded reason).
//!
//! Why not the stage: a stage is where the referral is now, reported to the GP in the
//! Task; a milestone is evidence with its own date, which may be recorded later than it
//! happened and must survive the ex-post verification outcomes contracts use. So a
//! transition does not record a milestone (it has no plan date, basis or reason to give)
//! and a milestone does not move the stage; the report counts on milestones, and a
//! referral moved on without its evidence shows as "due but missing".

use serde::Serialize;
use time::Date;

use super::stage::Stage;

/// What a milestone records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MilestoneKind {
    /// `initial-assessment`: the first "what matters to you" conversation happened.
    InitialAssessment,
    /// `action-plan`: a personalised action plan was agreed, on `on`.
    ActionPlan,
    /// `complexity`: needs assessed as complex or not (`complex`), with the `basis`.
    Complexity,
    /// `discharge`: support ended, for a coded `reason`.
    Discharge,
}

impl MilestoneError {
    /// The input field at fault: `kind`, `on`, `complex`, `basis` or `reason`.
    pub fn field(&self) -> &'static str {
        match self {
            MilestoneError::UnknownKind(_) => "kind",
            MilestoneError::Fields(field, _) => field,
            MilestoneError::Date(_) => "on",
        }
    }
}

impl MilestoneKind {
    /// Every kind.
    pub const ALL: [MilestoneKind; 4] = [
        MilestoneKind::InitialAssessment,
        MilestoneKind::ActionPlan,
        MilestoneKind::Complexity,
        MilestoneKind::Discharge,
    ];

    /// The code stored and served.
    pub fn as_str(self) -> &'static str {
        match self {
            MilestoneKind::InitialAssessment => "initial-assessment",
            MilestoneKind::ActionPlan => "action-plan",
            MilestoneKind::Complexity => "complexity",
            MilestoneKind::Discharge => "discharge",
        }
    }

    /// The kind with this code.
    pub fn parse(code: &str) -> Option<MilestoneKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == code)
    }

    /// What a person reads.
    pub fn label(self) -> &'static str {
        match self {
            MilestoneKind::InitialAssessment => "Initial assessment done",
            MilestoneKind::ActionPlan => "Action plan agreed",
            MilestoneKind::Complexity => "Complexity assessed",
            MilestoneKind::Discharge => "Discharged",
        }
    }
}

/// The reasons a discharge may give (codes, so reports can count them).
pub const DISCHARGE_REASONS: [(&str, &str); 6] = [
    ("goals-met", "Goals met"),
    ("stopped-engaging", "Stopped engaging"),
    ("referred-on", "Referred to another service"),
    ("moved-away", "Moved away"),
    ("declined-further-support", "Declined further support"),
    ("other", "Other"),
];

/// The longest complexity basis accepted, in characters.
pub const MAX_BASIS_CHARS: usize = 500;

/// A milestone as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Milestone {
    /// Its id.
    pub id: String,
    /// What it records.
    pub kind: MilestoneKind,
    /// The day it happened (for an action plan: the day the plan was agreed).
    pub on: Date,
    /// Complexity only: whether the person's needs are complex.
    pub complex: Option<bool>,
    /// Complexity only: why (what was assessed).
    pub basis: Option<String>,
    /// Discharge only: a code of [`DISCHARGE_REASONS`].
    pub reason: Option<String>,
    /// When it was recorded (FHIR instant).
    pub recorded_at: String,
    /// Who recorded it.
    pub recorded_by: String,
}

/// Why a milestone cannot be recorded as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MilestoneError {
    /// The kind is not one of the four.
    #[error(
        "'{0}' is not a milestone; the milestones are initial-assessment, action-plan, complexity, discharge"
    )]
    UnknownKind(String),
    /// A field this kind needs is absent, or one it does not take is present: the field's
    /// name and what is wrong.
    #[error("{1}")]
    Fields(&'static str, String),
    /// The day is after today or before the referral arrived.
    #[error("{0}")]
    Date(String),
}

/// What the caller gives to record a milestone.
#[derive(Debug, Clone, Default)]
pub struct MilestoneInput<'a> {
    /// The kind's code.
    pub kind: &'a str,
    /// The day.
    pub on: Option<Date>,
    /// Complexity: the flag.
    pub complex: Option<bool>,
    /// Complexity: the basis.
    pub basis: Option<&'a str>,
    /// Discharge: the reason's code.
    pub reason: Option<&'a str>,
}

/// The checked parts of a milestone: kind, day, flag, basis, reason.
pub type CheckedMilestone = (
    MilestoneKind,
    Date,
    Option<bool>,
    Option<String>,
    Option<String>,
);

/// Checks `input` for a referral received on `received` as of `today`: each kind takes
/// exactly its own fields.
pub fn check(
    input: &MilestoneInput<'_>,
    received: Date,
    today: Date,
) -> Result<CheckedMilestone, MilestoneError> {
    let kind = MilestoneKind::parse(input.kind)
        .ok_or_else(|| MilestoneError::UnknownKind(input.kind.to_owned()))?;
    let on = input.on.ok_or_else(|| {
        MilestoneError::Fields("on", "a milestone needs `on`, the day it happened".into())
    })?;
    if on > today {
        return Err(MilestoneError::Date(format!(
            "on ({on}) is after today ({today}): a milestone is recorded once it has happened"
        )));
    }
    if on < received {
        return Err(MilestoneError::Date(format!(
            "on ({on}) is before the referral was received ({received})"
        )));
    }
    let basis = input.basis.map(str::trim).filter(|b| !b.is_empty());
    let reason = input.reason.map(str::trim).filter(|r| !r.is_empty());
    let refuse = |field: &'static str| {
        Err(MilestoneError::Fields(
            field,
            format!("a {} milestone does not take `{field}`", kind.as_str()),
        ))
    };
    match kind {
        MilestoneKind::Complexity => {
            if reason.is_some() {
                return refuse("reason");
            }
            let complex = input.complex.ok_or_else(|| {
                MilestoneError::Fields(
                    "complex",
                    "a complexity milestone needs `complex` (true or false)".into(),
                )
            })?;
            let basis = basis.ok_or_else(|| {
                MilestoneError::Fields(
                    "basis",
                    "a complexity milestone needs `basis`: what the assessment found".into(),
                )
            })?;
            if basis.chars().count() > MAX_BASIS_CHARS {
                return Err(MilestoneError::Fields(
                    "basis",
                    format!("basis is longer than {MAX_BASIS_CHARS} characters"),
                ));
            }
            Ok((kind, on, Some(complex), Some(basis.to_owned()), None))
        }
        MilestoneKind::Discharge => {
            if input.complex.is_some() {
                return refuse("complex");
            }
            if basis.is_some() {
                return refuse("basis");
            }
            let reason = reason.ok_or_else(|| {
                MilestoneError::Fields(
                    "reason",
                    format!(
                        "a discharge milestone needs `reason`, one of {}",
                        reason_codes()
                    ),
                )
            })?;
            if !DISCHARGE_REASONS.iter().any(|(code, _)| *code == reason) {
                return Err(MilestoneError::Fields(
                    "reason",
                    format!(
                        "'{reason}' is not a discharge reason; the reasons are {}",
                        reason_codes()
                    ),
                ));
            }
            Ok((kind, on, None, None, Some(reason.to_owned())))
        }
        MilestoneKind::InitialAssessment | MilestoneKind::ActionPlan => {
            if input.complex.is_some() {
                return refuse("complex");
            }
            if basis.is_some() {
                return refuse("basis");
            }
            if reason.is_some() {
                return refuse("reason");
            }
            Ok((kind, on, None, None, None))
        }
    }
}

/// The milestone fields a stage change may carry (`milestone` on `POST
/// /api/referrals/{id}/transitions`, the same fields on the console's stage form), so the
/// move and its evidence are recorded together, in one transaction.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageMilestone<'a> {
    /// The day it happened (for `plan-agreed`, the day the plan was agreed).
    pub on: Option<Date>,
    /// A complexity assessment made at the same time: complex or not.
    pub complex: Option<bool>,
    /// The complexity assessment's basis.
    pub basis: Option<&'a str>,
    /// `completed` or `withdrawn`: the discharge reason's code.
    pub discharge_reason: Option<&'a str>,
}

/// Which milestones a move to a stage records, and which it may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageMilestones {
    /// Recorded with every such move (when milestone fields are given).
    pub records: &'static [MilestoneKind],
    /// Whether a complexity assessment may be recorded with it.
    pub takes_complexity: bool,
}

impl StageMilestones {
    /// Whether a move to this stage records or may carry any milestone.
    pub fn any(self) -> bool {
        !self.records.is_empty() || self.takes_complexity
    }

    /// Whether a move to this stage records a discharge (so needs its reason).
    pub fn discharges(self) -> bool {
        self.records.contains(&MilestoneKind::Discharge)
    }
}

/// What a move to `to` records: `assessment-done` the initial assessment; `plan-agreed`
/// the action plan ([`for_move`] adds the initial assessment when it comes straight from
/// `contacted`); `completed` and `withdrawn` a discharge; a complexity assessment may go
/// with any of the first two and with `in-support`.
pub fn stage_milestones(to: Stage) -> StageMilestones {
    use MilestoneKind::{ActionPlan, Discharge, InitialAssessment};
    let (records, takes_complexity): (&'static [MilestoneKind], bool) = match to {
        Stage::AssessmentDone => (&[InitialAssessment], true),
        Stage::PlanAgreed => (&[ActionPlan], true),
        Stage::InSupport => (&[], true),
        Stage::Completed | Stage::Withdrawn => (&[Discharge], false),
        _ => (&[], false),
    };
    StageMilestones {
        records,
        takes_complexity,
    }
}

/// [`for_stage`], for a move from `from`: a plan agreed straight from `contacted` was
/// agreed in the first conversation, which was the initial assessment too.
pub fn for_move<'a>(
    from: Stage,
    to: Stage,
    given: &StageMilestone<'a>,
) -> Result<Vec<MilestoneInput<'a>>, MilestoneError> {
    let mut inputs = for_stage(to, given)?;
    if from == Stage::Contacted && to == Stage::PlanAgreed {
        inputs.insert(
            0,
            MilestoneInput {
                kind: MilestoneKind::InitialAssessment.as_str(),
                on: given.on,
                ..MilestoneInput::default()
            },
        );
    }
    Ok(inputs)
}

/// The milestones a move to `to` with `given` records, each still to be checked against
/// the referral's days ([`check`]). The field names in errors are those of the API's
/// `milestone` object: `on`, `complex`, `basis`, `discharge_reason`.
pub fn for_stage<'a>(
    to: Stage,
    given: &StageMilestone<'a>,
) -> Result<Vec<MilestoneInput<'a>>, MilestoneError> {
    let takes = stage_milestones(to);
    if !takes.any() {
        return Err(MilestoneError::Fields(
            "milestone",
            format!(
                "a move to {} records no milestone; milestones go with assessment-done, \
                 plan-agreed, in-support (complexity), completed and withdrawn (discharge)",
                to.as_str()
            ),
        ));
    }
    let reason = given
        .discharge_reason
        .map(str::trim)
        .filter(|r| !r.is_empty());
    let basis = given.basis.map(str::trim).filter(|b| !b.is_empty());
    if !takes.discharges() && reason.is_some() {
        return Err(MilestoneError::Fields(
            "discharge_reason",
            format!("a move to {} takes no `discharge_reason`", to.as_str()),
        ));
    }
    if !takes.takes_complexity && (given.complex.is_some() || basis.is_some()) {
        let field = if given.complex.is_some() {
            "complex"
        } else {
            "basis"
        };
        return Err(MilestoneError::Fields(
            field,
            format!(
                "a move to {} takes no complexity assessment (`{field}`)",
                to.as_str()
            ),
        ));
    }
    if basis.is_some() && given.complex.is_none() {
        return Err(MilestoneError::Fields(
            "complex",
            "a complexity assessment needs `complex` (true or false) with its `basis`".into(),
        ));
    }
    if takes.records.is_empty() && given.complex.is_none() {
        return Err(MilestoneError::Fields(
            "complex",
            format!(
                "a move to {} records only a complexity assessment: give `complex` and `basis`",
                to.as_str()
            ),
        ));
    }
    if takes.discharges() && reason.is_none() {
        return Err(MilestoneError::Fields(
            "discharge_reason",
            format!(
                "a move to {} records a discharge: give `discharge_reason`, one of {}",
                to.as_str(),
                reason_codes()
            ),
        ));
    }
    let on = given.on;
    let mut out: Vec<MilestoneInput<'a>> = takes
        .records
        .iter()
        .map(|kind| MilestoneInput {
            kind: kind.as_str(),
            on,
            complex: None,
            basis: None,
            reason: if *kind == MilestoneKind::Discharge {
                reason
            } else {
                None
            },
        })
        .collect();
    if let Some(complex) = given.complex {
        out.push(MilestoneInput {
            kind: MilestoneKind::Complexity.as_str(),
            on,
            complex: Some(complex),
            basis,
            reason: None,
        });
    }
    Ok(out)
}

fn reason_codes() -> String {
    DISCHARGE_REASONS
        .iter()
        .map(|(code, _)| *code)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    fn input(kind: &str) -> MilestoneInput<'_> {
        MilestoneInput {
            kind,
            on: Some(date!(2026 - 03 - 02)),
            ..MilestoneInput::default()
        }
    }

    #[test]
    fn each_kind_takes_exactly_its_own_fields() {
        let received = date!(2026 - 03 - 01);
        let today = date!(2026 - 03 - 10);
        assert!(check(&input("action-plan"), received, today).is_ok());
        let mut complexity = input("complexity");
        assert!(check(&complexity, received, today).is_err(), "no flag");
        complexity.complex = Some(true);
        assert!(check(&complexity, received, today).is_err(), "no basis");
        complexity.basis = Some("three long-term conditions and housing");
        assert_eq!(
            check(&complexity, received, today).map(|c| c.2),
            Ok(Some(true))
        );
        complexity.reason = Some("goals-met");
        assert!(check(&complexity, received, today).is_err(), "no reason");
        let mut discharge = input("discharge");
        assert!(check(&discharge, received, today).is_err(), "needs reason");
        discharge.reason = Some("bored");
        assert!(
            check(&discharge, received, today).is_err(),
            "unknown reason"
        );
        discharge.reason = Some("goals-met");
        assert!(check(&discharge, received, today).is_ok());
        let mut plan = input("action-plan");
        plan.complex = Some(false);
        assert!(check(&plan, received, today).is_err());
        assert!(matches!(
            check(&input("plan"), received, today),
            Err(MilestoneError::UnknownKind(_))
        ));
    }

    #[test]
    fn a_stage_change_records_its_own_milestones() {
        let on = Some(date!(2026 - 03 - 02));
        let given = StageMilestone {
            on,
            ..StageMilestone::default()
        };
        let kinds = |from, to, given: &StageMilestone<'_>| {
            for_move(from, to, given)
                .map(|list| list.iter().map(|m| m.kind).collect::<Vec<_>>().join(","))
        };
        assert_eq!(
            kinds(Stage::Contacted, Stage::AssessmentDone, &given),
            Ok("initial-assessment".to_owned())
        );
        assert_eq!(
            kinds(Stage::Contacted, Stage::PlanAgreed, &given),
            Ok("initial-assessment,action-plan".to_owned())
        );
        assert_eq!(
            kinds(Stage::AssessmentDone, Stage::PlanAgreed, &given),
            Ok("action-plan".to_owned())
        );
        // A discharge needs its reason; a plan takes none.
        assert!(kinds(Stage::InSupport, Stage::Completed, &given).is_err());
        let discharge = StageMilestone {
            discharge_reason: Some("goals-met"),
            ..given
        };
        assert_eq!(
            kinds(Stage::InSupport, Stage::Completed, &discharge),
            Ok("discharge".to_owned())
        );
        assert!(kinds(Stage::AssessmentDone, Stage::PlanAgreed, &discharge).is_err());
        // Complexity with the assessment; in-support takes only that; accepted nothing.
        let complex = StageMilestone {
            complex: Some(true),
            basis: Some("housing and three long-term conditions"),
            ..given
        };
        assert_eq!(
            kinds(Stage::Contacted, Stage::AssessmentDone, &complex),
            Ok("initial-assessment,complexity".to_owned())
        );
        assert_eq!(
            kinds(Stage::PlanAgreed, Stage::InSupport, &complex),
            Ok("complexity".to_owned())
        );
        assert!(kinds(Stage::PlanAgreed, Stage::InSupport, &given).is_err());
        assert!(kinds(Stage::Received, Stage::Accepted, &given).is_err());
        assert!(kinds(Stage::InSupport, Stage::Completed, &complex).is_err());
        let basis_alone = StageMilestone {
            basis: Some("housing"),
            ..given
        };
        assert!(kinds(Stage::Contacted, Stage::AssessmentDone, &basis_alone).is_err());
    }

    #[test]
    fn a_milestone_is_dated_between_the_referral_and_today() {
        let plan = input("action-plan");
        assert!(matches!(
            check(&plan, date!(2026 - 03 - 01), date!(2026 - 03 - 01)),
            Err(MilestoneError::Date(_))
        ));
        assert!(matches!(
            check(&plan, date!(2026 - 03 - 03), date!(2026 - 03 - 10)),
            Err(MilestoneError::Date(_))
        ));
    }
}
