//! Running a checked [`TestScript`] against a FHIR server over HTTP: fixtures
//! (autocreate/autodelete), `${variables}`, setup, tests and teardown. Assertions are
//! evaluated by the pure [`super::assert::evaluate`]; this module only sends requests and
//! keeps what came back.
//!
//! Order of play: autocreate fixtures, then setup; a failed setup skips every test. In a
//! test, the first failed assert or operation ends the test (the rest are reported as
//! skipped, with the reason). Teardown and autodelete always run; their failures are
//! warnings, since the tests' verdict is already made.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::Value;
use time::OffsetDateTime;

use super::assert::{self, Exchange, ProfileCheck, Response, Sources, Tools, Verdict, mime_for};
use super::script::{
    Action, Assert, Operation, TestScript, Variable, fill_placeholders, variable_names,
};
use super::{ActionRun, ScriptRun, Sections, TestRun};
use crate::fhirpath::FhirPath;

/// What the runner needs to start.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// The FHIR base URL of the server under test (`http://host:port/fhir`).
    pub target: reqwest::Url,
    /// `--var name=value`: values that override a variable's own.
    pub variables: HashMap<String, String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// An access token sent as `Authorization: Bearer` on every request (a secured
    /// server's; see README "Security" for how a client gets one).
    pub bearer_token: Option<String>,
}

/// Why the runner cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// The access token cannot be sent as a header (it holds a control character).
    #[error("the access token is not a valid header value")]
    Token,
    /// The FHIRPath model could not be loaded (a build defect).
    #[error("cannot load the FHIRPath engine: {0}")]
    FhirPath(#[from] crate::fhirpath::FhirPathError),
}

/// Runs scripts against one server.
pub struct Runner {
    options: RunnerOptions,
    client: reqwest::Client,
    fhirpath: FhirPath,
    /// Loaded at most once; a failure is kept, and fails each profile check that needed it.
    validator: tokio::sync::OnceCell<Result<Arc<dyn ProfileCheck>, String>>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("target", &self.options.target.as_str())
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// A runner against `options.target`. The profile validator is loaded the first time
    /// a script asks for `validateProfileId`.
    pub fn new(options: RunnerOptions) -> Result<Runner, RunnerError> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &options.bearer_token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| RunnerError::Token)?;
            // Kept out of any debug output of the client.
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(options.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Runner {
            options,
            client,
            fhirpath: FhirPath::new()?,
            validator: tokio::sync::OnceCell::new(),
        })
    }

    /// Uses `validator` for `validateProfileId` instead of loading Sprig's.
    pub fn with_validator(self, validator: Arc<dyn ProfileCheck>) -> Runner {
        let cell = tokio::sync::OnceCell::new();
        let _ = cell.set(Ok(validator));
        Runner {
            validator: cell,
            ..self
        }
    }

    async fn validator(&self) -> Result<Arc<dyn ProfileCheck>, String> {
        self.validator
            .get_or_init(|| async {
                match tokio::task::spawn_blocking(super::load_validator).await {
                    Ok(Ok(validator)) => Ok(Arc::new(validator) as Arc<dyn ProfileCheck>),
                    Ok(Err(error)) => Err(format!(
                        "the profile validator could not be loaded: {error}"
                    )),
                    Err(error) => Err(format!("loading the profile validator failed: {error}")),
                }
            })
            .await
            .clone()
    }

    /// Runs one script.
    pub async fn run(&self, script: &TestScript) -> ScriptRun {
        let started = OffsetDateTime::now_utc();
        let needs_validator = all_actions(script).any(|action| {
            matches!(action, Action::Assert(a) if a.validate_profile_id.is_some() && a.unsupported.is_none())
        });
        let validator = if needs_validator {
            self.validator().await
        } else {
            Err("not loaded: the script checks no profile".to_owned())
        };
        let mut state = State::new(self, script, validator);
        let sections = state.play().await;
        ScriptRun {
            file: script.file.clone(),
            name: script.name.clone(),
            title: script.title.clone(),
            url: Some(script.url.clone()),
            id: script.id.clone(),
            started,
            outcome: Ok(sections),
        }
    }
}

