//! FHIRPath (N1, <http://hl7.org/fhirpath/N1/>) over FHIR JSON, for invariants
//! (`constraint.expression`), slicing discriminators and the mappings
//! (`mappings/*.toml`).
//!
//! Sprig's own engine: a lexer and Pratt parser (`parser`) produce an expression tree once
//! ([`FhirPath::compile`]); the evaluator (`eval`) walks it over `serde_json::Value`s
//! borrowed from the caller, so evaluating an invariant copies no JSON (only an element
//! returned as a result is copied into an [`Item`]). Type information (`is`, `as`, `ofType`,
//! choice elements such as `value[x]`, `type()`) comes from the R4 core definitions
//! (`model`), built from the profile pass's parse of them when the gateway starts. Decimals are exact
//! (`rust_decimal`, read from the JSON number's text); dates and times keep their precision
//! (`temporal`); quantities compare through a small UCUM table (`quantity`).
//!
//! Layout: `parser` (text to tree; each call is resolved to its function's row then), `eval`
//! (the tree walk: paths, variables, literals, calls), `operators` (`=`, `<`, `|`, `and`, `+`…),
//! `functions` (the one table of functions: name, argument counts, how each argument is
//! evaluated, implementation; the implementations in `functions/`, grouped by the
//! specification's sections, FHIR's own in `fhir.rs`), and two plans made at compile time from the
//! table's argument roles: `guard` (results known when the focus lacks what is read) and
//! `memo` (parts computed once per evaluation).
//!
//! Failures are `Err`s, never panics: arithmetic is checked, nesting is bounded at parse time,
//! and the evaluator stops when it has used `eval::STACK_BUDGET` of stack (a debug build's
//! frames are large). [`FhirPath::compile`] accepts any well-formed expression (core
//! invariants call functions the engine lacks; they fail per use); `compile_strict` and
//! `Expression::check_functions` also refuse unknown functions and wrong argument counts,
//! read from `functions::FUNCTIONS`, the table the evaluator dispatches through. An
//! implementation reads each argument by a method named for its role, which asserts the
//! table's role in debug builds (a test calls every function on inputs that make it read its
//! arguments). `evaluate_boolean_in` gives an invariant's answer, the same as `to_boolean()`
//! of the collection, without building it.
//!
//! Pure and synchronous: no I/O, no async. `resolve()` follows only references inside the
//! resource (`#id` to contained resources, Bundle `fullUrl`s); terminology functions
//! (`memberOf`…) are errors. Conformance: the HL7 FHIRPath R4 test suite runs as
//! `tests/api/fhirpath_suite.rs`, with the tests this engine fails listed, with reasons, in
//! `tests/fixtures/fhirpath/known-failures.txt`.
//!
//! ```ignore
//! let engine = FhirPath::new()?;                       // once; share it (Arc)
//! let ele1 = engine.compile("hasValue() or (children().count() > id.count())")?;
//! let ok = ele1.evaluate(&resource, &element)?.as_boolean();
//! ```

mod eval;
mod functions;
mod guard;
mod memo;
mod model;
mod operators;
mod parser;
mod quantity;
mod temporal;
mod value;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};

use serde_json::Value;

use self::eval::{Ctx, Frame};
use self::model::Model;
use self::parser::Expr;
/// Exact decimals from JSON numbers, shared with the profile pass's `minValue`/`maxValue`.
pub(crate) use self::value::json_decimal;
use self::value::{Node, Val};
use crate::fhir::definitions::StructureDefinition;
use crate::fhir::json::field;

