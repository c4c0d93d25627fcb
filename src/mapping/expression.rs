//! A mapping file's FHIRPath expressions: compiled strictly, their mistakes located in the file.

use toml::Spanned;

use crate::fhirpath::{Expression, FhirPath, FhirPathError};
use crate::located::{LocatedError, TomlText};

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

/// `expression` compiled strictly (unknown functions and wrong argument counts refused),
/// with every `%variable` it reads among `variables` (or FHIRPath's own). `what` names
/// the key in messages.
pub(super) fn compile_expression(
    source: &TomlText<'_>,
    engine: &FhirPath,
    expression: &Spanned<String>,
    what: &str,
    variables: &[&str],
) -> Result<Expression, LocatedError> {
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
        source.error(
            offset_in_value(source, expression, position),
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
            return Err(source.error(
                offset_in_value(source, expression, at),
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
fn offset_in_value(source: &TomlText<'_>, value: &Spanned<String>, position: usize) -> usize {
    let span = value.span();
    let Some(raw) = source.text.get(span.clone()) else {
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
