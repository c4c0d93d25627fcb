//! The TestScript model the runner executes, read from JSON and checked before anything is
//! sent: a script that is not a TestScript, lacks a required part, or names a fixture,
//! profile, response or variable that does not exist is refused with a [`ScriptError`]
//! naming the file and the problem, so a broken script never half-runs against a server.
//!
//! Pure except for reading the fixture files a script references (relative to the script's
//! own folder).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::fhirpath::FhirPath;

/// A script that cannot be run, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem}", file.display())]
pub struct ScriptError {
    /// The script's file.
    pub file: PathBuf,
    /// What is wrong, naming the element (`test[1].action[0].assert`).
    pub problem: String,
}

/// A checked TestScript.
#[derive(Debug, Clone)]
pub struct TestScript {
    /// The file it was read from.
    pub file: PathBuf,
    /// `TestScript.id`, when present.
    pub id: Option<String>,
    /// `TestScript.url` (required).
    pub url: String,
    /// `TestScript.name` (required).
    pub name: String,
    /// `TestScript.title`.
    pub title: Option<String>,
    /// Fixtures, with their resources loaded.
    pub fixtures: Vec<Fixture>,
    /// `profile[]`: id → canonical URL, for `validateProfileId`.
    pub profiles: Vec<(String, String)>,
    /// `variable[]`.
    pub variables: Vec<Variable>,
    /// `setup.action[]`.
    pub setup: Vec<Action>,
    /// `test[]`.
    pub tests: Vec<Test>,
    /// `teardown.action[]` (operations only).
    pub teardown: Vec<Action>,
    /// How many `destination[]`s the script declares: the runner drives one server, so
    /// operations aimed at any destination but the first are skipped.
    pub destinations: usize,
}

/// A fixture: a resource from a file or from `contained`.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// `fixture.id`.
    pub id: String,
    /// Create it on the server before setup.
    pub autocreate: bool,
    /// Delete it from the server after teardown.
    pub autodelete: bool,
    /// The resource.
    pub resource: Value,
}

/// A variable: `${name}` in operations and asserts.
#[derive(Debug, Clone, Default)]
pub struct Variable {
    /// `variable.name`.
    pub name: String,
    /// Used when nothing else gives a value.
    pub default_value: Option<String>,
    /// A FHIRPath expression over the source's body.
    pub expression: Option<String>,
    /// A header of the source's request or response.
    pub header_field: Option<String>,
    /// An XPath/JSONPath `path` (not supported: using the variable skips the action).
    pub path: Option<String>,
    /// A fixture, `requestId` or `responseId`; without it, the last response.
    pub source_id: Option<String>,
}

/// A test: actions run in order.
#[derive(Debug, Clone)]
pub struct Test {
    /// `test.name`.
    pub name: Option<String>,
    /// `test.description`.
    pub description: Option<String>,
    /// `test.action[]`.
    pub actions: Vec<Action>,
}

/// An action: an operation or an assert.
#[derive(Debug, Clone)]
pub enum Action {
    /// Sends a request.
    Operation(Box<Operation>),
    /// Checks what was sent or received.
    Assert(Box<Assert>),
}

/// `action.operation`.
#[derive(Debug, Clone, Default)]
pub struct Operation {
    /// `type.code` (`read`, `create`, `process-message`…).
    pub kind: Option<String>,
    /// `resource`: the resource type.
    pub resource: Option<String>,
    /// `label`.
    pub label: Option<String>,
    /// `description`.
    pub description: Option<String>,
    /// `accept` (`json`, `xml` or a MIME type).
    pub accept: Option<String>,
    /// `contentType`.
    pub content_type: Option<String>,
    /// `destination` (an index into `TestScript.destination`).
    pub destination: Option<i64>,
    /// `encodeRequestUrl`, as read. Not acted on: URLs are sent as written with their
    /// `${variables}` filled in, and reqwest encodes only what HTTP requires.
    pub encode_request_url: bool,
    /// `method` (`get`, `post`, `put`, `delete`, `patch`, `head`, `options`).
    pub method: Option<String>,
    /// `params`: appended to `[base]/[type]` (`/id`, `?query`).
    pub params: Option<String>,
    /// `requestHeader[]`: (field, value).
    pub request_headers: Vec<(String, String)>,
    /// `requestId`: name the request for later asserts and variables.
    pub request_id: Option<String>,
    /// `responseId`: name the response.
    pub response_id: Option<String>,
    /// `sourceId`: the body to send.
    pub source_id: Option<String>,
    /// `targetId`: the resource operated on.
    pub target_id: Option<String>,
    /// `url`: absolute, or relative to the target base.
    pub url: Option<String>,
}

/// Whether an assert looks at the request or the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// The response (the default).
    #[default]
    Response,
    /// The request.
    Request,
}