/// What can go wrong compiling or evaluating an expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FhirPathError {
    /// The expression is not FHIRPath. `position` is a byte offset into the expression.
    #[error("FHIRPath syntax error at line {line}, column {column}: {message}")]
    Syntax {
        /// Byte offset of the offending token.
        position: usize,
        /// 1-based line of `position`.
        line: usize,
        /// 1-based column (in characters) of `position`.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The expression is well formed but cannot be evaluated on this input (a collection
    /// where one item is required, an unknown element or function, incompatible types…).
    #[error("FHIRPath evaluation error: {message}")]
    Evaluation {
        /// What went wrong.
        message: String,
    },
    /// The expression calls a function the engine does not implement, or with a number of
    /// arguments it does not accept. Only [`FhirPath::compile_strict`] and
    /// [`Expression::check_functions`] report this; [`FhirPath::compile`] leaves it to
    /// evaluation.
    #[error("FHIRPath function error at line {line}, column {column}: {message}")]
    Function {
        /// Byte offset of the function's name.
        position: usize,
        /// 1-based line of `position`.
        line: usize,
        /// 1-based column (in characters) of `position`.
        column: usize,
        /// The function's name, as written.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The embedded type model could not be read (a build defect).
    #[error("FHIRPath type model: {message}")]
    Model {
        /// The reader's complaint.
        message: String,
    },
}

/// The engine: the FHIR R4 type model. Build once and share; `Send + Sync`.
#[derive(Clone)]
pub struct FhirPath {
    model: Arc<Model>,
}

impl fmt::Debug for FhirPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FhirPath").finish_non_exhaustive()
    }
}

/// The R4 model is built once per process (about 7 ms from parsed definitions, plus about
/// 10 ms to parse them when [`FhirPath::new`] has to); every engine shares it.
static R4_MODEL: OnceLock<Result<Arc<Model>, FhirPathError>> = OnceLock::new();

impl FhirPath {
    /// The engine with the FHIR R4 core model (from `profiles/core/r4-core.json`).
    pub fn new() -> Result<Self, FhirPathError> {
        let model = R4_MODEL.get_or_init(|| Model::r4().map(Arc::new)).clone()?;
        Ok(FhirPath { model })
    }

    /// The engine with the R4 model built from core `definitions` the caller has already
    /// parsed (the profile pass, at start-up), so the 2.7 MB file is read once.
    pub fn with_r4_definitions(definitions: &[StructureDefinition]) -> Result<Self, FhirPathError> {
        let model = R4_MODEL
            .get_or_init(|| Ok(Arc::new(Model::from_definitions(definitions))))
            .clone()?;
        Ok(FhirPath { model })
    }

    /// Parses `expression`. Syntax errors carry the position of the offending token.
    pub fn compile(&self, expression: &str) -> Result<Expression, FhirPathError> {
        self.compile_planned(expression, true)
    }

    /// [`FhirPath::compile`], with [`memo`]'s plan or (to compare against) without it.
    fn compile_planned(&self, expression: &str, memo: bool) -> Result<Expression, FhirPathError> {
        let mut expr = parser::parse(expression)?;
        let guard = guard::Guard::of(&expr);
        let memo_slots = if memo { memo::plan(&mut expr) } else { 0 };
        let mut variables = Vec::new();
        variables_named(&expr, &mut variables);
        Ok(Expression {
            inner: Arc::new(Compiled {
                text: expression.to_string(),
                guard,
                memo_slots,
                variables,
                expr,
                model: self.model.clone(),
                regexes: RegexCache::default(),
            }),
        })
    }
}

/// Adds the names of the `%variables` in `expr` to `names`, each once.
fn variables_named(expr: &Expr, names: &mut Vec<String>) {
    if let Expr::Env(name) = expr
        && !names.contains(name)
    {
        names.push(name.clone());
    }
    for part in expr.parts() {
        variables_named(part, names);
    }
}

impl FhirPath {
    /// Parses `expression` like [`FhirPath::compile`], then refuses it if it calls a function
    /// the engine does not implement or passes a function a number of arguments it does not
    /// accept ([`Expression::check_functions`]). For expressions Sprig's own configuration
    /// supplies (mappings), where such a mistake must stop start-up rather than fail on every
    /// evaluation. Not for profile invariants: the R4 core uses functions this engine does not
    /// implement, and those are reported per use.
    pub fn compile_strict(&self, expression: &str) -> Result<Expression, FhirPathError> {
        let compiled = self.compile(expression)?;
        compiled.check_functions()?;
        Ok(compiled)
    }
}

/// A compiled expression: reusable, cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Expression {
    inner: Arc<Compiled>,
}

struct Compiled {
    text: String,
    expr: Expr,
    /// Where the focus lacks what the expression reads, its result is known
    /// (`contained.contained.empty()` without `contained`).
    guard: Option<guard::Guard>,
    /// How many parts of `expr` are computed once per evaluation ([`memo`]).
    memo_slots: usize,
    /// The `%variables` `expr` names: only these of an [`Environment`] are made ready for
    /// an evaluation (a mapping's environment holds whole resources, and each field's
    /// expression names one or two of its variables).
    variables: Vec<String>,
    model: Arc<Model>,
    regexes: RegexCache,
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expression").field(&self.inner.text).finish()
    }
}

