//! Assertion evaluation: a pure function from an assert (its `${variables}` already
//! substituted) and what the script has seen (fixtures, requests, responses) to a
//! [`Verdict`]. No HTTP here, so every operator and assert kind is unit-tested directly.

use std::collections::HashMap;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde_json::Value;

use super::script::{Assert, Direction, Operator, RESPONSE_CODES};
use crate::fhirpath::{Collection, FhirPath, Item};
use crate::validation::Validator;

/// One request the runner sent and what came back.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    /// `GET`, `POST`…
    pub method: String,
    /// The absolute URL requested.
    pub url: String,
    /// Request headers, as sent.
    pub request_headers: Vec<(String, String)>,
    /// The request body, when it had one.
    pub request_body: Option<Value>,
    /// The response; `None` when the request failed (connection refused, timeout…).
    pub response: Option<Response>,
}

/// A response received.
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Headers (names lower case).
    pub headers: Vec<(String, String)>,
    /// The body as JSON, when it was JSON.
    pub body: Option<Value>,
}

impl Response {
    /// The values of header `name` (any case).
    pub fn header(&self, name: &str) -> Vec<&str> {
        header_values(&self.headers, name)
    }
}

fn header_values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// What an assert can look at.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    /// Fixtures by id (as sent: `${variables}` substituted).
    pub fixtures: &'a HashMap<String, Value>,
    /// Exchanges by `requestId` and `responseId`.
    pub exchanges: &'a HashMap<String, Arc<Exchange>>,
    /// The last exchange of the script.
    pub last: Option<&'a Exchange>,
}

/// Where an assert looks.
enum Source<'a> {
    Fixture(&'a Value),
    Exchange(&'a Exchange),
}

impl<'a> Sources<'a> {
    fn source(&self, id: Option<&str>) -> Result<Source<'a>, String> {
        match id {
            Some(id) => {
                if let Some(fixture) = self.fixtures.get(id) {
                    Ok(Source::Fixture(fixture))
                } else if let Some(exchange) = self.exchanges.get(id) {
                    Ok(Source::Exchange(exchange))
                } else {
                    Err(format!("{id:?} has not been sent or received yet"))
                }
            }
            None => self
                .last
                .map(Source::Exchange)
                .ok_or_else(|| "no operation has run yet: nothing to check".to_owned()),
        }
    }

    /// The body an assert looks at: a fixture, or a request's or response's JSON body.
    pub fn body(&self, id: Option<&str>, direction: Direction) -> Result<&'a Value, String> {
        match self.source(id)? {
            Source::Fixture(value) => Ok(value),
            Source::Exchange(exchange) => match direction {
                Direction::Request => exchange
                    .request_body
                    .as_ref()
                    .ok_or_else(|| "the request had no JSON body".to_owned()),
                Direction::Response => response_of(exchange)?
                    .body
                    .as_ref()
                    .ok_or_else(|| "the response had no JSON body".to_owned()),
            },
        }
    }

    fn exchange(&self, id: Option<&str>) -> Result<&'a Exchange, String> {
        match self.source(id)? {
            Source::Exchange(exchange) => Ok(exchange),
            Source::Fixture(_) => Err(format!(
                "{:?} is a fixture, not a request or response",
                id.unwrap_or_default()
            )),
        }
    }
}

fn response_of(exchange: &Exchange) -> Result<&Response, String> {
    exchange.response.as_ref().ok_or_else(|| {
        format!(
            "{} {} got no response, so there is nothing to check",
            exchange.method, exchange.url
        )
    })
}

/// An assert's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The check held.
    Pass(String),
    /// The check failed.
    Fail(String),
    /// The check failed, but the assert is `warningOnly`.
    Warning(String),
    /// The check was not made: unsupported, or nothing to check it with.
    Skip(String),
    /// The check could not be evaluated (a FHIRPath error…): counts as a failure.
    Error(String),
}

