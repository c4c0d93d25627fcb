//! Outcome evidence: measures defined as data ([`definition`]), follow-ups computed from
//! their schedules ([`schedule`]) and the reports a contract pays on ([`report`]).
//!
//! Pure: no I/O except [`Outcomes::load_dir`] reading a folder, no clock (callers pass
//! today's date), no async.

pub mod definition;
pub mod pcn;
pub mod report;
pub mod schedule;

use std::path::Path;

use crate::located::{LocatedError, TomlText};

pub use definition::{Catalogue, MeasureDefinition};
pub use report::Metric;

/// The measures and metrics in force.
#[derive(Debug, Clone)]
pub struct Outcomes {
    /// The measures.
    pub catalogue: Catalogue,
    /// The report's metrics.
    pub metrics: Vec<Metric>,
    /// How complex needs are found (`metrics.toml`'s `[complexity]`).
    pub complexity: report::ComplexityRule,
}

/// A folder of definitions that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum OutcomesError {
    /// A file or folder could not be read.
    #[error("{file}: {source}")]
    Read {
        /// The path.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// A definition is wrong.
    #[error(transparent)]
    Located(#[from] LocatedError),
}

impl Outcomes {
    /// The definitions shipped in `outcomes/` (compiled in).
    pub fn shipped() -> Result<Outcomes, LocatedError> {
        let catalogue = Catalogue::shipped()?;
        let (name, text) = report::SHIPPED_METRICS;
        Self::with_metrics(catalogue, &TomlText::new(name, text))
    }

    /// The metrics and the complexity rule of `metrics` (a `metrics.toml`), over the
    /// measures of `catalogue`.
    fn with_metrics(
        catalogue: Catalogue,
        metrics: &TomlText<'_>,
    ) -> Result<Outcomes, LocatedError> {
        Ok(Outcomes {
            metrics: report::load_metrics(metrics, &catalogue)?,
            complexity: report::load_complexity(metrics, &catalogue)?,
            catalogue,
        })
    }

    /// The definitions in `dir`: every `dir/measures/*.toml` (in name order) and
    /// `dir/metrics.toml`.
    pub fn load_dir(dir: &Path) -> Result<Outcomes, OutcomesError> {
        let read_err = |path: &Path, source| OutcomesError::Read {
            file: path.display().to_string(),
            source,
        };
        let measures_dir = dir.join("measures");
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(&measures_dir).map_err(|e| read_err(&measures_dir, e))? {
            let path = entry.map_err(|e| read_err(&measures_dir, e))?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                paths.push(path);
            }
        }
        paths.sort();
        let mut files = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|e| read_err(&path, e))?;
            files.push((path.display().to_string(), text));
        }
        let catalogue = Catalogue::from_texts(&files)?;
        let metrics_path = dir.join("metrics.toml");
        let text =
            std::fs::read_to_string(&metrics_path).map_err(|e| read_err(&metrics_path, e))?;
        let name = metrics_path.display().to_string();
        Ok(Self::with_metrics(catalogue, &TomlText::new(&name, &text))?)
    }
}
