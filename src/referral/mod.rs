//! The social prescribing referral's vocabulary: the link worker stages it
//! moves through ([`Stage`]), the wellbeing outcome measures it reports
//! ([`Measure`], with scoring) and the internal record (`record`).
//!
//! Pure, and imports nothing of Sprig's but `fhir`: the workflow that moves a
//! referral through its life is the `workflow` module, above the store.

pub mod measure;
pub mod record;
pub mod stage;

pub use measure::{Measure, Score, ScoreError};
pub use stage::Stage;