impl Verdict {
    /// The TestReport result code.
    pub fn code(&self) -> &'static str {
        match self {
            Verdict::Pass(_) => "pass",
            Verdict::Fail(_) => "fail",
            Verdict::Warning(_) => "warning",
            Verdict::Skip(_) => "skip",
            Verdict::Error(_) => "error",
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            Verdict::Pass(m)
            | Verdict::Fail(m)
            | Verdict::Warning(m)
            | Verdict::Skip(m)
            | Verdict::Error(m) => m,
        }
    }

    /// Whether this stops the test (a failure or an error that is not `warningOnly`).
    pub fn is_failure(&self) -> bool {
        matches!(self, Verdict::Fail(_) | Verdict::Error(_))
    }
}

/// What checking a resource against a profile found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileOutcome {
    /// No errors.
    Valid,
    /// Errors, as messages.
    Invalid(Vec<String>),
    /// The validator does not hold the profile: nothing was checked.
    NotHeld(String),
}

/// Checks a resource against a profile (Sprig's validator, or a stand-in in tests).
pub trait ProfileCheck: Send + Sync {
    /// Validates `resource` against the profile with canonical `url`.
    fn check(&self, resource: &Value, url: &str) -> ProfileOutcome;
}

impl ProfileCheck for Validator {
    fn check(&self, resource: &Value, url: &str) -> ProfileOutcome {
        let issues = self.validate_resource(resource, None, Some(url));
        if let [issue] = issues.as_slice()
            && issue.message_id == "validate-unknown-profile"
        {
            return ProfileOutcome::NotHeld(format!(
                "profile {url} is not one Sprig's validator holds"
            ));
        }
        let errors: Vec<String> = issues
            .iter()
            .filter(|i| i.severity.is_error())
            .map(|i| match &i.expression {
                Some(at) => format!("{at}: {}", i.message),
                None => i.message.clone(),
            })
            .collect();
        if errors.is_empty() {
            ProfileOutcome::Valid
        } else {
            ProfileOutcome::Invalid(errors)
        }
    }
}

/// What evaluating an assert needs besides the sources.
#[derive(Clone, Copy)]
pub struct Tools<'a> {
    /// The FHIRPath engine.
    pub fhirpath: &'a FhirPath,
    /// `profile[]`: id → canonical URL.
    pub profiles: &'a [(String, String)],
    /// The profile validator, when one is loaded.
    pub validator: Option<&'a dyn ProfileCheck>,
}

/// Evaluates `assert` (variables already substituted).
pub fn evaluate(assert: &Assert, sources: &Sources<'_>, tools: &Tools<'_>) -> Verdict {
    if let Some(reason) = &assert.unsupported {
        return Verdict::Skip(reason.clone());
    }
    match check(assert, sources, tools) {
        Ok(Check::Held(message)) => Verdict::Pass(message),
        Ok(Check::Failed(message)) if assert.warning_only => Verdict::Warning(message),
        Ok(Check::Failed(message)) => Verdict::Fail(message),
        Ok(Check::NotMade(reason)) => Verdict::Skip(reason),
        Err(message) => not_checked(assert, message),
    }
}

/// The verdict on an assert that could not be checked: an error of the run,
/// or a warning for a `warningOnly` assert.
pub fn not_checked(assert: &Assert, message: String) -> Verdict {
    if assert.warning_only {
        Verdict::Warning(message)
    } else {
        Verdict::Error(message)
    }
}

enum Check {
    Held(String),
    Failed(String),
    NotMade(String),
}

fn outcome(held: bool, what: String) -> Check {
    if held {
        Check::Held(what)
    } else {
        Check::Failed(what)
    }
}