impl Runner {
    /// Loads and runs the script in `file`; a malformed one is reported as rejected and
    /// nothing of it is sent.
    pub async fn run_file(&self, file: &Path) -> ScriptRun {
        match super::script::load(file) {
            Ok(script) => self.run(&script).await,
            Err(error) => ScriptRun::rejected(&error),
        }
    }
}

fn all_actions(script: &TestScript) -> impl Iterator<Item = &Action> {
    script
        .setup
        .iter()
        .chain(script.tests.iter().flat_map(|t| t.actions.iter()))
        .chain(script.teardown.iter())
}

/// Why a variable has no value.
enum Unresolved {
    /// The variable needs something the runner does not support.
    Unsupported(String),
    /// Nothing gives it a value (yet).
    Missing(String),
}

impl Unresolved {
    fn verdict(self) -> Verdict {
        match self {
            Unresolved::Unsupported(reason) => Verdict::Skip(reason),
            Unresolved::Missing(reason) => Verdict::Error(reason),
        }
    }
}

/// A script's run: what has been sent and received so far.
struct State<'r> {
    runner: &'r Runner,
    script: &'r TestScript,
    validator: Result<Arc<dyn ProfileCheck>, String>,
    /// Values fixed for the whole run: `--var`s, then variables read from static fixtures
    /// (evaluated once, so `now()` gives one value per run).
    fixed: HashMap<String, String>,
    /// Autocreated fixtures: id → the resource on the server.
    created: HashMap<String, Target>,
    exchanges: HashMap<String, Arc<Exchange>>,
    last: Option<Arc<Exchange>>,
    /// The last operation was skipped: the asserts after it have nothing of theirs to check.
    last_operation_skipped: bool,
}