/// `assert.operator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Operator {
    /// `equals` (the default).
    #[default]
    Equals,
    /// `notEquals`
    NotEquals,
    /// `in` (a comma-separated list)
    In,
    /// `notIn`
    NotIn,
    /// `greaterThan`
    GreaterThan,
    /// `lessThan`
    LessThan,
    /// `empty`
    Empty,
    /// `notEmpty`
    NotEmpty,
    /// `contains`
    Contains,
    /// `notContains`
    NotContains,
    /// `eval`: the expression, as a boolean, must be true.
    Eval,
}

impl Operator {
    /// Reads a code of `assert-operator-codes`.
    pub fn parse(code: &str) -> Option<Operator> {
        Some(match code {
            "equals" => Operator::Equals,
            "notEquals" => Operator::NotEquals,
            "in" => Operator::In,
            "notIn" => Operator::NotIn,
            "greaterThan" => Operator::GreaterThan,
            "lessThan" => Operator::LessThan,
            "empty" => Operator::Empty,
            "notEmpty" => Operator::NotEmpty,
            "contains" => Operator::Contains,
            "notContains" => Operator::NotContains,
            "eval" => Operator::Eval,
            _ => return None,
        })
    }

    /// The code.
    pub fn code(self) -> &'static str {
        match self {
            Operator::Equals => "equals",
            Operator::NotEquals => "notEquals",
            Operator::In => "in",
            Operator::NotIn => "notIn",
            Operator::GreaterThan => "greaterThan",
            Operator::LessThan => "lessThan",
            Operator::Empty => "empty",
            Operator::NotEmpty => "notEmpty",
            Operator::Contains => "contains",
            Operator::NotContains => "notContains",
            Operator::Eval => "eval",
        }
    }
}

/// The `assert.response` codes and the HTTP status each stands for.
pub const RESPONSE_CODES: &[(&str, u16)] = &[
    ("okay", 200),
    ("created", 201),
    ("noContent", 204),
    ("notModified", 304),
    ("bad", 400),
    ("forbidden", 403),
    ("notFound", 404),
    ("methodNotAllowed", 405),
    ("conflict", 409),
    ("gone", 410),
    ("preconditionFailed", 412),
    ("unprocessable", 422),
];

/// `action.assert`.
#[derive(Debug, Clone, Default)]
pub struct Assert {
    /// `label`.
    pub label: Option<String>,
    /// `description`.
    pub description: Option<String>,
    /// `direction`.
    pub direction: Direction,
    /// `compareToSourceId`.
    pub compare_to_source_id: Option<String>,
    /// `compareToSourceExpression`.
    pub compare_to_source_expression: Option<String>,
    /// `compareToSourcePath` (not supported).
    pub compare_to_source_path: Option<String>,
    /// `contentType`.
    pub content_type: Option<String>,
    /// `expression` (FHIRPath).
    pub expression: Option<String>,
    /// `headerField`.
    pub header_field: Option<String>,
    /// `minimumId`.
    pub minimum_id: Option<String>,
    /// `navigationLinks` (not supported).
    pub navigation_links: Option<bool>,
    /// `operator`, when given.
    pub operator: Option<Operator>,
    /// `path` (XPath/JSONPath; not supported).
    pub path: Option<String>,
    /// `requestMethod`.
    pub request_method: Option<String>,
    /// `requestURL`.
    pub request_url: Option<String>,
    /// `resource`: the expected resource type.
    pub resource: Option<String>,
    /// `response`: a code of [`RESPONSE_CODES`].
    pub response: Option<String>,
    /// `responseCode`: an HTTP status (or several, comma-separated, with `in`).
    pub response_code: Option<String>,
    /// `sourceId`: a fixture, `requestId` or `responseId`; without it, the last exchange.
    pub source_id: Option<String>,
    /// `validateProfileId`: a `profile[].id`.
    pub validate_profile_id: Option<String>,
    /// `value`.
    pub value: Option<String>,
    /// A failure is reported as a warning and does not fail the test.
    pub warning_only: bool,
    /// Elements the runner does not support: the assert is skipped with this reason.
    pub unsupported: Option<String>,
}

impl Assert {
    /// A short name for reports: its label, its description, or what it checks.
    pub fn title(&self) -> String {
        if let Some(label) = self.label.as_ref().or(self.description.as_ref()) {
            return label.clone();
        }
        let what = [
            ("response", &self.response),
            ("responseCode", &self.response_code),
            ("contentType", &self.content_type),
            ("headerField", &self.header_field),
            ("resource", &self.resource),
            ("expression", &self.expression),
            ("minimumId", &self.minimum_id),
            ("validateProfileId", &self.validate_profile_id),
            ("compareToSourceId", &self.compare_to_source_id),
            ("requestURL", &self.request_url),
            ("requestMethod", &self.request_method),
            ("path", &self.path),
        ]
        .into_iter()
        .find_map(|(name, value)| value.as_ref().map(|v| format!("{name} {v}")));
        what.unwrap_or_else(|| "assert".to_owned())
    }
}

impl Operation {
    /// A short name for reports.
    pub fn title(&self) -> String {
        if let Some(label) = self.label.as_ref().or(self.description.as_ref()) {
            return label.clone();
        }
        let kind = self.kind.as_deref().unwrap_or("request");
        match (&self.resource, &self.url) {
            (_, Some(url)) => format!("{kind} {url}"),
            (Some(resource), None) => format!("{kind} {resource}"),
            (None, None) => kind.to_owned(),
        }
    }
}

