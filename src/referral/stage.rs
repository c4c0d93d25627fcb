//! Where a referral is in the link worker's workflow, and which moves are allowed.
//!
//! The codes are those of CodeSystem `sprig-referral-stage`
//! (`profiles/sprig/CodeSystem-sprig-referral-stage.json`), reported to the referrer in
//! `Task.businessStatus`; `mappings/outbound.toml` says which `Task.status` goes with each.
//! Every open stage may be withdrawn; a closed one moves nowhere.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A stage of a social prescribing referral (CodeSystem `sprig-referral-stage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// `received`: stored; the service has not looked at it yet.
    Received,
    /// `accepted`: the service will contact the person.
    Accepted,
    /// `declined`: by the service or by the person (a reason is required).
    Declined,
    /// `contacted`: a link worker has spoken to the person.
    Contacted,
    /// `unable-to-contact`: the person could not be reached.
    UnableToContact,
    /// `assessment-done`: the initial "what matters to you" conversation has happened.
    AssessmentDone,
    /// `plan-agreed`: a personalised support plan is agreed.
    PlanAgreed,
    /// `in-support`: the person is being supported and connected.
    InSupport,
    /// `completed`: support ended as planned; outcome measures follow.
    Completed,
    /// `withdrawn`: the referrer revoked the referral, or the person left before the end.
    Withdrawn,
}

/// The CodeSystem's URL.
pub const STAGE_SYSTEM: &str = "https://sprig-gateway.org/fhir/CodeSystem/sprig-referral-stage";

/// A code that is not a `sprig-referral-stage` code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{code}' is not a referral stage; the stages are {}", Stage::codes())]
pub struct UnknownStage {
    /// The code given.
    pub code: String,
}

impl Stage {
    /// Every stage, in workflow order (the closing stages last).
    pub const ALL: [Stage; 10] = [
        Stage::Received,
        Stage::Accepted,
        Stage::Contacted,
        Stage::AssessmentDone,
        Stage::PlanAgreed,
        Stage::InSupport,
        Stage::Completed,
        Stage::Declined,
        Stage::UnableToContact,
        Stage::Withdrawn,
    ];

    /// The `sprig-referral-stage` code.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Received => "received",
            Stage::Accepted => "accepted",
            Stage::Declined => "declined",
            Stage::Contacted => "contacted",
            Stage::UnableToContact => "unable-to-contact",
            Stage::AssessmentDone => "assessment-done",
            Stage::PlanAgreed => "plan-agreed",
            Stage::InSupport => "in-support",
            Stage::Completed => "completed",
            Stage::Withdrawn => "withdrawn",
        }
    }

    /// The stage with this code (exact, case-sensitive, as the CodeSystem is).
    pub fn parse(code: &str) -> Result<Stage, UnknownStage> {
        Stage::ALL
            .into_iter()
            .find(|s| s.as_str() == code)
            .ok_or_else(|| UnknownStage {
                code: code.to_string(),
            })
    }

    /// The codes, comma separated, for messages.
    pub fn codes() -> String {
        Stage::ALL.map(Stage::as_str).join(", ")
    }

    /// Whether the referral is still being worked on: every stage but `declined`,
    /// `completed`, `unable-to-contact` and `withdrawn`, which end it.
    pub fn is_open(self) -> bool {
        !matches!(
            self,
            Stage::Declined | Stage::Completed | Stage::UnableToContact | Stage::Withdrawn
        )
    }

    /// The stages a referral may move to from this one. From every open stage the referral
    /// can be withdrawn (the GP revoked it, or the person left); a closed stage allows no
    /// move. `contacted` may go straight to `plan-agreed`: some people agree a plan in the
    /// first conversation.
    pub fn allowed_next(self) -> &'static [Stage] {
        match self {
            Stage::Received => &[Stage::Accepted, Stage::Declined, Stage::Withdrawn],
            Stage::Accepted => &[Stage::Contacted, Stage::UnableToContact, Stage::Withdrawn],
            Stage::Contacted => &[Stage::AssessmentDone, Stage::PlanAgreed, Stage::Withdrawn],
            Stage::AssessmentDone => &[Stage::PlanAgreed, Stage::Withdrawn],
            Stage::PlanAgreed => &[Stage::InSupport, Stage::Withdrawn],
            Stage::InSupport => &[Stage::Completed, Stage::Withdrawn],
            Stage::Declined | Stage::UnableToContact | Stage::Completed | Stage::Withdrawn => &[],
        }
    }

    /// Whether `next` is an allowed move from this stage (staying put is not a move).
    pub fn can_move_to(self, next: Stage) -> bool {
        self.allowed_next().contains(&next)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Stage {
    type Err = UnknownStage;

    fn from_str(code: &str) -> Result<Self, Self::Err> {
        Stage::parse(code)
    }
}

impl Serialize for Stage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Stage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Stage::parse(&code).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_match_the_code_system() {
        let code_system: serde_json::Value = serde_json::from_str(include_str!(
            "../../profiles/sprig/CodeSystem-sprig-referral-stage.json"
        ))
        .expect("JSON");
        assert_eq!(code_system["url"], STAGE_SYSTEM);
        let mut codes: Vec<&str> = code_system["concept"]
            .as_array()
            .expect("concepts")
            .iter()
            .filter_map(|c| c["code"].as_str())
            .collect();
        let mut ours: Vec<&str> = Stage::ALL.iter().map(|s| s.as_str()).collect();
        codes.sort_unstable();
        ours.sort_unstable();
        assert_eq!(codes, ours);
        for stage in Stage::ALL {
            assert_eq!(Stage::parse(stage.as_str()), Ok(stage));
            assert_eq!(stage.to_string().parse::<Stage>(), Ok(stage));
        }
        let err = Stage::parse("Accepted").expect_err("case-sensitive");
        assert!(err.to_string().contains("received, accepted"), "{err}");
    }

    #[test]
    fn serde_uses_the_code() {
        let json = serde_json::to_string(&Stage::UnableToContact).expect("serialises");
        assert_eq!(json, "\"unable-to-contact\"");
        let back: Stage = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, Stage::UnableToContact);
        assert!(serde_json::from_str::<Stage>("\"unable_to_contact\"").is_err());
    }

    #[test]
    fn the_workflow() {
        use Stage::*;
        let moves = [
            (Received, Accepted),
            (Received, Declined),
            (Accepted, Contacted),
            (Accepted, UnableToContact),
            (Contacted, AssessmentDone),
            (Contacted, PlanAgreed),
            (AssessmentDone, PlanAgreed),
            (PlanAgreed, InSupport),
            (InSupport, Completed),
        ];
        for from in Stage::ALL {
            for to in Stage::ALL {
                let expected = moves.contains(&(from, to)) || (to == Withdrawn && from.is_open());
                assert_eq!(from.can_move_to(to), expected, "{from} → {to}");
            }
        }
        let closed: Vec<Stage> = Stage::ALL.into_iter().filter(|s| !s.is_open()).collect();
        assert_eq!(closed, [Completed, Declined, UnableToContact, Withdrawn]);
        for stage in closed {
            assert!(stage.allowed_next().is_empty());
        }
        // Every open stage can be reached from `received`.
        let mut reached = vec![Received];
        let mut i = 0;
        while i < reached.len() {
            for next in reached[i].allowed_next() {
                if !reached.contains(next) {
                    reached.push(*next);
                }
            }
            i += 1;
        }
        assert_eq!(reached.len(), Stage::ALL.len());
    }
}