/// Extra environment variables: `%name` → collection.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    variables: HashMap<String, Collection>,
}

impl Environment {
    /// No variables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `%name` (give the name without `%`). The names the engine defines itself
    /// (`resource`, `rootResource`, `context`, `ucum`, `sct`, `loinc`) cannot be replaced.
    pub fn set(&mut self, name: impl Into<String>, value: Collection) -> &mut Self {
        self.variables.insert(name.into(), value);
        self
    }
}

/// Where an expression is evaluated.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// `%resource` (and `%rootResource` unless `root_resource` is given).
    pub resource: &'a Value,
    /// `%rootResource` when it differs from `%resource`: the container of a contained
    /// resource, or the Bundle of an entry.
    pub root_resource: Option<&'a Value>,
    /// The Bundle `%rootResource` is an entry of, if any, indexed once by the caller
    /// (for all the entries and invariants it evaluates in it): `resolve()` finds the other
    /// entries in it by `fhir::reference`'s rule (as HL7's validator resolves references
    /// within a Bundle), with the entry's `fullUrl` as the base of relative references.
    pub bundle: Option<&'a crate::fhir::reference::BundleIndex<'a>>,
    /// The focus: `%context` and the initial `$this`.
    pub focus: &'a Value,
    /// The focus's FHIR type (`HumanName`, `Patient.contact`, `string`) when it is not a
    /// resource: it decides choice elements and `is`. Without it, an element is untyped.
    pub focus_type: Option<&'a str>,
    /// Extra `%variables`.
    pub environment: Option<&'a Environment>,
}

impl Expression {
    /// The expression's text.
    pub fn text(&self) -> &str {
        &self.inner.text
    }

    /// Checks, without evaluating, that every function the expression calls is one the
    /// engine implements, called with a number of arguments it accepts. The error
    /// ([`FhirPathError::Function`]) names the first offender in the text and its position.
    pub fn check_functions(&self) -> Result<(), FhirPathError> {
        functions::check(&self.inner.expr, &self.inner.text)
    }

    /// The names of the `%variables` the expression reads (without `%`), in order of first
    /// use, so a caller that supplies variables can refuse a misspelt one before evaluating.
    pub fn variables(&self) -> Vec<String> {
        functions::variables(&self.inner.expr)
    }

    /// Evaluates with `focus` as `%context`/`$this` and `resource` as
    /// `%resource`/`%rootResource`.
    pub fn evaluate(&self, resource: &Value, focus: &Value) -> Result<Collection, FhirPathError> {
        self.evaluate_in(Scope {
            resource,
            root_resource: None,
            bundle: None,
            focus,
            focus_type: None,
            environment: None,
        })
    }

    /// Evaluates with extra `%variables`.
    pub fn evaluate_with(
        &self,
        resource: &Value,
        focus: &Value,
        environment: &Environment,
    ) -> Result<Collection, FhirPathError> {
        self.evaluate_in(Scope {
            resource,
            root_resource: None,
            bundle: None,
            focus,
            focus_type: None,
            environment: Some(environment),
        })
    }

