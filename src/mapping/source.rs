//! A mapping file's text, and errors located in it.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;

use super::MappingError;
use crate::fhirpath::{Expression, FhirPath, FhirPathError};

/// The variables FHIRPath itself defines (`%resource`…), which a mapping may read but not
/// define; `%vs-…` and `%ext-…` are defined by prefix.
pub(super) const ENGINE_VARIABLES: &[&str] = &[
    "resource",
    "rootResource",
    "context",
    "ucum",
    "sct",
    "loinc",
];

/// One mapping file: the name it is reported under and its text.
pub(super) struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl<'a> Source<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Self {
        Source { file, text }
    }

    /// An error at byte `offset` of the file.
    pub fn error(&self, offset: usize, message: impl Into<String>) -> MappingError {
        let (line, column) = crate::fhir::locate::line_column(self.text, offset);
        MappingError::Invalid {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
        }
    }

    /// An error at the start of `span`.
    pub fn error_at(&self, span: &Range<usize>, message: impl Into<String>) -> MappingError {
        self.error(span.start, message)
    }

    /// The file deserialised. TOML syntax errors, unknown keys (each struct denies unknown
    /// fields, and serde's message lists the allowed ones), missing keys and wrong types are
    /// errors at the place the TOML parser reports.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, MappingError> {
        toml::from_str(self.text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            // The parser's message is the first line; the rest is a rendering of the
            // offending line, which the position already gives.
            let message = e.message().trim().to_string();
            self.error(offset, message)
        })
    }

    /// `expression` compiled strictly (unknown functions and wrong argument counts refused),
    /// with every `%variable` it reads among `variables` (or FHIRPath's own). `what` names
    /// the key in messages.
    pub fn expression(
        &self,
        engine: &FhirPath,
        expression: &Spanned<String>,
        what: &str,
        variables: &[&str],
    ) -> Result<Expression, MappingError> {
        let text = expression.get_ref();
        let compiled = engine.compile_strict(text).map_err(|e| {
            let (position, message) = match &e {
                FhirPathError::Syntax {
                    position, message, ..
                } => (*position, format!("syntax error: {message}")),
                FhirPathError::Function {
                    position, message, ..
                } => (*position, message.clone()),
                other => (0, other.to_string()),
            };
            self.error(
                self.offset_in_value(expression, position),
                format!("{what}: FHIRPath {message}, in \"{text}\""),
            )
        })?;
        for name in compiled.variables() {
            let known = variables.contains(&name.as_str())
                || ENGINE_VARIABLES.contains(&name.as_str())
                || name.starts_with("vs-")
                || name.starts_with("ext-");
            if !known {
                let at = text.find(&format!("%{name}")).unwrap_or(0);
                return Err(self.error(
                    self.offset_in_value(expression, at),
                    format!(
                        "{what}: unknown variable %{name}; the variables here are %{}",
                        variables.join(", %")
                    ),
                ));
            }
        }
        Ok(compiled)
    }

    /// The file offset of byte `position` of a string value's content, when the TOML text
    /// holds the content verbatim (no escapes, which FHIRPath rarely needs); otherwise the
    /// start of the value.
    fn offset_in_value(&self, value: &Spanned<String>, position: usize) -> usize {
        let span = value.span();
        let Some(raw) = self.text.get(span.clone()) else {
            return span.start;
        };
        for delimiter in ["\"\"\"", "'''", "\"", "'"] {
            let n = delimiter.len();
            if raw.len() >= 2 * n && raw.starts_with(delimiter) && raw.ends_with(delimiter) {
                let mut start = span.start + n;
                let mut inner = &raw[n..raw.len() - n];
                // A multi-line string drops a newline right after its opening delimiter.
                if n == 3 {
                    for newline in ["\r\n", "\n"] {
                        if let Some(rest) = inner.strip_prefix(newline) {
                            start += newline.len();
                            inner = rest;
                            break;
                        }
                    }
                }
                return if inner == value.get_ref() && position <= inner.len() {
                    start + position
                } else {
                    span.start
                };
            }
        }
        span.start
    }
}