impl<'r> State<'r> {
    fn new(
        runner: &'r Runner,
        script: &'r TestScript,
        validator: Result<Arc<dyn ProfileCheck>, String>,
    ) -> State<'r> {
        let mut state = State {
            runner,
            script,
            validator,
            fixed: runner.options.variables.clone(),
            created: HashMap::new(),
            exchanges: HashMap::new(),
            last: None,
            last_operation_skipped: false,
        };
        for variable in &script.variables {
            if state.fixed.contains_key(&variable.name) {
                continue;
            }
            let from_fixture = variable
                .source_id
                .as_deref()
                .and_then(|id| script.fixtures.iter().find(|f| f.id == id));
            if let (Some(fixture), Some(expression)) = (from_fixture, &variable.expression)
                && let Ok(Some(value)) =
                    first_value(&runner.fhirpath, expression, &fixture.resource)
            {
                state.fixed.insert(variable.name.clone(), value);
            }
        }
        state
    }

    async fn play(&mut self) -> Sections {
        let mut setup = Vec::new();
        let mut failed = false;
        for fixture in self.script.fixtures.iter().filter(|f| f.autocreate) {
            let run = self.autocreate(&fixture.id).await;
            failed |= run.verdict.is_failure();
            setup.push(run);
        }
        for action in &self.script.setup {
            if failed {
                setup.push(skipped(action, "an earlier setup action failed"));
                continue;
            }
            let run = self.act(action).await;
            failed |= run.verdict.is_failure();
            setup.push(run);
        }
        let mut tests = Vec::new();
        for (i, test) in self.script.tests.iter().enumerate() {
            let mut actions = Vec::new();
            let mut stopped = failed.then(|| "setup failed, so the test was not run".to_owned());
            for action in &test.actions {
                if let Some(reason) = &stopped {
                    actions.push(skipped(action, reason));
                    continue;
                }
                let run = self.act(action).await;
                if run.verdict.is_failure() {
                    stopped = Some("an earlier action of this test failed".to_owned());
                }
                actions.push(run);
            }
            tests.push(TestRun {
                name: test
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("test {}", i + 1)),
                description: test.description.clone(),
                actions,
            });
        }
        let mut teardown = Vec::new();
        for action in &self.script.teardown {
            let mut run = self.act(action).await;
            run.verdict = soften(run.verdict);
            teardown.push(run);
        }
        for fixture in self.script.fixtures.iter().filter(|f| f.autodelete) {
            let mut run = self.autodelete(&fixture.id).await;
            run.verdict = soften(run.verdict);
            teardown.push(run);
        }
        Sections {
            setup,
            tests,
            teardown,
        }
    }

    async fn act(&mut self, action: &Action) -> ActionRun {
        match action {
            Action::Operation(operation) => {
                let verdict = self.operate(operation).await;
                self.last_operation_skipped = matches!(verdict, Verdict::Skip(_));
                ActionRun {
                    is_assert: false,
                    title: operation.title(),
                    verdict,
                }
            }
            Action::Assert(assert) => ActionRun {
                is_assert: true,
                title: assert.title(),
                verdict: self.check(assert),
            },
        }
    }

    fn check(&self, assert: &Assert) -> Verdict {
        if let Some(reason) = &assert.unsupported {
            return Verdict::Skip(reason.clone());
        }
        if self.last_operation_skipped && assert.source_id.is_none() {
            return Verdict::Skip("the operation it checks was skipped".into());
        }
        let mut resolved = assert.clone();
        for field in [
            &mut resolved.value,
            &mut resolved.expression,
            &mut resolved.compare_to_source_expression,
            &mut resolved.header_field,
            &mut resolved.request_url,
            &mut resolved.content_type,
            &mut resolved.response_code,
            &mut resolved.resource,
        ] {
            if let Some(text) = field.as_mut() {
                match self.substitute(text) {
                    Ok(value) => *text = value,
                    Err(problem) => return problem.verdict(),
                }
            }
        }
        // Only the fixtures this assert names: filling in every fixture's variables for
        // every assert re-serialised whole Bundles for nothing.
        let named: Vec<&str> = [
            &resolved.source_id,
            &resolved.minimum_id,
            &resolved.compare_to_source_id,
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
        let fixtures = self.fixtures_as_sent(&named);
        let sources = Sources {
            fixtures: &fixtures,
            exchanges: &self.exchanges,
            last: self.last.as_deref(),
        };
        // A profile check asked for whose validator could not be loaded is an
        // error of the run (a warning if the assert is warningOnly), not a skip:
        // the script would otherwise pass unchecked.
        if resolved.validate_profile_id.is_some()
            && let Err(why) = &self.validator
        {
            return assert::not_checked(&resolved, why.clone());
        }
        let tools = Tools {
            fhirpath: &self.runner.fhirpath,
            profiles: &self.script.profiles,
            validator: self.validator.as_deref().ok(),
        };
        assert::evaluate(&resolved, &sources, &tools)
    }

    /// The fixtures among `ids`, with their `${variables}` filled in where they can be (as
    /// they would be sent); a fixture with an unresolvable variable is used as written.
    fn fixtures_as_sent(&self, ids: &[&str]) -> HashMap<String, Value> {
        self.script
            .fixtures
            .iter()
            .filter(|f| ids.contains(&f.id.as_str()))
            .map(|f| {
                let body = self
                    .body_of(&f.resource)
                    .unwrap_or_else(|_| f.resource.clone());
                (f.id.clone(), body)
            })
            .collect()
    }

    /// A body with its declared `${variables}` substituted (values JSON-escaped).
    fn body_of(&self, resource: &Value) -> Result<Value, Unresolved> {
        let text = resource.to_string();
        if variable_names(&text).is_empty() {
            return Ok(resource.clone());
        }
        let filled = fill_placeholders(&text, |name| {
            // An undeclared `${…}` is the resource's own text, not a placeholder.
            if !self.script.variables.iter().any(|v| v.name == name) {
                return Ok(None);
            }
            // The value lands inside a JSON string: escape it as JSON would.
            let escaped = Value::String(self.variable(name)?).to_string();
            Ok(Some(escaped[1..escaped.len() - 1].to_owned()))
        })?;
        serde_json::from_str(&filled).map_err(|e| {
            Unresolved::Missing(format!(
                "the body is not JSON once variables are filled in: {e}"
            ))
        })
    }

    /// `text` with every `${name}` replaced by the variable's value.
    fn substitute(&self, text: &str) -> Result<String, Unresolved> {
        fill_placeholders(text, |name| self.variable(name).map(Some))
    }

    fn variable(&self, name: &str) -> Result<String, Unresolved> {
        if let Some(value) = self.fixed.get(name) {
            return Ok(value.clone());
        }
        let Some(variable) = self.script.variables.iter().find(|v| v.name == name) else {
            return Err(Unresolved::Missing(format!(
                "variable {name} is not declared"
            )));
        };
        match self.read_variable(variable) {
            Ok(Some(value)) => Ok(value),
            Ok(None) => variable.default_value.clone().ok_or_else(|| {
                Unresolved::Missing(format!(
                    "variable {name} has no value (nothing to read it from yet and no defaultValue); give one with --var {name}=VALUE"
                ))
            }),
            Err(Unresolved::Missing(reason)) => variable
                .default_value
                .clone()
                .ok_or(Unresolved::Missing(reason)),
            Err(unsupported) => Err(unsupported),
        }
    }

    fn read_variable(&self, variable: &Variable) -> Result<Option<String>, Unresolved> {
        if variable.path.is_some() {
            return Err(Unresolved::Unsupported(format!(
                "variable {} uses an XPath/JSONPath path, which is not supported (use expression)",
                variable.name
            )));
        }
        let source = variable.source_id.as_deref();
        if let Some(header) = &variable.header_field {
            let exchange = match source {
                Some(id) => self.exchanges.get(id).map(Arc::as_ref),
                None => self.last.as_deref(),
            };
            return Ok(exchange
                .and_then(|e| e.response.as_ref())
                .and_then(|r| r.header(header).first().map(|v| (*v).to_owned())));
        }
        let Some(expression) = &variable.expression else {
            return Ok(None);
        };
        let body = match source {
            Some(id) => match self.script.fixtures.iter().find(|f| f.id == id) {
                Some(fixture) => Some(&fixture.resource),
                None => self
                    .exchanges
                    .get(id)
                    .and_then(|e| e.response.as_ref())
                    .and_then(|r| r.body.as_ref()),
            },
            None => self
                .last
                .as_ref()
                .and_then(|e| e.response.as_ref())
                .and_then(|r| r.body.as_ref()),
        };
        let Some(body) = body else { return Ok(None) };
        first_value(&self.runner.fhirpath, expression, body)
            .map_err(|e| Unresolved::Missing(format!("variable {}: {e}", variable.name)))
    }

    async fn autocreate(&mut self, fixture_id: &str) -> ActionRun {
        let title = format!("autocreate fixture {fixture_id}");
        let Some(fixture) = self.script.fixtures.iter().find(|f| f.id == fixture_id) else {
            return ActionRun::operation(title, Verdict::Error("no such fixture".into()));
        };
        let body = match self.body_of(&fixture.resource) {
            Ok(body) => body,
            Err(problem) => return ActionRun::operation(title, problem.verdict()),
        };
        let resource_type = body
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let url = self.url(&resource_type);
        let exchange = self
            .send(Method::POST, url, Vec::new(), Some(body), None, None)
            .await;
        let verdict = match &exchange.response {
            Some(response) if (200..300).contains(&response.status) => match target_of(&exchange) {
                Some(target) => {
                    let verdict = Verdict::Pass(format!("created {target} ({})", response.status));
                    self.created.insert(fixture_id.to_owned(), target);
                    verdict
                }
                None => Verdict::Error(format!(
                    "the server answered {} but said neither Location nor id",
                    response.status
                )),
            },
            Some(response) => Verdict::Error(format!(
                "the server refused to create it: HTTP {}",
                response.status
            )),
            None => Verdict::Error(exchange_error(&exchange)),
        };
        self.remember(exchange, None, None);
        ActionRun::operation(title, verdict)
    }

    async fn autodelete(&mut self, fixture_id: &str) -> ActionRun {
        let title = format!("autodelete fixture {fixture_id}");
        let Some(target) = self.created.get(fixture_id).cloned() else {
            return ActionRun::operation(
                title,
                Verdict::Skip("the fixture was not created, so there is nothing to delete".into()),
            );
        };
        // The resource, not the version its create answered with: FHIR deletes
        // `[type]/[id]`, and `DELETE …/_history/1` is another interaction.
        let url = self.url(&target.instance());
        let exchange = self
            .send(Method::DELETE, url, Vec::new(), None, None, None)
            .await;
        let verdict = match &exchange.response {
            Some(r) if (200..300).contains(&r.status) => {
                Verdict::Pass(format!("deleted {target} ({})", r.status))
            }
            Some(r) => Verdict::Fail(format!("DELETE {target}: HTTP {}", r.status)),
            None => Verdict::Error(exchange_error(&exchange)),
        };
        self.remember(exchange, None, None);
        ActionRun::operation(title, verdict)
    }

    fn url(&self, path: &str) -> String {
        let base = self.runner.options.target.as_str().trim_end_matches('/');
        if path.is_empty() {
            base.to_owned()
        } else {
            format!("{base}/{}", path.trim_start_matches('/'))
        }
    }

    /// The `Type/id` (and version) a `targetId` names.
    fn target(&self, id: &str) -> Option<Target> {
        if let Some(created) = self.created.get(id) {
            return Some(created.clone());
        }
        if let Some(exchange) = self.exchanges.get(id) {
            return target_of(exchange);
        }
        let fixture = self.script.fixtures.iter().find(|f| f.id == id)?;
        let body = self.body_of(&fixture.resource).ok()?;
        Some(Target {
            resource_type: body.get("resourceType")?.as_str()?.to_owned(),
            id: body.get("id")?.as_str()?.to_owned(),
            version: None,
        })
    }

    async fn operate(&mut self, op: &Operation) -> Verdict {
        if self.script.destinations > 1 && op.destination.unwrap_or(1) != 1 {
            return Verdict::Skip(format!(
                "the operation is aimed at destination {}; the runner drives one server (--target), destination 1",
                op.destination.unwrap_or(1)
            ));
        }
        let body = match &op.source_id {
            None => None,
            Some(id) => match self.source_body(id) {
                Ok(body) => Some(body),
                Err(problem) => return problem.verdict(),
            },
        };
        let target = match &op.target_id {
            None => None,
            Some(id) => match self.target(id) {
                Some(target) => Some(target),
                None => {
                    return Verdict::Error(format!(
                        "targetId {id:?} names no resource yet (no id in its response or fixture)"
                    ));
                }
            },
        };
        let resource_type = match &op.resource {
            Some(resource) => match self.substitute(resource) {
                Ok(resource) => Some(resource),
                Err(problem) => return problem.verdict(),
            },
            None => body
                .as_ref()
                .and_then(|b| b.get("resourceType"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| target.as_ref().map(|t| t.resource_type.clone())),
        };
        let kind = op.kind.as_deref();
        let method = match method_of(op, kind, body.is_some()) {
            Ok(method) => method,
            Err(reason) => return Verdict::Skip(reason),
        };
        let url = match self.request_url(
            op,
            kind,
            resource_type.as_deref(),
            target.as_ref(),
            body.as_ref(),
        ) {
            Ok(url) => url,
            Err(problem) => return problem.verdict(),
        };
        let mut headers = Vec::new();
        for (field, value) in &op.request_headers {
            match self.substitute(value) {
                Ok(value) => headers.push((field.clone(), value)),
                Err(problem) => return problem.verdict(),
            }
        }
        let accept = op.accept.as_deref().map(mime_for);
        let content_type = op.content_type.as_deref().map(mime_for);
        let exchange = self
            .send(method, url, headers, body, accept, content_type)
            .await;
        let verdict = match &exchange.response {
            Some(response) => Verdict::Pass(format!(
                "{} {} → HTTP {}",
                exchange.method, exchange.url, response.status
            )),
            None => Verdict::Error(exchange_error(&exchange)),
        };
        self.remember(
            exchange,
            op.request_id.as_deref(),
            op.response_id.as_deref(),
        );
        verdict
    }

    fn source_body(&self, id: &str) -> Result<Value, Unresolved> {
        if let Some(fixture) = self.script.fixtures.iter().find(|f| f.id == id) {
            return self.body_of(&fixture.resource);
        }
        self.exchanges
            .get(id)
            .and_then(|e| e.response.as_ref())
            .and_then(|r| r.body.clone())
            .ok_or_else(|| Unresolved::Missing(format!("sourceId {id:?} has no JSON body (yet)")))
    }

    fn request_url(
        &self,
        op: &Operation,
        kind: Option<&str>,
        resource_type: Option<&str>,
        target: Option<&Target>,
        body: Option<&Value>,
    ) -> Result<String, Unresolved> {
        if let Some(url) = &op.url {
            let url = self.substitute(url)?;
            return Ok(
                if url.starts_with("http://") || url.starts_with("https://") {
                    url
                } else {
                    self.url(&url)
                },
            );
        }
        let typed = |suffix: &str| -> Result<String, Unresolved> {
            let resource_type = resource_type.ok_or_else(|| {
                Unresolved::Missing(
                    "the operation names no resource type (resource, sourceId or targetId)".into(),
                )
            })?;
            Ok(self.url(&format!("{resource_type}{suffix}")))
        };
        if let Some(params) = &op.params {
            let params = self.substitute(params)?;
            return match kind {
                Some("validate") => typed(&format!("/$validate{params}")),
                _ => typed(&params),
            };
        }
        let instance = |suffix: &str| -> Result<String, Unresolved> {
            if let Some(target) = target {
                return Ok(self.url(&format!("{}{suffix}", target.instance())));
            }
            let id = body
                .and_then(|b| b.get("id"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    Unresolved::Missing(
                        "the operation names no resource (targetId, params or an id in the body)"
                            .into(),
                    )
                })?;
            typed(&format!("/{id}{suffix}"))
        };
        match kind {
            Some("read" | "update" | "delete" | "patch") => instance(""),
            Some("vread") => {
                let version = target.and_then(|t| t.version.clone()).ok_or_else(|| {
                    Unresolved::Missing(
                        "vread needs a targetId whose response named a version".into(),
                    )
                })?;
                instance(&format!("/_history/{version}"))
            }
            Some("history") if target.is_some() => instance("/_history"),
            Some("history") => match resource_type {
                Some(_) => typed("/_history"),
                None => Ok(self.url("_history")),
            },
            Some("create" | "search") => typed(""),
            Some("transaction" | "batch") => Ok(self.url("")),
            Some("capabilities") => Ok(self.url("metadata")),
            Some("process-message") => Ok(self.url("$process-message")),
            Some("validate") => match resource_type {
                Some(_) => typed("/$validate"),
                None => Ok(self.url("$validate")),
            },
            _ => typed(""),
        }
    }

    async fn send(
        &self,
        method: Method,
        url: String,
        headers: Vec<(String, String)>,
        body: Option<Value>,
        accept: Option<&str>,
        content_type: Option<&str>,
    ) -> Exchange {
        let mut sent_headers = vec![(
            "accept".to_owned(),
            accept.unwrap_or("application/fhir+json").to_owned(),
        )];
        if body.is_some() {
            sent_headers.push((
                "content-type".to_owned(),
                content_type.unwrap_or("application/fhir+json").to_owned(),
            ));
        }
        for (name, value) in headers {
            sent_headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
            sent_headers.push((name.to_ascii_lowercase(), value));
        }
        let mut exchange = Exchange {
            method: method.as_str().to_owned(),
            url: url.clone(),
            request_headers: sent_headers.clone(),
            request_body: body.clone(),
            response: None,
        };
        let mut request = self.runner.client.request(method, &url);
        for (name, value) in &sent_headers {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(name), Ok(value)) => request = request.header(name, value),
                _ => {
                    exchange.url = format!("{url} (header {name:?} is not a valid HTTP header)");
                    return exchange;
                }
            }
        }
        if let Some(body) = &body {
            request = request.body(body.to_string());
        }
        // Not the URL: a search's query can carry an NHS number or a name.
        tracing::debug!(method = %exchange.method, "conformance request");
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let headers: Vec<(String, String)> = response
                    .headers()
                    .iter()
                    .map(|(name, value)| {
                        (
                            name.as_str().to_owned(),
                            String::from_utf8_lossy(value.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                let body = match response.bytes().await {
                    Ok(bytes) => serde_json::from_slice(&bytes).ok(),
                    Err(error) => {
                        // reqwest's message names the URL, which the logs must not carry.
                        let error = error.without_url();
                        tracing::warn!(%error, "conformance: reading the response body failed");
                        None
                    }
                };
                exchange.response = Some(Response {
                    status,
                    headers,
                    body,
                });
            }
            Err(error) => {
                // The URL is already there: reqwest's own message would repeat it.
                let error = error.without_url();
                exchange.url = format!("{url} (not sent: {})", error_chain(&error));
            }
        }
        exchange
    }

    fn remember(
        &mut self,
        exchange: Exchange,
        request_id: Option<&str>,
        response_id: Option<&str>,
    ) {
        let exchange = Arc::new(exchange);
        for id in [request_id, response_id].into_iter().flatten() {
            self.exchanges.insert(id.to_owned(), Arc::clone(&exchange));
        }
        self.last = Some(exchange);
    }
}

/// A resource on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    resource_type: String,
    id: String,
    version: Option<String>,
}