fn check(assert: &Assert, sources: &Sources<'_>, tools: &Tools<'_>) -> Result<Check, String> {
    let source_id = assert.source_id.as_deref();
    let operator = assert.operator.unwrap_or_default();
    if let Some(name) = &assert.response {
        let status = response_status(sources, source_id)?;
        let expected = RESPONSE_CODES
            .iter()
            .find(|(code, _)| code == name)
            .map(|(_, status)| status.to_string())
            .ok_or_else(|| format!("unknown response code {name:?}"))?;
        let actual = vec![status.to_string()];
        return compared(
            "HTTP status",
            operator,
            &actual,
            Some(&format!("{expected} ({name})")),
            &expected,
        );
    }
    if let Some(expected) = &assert.response_code {
        let actual = vec![response_status(sources, source_id)?.to_string()];
        return compared("HTTP status", operator, &actual, Some(expected), expected);
    }
    if let Some(expected) = &assert.content_type {
        let exchange = sources.exchange(source_id)?;
        let headers = match assert.direction {
            Direction::Request => &exchange.request_headers,
            Direction::Response => &response_of(exchange)?.headers,
        };
        let actual: Vec<String> = header_values(headers, "content-type")
            .into_iter()
            .map(mime_essence)
            .collect();
        let wanted = mime_for(expected).to_owned();
        return compared("Content-Type", operator, &actual, Some(&wanted), &wanted);
    }
    if let Some(name) = &assert.header_field {
        let exchange = sources.exchange(source_id)?;
        let headers = match assert.direction {
            Direction::Request => &exchange.request_headers,
            Direction::Response => &response_of(exchange)?.headers,
        };
        let actual: Vec<String> = header_values(headers, name)
            .into_iter()
            .map(str::to_owned)
            .collect();
        return match (&assert.value, assert.operator) {
            // A header named with nothing to compare: it must be there.
            (None, None | Some(Operator::Equals)) => Ok(outcome(
                !actual.is_empty(),
                format!("header {name} is {}", describe(&actual)),
            )),
            (value, _) => compared(
                &format!("header {name}"),
                operator,
                &actual,
                value.as_deref(),
                value.as_deref().unwrap_or_default(),
            ),
        };
    }
    if let Some(expected) = &assert.resource {
        let body = sources.body(source_id, assert.direction)?;
        let actual: Vec<String> = body
            .get("resourceType")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .into_iter()
            .collect();
        return compared("resource type", operator, &actual, Some(expected), expected);
    }
    if let Some(expected) = &assert.request_url {
        let exchange = sources.exchange(source_id)?;
        return compared(
            "request URL",
            operator,
            std::slice::from_ref(&exchange.url),
            Some(expected),
            expected,
        );
    }
    if let Some(expected) = &assert.request_method {
        let exchange = sources.exchange(source_id)?;
        let expected = expected.to_ascii_uppercase();
        return compared(
            "request method",
            operator,
            &[exchange.method.to_ascii_uppercase()],
            Some(&expected),
            &expected,
        );
    }
    if let Some(minimum_id) = &assert.minimum_id {
        let body = sources.body(source_id, assert.direction)?;
        let minimum = sources.body(Some(minimum_id), Direction::Response)?;
        return Ok(match missing_from(body, minimum, true, "") {
            None => Check::Held(format!("the resource holds everything in {minimum_id}")),
            Some(path) => Check::Failed(format!(
                "the resource lacks {path} of minimumId {minimum_id}"
            )),
        });
    }
    if let Some(profile_id) = &assert.validate_profile_id {
        let url = tools
            .profiles
            .iter()
            .find(|(id, _)| id == profile_id)
            .map(|(_, url)| url.as_str())
            .ok_or_else(|| format!("no profile with id {profile_id:?}"))?;
        let Some(validator) = tools.validator else {
            return Ok(Check::NotMade("no profile validator is loaded".into()));
        };
        let body = sources.body(source_id, assert.direction)?;
        return Ok(match validator.check(body, url) {
            ProfileOutcome::Valid => Check::Held(format!("valid against {url}")),
            ProfileOutcome::Invalid(errors) => Check::Failed(format!(
                "not valid against {url}: {} error(s): {}",
                errors.len(),
                errors
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            ProfileOutcome::NotHeld(reason) => Check::NotMade(reason),
        });
    }
    if let Some(expression) = &assert.expression {
        let body = sources.body(source_id, assert.direction)?;
        let actual = evaluate_path(tools.fhirpath, expression, body)?;
        if let Some(compare_id) = &assert.compare_to_source_id {
            let other = sources.body(Some(compare_id), Direction::Response)?;
            let other_expression = assert
                .compare_to_source_expression
                .as_deref()
                .unwrap_or(expression);
            let expected = evaluate_path(tools.fhirpath, other_expression, other)?;
            return compare_collections(
                operator,
                &strings(&actual),
                &strings(&expected),
                compare_id,
            );
        }
        return expression_check(expression, operator, &actual, assert.value.as_deref());
    }
    if let (Some(compare_id), Some(expression)) = (
        &assert.compare_to_source_id,
        &assert.compare_to_source_expression,
    ) {
        let body = sources.body(source_id, assert.direction)?;
        let other = sources.body(Some(compare_id), Direction::Response)?;
        let actual = evaluate_path(tools.fhirpath, expression, body)?;
        let expected = evaluate_path(tools.fhirpath, expression, other)?;
        return compare_collections(operator, &strings(&actual), &strings(&expected), compare_id);
    }
    Err("the assert checks nothing this runner understands".into())
}

fn response_status(sources: &Sources<'_>, id: Option<&str>) -> Result<u16, String> {
    Ok(response_of(sources.exchange(id)?)?.status)
}

pub(super) fn evaluate_path(
    engine: &FhirPath,
    expression: &str,
    body: &Value,
) -> Result<Collection, String> {
    let compiled = engine
        .compile(expression)
        .map_err(|e| format!("expression {expression:?}: {e}"))?;
    compiled
        .evaluate(body, body)
        .map_err(|e| format!("expression {expression:?}: {e}"))
}

fn expression_check(
    expression: &str,
    operator: Operator,
    actual: &Collection,
    value: Option<&str>,
) -> Result<Check, String> {
    match (operator, value) {
        // No value: the expression is a condition that must hold.
        (Operator::Eval | Operator::Equals, None) | (Operator::Eval, Some(_)) => {
            let truth = actual
                .to_boolean()
                .map_err(|e| format!("expression {expression:?}: {e}"))?;
            Ok(outcome(
                truth == Some(true),
                format!("{expression} is {}", describe(&strings(actual))),
            ))
        }
        (operator, value) => compared(
            expression,
            operator,
            &strings(actual),
            value,
            value.unwrap_or_default(),
        ),
    }
}

fn compare_collections(
    operator: Operator,
    actual: &[String],
    expected: &[String],
    compare_id: &str,
) -> Result<Check, String> {
    let what = format!(
        "{} against {} in {compare_id}",
        describe(actual),
        describe(expected)
    );
    match operator {
        Operator::Equals => Ok(outcome(actual == expected, what)),
        Operator::NotEquals => Ok(outcome(actual != expected, what)),
        Operator::Empty | Operator::NotEmpty | Operator::Eval => {
            compared("the result", operator, actual, None, "")
        }
        other => {
            let value = expected.join(",");
            compared("the result", other, actual, Some(&value), &value)
        }
    }
}

/// Applies `operator` to `actual` (the values found) and `expected` (the assert's value).
/// `shown` is how the expectation is described in the message.
fn compared(
    what: &str,
    operator: Operator,
    actual: &[String],
    shown: Option<&str>,
    expected: &str,
) -> Result<Check, String> {
    let held = operator_holds(operator, actual, expected)?;
    let expectation = match operator {
        Operator::Empty | Operator::NotEmpty => operator.code().to_owned(),
        _ => format!("{} {}", operator.code(), shown.unwrap_or(expected)),
    };
    Ok(outcome(
        held,
        format!("{what}: expected {expectation}, found {}", describe(actual)),
    ))
}

/// The operators over the values found. `equals`, `in`, `greaterThan` and `lessThan` need
/// at least one value and hold for every value; `notEquals`/`notIn` are their negations
/// (so nothing found is not equal); `contains` holds when some value contains the text.
pub fn operator_holds(
    operator: Operator,
    actual: &[String],
    expected: &str,
) -> Result<bool, String> {
    let list: Vec<&str> = expected.split(',').map(str::trim).collect();
    Ok(match operator {
        Operator::Equals => !actual.is_empty() && actual.iter().all(|a| a == expected),
        Operator::NotEquals => !operator_holds(Operator::Equals, actual, expected)?,
        Operator::In => !actual.is_empty() && actual.iter().all(|a| list.contains(&a.as_str())),
        Operator::NotIn => !actual.iter().any(|a| list.contains(&a.as_str())),
        Operator::GreaterThan => {
            !actual.is_empty()
                && actual
                    .iter()
                    .all(|a| order(a, expected) == std::cmp::Ordering::Greater)
        }
        Operator::LessThan => {
            !actual.is_empty()
                && actual
                    .iter()
                    .all(|a| order(a, expected) == std::cmp::Ordering::Less)
        }
        Operator::Empty => actual.is_empty(),
        Operator::NotEmpty => !actual.is_empty(),
        Operator::Contains => actual.iter().any(|a| a.contains(expected)),
        Operator::NotContains => !actual.iter().any(|a| a.contains(expected)),
        Operator::Eval => {
            return Err("operator eval applies only to a FHIRPath expression".into());
        }
    })
}

/// Numbers compare as numbers; anything else as text (ISO dates order correctly as text).
fn order(actual: &str, expected: &str) -> std::cmp::Ordering {
    match (actual.parse::<Decimal>(), expected.parse::<Decimal>()) {
        (Ok(a), Ok(e)) => a.cmp(&e),
        _ => actual.cmp(expected),
    }
}

fn strings(collection: &Collection) -> Vec<String> {
    collection.items().iter().map(item_text).collect()
}

/// An item as the text assert values are written in: a primitive's value, anything else
/// as JSON.
pub(super) fn item_text(item: &Item) -> String {
    match item.to_json() {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn describe(values: &[String]) -> String {
    match values {
        [] => "nothing".to_owned(),
        [one] => format!("{:?}", shorten(one)),
        many => format!(
            "[{}]",
            many.iter()
                .take(5)
                .map(|v| format!("{:?}", shorten(v)))
                .collect::<Vec<_>>()
                .join(", ")
                + if many.len() > 5 { ", …" } else { "" }
        ),
    }
}

fn shorten(text: &str) -> String {
    crate::fhir::outcome::shorten(text, 120)
}

/// `application/fhir+json; charset=utf-8` → `application/fhir+json`.
fn mime_essence(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The MIME type a TestScript's short form stands for (`json`, `xml`, `ttl`, `none`).
pub fn mime_for(short: &str) -> &str {
    match short {
        "json" => "application/fhir+json",
        "xml" => "application/fhir+xml",
        "ttl" => "text/turtle",
        other => other,
    }
}

/// The first element of `minimum` missing from `actual`, as a path; `None` when `actual`
/// holds all of it. Objects: every property of the minimum (but the server-set `id` and
/// `meta` at the top); arrays: every item matched by a different item, in any order;
/// primitives: equal.
fn missing_from(actual: &Value, minimum: &Value, top: bool, path: &str) -> Option<String> {
    match (actual, minimum) {
        (Value::Object(actual), Value::Object(minimum)) => {
            for (key, expected) in minimum {
                if top && (key == "id" || key == "meta") {
                    continue;
                }
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match actual.get(key) {
                    None => return Some(here),
                    Some(found) => {
                        if let Some(missing) = missing_from(found, expected, false, &here) {
                            return Some(missing);
                        }
                    }
                }
            }
            None
        }
        (Value::Array(actual), Value::Array(minimum)) => {
            let mut used = vec![false; actual.len()];
            for (i, expected) in minimum.iter().enumerate() {
                let found = actual.iter().enumerate().position(|(j, candidate)| {
                    !used[j] && missing_from(candidate, expected, false, "").is_none()
                });
                match found {
                    Some(j) => used[j] = true,
                    None => return Some(format!("{path}[{i}]")),
                }
            }
            None
        }
        (actual, minimum) if actual == minimum => None,
        (Value::Number(a), Value::Number(m))
            if a.to_string().parse::<Decimal>().ok() == m.to_string().parse::<Decimal>().ok() =>
        {
            None
        }
        _ => Some(if path.is_empty() {
            "the resource".to_owned()
        } else {
            path.to_owned()
        }),
    }
}

#[cfg(test)]
mod tests;