/// Reads and checks the TestScript in `file`.
pub fn load(file: &Path) -> Result<TestScript, ScriptError> {
    let fail = |problem: String| ScriptError {
        file: file.to_owned(),
        problem,
    };
    let text = std::fs::read(file).map_err(|e| fail(format!("cannot read the file: {e}")))?;
    let json: Value = serde_json::from_slice(&text).map_err(|e| fail(format!("not JSON: {e}")))?;
    let folder = file.parent().unwrap_or_else(|| Path::new("."));
    let mut script = parse(&json, folder).map_err(fail)?;
    script.file = file.to_owned();
    Ok(script)
}

/// Checks a TestScript's JSON; relative fixture references resolve against `folder`.
pub fn parse(json: &Value, folder: &Path) -> Result<TestScript, String> {
    let Value::Object(root) = json else {
        return Err("not a TestScript: the file is not a JSON object".into());
    };
    match root.get("resourceType") {
        Some(Value::String(t)) if t == "TestScript" => {}
        Some(Value::String(t)) => {
            return Err(format!(
                "not a TestScript: its resourceType is {t:?} (expected \"TestScript\")"
            ));
        }
        Some(_) => return Err("not a TestScript: resourceType is not a string".into()),
        None => return Err("not a TestScript: it has no resourceType".into()),
    }
    let at = Place::root();
    let url = required_string(root, "url", &at)?;
    let name = required_string(root, "name", &at)?;
    let status = required_string(root, "status", &at)?;
    if !matches!(status.as_str(), "draft" | "active" | "retired" | "unknown") {
        return Err(format!(
            "status {status:?} is not one of draft, active, retired, unknown"
        ));
    }
    let contained = optional_array(root, "contained", &at)?;
    let mut fixtures = Vec::new();
    for (i, item) in optional_array(root, "fixture", &at)?.iter().enumerate() {
        fixtures.push(parse_fixture(
            item,
            &at.index("fixture", i),
            contained,
            folder,
        )?);
    }
    let mut profiles = Vec::new();
    for (i, item) in optional_array(root, "profile", &at)?.iter().enumerate() {
        let place = at.index("profile", i);
        let object = as_object(item, &place)?;
        let id = required_string(object, "id", &place)?;
        let reference = required_string(object, "reference", &place)?;
        profiles.push((id, reference));
    }
    let mut variables = Vec::new();
    for (i, item) in optional_array(root, "variable", &at)?.iter().enumerate() {
        variables.push(parse_variable(item, &at.index("variable", i))?);
    }
    let destinations = optional_array(root, "destination", &at)?.len();

    let setup = match root.get("setup") {
        None => Vec::new(),
        Some(setup) => parse_actions(setup, &at.child("setup"), false)?,
    };
    let mut tests = Vec::new();
    for (i, item) in optional_array(root, "test", &at)?.iter().enumerate() {
        let place = at.index("test", i);
        let object = as_object(item, &place)?;
        tests.push(Test {
            name: optional_string(object, "name", &place)?,
            description: optional_string(object, "description", &place)?,
            actions: parse_actions(item, &place, false)?,
        });
    }
    let teardown = match root.get("teardown") {
        None => Vec::new(),
        Some(teardown) => parse_actions(teardown, &at.child("teardown"), true)?,
    };
    if setup.is_empty() && tests.is_empty() {
        return Err("it has neither setup nor test: nothing to run".into());
    }
    let script = TestScript {
        file: PathBuf::new(),
        id: optional_string(root, "id", &at)?,
        url,
        name,
        title: optional_string(root, "title", &at)?,
        fixtures,
        profiles,
        variables,
        setup,
        tests,
        teardown,
        destinations,
    };
    check_references(&script)?;
    Ok(script)
}

/// Where in the script an element is, for messages: `test[1].action[0].assert`.
#[derive(Debug, Clone)]
struct Place(String);

impl Place {
    fn root() -> Place {
        Place(String::new())
    }
    fn child(&self, name: &str) -> Place {
        if self.0.is_empty() {
            Place(name.to_owned())
        } else {
            Place(format!("{}.{name}", self.0))
        }
    }
    fn index(&self, name: &str, i: usize) -> Place {
        Place(format!("{}[{i}]", self.child(name).0))
    }
    fn of(&self, name: &str) -> String {
        self.child(name).0
    }
}

fn as_object<'a>(value: &'a Value, at: &Place) -> Result<&'a Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("{} must be a JSON object", at.0))
}

fn optional_array<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    at: &Place,
) -> Result<&'a [Value], String> {
    match object.get(key) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(format!("{} must be a JSON array", at.of(key))),
    }
}

fn optional_string(
    object: &Map<String, Value>,
    key: &str,
    at: &Place,
) -> Result<Option<String>, String> {
    match object.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "{} must be a JSON string, not {}",
            at.of(key),
            kind_of(other)
        )),
    }
}

