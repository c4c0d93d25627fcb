//! The social prescribing referral's vocabulary: the link worker stages it
//! moves through ([`Stage`]) and the internal record (`record`). Outcome
//! measures are data (`outcomes::definition`): the record names them by code.
//!
//! Pure, and imports nothing of Sprig's but `fhir`: the workflow that moves a
//! referral through its life is the `workflow` module, above the store.

pub mod milestone;
pub mod record;
pub mod stage;

pub use stage::Stage;
