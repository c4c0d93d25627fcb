//! The social prescribing referral: its vocabulary (the link worker stages it
//! moves through, [`Stage`], and the wellbeing outcome measures it reports,
//! [`Measure`], with scoring), the internal record (`record`), finding what a
//! referral's mapping reads (`intake`), and the workflow that moves a
//! referral through its life inside a store transaction (`workflow`).
//!
//! Everything here but `workflow` is pure.

pub mod intake;
pub mod measure;
pub mod record;
pub mod stage;
pub mod workflow;

pub use measure::{Measure, Score, ScoreError};
pub use stage::Stage;
