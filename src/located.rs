//! Mistakes located in a TOML configuration file, reported as `file:line:column: message`:
//! the one error type of the mapping files and the endpoint registry.

use std::ops::Range;

use serde::de::DeserializeOwned;

/// A mistake in a configuration file, at a line and column (1-based; the column counts
/// characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct LocatedError {
    /// The file, as named to whatever read it (`mappings/outbound.toml`).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong and, where it helps, what is allowed.
    pub message: String,
}

/// A TOML file's text and the name its mistakes are reported under.
#[derive(Debug, Clone, Copy)]
pub struct TomlText<'a> {
    /// The name to report (`mappings/inbound.toml`, `endpoints.toml`).
    pub file: &'a str,
    /// The whole text.
    pub text: &'a str,
}

impl<'a> TomlText<'a> {
    /// `text`, reported as `file`.
    pub fn new(file: &'a str, text: &'a str) -> Self {
        TomlText { file, text }
    }

    /// A mistake at byte `offset` of the text.
    pub fn error(&self, offset: usize, message: impl Into<String>) -> LocatedError {
        let (line, column) = crate::fhir::locate::line_column(self.text, offset);
        LocatedError {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
        }
    }

    /// A mistake at the start of `span`.
    pub fn error_at(&self, span: &Range<usize>, message: impl Into<String>) -> LocatedError {
        self.error(span.start, message)
    }

    /// The text deserialised. TOML syntax errors, unknown keys (where the structs deny
    /// unknown fields, serde's message lists the allowed ones), missing keys and wrong types
    /// are mistakes at the place the TOML parser reports.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, LocatedError> {
        toml::from_str(self.text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            // The parser's message is the first line; the rest is a rendering of the
            // offending line, which the position already gives.
            let message = e.message().trim().to_string();
            self.error(offset, message)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistakes_name_file_line_and_column() {
        let text = TomlText::new("x.toml", "a = 1\nbé = 2\n");
        let offset = text.text.rfind('=').expect("an =");
        assert_eq!(
            text.error(offset, "wrong").to_string(),
            "x.toml:2:4: wrong",
            "the column counts characters, not bytes"
        );
        assert_eq!(
            text.error_at(&(0..3), "here").to_string(),
            "x.toml:1:1: here"
        );
    }

    #[test]
    fn toml_errors_are_located() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            a: u32,
        }
        let file: File = TomlText::new("x.toml", "a = 1\n").parse().expect("valid");
        assert_eq!(file.a, 1);
        let error = TomlText::new("x.toml", "a = 1\nb = 2\n")
            .parse::<File>()
            .expect_err("unknown key");
        assert_eq!((error.file.as_str(), error.line), ("x.toml", 2));
        assert!(error.message.contains("unknown field `b`"), "{error}");
    }
}