    /// Evaluates in a full [`Scope`].
    pub fn evaluate_in<'a>(&'a self, scope: Scope<'a>) -> Result<Collection, FhirPathError> {
        if let Some(known) = self.guarded(scope, |known| known.cloned()) {
            return Ok(known);
        }
        self.evaluate_unguarded(scope)
    }

    fn evaluate_unguarded<'a>(&'a self, scope: Scope<'a>) -> Result<Collection, FhirPathError> {
        self.run(scope, |model, items| Ok(Collection::of(items, model)))
    }

    /// Evaluates in a full [`Scope`] to a boolean, as an invariant is read: the answer of
    /// `evaluate_in(scope)?.to_boolean()`, without building the result's items (the
    /// validator asks this of every invariant on every element, and most answers are one
    /// boolean).
    pub fn evaluate_boolean_in<'a>(
        &'a self,
        scope: Scope<'a>,
    ) -> Result<Option<bool>, FhirPathError> {
        if let Some(known) = self.guarded(scope, |known| known.map(Collection::to_boolean)) {
            return known;
        }
        self.run(scope, |_, items| eval::single_boolean(items))
    }

    /// The guard's answer (`read` of the result on an empty focus of the same type) when
    /// the focus has none of the members the expression reads; `None` to evaluate.
    fn guarded<'a, T>(
        &'a self,
        scope: Scope<'a>,
        read: impl FnOnce(Option<&Collection>) -> Option<T>,
    ) -> Option<T> {
        let guard = self.inner.guard.as_ref()?;
        let Value::Object(object) = scope.focus else {
            return None;
        };
        if !guard.absent_from(object) {
            return None;
        }
        // The result on an empty focus of the same type: the same elements are
        // unknown to it, so an expression naming one it lacks still fails.
        let resource_type = resource_type_of(object);
        let type_name = resource_type.or(scope.focus_type).unwrap_or("");
        guard.with_result(
            type_name,
            || {
                let empty = match resource_type {
                    Some(t) => serde_json::json!({ "resourceType": t }),
                    None => Value::Object(serde_json::Map::new()),
                };
                let empty_scope = Scope {
                    resource: &empty,
                    root_resource: None,
                    bundle: None,
                    focus: &empty,
                    focus_type: scope.focus_type,
                    environment: None,
                };
                self.evaluate_unguarded(empty_scope).ok()
            },
            read,
        )
    }

    /// Evaluates in `scope`, without the guard, and hands the result to `finish`.
    fn run<'a, T>(
        &'a self,
        scope: Scope<'a>,
        finish: impl FnOnce(&Model, Vec<Val<'_>>) -> Result<T, FhirPathError>,
    ) -> Result<T, FhirPathError> {
        let model: &Model = &self.inner.model;
        let resource_type = |v: &Value| {
            v.as_object()
                .and_then(resource_type_of)
                .and_then(|t| model.intern(t))
        };
        let resource_ty = resource_type(scope.resource);
        let resource: Val<'a> = Val::node(scope.resource, resource_ty);
        // The focus is often the resource itself (resource-level invariants).
        let focus_resource_type = if std::ptr::eq(scope.focus, scope.resource) {
            resource_ty
        } else {
            resource_type(scope.focus)
        };
        let focus_type =
            focus_resource_type.or_else(|| scope.focus_type.and_then(|t| model.intern(t)));
        let focus = Val::Node(Node {
            value: Some(scope.focus),
            ext: None,
            ty: focus_type,
        });
        let mut env = HashMap::new();
        if let Some(environment) = scope.environment {
            for name in &self.inner.variables {
                if let Some((name, collection)) = environment.variables.get_key_value(name) {
                    env.insert(
                        name.as_str(),
                        collection.items.iter().map(|i| i.to_val(model)).collect(),
                    );
                }
            }
        }
        // A JSON null stands for "no input": an empty collection.
        let present = |v: &Value, item: Val<'a>| (!v.is_null()).then_some(item);
        let context = present(scope.focus, focus);
        let input = context.clone();
        let stack_marker = 0u8;
        let ctx = Ctx {
            model,
            stack_base: &stack_marker as *const u8 as usize,
            root_resource: match scope.root_resource {
                Some(root) => present(root, Val::node(root, resource_type(root))),
                None => present(scope.resource, resource.clone()),
            },
            resource: present(scope.resource, resource),
            bundle: scope.bundle,
            own_bundle: std::cell::OnceCell::new(),
            context,
            env,
            now: std::cell::OnceCell::new(),
            regexes: &self.inner.regexes,
            memo: std::cell::RefCell::new(vec![None; self.inner.memo_slots]),
        };
        let frame = Frame {
            this: None,
            index: None,
            total: None,
        };
        let result = ctx.eval(&self.inner.expr, input.as_slice(), frame)?;
        finish(model, result)
    }
}

/// A resource's `resourceType`: nearly always its first member, so that is looked at
/// before the map is searched.
fn resource_type_of(object: &serde_json::Map<String, Value>) -> Option<&str> {
    let found = match object.iter().next() {
        Some((key, value)) if key == "resourceType" => Some(value),
        _ => field(object, "resourceType"),
    };
    found.and_then(Value::as_str)
}

