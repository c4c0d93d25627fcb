//! `OperationOutcome`: the one shape in which Sprig reports problems.
//!
//! Every layer (parser, schema pass, profile validator, API) produces
//! [`Issue`]s; only this module turns them into FHIR JSON, so every error a
//! GP system developer sees has the same form: severity, an issue-type code,
//! a stable Sprig message id, an actionable message and, where it applies,
//! a FHIRPath-style `expression` naming the element.

use serde_json::{Map, Value, json};

use super::SPRIG_CANONICAL_BASE;

/// `word` with its indefinite article, for messages that name a type:
/// `an Encounter`, `an Appointment`, `a Patient`, `a ServiceRequest`.
pub fn with_article(word: &str) -> String {
    let vowel = word
        .chars()
        .next()
        .is_some_and(|c| "AEIOUaeiou".contains(c));
    if vowel {
        format!("an {word}")
    } else {
        format!("a {word}")
    }
}

/// `text` cut to at most `max` characters (with an ellipsis), for quoting
/// the sender's values in messages without echoing a whole document.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(max).collect();
        short.push('…');
        short
    }
}

/// `OperationOutcome.issue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IssueSeverity {
    /// The content could not be processed at all.
    Fatal,
    /// The content is wrong.
    Error,
    /// Probably wrong, but accepted.
    Warning,
    /// For information only.
    Information,
}

impl IssueSeverity {
    /// The FHIR code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Fatal => "fatal",
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Information => "information",
        }
    }

    /// True for `fatal` and `error`.
    pub fn is_error(self) -> bool {
        matches!(self, Self::Fatal | Self::Error)
    }
}

/// `OperationOutcome.issue.code`, from the FHIR `issue-type` value set
/// (only the codes Sprig uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueType {
    /// Content invalid against the specification or a profile.
    Invalid,
    /// A structural issue in the content (syntax, unknown element, wrong JSON type).
    Structure,
    /// A required element is missing.
    Required,
    /// An element value is invalid.
    Value,
    /// A code is not in the allowed set.
    CodeInvalid,
    /// Content is too long or too deep.
    TooLong,
    /// The operation or format is not supported.
    NotSupported,
    /// The resource or endpoint does not exist.
    NotFound,
    /// The resource existed but was deleted.
    Deleted,
    /// A duplicate (for example a repeated JSON property).
    Duplicate,
    /// A version conflict or similar.
    Conflict,
    /// The request took too long.
    Timeout,
    /// A temporary problem; the request may succeed if retried.
    Transient,
    /// An unexpected internal error.
    Exception,
    /// Processing succeeded; for information.
    Informational,
    /// The request exceeded a size limit.
    TooCostly,
    /// `throttled`: the caller sent too many requests; retry later.
    Throttled,
    /// An extension was not recognised or not valid.
    Extension,
    /// A rule (invariant) of a definition failed.
    Invariant,
    /// A business rule (the referral workflow) refused the request.
    BusinessRule,
    /// A conditional operation matched more than one resource.
    MultipleMatches,
    /// `login`: the caller is not authenticated.
    Login,
    /// `forbidden`: the caller may not do this.
    Forbidden,
}

impl IssueType {
    /// The FHIR code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Structure => "structure",
            Self::Required => "required",
            Self::Value => "value",
            Self::CodeInvalid => "code-invalid",
            Self::TooLong => "too-long",
            Self::NotSupported => "not-supported",
            Self::NotFound => "not-found",
            Self::Deleted => "deleted",
            Self::Duplicate => "duplicate",
            Self::Conflict => "conflict",
            Self::Timeout => "timeout",
            Self::Transient => "transient",
            Self::Exception => "exception",
            Self::Informational => "informational",
            Self::TooCostly => "too-costly",
            Self::Throttled => "throttled",
            Self::Extension => "extension",
            Self::Invariant => "invariant",
            Self::BusinessRule => "business-rule",
            Self::MultipleMatches => "multiple-matches",
            Self::Login => "login",
            Self::Forbidden => "forbidden",
        }
    }
}

/// One problem (or note) about a request or a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// How bad it is.
    pub severity: IssueSeverity,
    /// What kind of problem it is.
    pub code: IssueType,
    /// A stable identifier of the message (`json-duplicate-property`),
    /// for tools that act on specific problems without parsing text.
    pub message_id: &'static str,
    /// What is wrong and, where possible, how to put it right.
    pub message: String,
    /// FHIRPath-style location of the element concerned.
    pub expression: Option<String>,
    /// Line and column in the request body, for syntax errors.
    pub position: Option<(usize, usize)>,
    /// The definition the rule comes from: `{profile URL}#{element id}`.
    pub source: Option<String>,
}

