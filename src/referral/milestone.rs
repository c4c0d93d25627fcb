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