/// An optional FHIRPath expression, refused at load if it does not parse
/// (one holding `${…}` is checked once its variables are filled in, at run
/// time), so that a broken script sends nothing.
fn optional_expression(
    object: &Map<String, Value>,
    key: &str,
    at: &Place,
) -> Result<Option<String>, String> {
    let expression = optional_string(object, key, at)?;
    if let Some(text) = expression.as_deref().filter(|t| !t.contains("${")) {
        let engine = FhirPath::new().map_err(|e| format!("{}: {e}", at.of(key)))?;
        engine
            .compile(text)
            .map_err(|e| format!("{} is not FHIRPath: {e}", at.of(key)))?;
    }
    Ok(expression)
}

fn required_string(object: &Map<String, Value>, key: &str, at: &Place) -> Result<String, String> {
    match optional_string(object, key, at)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        Some(_) => Err(format!("{} is empty", at.of(key))),
        None => Err(format!("{} is required but missing", at.of(key))),
    }
}

fn optional_bool(
    object: &Map<String, Value>,
    key: &str,
    at: &Place,
) -> Result<Option<bool>, String> {
    match object.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(format!(
            "{} must be a JSON boolean (true or false), not {}",
            at.of(key),
            kind_of(other)
        )),
    }
}

fn optional_integer(
    object: &Map<String, Value>,
    key: &str,
    at: &Place,
) -> Result<Option<i64>, String> {
    match object.get(key) {
        None => Ok(None),
        Some(value) => value
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("{} must be an integer", at.of(key))),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_fixture(
    item: &Value,
    at: &Place,
    contained: &[Value],
    folder: &Path,
) -> Result<Fixture, String> {
    let object = as_object(item, at)?;
    let id = required_string(object, "id", at)?;
    let autocreate = optional_bool(object, "autocreate", at)?.unwrap_or(false);
    let autodelete = optional_bool(object, "autodelete", at)?.unwrap_or(false);
    let resource_place = at.child("resource");
    let reference = match object.get("resource") {
        Some(resource) => required_string(
            as_object(resource, &resource_place)?,
            "reference",
            &resource_place,
        )?,
        None => {
            return Err(format!(
                "{}: fixture {id:?} has no resource reference",
                at.0
            ));
        }
    };
    let resource = if let Some(local) = reference.strip_prefix('#') {
        contained
            .iter()
            .find(|r| r.get("id").and_then(Value::as_str) == Some(local))
            .cloned()
            .ok_or_else(|| {
                format!(
                    "{}: fixture {id:?} references #{local}, but no contained resource has that id",
                    at.0
                )
            })?
    } else if reference.contains("://") {
        return Err(format!(
            "{}: fixture {id:?} references {reference}: only files next to the script and #contained resources are supported",
            at.0
        ));
    } else {
        let path = folder.join(reference.trim_start_matches('/'));
        let text = std::fs::read(&path).map_err(|e| {
            format!(
                "{}: fixture {id:?} references {reference}, which is not a readable file ({}: {e})",
                at.0,
                path.display()
            )
        })?;
        serde_json::from_slice::<Value>(&text).map_err(|e| {
            format!(
                "{}: fixture {id:?} ({}) is not JSON: {e}",
                at.0,
                path.display()
            )
        })?
    };
    // A fixture may be plain JSON (a body for a non-FHIR endpoint), but one the runner
    // creates on the server must be a resource.
    if !resource.is_object() {
        return Err(format!(
            "{}: fixture {id:?} ({reference}) is not a JSON object",
            at.0
        ));
    }
    if autocreate
        && resource
            .get("resourceType")
            .and_then(Value::as_str)
            .is_none()
    {
        return Err(format!(
            "{}: fixture {id:?} ({reference}) is to be autocreated but is not a FHIR resource (no resourceType)",
            at.0
        ));
    }
    Ok(Fixture {
        id,
        autocreate,
        autodelete,
        resource,
    })
}

fn parse_variable(item: &Value, at: &Place) -> Result<Variable, String> {
    let object = as_object(item, at)?;
    let variable = Variable {
        name: required_string(object, "name", at)?,
        default_value: optional_string(object, "defaultValue", at)?,
        expression: optional_expression(object, "expression", at)?,
        header_field: optional_string(object, "headerField", at)?,
        path: optional_string(object, "path", at)?,
        source_id: optional_string(object, "sourceId", at)?,
    };
    // tst-3: at most one way of reading the value.
    let ways = [
        variable.expression.is_some(),
        variable.header_field.is_some(),
        variable.path.is_some(),
    ]
    .into_iter()
    .filter(|b| *b)
    .count();
    if ways > 1 {
        return Err(format!(
            "{}: variable {:?} has more than one of expression, headerField and path (tst-3)",
            at.0, variable.name
        ));
    }
    Ok(variable)
}

fn parse_actions(container: &Value, at: &Place, teardown: bool) -> Result<Vec<Action>, String> {
    let object = as_object(container, at)?;
    let items = optional_array(object, "action", at)?;
    if items.is_empty() {
        return Err(format!("{} has no action (at least one is required)", at.0));
    }
    let mut actions = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let place = at.index("action", i);
        let action = as_object(item, &place)?;
        match (action.get("operation"), action.get("assert")) {
            (Some(operation), None) => actions.push(Action::Operation(Box::new(parse_operation(
                operation,
                &place.child("operation"),
            )?))),
            (None, Some(_)) if teardown => {
                return Err(format!(
                    "{}: a teardown action can only be an operation",
                    place.0
                ));
            }
            (None, Some(assert)) => actions.push(Action::Assert(Box::new(parse_assert(
                assert,
                &place.child("assert"),
            )?))),
            (Some(_), Some(_)) => {
                return Err(format!(
                    "{}: an action is an operation or an assert, not both (tst-1)",
                    place.0
                ));
            }
            (None, None) => {
                return Err(format!("{}: neither operation nor assert", place.0));
            }
        }
    }
    Ok(actions)
}