impl Issue {
    /// A new error-severity issue.
    pub fn error(code: IssueType, message_id: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: IssueSeverity::Error,
            code,
            message_id,
            message: message.into(),
            expression: None,
            position: None,
            source: None,
        }
    }

    /// A new issue that reports rather than refuses: severity `information`, code
    /// `informational`.
    pub fn information(message_id: &'static str, message: impl Into<String>) -> Self {
        Self::error(IssueType::Informational, message_id, message)
            .with_severity(IssueSeverity::Information)
    }

    /// The same issue, naming the profile and element its rule comes from.
    pub fn from_definition(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The same issue with another severity.
    pub fn with_severity(mut self, severity: IssueSeverity) -> Self {
        self.severity = severity;
        self
    }

    /// The same issue located at `expression`.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }

    /// The same issue located at a line and column of the body.
    pub fn at_position(mut self, line: usize, column: usize) -> Self {
        self.position = Some((line, column));
        self
    }

    fn to_json(&self, http_error_code: Option<&str>) -> Value {
        let mut issue = Map::new();
        let mut extensions = Vec::new();
        if let Some((line, column)) = self.position {
            // Where the HL7 validator puts positions.
            extensions.push(json!({
                "url": "http://hl7.org/fhir/StructureDefinition/operationoutcome-issue-line",
                "valueInteger": line,
            }));
            extensions.push(json!({
                "url": "http://hl7.org/fhir/StructureDefinition/operationoutcome-issue-col",
                "valueInteger": column,
            }));
        }
        if let Some(source) = &self.source {
            extensions.push(json!({
                "url": "http://hl7.org/fhir/StructureDefinition/operationoutcome-issue-source",
                "valueString": source,
            }));
        }
        if !extensions.is_empty() {
            issue.insert("extension".into(), Value::Array(extensions));
        }
        issue.insert("severity".into(), json!(self.severity.code()));
        issue.insert("code".into(), json!(self.code.code()));
        let mut codings = vec![json!({
            "system": format!("{SPRIG_CANONICAL_BASE}/CodeSystem/sprig-issue"),
            "code": self.message_id,
        })];
        // Warnings and information ride along with a refusal (or a success):
        // the HTTP error code names the refusal, so only errors carry it.
        if let Some(code) = http_error_code.filter(|_| self.severity.is_error()) {
            // BaRS receivers report the HTTP outcome with this NHS code system
            // (its casing, `Codesystem`, is the NHS's own).
            codings.push(json!({
                "system": "https://fhir.nhs.uk/Codesystem/http-error-codes",
                "code": code,
            }));
        }
        issue.insert(
            "details".into(),
            json!({ "coding": codings, "text": self.message }),
        );
        issue.insert("diagnostics".into(), json!(self.message));
        if let Some((line, column)) = self.position {
            // `location` is deprecated in R4 but still the only place for a
            // line/column; HAPI uses the same `Line[n] Col[n]` form.
            issue.insert(
                "location".into(),
                json!([format!("Line[{line}] Col[{column}]")]),
            );
        }
        if let Some(expression) = &self.expression {
            issue.insert("expression".into(), json!([expression]));
        }
        Value::Object(issue)
    }
}

/// An `OperationOutcome` under construction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperationOutcome {
    /// The issues, in the order they will be reported.
    pub issues: Vec<Issue>,
}

impl OperationOutcome {
    /// An outcome with these issues.
    pub fn new(issues: Vec<Issue>) -> Self {
        Self { issues }
    }

    /// An outcome with one issue.
    pub fn single(issue: Issue) -> Self {
        Self {
            issues: vec![issue],
        }
    }

    /// Keeps the first `max` issues (errors before warnings) and, if any
    /// were left out, says how many.
    pub fn capped(mut self, max: usize) -> Self {
        let max = max.max(1);
        self.issues.sort_by_key(|issue| issue.severity);
        if self.issues.len() > max {
            let omitted = self.issues.len() - max;
            self.issues.truncate(max);
            self.issues.push(Issue {
                severity: IssueSeverity::Information,
                code: IssueType::TooCostly,
                message_id: "issues-truncated",
                message: format!(
                    "{omitted} further issue(s) not shown (at most {max} are reported); fix these and resubmit"
                ),
                expression: None,
                position: None,
                source: None,
            });
        }
        self
    }

    /// True if any issue is `error` or `fatal`.
    pub fn has_errors(&self) -> bool {
        self.issues.iter().any(|i| i.severity.is_error())
    }

    /// FHIR JSON for this outcome. `http_error_code` (for example
    /// `REC_BAD_REQUEST`) is added to each issue's details, as BaRS expects.
    pub fn to_json(&self, http_error_code: Option<&str>) -> Value {
        let issues: Vec<Value> = if self.issues.is_empty() {
            // FHIR requires at least one issue.
            vec![json!({
                "severity": "information",
                "code": "informational",
                "diagnostics": "All OK",
            })]
        } else {
            self.issues
                .iter()
                .map(|i| i.to_json(http_error_code))
                .collect()
        };
        json!({ "resourceType": "OperationOutcome", "issue": issues })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_json_carries_code_location_and_message_id() {
        let outcome = OperationOutcome::single(
            Issue::error(IssueType::Structure, "json-null", "null is not allowed")
                .at("ServiceRequest.note[0].text"),
        );
        let json = outcome.to_json(Some("REC_BAD_REQUEST"));
        let issue = &json["issue"][0];
        assert_eq!(issue["severity"], "error");
        assert_eq!(issue["code"], "structure");
        assert_eq!(issue["expression"][0], "ServiceRequest.note[0].text");
        assert_eq!(issue["details"]["coding"][0]["code"], "json-null");
        assert_eq!(issue["details"]["coding"][1]["code"], "REC_BAD_REQUEST");
        assert!(outcome.has_errors());
    }

    #[test]
    fn capping_keeps_errors_first_and_counts_the_rest() {
        let mut issues: Vec<Issue> = (0..5)
            .map(|i| Issue::error(IssueType::Value, "x", format!("e{i}")))
            .collect();
        issues.insert(
            0,
            Issue::error(IssueType::Value, "w", "w").with_severity(IssueSeverity::Warning),
        );
        let capped = OperationOutcome::new(issues).capped(3);
        assert_eq!(capped.issues.len(), 4);
        assert_eq!(capped.issues[0].message, "e0");
        assert_eq!(capped.issues[3].message_id, "issues-truncated");
        assert!(capped.issues[3].message.starts_with("3 further"));
    }

    #[test]
    fn an_empty_outcome_still_has_one_issue() {
        let json = OperationOutcome::default().to_json(None);
        assert_eq!(json["issue"].as_array().map(Vec::len), Some(1));
    }
}