impl Collection {
    fn of(items: Vec<Val<'_>>, model: &Model) -> Collection {
        Collection {
            items: items.iter().map(|v| Item::from_val(v, model)).collect(),
        }
    }
}

/// One item of a result.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// `true`, `false`
    Boolean(bool),
    /// A 64-bit integer.
    Integer(i64),
    /// A FHIRPath `Long` (`5L`).
    Long(i64),
    /// Exact decimal, as text (`1.50`).
    Decimal(String),
    /// A string.
    String(String),
    /// `2014-01-25`, `2014-01`, `2014`
    Date(String),
    /// `2014-01-25T14:30:14.559+10:00` and partial forms.
    DateTime(String),
    /// `14:30`
    Time(String),
    /// A System quantity, `5 'mg'` or `4 days`.
    Quantity {
        /// Exact decimal, as text.
        value: String,
        /// UCUM code or calendar word.
        unit: String,
    },
    /// A FHIR element or resource from the input. A primitive's `value` is its JSON value
    /// (`Null` when it only has extensions); `type_name` is its FHIR type when known.
    Element {
        /// The element's JSON.
        value: Value,
        /// `HumanName`, `code`, `BackboneElement`…
        type_name: Option<String>,
    },
    /// A type, as `type()` returns.
    Type {
        /// `System` or `FHIR`.
        namespace: String,
        /// `Integer`, `Patient`…
        name: String,
    },
}

impl Item {
    fn from_val(v: &Val<'_>, model: &Model) -> Item {
        match v {
            Val::Bool(b) => Item::Boolean(*b),
            Val::Int(i) => Item::Integer(*i),
            Val::Long(i) => Item::Long(*i),
            Val::Dec(d) => Item::Decimal(d.to_string()),
            Val::Str(s) => Item::String(s.clone()),
            Val::Date(d) => Item::Date(d.to_string()),
            Val::DateTime(d) => Item::DateTime(d.to_string()),
            Val::Time(t) => Item::Time(t.to_string()),
            Val::Quantity(v, u) => Item::Quantity {
                value: v.to_string(),
                unit: u.clone(),
            },
            Val::Node(n) => Item::Element {
                value: n.value.cloned().unwrap_or(Value::Null),
                type_name: n.ty.map(|t| model.public_name(t).to_string()),
            },
            Val::Type(ns, name) => Item::Type {
                namespace: (*ns).to_string(),
                name: name.clone(),
            },
        }
    }

    fn to_val<'a>(&'a self, model: &'a Model) -> Val<'a> {
        match self {
            Item::Boolean(b) => Val::Bool(*b),
            Item::Integer(i) => Val::Int(*i),
            Item::Long(i) => Val::Long(*i),
            Item::Decimal(d) => d.parse().map_or_else(|_| Val::Str(d.clone()), Val::Dec),
            Item::String(s) => Val::Str(s.clone()),
            Item::Date(s) => {
                temporal::Date::parse(s).map_or_else(|| Val::Str(s.clone()), Val::Date)
            }
            Item::DateTime(s) => {
                temporal::DateTime::parse(s).map_or_else(|| Val::Str(s.clone()), Val::DateTime)
            }
            Item::Time(s) => {
                temporal::Time::parse(s).map_or_else(|| Val::Str(s.clone()), Val::Time)
            }
            Item::Quantity { value, unit } => value.parse().map_or_else(
                |_| Val::Str(value.clone()),
                |v| Val::Quantity(v, unit.clone()),
            ),
            Item::Element { value, type_name } => Val::Node(Node {
                value: Some(value),
                ext: None,
                ty: type_name
                    .as_deref()
                    .and_then(|t| model.intern(t))
                    .or_else(|| {
                        value
                            .get("resourceType")
                            .and_then(Value::as_str)
                            .and_then(|t| model.intern(t))
                    }),
            }),
            Item::Type { namespace, name } => Val::Type(
                if namespace == "FHIR" {
                    "FHIR"
                } else {
                    "System"
                },
                name.clone(),
            ),
        }
    }

