//! The declarative correspondence between FHIR and Sprig's internal referral record, and the
//! builders of the FHIR resources Sprig sends back.
//!
//! The correspondence is data, in two TOML files, so another county's service can adapt it
//! without a rebuild: `mappings/inbound.toml` (one FHIRPath expression per field of the
//! referral record: [`Inbound`]) and `mappings/outbound.toml` (the Task for each referral
//! stage, and the builders of Tasks and of outcome Observations: [`Outbound`]). The shipped files are
//! compiled into the binary ([`Mappings::shipped`]); [`Mappings::load_dir`] reads a folder
//! instead. Both files are the documentation of their keys.
//!
//! Everything is checked at load, and the first problem is a [`MappingError`] naming the
//! file, line and column: a mapping that loads cannot fail for want of configuration later
//! (every stage is mapped, every expression compiles strictly, every `%variable`
//! exists), so [`Outbound::stage`] is infallible.
//!
//! Pure: no I/O except [`Mappings::load_dir`] reading the two files, no async.

mod expression;
mod inbound;
pub mod intake;
mod outbound;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use self::inbound::{Inbound, InboundResources};
pub use self::outbound::{
    Coding, ObservationInput, Outbound, PatientRef, ResourceBuildError, ServiceRef, StageMapping,
    TaskInput, TaskOutput,
};
use crate::fhirpath::FhirPath;
use crate::located::{LocatedError, TomlText};

/// The name under which the shipped inbound mapping is reported.
pub const INBOUND_FILE: &str = "mappings/inbound.toml";
/// The name under which the shipped outbound mapping is reported.
pub const OUTBOUND_FILE: &str = "mappings/outbound.toml";

const SHIPPED_INBOUND: &str = include_str!("../../mappings/inbound.toml");
const SHIPPED_OUTBOUND: &str = include_str!("../../mappings/outbound.toml");

/// Why the mappings could not be loaded. Either stops start-up.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// A problem in a mapping file, at a line and column: `file:line:column: message`, the
    /// file as given (`mappings/outbound.toml`).
    #[error(transparent)]
    Invalid(#[from] LocatedError),
    /// A mapping file could not be read.
    #[error("{file}: cannot read the mapping file: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Both mappings, checked and compiled.
#[derive(Debug, Clone)]
pub struct Mappings {
    /// FHIR referral → internal referral record.
    pub inbound: Inbound,
    /// Stages and scores → Task and Observation.
    pub outbound: Outbound,
}

impl Mappings {
    /// The mappings shipped in `mappings/`, compiled into the binary.
    pub fn shipped(engine: &FhirPath) -> Result<Mappings, MappingError> {
        Mappings::from_texts(
            engine,
            (INBOUND_FILE, SHIPPED_INBOUND),
            (OUTBOUND_FILE, SHIPPED_OUTBOUND),
        )
    }

    /// The mappings in `dir/inbound.toml` and `dir/outbound.toml` (both must exist), reported
    /// under those paths.
    pub fn load_dir(dir: &Path, engine: &FhirPath) -> Result<Mappings, MappingError> {
        let read = |name: &str| {
            let path = dir.join(name);
            let file = path.display().to_string();
            std::fs::read_to_string(&path)
                .map(|text| (file.clone(), text))
                .map_err(|source| MappingError::Read { file, source })
        };
        let (inbound_file, inbound) = read("inbound.toml")?;
        let (outbound_file, outbound) = read("outbound.toml")?;
        Mappings::from_texts(
            engine,
            (&inbound_file, &inbound),
            (&outbound_file, &outbound),
        )
    }

    /// The mappings in these texts, each `(name to report, TOML text)`.
    pub fn from_texts(
        engine: &FhirPath,
        inbound: (&str, &str),
        outbound: (&str, &str),
    ) -> Result<Mappings, MappingError> {
        Ok(Mappings {
            inbound: Inbound::load(&TomlText::new(inbound.0, inbound.1), engine)?,
            outbound: Outbound::load(&TomlText::new(outbound.0, outbound.1), engine)?,
        })
    }
}
