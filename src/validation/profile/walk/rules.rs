//! Rules of the FHIR specification that no constraint expression carries, so
//! a profile walk must check them itself (as HL7's validator does):
//!
//! - base64Binary (§2.24.0.1): "A stream of bytes, base64 encoded (RFC 4648)";
//!   a value that does not decode is an error.
//! - Attachment.size: "The number of bytes of data that make up this
//!   attachment (before base64 encoding, if that is done)"; with `data`
//!   present it must be the decoded length.
//! - string: "Strings SHALL NOT exceed 1MB (1024*1024 characters) in size".
//! - Narrative.div: FHIR's XHTML rules (`txt-1`, `txt-2`), in `xhtml.rs`.
//! - Bundle (§2.36.0): `fullUrl` "SHALL be an absolute URL", and a `link`
//!   relation may appear only once ("only one link with a given relation").
//!
//! All pure, each linear in the value it looks at.

use base64::Engine;
use serde_json::{Map, Value};

use super::{Compiled, Node, Walk};
use crate::fhir::json::field;
use crate::fhir::outcome::shorten;
use crate::fhir::{ElementPath, Issue, IssueType};

/// The longest string FHIR allows, in characters.
pub(super) const MAX_STRING_CHARS: usize = 1024 * 1024;

/// The bytes of a base64Binary value (whitespace, which FHIR's pattern allows
/// between groups, removed), or `None` when it is not base64.
pub(super) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .ok()
}

/// Whether `url` is absolute: a scheme (`https:`, `urn:`) before anything else.
pub(super) fn is_absolute(url: &str) -> bool {
    let Some((scheme, _)) = url.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

impl<'p, 'v> Walk<'p, 'v> {
    /// The rules above for one value of a `type_code` element.
    pub(super) fn core_rules(
        &mut self,
        sd: &Compiled,
        element: &Node,
        type_code: &str,
        value: &Value,
        path: &ElementPath,
    ) {
        match (type_code, value) {
            ("base64Binary", Value::String(text)) if decode_base64(text).is_none() => {
                let message = format!(
                    "{} is not valid base64 (RFC 4648: groups of four characters of A-Z, a-z, 0-9, + and /, padded with =)",
                    self.expression(path)
                );
                self.fail(
                    sd,
                    element,
                    path,
                    IssueType::Value,
                    "base64-invalid",
                    message,
                );
            }
            ("string" | "markdown", Value::String(text))
                if text.len() > MAX_STRING_CHARS && text.chars().count() > MAX_STRING_CHARS =>
            {
                let message = format!(
                    "{} is longer than FHIR allows a string to be (1 MB, {MAX_STRING_CHARS} characters)",
                    self.expression(path)
                );
                self.fail(
                    sd,
                    element,
                    path,
                    IssueType::TooLong,
                    "string-too-long",
                    message,
                );
            }
            ("xhtml", Value::String(div)) => {
                for problem in super::xhtml::check(div) {
                    let message = format!("{} {}", self.expression(path), problem.text);
                    // HL7 publishes examples whose div is empty (R4's
                    // ActivityDefinition, EventDefinition, Questionnaire
                    // examples): txt-2 is applied as a warning, as the
                    // publication's own validation let them through.
                    if problem.id == "xhtml-empty" {
                        self.warn(sd, element, path, problem.id, message);
                        continue;
                    }
                    self.fail(sd, element, path, IssueType::Invalid, problem.id, message);
                }
            }
            ("Attachment", Value::Object(attachment)) => {
                self.attachment_size(sd, element, attachment, path);
            }
            _ => {}
        }
    }

    /// `Attachment.size` must be the number of bytes `data` decodes to.
    fn attachment_size(
        &mut self,
        sd: &Compiled,
        element: &Node,
        attachment: &Map<String, Value>,
        path: &ElementPath,
    ) {
        let (Some(data), Some(size)) = (
            field(attachment, "data").and_then(Value::as_str),
            field(attachment, "size").and_then(Value::as_u64),
        ) else {
            return;
        };
        // Data that is not base64 is reported where it is.
        let Some(bytes) = decode_base64(data) else {
            return;
        };
        if bytes.len() as u64 != size {
            let at = path.key("size");
            let message = format!(
                "{} says {size} bytes, but data holds {} bytes",
                self.expression(&at),
                bytes.len()
            );
            self.fail(
                sd,
                element,
                &at,
                IssueType::Value,
                "attachment-size-mismatch",
                message,
            );
        }
    }

    /// A Bundle's `entry.fullUrl`s are absolute and its `link` relations unique.
    pub(super) fn bundle_rules(&mut self, bundle: &Map<String, Value>, path: &ElementPath) {
        let entries = bundle.get("entry").and_then(Value::as_array);
        for (index, entry) in entries.into_iter().flatten().enumerate() {
            let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) else {
                continue;
            };
            if !is_absolute(full_url) {
                let at = path.key("entry").index(index).key("fullUrl");
                let expression = self.expression(&at);
                self.issues.push(
                    Issue::error(
                        IssueType::Invalid,
                        "bundle-full-url-relative",
                        format!(
                            "{expression} ({}) is not an absolute URL, which a fullUrl must be (a RESTful URL or a urn:uuid:)",
                            shorten(full_url, 120)
                        ),
                    )
                    .at(expression),
                );
            }
        }
        let links = bundle.get("link").and_then(Value::as_array);
        let mut seen: Vec<&str> = Vec::new();
        for (index, link) in links.into_iter().flatten().enumerate() {
            let Some(relation) = link.get("relation").and_then(Value::as_str) else {
                continue;
            };
            if seen.contains(&relation) {
                let at = path.key("link").index(index).key("relation");
                let expression = self.expression(&at);
                self.issues.push(
                    Issue::error(
                        IssueType::Invalid,
                        "bundle-link-relation-repeated",
                        format!(
                            "{expression}: the relation '{}' is already given; a Bundle has one link for each relation",
                            shorten(relation, 60)
                        ),
                    )
                    .at(expression),
                );
            } else {
                seen.push(relation);
            }
        }
    }
}