impl std::fmt::Display for Target {
    /// `Type/id`, or `Type/id/_history/vid` when the version is known.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.instance())?;
        match &self.version {
            Some(version) => write!(f, "/_history/{version}"),
            None => Ok(()),
        }
    }
}

impl Target {
    /// `Type/id`: the resource, whichever version was seen.
    fn instance(&self) -> String {
        format!("{}/{}", self.resource_type, self.id)
    }

    /// `Type/id`, `Type/id/_history/vid`, or an absolute URL ending in either.
    fn parse(reference: &str) -> Option<Target> {
        let parts: Vec<&str> = reference.trim_end_matches('/').split('/').collect();
        let (resource_type, id, version) = match parts.as_slice() {
            [.., t, id, "_history", v] => (*t, *id, Some((*v).to_owned())),
            [.., t, id] => (*t, *id, None),
            _ => return None,
        };
        if !resource_type.starts_with(|c: char| c.is_ascii_uppercase()) || id.is_empty() {
            return None;
        }
        Some(Target {
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
            version,
        })
    }
}

/// What an exchange created or returned: its `Location`, else the body's type, id and
/// version.
fn target_of(exchange: &Exchange) -> Option<Target> {
    let response = exchange.response.as_ref()?;
    let location = response
        .header("location")
        .first()
        .or(response.header("content-location").first())
        .and_then(|l| Target::parse(l));
    if location.is_some() {
        return location;
    }
    let body = response.body.as_ref()?;
    let id = body.get("id")?.as_str().filter(|id| !id.is_empty())?;
    Some(Target {
        resource_type: body.get("resourceType")?.as_str()?.to_owned(),
        id: id.to_owned(),
        version: body
            .pointer("/meta/versionId")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

fn method_of(op: &Operation, kind: Option<&str>, has_body: bool) -> Result<Method, String> {
    if let Some(method) = &op.method {
        return Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("method {method:?} is not an HTTP method"));
    }
    Ok(match kind {
        Some("read" | "vread" | "search" | "history" | "capabilities") => Method::GET,
        Some("create" | "transaction" | "batch" | "validate" | "process-message") => Method::POST,
        Some("update") => Method::PUT,
        Some("delete") => Method::DELETE,
        Some(other) if op.url.is_none() => {
            return Err(format!(
                "operation type {other:?} is not supported without a url and method"
            ));
        }
        _ if has_body => Method::POST,
        _ => Method::GET,
    })
}

/// The first value `expression` gives on `body`, as assert values are written.
fn first_value(
    engine: &FhirPath,
    expression: &str,
    body: &Value,
) -> Result<Option<String>, String> {
    let result = assert::evaluate_path(engine, expression, body)?;
    Ok(result.items().first().map(assert::item_text))
}

fn skipped(action: &Action, reason: &str) -> ActionRun {
    match action {
        Action::Operation(op) => ActionRun::operation(op.title(), Verdict::Skip(reason.to_owned())),
        Action::Assert(a) => ActionRun {
            is_assert: true,
            title: a.title(),
            verdict: Verdict::Skip(reason.to_owned()),
        },
    }
}

/// Teardown runs after the verdict: a failure there is reported but does not fail the
/// script.
fn soften(verdict: Verdict) -> Verdict {
    match verdict {
        Verdict::Fail(m) | Verdict::Error(m) => Verdict::Warning(m),
        other => other,
    }
}

fn exchange_error(exchange: &Exchange) -> String {
    format!("{} {}", exchange.method, exchange.url)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl ActionRun {
    fn operation(title: String, verdict: Verdict) -> ActionRun {
        ActionRun {
            is_assert: false,
            title,
            verdict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_read_from_locations_and_references() {
        assert_eq!(
            Target::parse("http://h/fhir/ServiceRequest/abc/_history/2"),
            Some(Target {
                resource_type: "ServiceRequest".into(),
                id: "abc".into(),
                version: Some("2".into())
            })
        );
        assert_eq!(
            Target::parse("Patient/p1").map(|t| (t.resource_type, t.id, t.version)),
            Some(("Patient".into(), "p1".into(), None))
        );
        let created = Target::parse("ServiceRequest/abc/_history/2");
        assert_eq!(
            created.as_ref().map(Target::to_string).as_deref(),
            Some("ServiceRequest/abc/_history/2")
        );
        assert_eq!(
            created.map(|t| t.instance()).as_deref(),
            Some("ServiceRequest/abc"),
            "autodelete deletes the resource, not the version"
        );
        assert_eq!(Target::parse("nothing"), None);
        assert_eq!(Target::parse("lower/id"), None);
    }

    #[test]
    fn a_profile_check_without_its_validator_is_an_error_or_a_warning_never_a_skip() {
        let script = crate::conformance::script::parse(
            &serde_json::json!({
                "resourceType": "TestScript", "url": "http://example.org/ts", "name": "T",
                "status": "draft",
                "profile": [{"id": "p", "reference": "http://example.org/p"}],
                "test": [{"action": [{"assert": {"validateProfileId": "p"}}]}]
            }),
            Path::new("."),
        )
        .expect("valid script");
        let runner = Runner::new(RunnerOptions {
            target: reqwest::Url::parse("http://127.0.0.1:9/fhir").expect("URL"),
            variables: HashMap::new(),
            timeout: Duration::from_secs(1),
            bearer_token: None,
        })
        .expect("runner");
        let state = State::new(&runner, &script, Err("no validator".into()));
        let Action::Assert(assert) = &script.tests[0].actions[0] else {
            panic!("an assert")
        };
        assert!(matches!(state.check(assert), Verdict::Error(_)));
        let warning_only = Assert {
            warning_only: true,
            ..(**assert).clone()
        };
        assert!(matches!(state.check(&warning_only), Verdict::Warning(_)));
    }

    #[test]
    fn methods_follow_the_operation_type() {
        let op = |kind: &str| Operation {
            kind: Some(kind.into()),
            ..Operation::default()
        };
        assert_eq!(method_of(&op("read"), Some("read"), false), Ok(Method::GET));
        assert_eq!(
            method_of(&op("create"), Some("create"), true),
            Ok(Method::POST)
        );
        assert_eq!(
            method_of(&op("update"), Some("update"), true),
            Ok(Method::PUT)
        );
        assert_eq!(
            method_of(&op("delete"), Some("delete"), false),
            Ok(Method::DELETE)
        );
        assert!(method_of(&op("everything"), Some("everything"), false).is_err());
        let explicit = Operation {
            method: Some("patch".into()),
            ..Operation::default()
        };
        assert_eq!(method_of(&explicit, None, false), Ok(Method::PATCH));
    }
}