fn parse_operation(value: &Value, at: &Place) -> Result<Operation, String> {
    let object = as_object(value, at)?;
    let kind = match object.get("type") {
        None => None,
        Some(coding) => Some(required_string(
            as_object(coding, &at.child("type"))?,
            "code",
            &at.child("type"),
        )?),
    };
    let mut request_headers = Vec::new();
    for (i, header) in optional_array(object, "requestHeader", at)?
        .iter()
        .enumerate()
    {
        let place = at.index("requestHeader", i);
        let header = as_object(header, &place)?;
        request_headers.push((
            required_string(header, "field", &place)?,
            optional_string(header, "value", &place)?.unwrap_or_default(),
        ));
    }
    let method = optional_string(object, "method", at)?;
    if let Some(method) = &method
        && !matches!(
            method.as_str(),
            "delete" | "get" | "options" | "patch" | "post" | "put" | "head"
        )
    {
        return Err(format!(
            "{}: method {method:?} is not one of delete, get, options, patch, post, put, head",
            at.0
        ));
    }
    let operation = Operation {
        kind,
        resource: optional_string(object, "resource", at)?,
        label: optional_string(object, "label", at)?,
        description: optional_string(object, "description", at)?,
        accept: optional_string(object, "accept", at)?,
        content_type: optional_string(object, "contentType", at)?,
        destination: optional_integer(object, "destination", at)?,
        encode_request_url: optional_bool(object, "encodeRequestUrl", at)?.unwrap_or(true),
        method,
        params: optional_string(object, "params", at)?,
        request_headers,
        request_id: optional_string(object, "requestId", at)?,
        response_id: optional_string(object, "responseId", at)?,
        source_id: optional_string(object, "sourceId", at)?,
        target_id: optional_string(object, "targetId", at)?,
        url: optional_string(object, "url", at)?,
    };
    // tst-7: the operation must say what it works on.
    let pointers = [&operation.target_id, &operation.url, &operation.params]
        .into_iter()
        .filter(|v| v.is_some())
        .count();
    let needs_no_pointer = matches!(
        operation.kind.as_deref(),
        Some("capabilities" | "search" | "transaction" | "batch" | "history")
    );
    if operation.source_id.is_none() && pointers != 1 && !needs_no_pointer {
        return Err(format!(
            "{}: an operation needs a sourceId, or exactly one of targetId, url and params (tst-7)",
            at.0
        ));
    }
    if operation.kind.is_none() && operation.url.is_none() && operation.method.is_none() {
        return Err(format!(
            "{}: an operation without a type needs a url or a method to say what to send",
            at.0
        ));
    }
    Ok(operation)
}