    /// `System.Boolean`, `FHIR.code`…
    pub fn type_name(&self) -> String {
        match self {
            Item::Boolean(_) => "System.Boolean".into(),
            Item::Integer(_) => "System.Integer".into(),
            Item::Long(_) => "System.Long".into(),
            Item::Decimal(_) => "System.Decimal".into(),
            Item::String(_) => "System.String".into(),
            Item::Date(_) => "System.Date".into(),
            Item::DateTime(_) => "System.DateTime".into(),
            Item::Time(_) => "System.Time".into(),
            Item::Quantity { .. } => "System.Quantity".into(),
            Item::Element { type_name, .. } => {
                format!("FHIR.{}", type_name.as_deref().unwrap_or("Element"))
            }
            Item::Type { .. } => "System.TypeInfo".into(),
        }
    }

    /// The item as JSON: a primitive's JSON value, an element's JSON, a System value as
    /// its JSON form (decimals as exact numbers, dates as strings).
    pub fn to_json(&self) -> Value {
        match self {
            Item::Boolean(b) => Value::Bool(*b),
            Item::Integer(i) | Item::Long(i) => Value::from(*i),
            Item::Decimal(d) => {
                serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.clone()))
            }
            Item::String(s) | Item::Date(s) | Item::DateTime(s) | Item::Time(s) => {
                Value::String(s.clone())
            }
            Item::Quantity { value, unit } => serde_json::json!({
                "value": serde_json::from_str::<Value>(value).unwrap_or_else(|_| Value::String(value.clone())),
                "code": unit,
            }),
            Item::Element { value, .. } => value.clone(),
            Item::Type { namespace, name } => {
                serde_json::json!({"namespace": namespace, "name": name})
            }
        }
    }
}

/// The result of an evaluation: an ordered collection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Collection {
    items: Vec<Item>,
}

impl Collection {
    /// A collection of these items (for environment variables).
    pub fn new(items: Vec<Item>) -> Self {
        Collection { items }
    }

    /// No items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The items, in order.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// The items, in order, owned.
    pub fn into_items(self) -> Vec<Item> {
        self.items
    }

    /// FHIRPath singleton evaluation as a boolean: empty → `None`; one boolean → its value
    /// (a FHIR `boolean` element too); any other single item → `Some(true)`; more than one
    /// item → `None` (use [`Collection::to_boolean`] to tell that apart from empty).
    pub fn as_boolean(&self) -> Option<bool> {
        self.to_boolean().ok().flatten()
    }

    /// Like [`Collection::as_boolean`], but more than one item is an error, as in FHIRPath.
    pub fn to_boolean(&self) -> Result<Option<bool>, FhirPathError> {
        match self.items.as_slice() {
            [] => Ok(None),
            [Item::Boolean(b)] => Ok(Some(*b)),
            [
                Item::Element {
                    value: Value::Bool(b),
                    ..
                },
            ] => Ok(Some(*b)),
            [_] => Ok(Some(true)),
            items => Err(FhirPathError::Evaluation {
                message: format!(
                    "expected a single boolean but the result has {} items",
                    items.len()
                ),
            }),
        }
    }

    /// The items as a JSON array (see [`Item::to_json`]).
    pub fn to_json(&self) -> Value {
        Value::Array(self.items.iter().map(Item::to_json).collect())
    }
}

/// Compiled regular expressions of one expression, so `matches()` on every element of a
/// resource compiles its pattern once. Bounded: patterns computed from data could
/// otherwise grow it without end.
#[derive(Default)]
pub(crate) struct RegexCache {
    map: RwLock<HashMap<(String, bool), Arc<regex::Regex>>>,
}

const REGEX_CACHE_LIMIT: usize = 64;

impl RegexCache {
    pub(crate) fn get(
        &self,
        pattern: &str,
        full: bool,
    ) -> Result<Arc<regex::Regex>, FhirPathError> {
        let key = (pattern.to_string(), full);
        if let Ok(map) = self.map.read()
            && let Some(re) = map.get(&key)
        {
            return Ok(re.clone());
        }
        // Single-line mode (`.` matches newlines), as the spec asks.
        let source = if full {
            format!("(?s)^(?:{pattern})$")
        } else {
            format!("(?s){pattern}")
        };
        let re = Arc::new(
            regex::Regex::new(&source).map_err(|e| FhirPathError::Evaluation {
                message: format!("invalid regular expression: {e}"),
            })?,
        );
        if let Ok(mut map) = self.map.write()
            && map.len() < REGEX_CACHE_LIMIT
        {
            map.insert(key, re.clone());
        }
        Ok(re)
    }
}