fn parse_assert(value: &Value, at: &Place) -> Result<Assert, String> {
    let object = as_object(value, at)?;
    let direction = match optional_string(object, "direction", at)?.as_deref() {
        None | Some("response") => Direction::Response,
        Some("request") => Direction::Request,
        Some(other) => {
            return Err(format!(
                "{}: direction {other:?} is not request or response",
                at.0
            ));
        }
    };
    let operator = match optional_string(object, "operator", at)? {
        None => None,
        Some(code) => Some(Operator::parse(&code).ok_or_else(|| {
            format!(
                "{}: operator {code:?} is not an assert-operator-codes code",
                at.0
            )
        })?),
    };
    let response = optional_string(object, "response", at)?;
    if let Some(code) = &response
        && !RESPONSE_CODES.iter().any(|(name, _)| name == code)
    {
        return Err(format!(
            "{}: response {code:?} is not one of {}",
            at.0,
            RESPONSE_CODES
                .iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut assert = Assert {
        label: optional_string(object, "label", at)?,
        description: optional_string(object, "description", at)?,
        direction,
        compare_to_source_id: optional_string(object, "compareToSourceId", at)?,
        compare_to_source_expression: optional_expression(object, "compareToSourceExpression", at)?,
        compare_to_source_path: optional_string(object, "compareToSourcePath", at)?,
        content_type: optional_string(object, "contentType", at)?,
        expression: optional_expression(object, "expression", at)?,
        header_field: optional_string(object, "headerField", at)?,
        minimum_id: optional_string(object, "minimumId", at)?,
        navigation_links: optional_bool(object, "navigationLinks", at)?,
        operator,
        path: optional_string(object, "path", at)?,
        request_method: optional_string(object, "requestMethod", at)?,
        request_url: optional_string(object, "requestURL", at)?,
        resource: optional_string(object, "resource", at)?,
        response,
        response_code: optional_string(object, "responseCode", at)?,
        source_id: optional_string(object, "sourceId", at)?,
        validate_profile_id: optional_string(object, "validateProfileId", at)?,
        value: optional_string(object, "value", at)?,
        warning_only: optional_bool(object, "warningOnly", at)?.unwrap_or(false),
        unsupported: None,
    };
    let checks = [
        assert.content_type.is_some(),
        assert.expression.is_some(),
        assert.header_field.is_some(),
        assert.minimum_id.is_some(),
        assert.navigation_links.is_some(),
        assert.path.is_some(),
        assert.request_method.is_some(),
        assert.request_url.is_some(),
        assert.resource.is_some(),
        assert.response_code.is_some(),
        assert.response.is_some(),
        assert.validate_profile_id.is_some(),
    ]
    .into_iter()
    .filter(|b| *b)
    .count();
    let has_extension = object.contains_key("extension");
    if checks > 1 && !has_extension {
        return Err(format!(
            "{}: an assert makes one check, but this one has {checks} (tst-5)",
            at.0
        ));
    }
    if checks == 0 && assert.compare_to_source_id.is_none() {
        if has_extension {
            assert.unsupported = Some(
                "the assert is defined by an extension (such as a subtest), which this runner does not run".into(),
            );
        } else {
            return Err(format!(
                "{}: the assert checks nothing (no response, responseCode, contentType, headerField, resource, expression, minimumId, validateProfileId, compareToSourceId, requestURL or requestMethod)",
                at.0
            ));
        }
    }
    if assert.compare_to_source_id.is_some()
        && assert.compare_to_source_expression.is_none()
        && assert.compare_to_source_path.is_none()
    {
        return Err(format!(
            "{}: compareToSourceId needs compareToSourceExpression or compareToSourcePath (tst-12)",
            at.0
        ));
    }
    if assert.unsupported.is_none() {
        assert.unsupported = if assert.path.is_some() || assert.compare_to_source_path.is_some() {
            Some("XPath/JSONPath `path` is not supported (use a FHIRPath `expression`)".into())
        } else if assert.navigation_links.is_some() {
            Some("navigationLinks is not supported".into())
        } else {
            None
        };
    }
    let needs_value = matches!(
        assert.operator,
        Some(
            Operator::Equals
                | Operator::NotEquals
                | Operator::In
                | Operator::NotIn
                | Operator::GreaterThan
                | Operator::LessThan
                | Operator::Contains
                | Operator::NotContains
        )
    );
    let has_expected = assert.value.is_some() || assert.compare_to_source_id.is_some();
    // requestURL and requestMethod carry their own expected value.
    let value_is_the_check = assert.header_field.is_some() || assert.expression.is_some();
    if needs_value && !has_expected && value_is_the_check && assert.unsupported.is_none() {
        return Err(format!(
            "{}: operator {} needs a value to compare with",
            at.0,
            assert.operator.map_or("equals", Operator::code)
        ));
    }
    Ok(assert)
}

/// Every id an action or variable names must exist: a fixture, a profile, an earlier
/// `responseId`/`requestId`, a declared variable in `${…}`.
fn check_references(script: &TestScript) -> Result<(), String> {
    let mut variables = HashSet::new();
    for variable in &script.variables {
        if !variables.insert(variable.name.as_str()) {
            return Err(format!("variable {:?} is declared twice", variable.name));
        }
    }
    let mut fixture_ids = HashSet::new();
    for fixture in &script.fixtures {
        if !fixture_ids.insert(fixture.id.as_str()) {
            return Err(format!("fixture {:?} is declared twice", fixture.id));
        }
    }
    let profile_ids: HashSet<&str> = script.profiles.iter().map(|(id, _)| id.as_str()).collect();
    let mut exchange_ids = HashSet::new();
    let sections = std::iter::once(("setup".to_owned(), &script.setup))
        .chain(
            script
                .tests
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("test[{i}]"), &t.actions)),
        )
        .chain(std::iter::once(("teardown".to_owned(), &script.teardown)));
    for (_, actions) in sections.clone() {
        for action in actions {
            if let Action::Operation(op) = action {
                exchange_ids.extend(op.response_id.as_deref());
                exchange_ids.extend(op.request_id.as_deref());
            }
        }
    }
    let is_source = |id: &str| fixture_ids.contains(id) || exchange_ids.contains(id);
    for variable in &script.variables {
        if let Some(source) = &variable.source_id
            && !is_source(source)
        {
            return Err(format!(
                "variable {:?}: sourceId {source:?} is neither a fixture nor a requestId/responseId",
                variable.name
            ));
        }
        // The runner evaluates a variable's expression as written.
        if variable
            .expression
            .as_deref()
            .is_some_and(|e| e.contains("${"))
        {
            return Err(format!(
                "variable {:?}: expression: a variable's expression cannot use ${{…}}; read the other variable's value with its own expression",
                variable.name
            ));
        }
    }
    for (section, actions) in sections {
        for (i, action) in actions.iter().enumerate() {
            let place = format!("{section}.action[{i}]");
            match action {
                Action::Operation(op) => {
                    for (name, id) in [("sourceId", &op.source_id), ("targetId", &op.target_id)] {
                        if let Some(id) = id
                            && !is_source(id)
                        {
                            return Err(format!(
                                "{place}.operation: {name} {id:?} is neither a fixture nor a requestId/responseId"
                            ));
                        }
                    }
                    for text in [&op.url, &op.params, &op.resource]
                        .into_iter()
                        .flatten()
                        .chain(op.request_headers.iter().map(|(_, v)| v))
                    {
                        check_variables_in(Some(text), &variables, &format!("{place}.operation"))?;
                    }
                }
                Action::Assert(assert) => {
                    for (name, id) in [
                        ("sourceId", &assert.source_id),
                        ("compareToSourceId", &assert.compare_to_source_id),
                        ("minimumId", &assert.minimum_id),
                    ] {
                        if let Some(id) = id
                            && !is_source(id)
                        {
                            return Err(format!(
                                "{place}.assert: {name} {id:?} is neither a fixture nor a requestId/responseId"
                            ));
                        }
                    }
                    if let Some(profile) = &assert.validate_profile_id
                        && !profile_ids.contains(profile.as_str())
                    {
                        return Err(format!(
                            "{place}.assert: validateProfileId {profile:?} is not a profile[].id of the script"
                        ));
                    }
                    for text in [
                        &assert.value,
                        &assert.expression,
                        &assert.compare_to_source_expression,
                        &assert.header_field,
                        &assert.request_url,
                        &assert.content_type,
                        &assert.response_code,
                        &assert.resource,
                    ]
                    .into_iter()
                    .flatten()
                    {
                        check_variables_in(Some(text), &variables, &format!("{place}.assert"))?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn check_variables_in(
    text: Option<&str>,
    declared: &HashSet<&str>,
    place: &str,
) -> Result<(), String> {
    let Some(text) = text else { return Ok(()) };
    for name in variable_names(text) {
        if !declared.contains(name) {
            return Err(format!(
                "{place}: ${{{name}}} names a variable the script does not declare"
            ));
        }
    }
    Ok(())
}

/// The names in `${name}` placeholders of `text`, in order.
pub fn variable_names(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some((_, name, after)) = next_placeholder(rest) {
        names.push(name);
        rest = after;
    }
    names
}

/// `text` with each `${name}` replaced by `value(name)`; `Ok(None)` keeps the placeholder
/// as written. The one scanner behind [`variable_names`], so what the load checks is what
/// the run fills in.
pub fn fill_placeholders<E>(
    text: &str,
    mut value: impl FnMut(&str) -> Result<Option<String>, E>,
) -> Result<String, E> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((before, name, after)) = next_placeholder(rest) {
        out.push_str(before);
        match value(name)? {
            Some(filled) => out.push_str(&filled),
            None => {
                out.push_str("${");
                out.push_str(name);
                out.push('}');
            }
        }
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

/// The first `${name}` of `text`: what precedes it, the name, what follows it. An
/// unclosed `${` is no placeholder.
fn next_placeholder(text: &str) -> Option<(&str, &str, &str)> {
    let start = text.find("${")?;
    let after = &text[start + 2..];
    let end = after.find('}')?;
    Some((&text[..start], &after[..end], &after[end + 1..]))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn minimal() -> Value {
        json!({
            "resourceType": "TestScript", "url": "http://example.org/ts", "name": "T", "status": "draft",
            "variable": [{"name": "id", "defaultValue": "1"}],
            "test": [{"action": [
                {"operation": {"type": {"code": "read"}, "resource": "Patient", "params": "/${id}", "responseId": "r"}},
                {"assert": {"response": "okay", "sourceId": "r"}}
            ]}]
        })
    }

    fn problem(edit: impl FnOnce(&mut Value)) -> String {
        let mut json = minimal();
        edit(&mut json);
        parse(&json, Path::new(".")).expect_err("refused")
    }

    #[test]
    fn a_well_formed_script_is_read() {
        let script = parse(&minimal(), Path::new(".")).expect("valid");
        assert_eq!(script.tests.len(), 1);
        assert_eq!(script.tests[0].actions.len(), 2);
        let Action::Operation(op) = &script.tests[0].actions[0] else {
            panic!("an operation")
        };
        assert_eq!(op.kind.as_deref(), Some("read"));
        assert!(op.encode_request_url, "the default");
    }

    #[test]
    fn malformed_scripts_are_refused_with_the_element_and_the_problem() {
        assert_eq!(
            parse(&json!([1]), Path::new(".")).expect_err("refused"),
            "not a TestScript: the file is not a JSON object"
        );
        assert!(
            problem(|j| j["resourceType"] = json!("TestReport"))
                .contains("its resourceType is \"TestReport\"")
        );
        assert!(
            problem(|j| {
                j.as_object_mut().unwrap().shift_remove("name");
            })
            .contains("name is required")
        );
        assert!(problem(|j| j["status"] = json!("done")).contains("status \"done\""));
        assert!(problem(|j| j["test"][0]["action"] = json!([])).contains("test[0] has no action"));
        assert!(
            problem(|j| j["test"][0]["action"][1]["assert"]["warningOnly"] = json!("false"))
                .contains("test[0].action[1].assert.warningOnly must be a JSON boolean")
        );
        assert!(
            problem(|j| j["test"][0]["action"][1] = json!({"assert": {"label": "nothing"}}))
                .contains("checks nothing")
        );
        assert!(
            problem(|j| j["test"][0]["action"][1]["assert"]["resource"] = json!("Patient"))
                .contains("tst-5")
        );
        assert!(
            problem(|j| j["test"][0]["action"][1]["assert"]["operator"] = json!("like"))
                .contains("operator \"like\"")
        );
        assert!(
            problem(|j| j["test"][0]["action"][1]["assert"]["response"] = json!("fine"))
                .contains("response \"fine\"")
        );
        assert!(
            problem(|j| j["test"][0]["action"][1]["assert"]["sourceId"] = json!("nowhere"))
                .contains("sourceId \"nowhere\" is neither a fixture nor a requestId/responseId")
        );
        assert!(
            problem(|j| j["test"][0]["action"][1] =
                json!({"assert": {"expression": "name.where(given = 'x'"}}))
            .contains("test[0].action[1].assert.expression is not FHIRPath")
        );
        assert!(
            problem(
                |j| j["variable"] = json!([{"name": "a", "defaultValue": "x"},
                       {"name": "b", "expression": "${a}.exists()"}])
            )
            .contains("variable \"b\": expression: a variable's expression cannot use ${…}")
        );
        assert!(
            problem(|j| j["test"][0]["action"][0]["operation"]["params"] = json!("/${undeclared}"))
                .contains("${undeclared} names a variable the script does not declare")
        );
        assert!(
            problem(|j| j["test"][0]["action"][1] =
                json!({"assert": {"responseCode": "${undeclared}"}}))
            .contains("${undeclared} names a variable the script does not declare"),
            "every assert text the run fills in is checked at load"
        );
        assert!(
            problem(|j| j["test"][0]["action"][0]["operation"]["url"] = json!("http://x"))
                .contains("tst-7")
        );
        assert!(
            problem(|j| j["test"][0]["action"][1]["assert"]["validateProfileId"] = json!("p"))
                .contains("tst-5")
        );
        assert!(
            problem(|j| j["test"][0]["action"][1] = json!({"assert": {"validateProfileId": "p"}}))
                .contains("validateProfileId \"p\" is not a profile[].id")
        );
        assert!(
            problem(|j| j["fixture"] = json!([{"id": "f", "resource": {"reference": "#missing"}}]))
                .contains("no contained resource has that id")
        );
        assert!(
            problem(|j| j["fixture"] =
                json!([{"id": "f", "resource": {"reference": "no/such/file.json"}}]))
            .contains("not a readable file")
        );
        assert!(
            problem(|j| j["teardown"] = json!({"action": [{"assert": {"response": "okay"}}]}))
                .contains("a teardown action can only be an operation")
        );
        assert!(
            problem(|j| j["variable"] = json!([{"name": "id"}, {"name": "id"}]))
                .contains("declared twice")
        );
        assert!(
            problem(|j| j["variable"] = json!([{"name": "id", "expression": "a", "path": "b"}]))
                .contains("tst-3")
        );
    }

    #[test]
    fn contained_fixtures_and_unsupported_checks() {
        let mut json = minimal();
        json["contained"] = json!([{"resourceType": "Patient", "id": "p"}]);
        json["fixture"] = json!([{"id": "f", "autocreate": true, "autodelete": true, "resource": {"reference": "#p"}}]);
        json["test"][0]["action"][1] = json!({"assert": {"path": "fhir:Patient", "value": "x"}});
        let script = parse(&json, Path::new(".")).expect("valid");
        assert_eq!(script.fixtures[0].resource["id"], "p");
        let Action::Assert(assert) = &script.tests[0].actions[1] else {
            panic!("an assert")
        };
        assert!(
            assert
                .unsupported
                .as_deref()
                .is_some_and(|r| r.contains("XPath"))
        );
    }

    #[test]
    fn placeholders_are_found() {
        assert_eq!(variable_names("a${x}b${yy}c${"), ["x", "yy"]);
        assert!(variable_names("no placeholders {x}").is_empty());
        let filled = fill_placeholders("a${x}b${keep}c${", |name| {
            Ok::<_, ()>((name == "x").then(|| "1".to_owned()))
        });
        assert_eq!(filled, Ok("a1b${keep}c${".to_owned()));
    }
}
