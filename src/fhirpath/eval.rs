//! The evaluator: walks the [`Expr`] tree over collections of [`Val`]s.

use std::cmp::Ordering;
use std::collections::HashMap;

use rust_decimal::Decimal;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use serde_json::Value;

use super::FhirPathError;
use super::model::{Model, TypeDef};
use super::operators::dedupe;
use super::parser::{Expr, Literal, TypeSpec};
use super::quantity;
use super::temporal::{self, CalendarUnit, Date, DateTime, Time};
use super::value::{self, Node, Val, as_decimal, compare, equals};
use crate::fhir::json::field;

pub(crate) type Coll<'a> = Vec<Val<'a>>;
pub(crate) type R<T> = Result<T, FhirPathError>;

pub(crate) fn error(message: impl Into<String>) -> FhirPathError {
    FhirPathError::Evaluation {
        message: message.into(),
    }
}

/// A result read as one boolean, as [`super::Collection::to_boolean`] reads it: empty is
/// `None`, a boolean is itself, any other single item is true, more than one is an error.
pub(crate) fn single_boolean(items: Coll<'_>) -> R<Option<bool>> {
    match items.as_slice() {
        [] => Ok(None),
        [Val::Bool(b)] => Ok(Some(*b)),
        [
            Val::Node(Node {
                value: Some(Value::Bool(b)),
                ..
            }),
        ] => Ok(Some(*b)),
        [_] => Ok(Some(true)),
        items => Err(error(format!(
            "expected a single boolean but the result has {} items",
            items.len()
        ))),
    }
}

/// Everything an evaluation can see besides the focus.
pub(crate) struct Ctx<'a> {
    pub model: &'a Model,
    /// `%resource`, `%rootResource` and `%context`: one item or none (a JSON null). Kept as
    /// items, made collections only when read, as most expressions never read them.
    pub resource: Option<Val<'a>>,
    pub root_resource: Option<Val<'a>>,
    pub context: Option<Val<'a>>,
    pub env: HashMap<&'a str, Coll<'a>>,
    /// `now()` is fixed for one evaluation (spec: deterministic within an evaluation),
    /// and read from the clock only by an expression that asks: most never do.
    pub now: std::cell::OnceCell<DateTime>,
    pub regexes: &'a super::RegexCache,
    /// The values of the expression's [`Expr::Memo`] parts met so far in this evaluation.
    pub memo: std::cell::RefCell<Vec<Option<Coll<'a>>>>,
    /// The address of a local of the evaluation's entry point: how far the stack has grown
    /// since is the distance to a local of the current frame (stacks grow down).
    pub stack_base: usize,
}

/// Stack an evaluation may use, below its entry point: half of a async runtime worker's 2 MiB.
pub(crate) const STACK_BUDGET: usize = 1024 * 1024;

/// Lambda variables: `$this`, `$index`, `$total`.
#[derive(Clone, Copy)]
pub(crate) struct Frame<'f, 'a> {
    pub this: Option<&'f Val<'a>>,
    pub index: Option<usize>,
    pub total: Option<&'f Coll<'a>>,
}

const SYSTEM_TYPES: [&str; 9] = [
    "Boolean", "Integer", "Long", "Decimal", "String", "Date", "DateTime", "Time", "Quantity",
];

/// The `_name` sibling of `name` (a primitive's id and extensions), found without building
/// the key `_name`, which would allocate.
fn underscore<'m>(map: &'m serde_json::Map<String, Value>, name: &str) -> Option<&'m Value> {
    // One pass over the keys, without building `_name`.
    map.iter()
        .find(|(key, _)| key.strip_prefix('_') == Some(name))
        .map(|(_, value)| value)
}

/// `suffix` is `type_name` with its first letter capitalised (`Quantity`, `DateTime`).
fn type_suffix_matches(type_name: &str, suffix: &str) -> bool {
    let (mut t, mut s) = (type_name.chars(), suffix.chars());
    match (t.next(), s.next()) {
        (Some(a), Some(b)) => a.to_ascii_uppercase() == b && t.as_str() == s.as_str(),
        _ => false,
    }
}

impl<'a> Ctx<'a> {
    /// The evaluation's `now()`, read once.
    fn now(&self) -> DateTime {
        *self.now.get_or_init(DateTime::now)
    }

    pub fn eval(&self, e: &Expr, input: &[Val<'a>], fr: Frame<'_, 'a>) -> R<Coll<'a>> {
        // Guard the stack by what is really used, not by tree depth: a level of function
        // call takes ~40 KB in a debug build and far less in release, and a thread's stack
        // (2 MiB for an async runtime worker) must survive any expression the parser accepts.
        let here = 0u8;
        let used = self.stack_base.saturating_sub(&here as *const u8 as usize);
        if used > STACK_BUDGET {
            return Err(error("expression nested too deeply to evaluate"));
        }
        self.eval_node(e, input, fr)
    }

    fn eval_node(&self, e: &Expr, input: &[Val<'a>], fr: Frame<'_, 'a>) -> R<Coll<'a>> {
        match e {
            Expr::Empty => Ok(Vec::new()),
            Expr::Literal(l) => Ok(vec![literal(l)]),
            Expr::This => Ok(match fr.this {
                Some(v) => vec![v.clone()],
                None => input.to_vec(),
            }),
            Expr::Index => Ok(fr.index.map(|i| Val::Int(i as i64)).into_iter().collect()),
            Expr::Total => Ok(fr.total.cloned().unwrap_or_default()),
            Expr::Env(name) => self.env_var(name),
            Expr::Ident(name) => self.identifier(name, input),
            Expr::Member(target, name) => {
                let base = self.eval(target, input, fr)?;
                self.members(&base, name)
            }
            Expr::Call {
                target, name, args, ..
            } => {
                let base = match target {
                    Some(t) => self.eval(t, input, fr)?,
                    None => match fr.this {
                        Some(v) => vec![v.clone()],
                        None => input.to_vec(),
                    },
                };
                self.call(name, &base, args, input, fr)
            }
            Expr::Indexer(target, index) => {
                let base = self.eval(target, input, fr)?;
                let index = self.eval(index, input, fr)?;
                let i = match self.single(&index)? {
                    None => return Ok(Vec::new()),
                    Some(v) => match v.system(self.model) {
                        Some(Val::Int(i)) => i,
                        _ => return Err(error("an index must be an integer")),
                    },
                };
                Ok(usize::try_from(i)
                    .ok()
                    .and_then(|i| base.get(i).cloned())
                    .into_iter()
                    .collect())
            }
            Expr::Negate(operand) => self.negate(operand, input, fr),
            Expr::Binary(op, l, r) => self.binary(*op, l, r, input, fr),
            Expr::Memo { slot, expr } => {
                if let Some(Some(kept)) = self.memo.borrow().get(*slot) {
                    return Ok(kept.clone());
                }
                let result = self.eval(expr, input, fr)?;
                if let Some(cell) = self.memo.borrow_mut().get_mut(*slot) {
                    *cell = Some(result.clone());
                }
                Ok(result)
            }
            Expr::Is(target, spec) => self.single_is(&self.eval(target, input, fr)?, spec),
            Expr::As(target, spec) => self.of_type(&self.eval(target, input, fr)?, spec),
        }
    }

    fn env_var(&self, name: &str) -> R<Coll<'a>> {
        let s = |v: &str| Ok(vec![Val::Str(v.to_string())]);
        match name {
            "resource" => Ok(self.resource.iter().cloned().collect()),
            "rootResource" => Ok(self.root_resource.iter().cloned().collect()),
            "context" => Ok(self.context.iter().cloned().collect()),
            "ucum" => s("http://unitsofmeasure.org"),
            "sct" => s("http://snomed.info/sct"),
            "loinc" => s("http://loinc.org"),
            _ => {
                if let Some(v) = self.env.get(name) {
                    return Ok(v.clone());
                }
                if let Some(vs) = name.strip_prefix("vs-") {
                    return s(&format!("http://hl7.org/fhir/ValueSet/{vs}"));
                }
                if let Some(ext) = name.strip_prefix("ext-") {
                    return s(&format!("http://hl7.org/fhir/StructureDefinition/{ext}"));
                }
                Err(error(format!("undefined environment variable %{name}")))
            }
        }
    }

    /// A leading identifier: a type name selecting the focus (`Patient.name`) or a member.
    fn identifier(&self, name: &str, input: &[Val<'a>]) -> R<Coll<'a>> {
        if name.starts_with(|c: char| c.is_ascii_uppercase()) && self.model.is_resource_type(name) {
            let mut out = Vec::new();
            let mut typed_resources = 0;
            for item in input {
                if let Val::Node(Node { ty: Some(t), .. }) = item
                    && self.model.is_resource_type(t)
                {
                    typed_resources += 1;
                    if self.model.derives_from(t, name) {
                        out.push(item.clone());
                    }
                }
            }
            if typed_resources > 0 && out.is_empty() {
                return Err(error(format!(
                    "the expression starts with {name} but the context is another resource type"
                )));
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
        self.members(input, name)
    }

    /// `name` of every item. A name no item's type defines is an error (`name.given1`,
    /// `Observation.valueQuantity`); in a mixed collection (`descendants()`) the items
    /// without it just contribute nothing.
    fn members(&self, items: &[Val<'a>], name: &str) -> R<Coll<'a>> {
        let mut out = Vec::new();
        let mut unknown = None;
        let mut known = false;
        for item in items {
            match self.member(item, name, &mut out) {
                Ok(()) => known = true,
                Err(ty) => unknown = Some(ty),
            }
        }
        match unknown {
            Some(ty) if !known => Err(error(format!(
                "{name} is not an element of {}",
                self.model.public_name(ty)
            ))),
            _ => Ok(out),
        }
    }

    /// A node over JSON, typed by `resourceType` when the declared type is abstract.
    fn make_node(
        &self,
        value: Option<&'a Value>,
        ext: Option<&'a Value>,
        ty: Option<&'a str>,
    ) -> Val<'a> {
        let ty = match (value, ty) {
            (Some(Value::Object(map)), None | Some("Resource" | "DomainResource")) => {
                field(map, "resourceType")
                    .and_then(Value::as_str)
                    .and_then(|rt| self.model.intern(rt))
                    .or(ty)
            }
            _ => ty,
        };
        Val::Node(Node {
            value: value.filter(|v| !v.is_null()),
            ext: ext.filter(|v| !v.is_null()),
            ty,
        })
    }

    fn push_json(
        &self,
        value: Option<&'a Value>,
        ext: Option<&'a Value>,
        ty: Option<&'a str>,
        out: &mut Coll<'a>,
    ) {
        match (value, ext) {
            (Some(Value::Array(vs)), ext) => {
                let exts = ext.and_then(Value::as_array);
                for (i, v) in vs.iter().enumerate() {
                    let e = exts.and_then(|e| e.get(i));
                    if !v.is_null() || e.is_some_and(|e| !e.is_null()) {
                        out.push(self.make_node(Some(v), e, ty));
                    }
                }
            }
            (None, Some(Value::Array(es))) => {
                for e in es.iter().filter(|e| !e.is_null()) {
                    out.push(self.make_node(None, Some(e), ty));
                }
            }
            (None, None) => {}
            (v, e) => out.push(self.make_node(v, e, ty)),
        }
    }

    /// Children named `name` of one item.
    /// Appends the children named `name` of one item. `Err(type)` when the item's type
    /// has no such element (the caller decides whether that is an error).
    fn member(&self, item: &Val<'a>, name: &str, out: &mut Coll<'a>) -> Result<(), &'a str> {
        let node = match item {
            Val::Node(n) => *n,
            Val::Quantity(v, u) => {
                match name {
                    "value" => out.push(Val::Dec(*v)),
                    "unit" | "code" => out.push(Val::Str(u.clone())),
                    _ => {}
                }
                return Ok(());
            }
            Val::Type(ns, n) => {
                match name {
                    "namespace" => out.push(Val::Str((*ns).to_string())),
                    "name" => out.push(Val::Str(n.clone())),
                    _ => {}
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        // A primitive's children (id, extension) live in its `_name` sibling.
        let map = match (node.value, node.ext) {
            (Some(Value::Object(m)), _) => m,
            (_, Some(Value::Object(m))) => m,
            _ => return Ok(()),
        };
        if let Some(ty) = node.ty
            && let Some(def) = self.model.get(ty)
        {
            if let Some(el) = def.elements.get(name) {
                if el.choice {
                    // Scan the object's keys rather than build `valueX` for each of up to
                    // 50 types (Extension.value[x]).
                    for key in map.keys() {
                        let bare = key.strip_prefix('_').unwrap_or(key);
                        let Some(suffix) = bare.strip_prefix(name) else {
                            continue;
                        };
                        // `_valueX` alone (no `valueX`) still yields the element.
                        if key.starts_with('_') && field(map, bare).is_some() {
                            continue;
                        }
                        if let Some(t) = el.types.iter().find(|t| type_suffix_matches(t, suffix)) {
                            let (v, e) = (field(map, bare), underscore(map, bare));
                            self.push_json(v, e, Some(t.as_str()), out);
                        }
                    }
                } else {
                    let child_ty = el.types.first().map(String::as_str);
                    let sibling = if el.may_have_sibling {
                        underscore(map, name)
                    } else {
                        None
                    };
                    self.push_json(field(map, name), sibling, child_ty, out);
                }
                return Ok(());
            }
            if name == "resourceType" || (name == "url" && ty == "Extension") {
                return Ok(());
            }
            return Err(ty);
        }
        // Untyped JSON.
        let (v, e) = (field(map, name), underscore(map, name));
        if v.is_some() || e.is_some() {
            self.push_json(v, e, None, out);
            return Ok(());
        }
        for (key, v) in map {
            if let Some(suffix) = key.strip_prefix(name)
                && suffix.starts_with(|c: char| c.is_ascii_uppercase())
            {
                let lower = {
                    let mut c = suffix.chars();
                    c.next()
                        .map(|f| f.to_ascii_lowercase().to_string() + c.as_str())
                };
                let ty = lower
                    .as_deref()
                    .and_then(|l| self.model.intern(l))
                    .filter(|t| self.model.is_primitive(t))
                    .or_else(|| self.model.intern(suffix));
                if ty.is_some() {
                    self.push_json(Some(v), underscore(map, key), ty, out);
                }
            }
        }
        Ok(())
    }

    /// Singleton evaluation: empty → `None`, one item → it, more → error.
    pub fn single<'v>(&self, c: &'v [Val<'a>]) -> R<Option<&'v Val<'a>>> {
        match c {
            [] => Ok(None),
            [v] => Ok(Some(v)),
            _ => Err(error(format!(
                "expected a single item but the collection has {} items",
                c.len()
            ))),
        }
    }

    /// Singleton evaluation to a boolean: a single non-boolean item counts as true.
    pub fn to_bool(&self, c: &[Val<'a>]) -> R<Option<bool>> {
        Ok(match self.single(c)? {
            None => None,
            Some(v) => match v.system(self.model) {
                Some(Val::Bool(b)) => Some(b),
                _ => Some(true),
            },
        })
    }

    /// The System value of a singleton; a complex element (not a Quantity) is an error.
    pub(crate) fn system_single(&self, c: &[Val<'a>]) -> R<Option<Val<'a>>> {
        let Some(v) = self.single(c)? else {
            return Ok(None);
        };
        match (v.system(self.model), v) {
            (
                None,
                Val::Node(Node {
                    value: Some(Value::Object(_)),
                    ty,
                    ..
                }),
            ) => Err(error(format!(
                "expected a primitive value, not a {}",
                ty.map_or("complex element", |t| self.model.public_name(t))
            ))),
            (s, _) => Ok(s),
        }
    }

    pub(crate) fn string_arg(&self, c: &[Val<'a>]) -> R<Option<String>> {
        match self.system_single(c)? {
            None => Ok(None),
            Some(Val::Str(s)) => Ok(Some(s)),
            Some(_) => Err(error("expected a string")),
        }
    }

    pub(crate) fn int_arg(&self, c: &[Val<'a>]) -> R<Option<i64>> {
        match self.system_single(c)? {
            None => Ok(None),
            Some(Val::Int(i)) | Some(Val::Long(i)) => Ok(Some(i)),
            Some(_) => Err(error("expected an integer")),
        }
    }

    /// `item is spec`.
    pub fn is_type(&self, item: &Val<'a>, spec: &TypeSpec) -> R<bool> {
        let name = spec.name.as_str();
        let known = match spec.namespace.as_deref() {
            // `x.is(System.Patient)` is simply false.
            Some("System") => true,
            Some("FHIR") => self.model.get(name).is_some() || self.model.is_resource_type(name),
            None => {
                SYSTEM_TYPES.contains(&name)
                    || self.model.get(name).is_some()
                    || self.model.is_resource_type(name)
            }
            Some(_) => false,
        };
        if !known {
            return Err(error(format!("unknown type {name}")));
        }
        let system_name = match item {
            Val::Bool(_) => Some("Boolean"),
            Val::Int(_) => Some("Integer"),
            Val::Long(_) => Some("Long"),
            Val::Dec(_) => Some("Decimal"),
            Val::Str(_) => Some("String"),
            Val::Date(_) => Some("Date"),
            Val::DateTime(_) => Some("DateTime"),
            Val::Time(_) => Some("Time"),
            Val::Quantity(..) => Some("Quantity"),
            _ => None,
        };
        match (spec.namespace.as_deref(), item) {
            (Some("System"), Val::Node(n)) => Ok(n.ty.is_none()
                && item
                    .system(self.model)
                    .is_some_and(|s| self.is_type(&s, spec).unwrap_or(false))),
            (Some("System") | None, _) if system_name.is_some() => Ok(system_name == Some(name)),
            (Some("FHIR"), _) if system_name.is_some() => Ok(false),
            (_, Val::Node(n)) => Ok(match n.ty {
                // FHIR primitives are not each other's subtypes here (`code` is not a
                // `string`), as the HL7 suite expects; complex types inherit.
                Some(t) if self.model.is_primitive(t) => t == name,
                Some(t) => self.model.derives_from(self.model.public_name(t), name) || t == name,
                // Untyped JSON: fall back on the System type of its value.
                None => {
                    spec.namespace.is_none()
                        && SYSTEM_TYPES.contains(&name)
                        && item
                            .system(self.model)
                            .is_some_and(|s| self.is_type(&s, spec).unwrap_or(false))
                }
            }),
            _ => Ok(false),
        }
    }

    fn type_of(&self, item: &Val<'a>) -> Val<'a> {
        let sys = |n: &str| Val::Type("System", n.to_string());
        match item {
            Val::Bool(_) => sys("Boolean"),
            Val::Int(_) => sys("Integer"),
            Val::Long(_) => sys("Long"),
            Val::Dec(_) => sys("Decimal"),
            Val::Str(_) => sys("String"),
            Val::Date(_) => sys("Date"),
            Val::DateTime(_) => sys("DateTime"),
            Val::Time(_) => sys("Time"),
            Val::Quantity(..) => sys("Quantity"),
            Val::Type(..) => sys("TypeInfo"),
            Val::Node(n) => match n.ty {
                Some(t) => Val::Type("FHIR", self.model.public_name(t).to_string()),
                None => match item.system(self.model) {
                    Some(s) if !matches!(s, Val::Node(_)) => self.type_of(&s),
                    _ => sys("Object"),
                },
            },
        }
    }

    /// The items of type `spec` (`as`, `ofType`).
    fn of_type(&self, items: &[Val<'a>], spec: &TypeSpec) -> R<Coll<'a>> {
        let mut out = Vec::new();
        for item in items {
            if self.is_type(item, spec)? {
                out.push(item.clone());
            }
        }
        Ok(out)
    }

    /// Whether the single item is of type `spec` (`is`); empty for no item.
    fn single_is(&self, items: &[Val<'a>], spec: &TypeSpec) -> R<Coll<'a>> {
        match self.single(items)? {
            None => Ok(Vec::new()),
            Some(item) => Ok(vec![Val::Bool(self.is_type(item, spec)?)]),
        }
    }

    fn type_spec_arg(&self, args: &[Expr]) -> R<TypeSpec> {
        match args {
            [Expr::Ident(name)] => Ok(TypeSpec {
                namespace: None,
                name: name.clone(),
            }),
            [Expr::Member(ns, name)] => match ns.as_ref() {
                Expr::Ident(ns) => Ok(TypeSpec {
                    namespace: Some(ns.clone()),
                    name: name.clone(),
                }),
                _ => Err(error("expected a type name")),
            },
            _ => Err(error("expected a type name")),
        }
    }

    fn children(&self, item: &Val<'a>, out: &mut Coll<'a>) {
        let Val::Node(node) = item else { return };
        let map = match (node.value, node.ext) {
            (Some(Value::Object(m)), _) => m,
            (_, Some(Value::Object(m))) => m,
            _ => return,
        };
        // Looked up once for all the children, not per key.
        let def = node.ty.and_then(|t| self.model.get(t));
        // Most objects have no `_name` siblings: then no key needs a search for one (a
        // search per key is n² over a large object).
        let siblings = map.keys().any(|key| key.starts_with('_'));
        for (key, v) in map {
            if key == "resourceType" {
                continue;
            }
            let (name, value, ext) = match key.strip_prefix('_') {
                // A `_name` with a `name` beside it was consumed with that name.
                Some(base) if field(map, base).is_some() => continue,
                Some(base) => (base, None, Some(v)),
                None => (
                    key.as_str(),
                    Some(v),
                    if siblings { underscore(map, key) } else { None },
                ),
            };
            let ty = def.and_then(|d| child_type(d, name));
            // For primitives (node.value not an object) the children are id and extension.
            self.push_json(value, ext, ty, out);
        }
    }

    fn lambda<F>(&self, base: &[Val<'a>], arg: &Expr, input: &[Val<'a>], mut each: F) -> R<()>
    where
        F: FnMut(usize, &Val<'a>, Coll<'a>) -> R<bool>,
    {
        let _ = input;
        for (i, item) in base.iter().enumerate() {
            let fr = Frame {
                this: Some(item),
                index: Some(i),
                total: None,
            };
            let result = self.eval(arg, std::slice::from_ref(item), fr)?;
            if !each(i, item, result)? {
                break;
            }
        }
        Ok(())
    }

    fn arity(&self, name: &str, args: &[Expr], allowed: &[usize]) -> R<()> {
        if allowed.contains(&args.len()) {
            Ok(())
        } else {
            Err(error(format!(
                "{name}() takes {allowed:?} arguments, not {}",
                args.len()
            )))
        }
    }

    /// Evaluates a function argument against the expression's input (not the target).
    fn arg(&self, args: &[Expr], i: usize, input: &[Val<'a>], fr: Frame<'_, 'a>) -> R<Coll<'a>> {
        match args.get(i) {
            Some(a) => self.eval(a, input, fr),
            None => Ok(Vec::new()),
        }
    }

    #[allow(clippy::too_many_lines)]
    fn call(
        &self,
        name: &str,
        base: &[Val<'a>],
        args: &[Expr],
        input: &[Val<'a>],
        fr: Frame<'_, 'a>,
    ) -> R<Coll<'a>> {
        let model = self.model;
        let one = |v: Val<'a>| Ok(vec![v]);
        let boolean = |b: bool| Ok(vec![Val::Bool(b)]);
        // Functions on a single string: empty input gives empty.
        macro_rules! string_fn {
            ($arity:expr, |$s:ident| $body:expr) => {{
                self.arity(name, args, &$arity)?;
                let Some($s) = self
                    .string_arg(base)
                    .map_err(|_| error(format!("{name}() needs a string")))?
                else {
                    return Ok(Vec::new());
                };
                $body
            }};
        }
        match name {
            "empty" => {
                self.arity(name, args, &[0])?;
                boolean(base.is_empty())
            }
            "exists" => {
                self.arity(name, args, &[0, 1])?;
                match args.first() {
                    None => boolean(!base.is_empty()),
                    Some(crit) => {
                        let mut found = false;
                        self.lambda(base, crit, input, |_, _, r| {
                            found = self.to_bool(&r)? == Some(true);
                            Ok(!found)
                        })?;
                        boolean(found)
                    }
                }
            }
            "all" => {
                self.arity(name, args, &[1])?;
                let mut all = true;
                self.lambda(base, &args[0], input, |_, _, r| {
                    all = self.to_bool(&r)? == Some(true);
                    Ok(all)
                })?;
                boolean(all)
            }
            "allTrue" | "anyTrue" | "allFalse" | "anyFalse" => {
                self.arity(name, args, &[0])?;
                let mut bools = Vec::with_capacity(base.len());
                for v in base {
                    match v.system(model) {
                        Some(Val::Bool(b)) => bools.push(b),
                        _ => return Err(error(format!("{name}() needs booleans"))),
                    }
                }
                boolean(match name {
                    "allTrue" => bools.iter().all(|b| *b),
                    "anyTrue" => bools.iter().any(|b| *b),
                    "allFalse" => bools.iter().all(|b| !b),
                    _ => bools.iter().any(|b| !b),
                })
            }
            "subsetOf" | "supersetOf" => {
                self.arity(name, args, &[1])?;
                let other = self.arg(args, 0, input, fr)?;
                let (sub, sup) = if name == "subsetOf" {
                    (base, other.as_slice())
                } else {
                    (other.as_slice(), base)
                };
                boolean(
                    sub.iter()
                        .all(|x| sup.iter().any(|y| equals(x, y, model) == Some(true))),
                )
            }
            "count" => {
                self.arity(name, args, &[0])?;
                one(Val::Int(base.len() as i64))
            }
            "distinct" => {
                self.arity(name, args, &[0])?;
                Ok(distinct(base, model))
            }
            "isDistinct" => {
                self.arity(name, args, &[0])?;
                boolean(distinct(base, model).len() == base.len())
            }
            "where" => {
                self.arity(name, args, &[1])?;
                let mut out = Vec::new();
                self.lambda(base, &args[0], input, |_, item, r| {
                    if self.to_bool(&r)? == Some(true) {
                        out.push(item.clone());
                    }
                    Ok(true)
                })?;
                Ok(out)
            }
            "select" => {
                self.arity(name, args, &[1])?;
                let mut out = Vec::new();
                self.lambda(base, &args[0], input, |_, _, r| {
                    out.extend(r);
                    Ok(true)
                })?;
                Ok(out)
            }
            "repeat" => {
                self.arity(name, args, &[1])?;
                let mut out: Coll<'a> = Vec::new();
                let mut frontier = base.to_vec();
                // Bounded: a projection that keeps producing new items would never end.
                for _ in 0..1000 {
                    let mut next = Vec::new();
                    self.lambda(&frontier, &args[0], input, |_, _, r| {
                        next.extend(r);
                        Ok(true)
                    })?;
                    let mut fresh = Vec::new();
                    for v in next {
                        if !out.iter().any(|o| equals(o, &v, model) == Some(true)) {
                            out.push(v.clone());
                            fresh.push(v);
                        }
                    }
                    if fresh.is_empty() {
                        return Ok(out);
                    }
                    frontier = fresh;
                }
                Err(error("repeat() did not finish"))
            }
            // The function forms of the `is` and `as` operators; `ofType` is `as`
            // (this engine filters with `as` too: see `known-failures.txt`).
            "ofType" | "as" => {
                self.arity(name, args, &[1])?;
                self.of_type(base, &self.type_spec_arg(args)?)
            }
            "is" => {
                self.arity(name, args, &[1])?;
                self.single_is(base, &self.type_spec_arg(args)?)
            }
            "type" => {
                self.arity(name, args, &[0])?;
                Ok(base.iter().map(|v| self.type_of(v)).collect())
            }
            "single" => {
                self.arity(name, args, &[0])?;
                Ok(self.single(base)?.cloned().into_iter().collect())
            }
            "first" => {
                self.arity(name, args, &[0])?;
                Ok(base.first().cloned().into_iter().collect())
            }
            "last" => {
                self.arity(name, args, &[0])?;
                Ok(base.last().cloned().into_iter().collect())
            }
            "tail" => {
                self.arity(name, args, &[0])?;
                Ok(base.iter().skip(1).cloned().collect())
            }
            "skip" | "take" => {
                self.arity(name, args, &[1])?;
                let n = self.int_arg(&self.arg(args, 0, input, fr)?)?.unwrap_or(0);
                let n = usize::try_from(n.max(0)).unwrap_or(0);
                Ok(if name == "skip" {
                    base.iter().skip(n).cloned().collect()
                } else {
                    base.iter().take(n).cloned().collect()
                })
            }
            "intersect" => {
                self.arity(name, args, &[1])?;
                let other = self.arg(args, 0, input, fr)?;
                let mut out: Coll<'a> = Vec::new();
                for v in base {
                    if other.iter().any(|o| equals(o, v, model) == Some(true))
                        && !out.iter().any(|o| equals(o, v, model) == Some(true))
                    {
                        out.push(v.clone());
                    }
                }
                Ok(out)
            }
            "exclude" => {
                self.arity(name, args, &[1])?;
                let other = self.arg(args, 0, input, fr)?;
                Ok(base
                    .iter()
                    .filter(|v| !other.iter().any(|o| equals(o, v, model) == Some(true)))
                    .cloned()
                    .collect())
            }
            "union" => {
                self.arity(name, args, &[1])?;
                let other = self.arg(args, 0, input, fr)?;
                let mut items = base.to_vec();
                items.extend(other);
                Ok(dedupe(items, model))
            }
            "combine" => {
                self.arity(name, args, &[1])?;
                let mut out = base.to_vec();
                out.extend(self.arg(args, 0, input, fr)?);
                Ok(out)
            }
            "iif" => {
                self.arity(name, args, &[2, 3])?;
                if base.len() > 1 {
                    return Err(error("iif() on a collection of more than one item"));
                }
                let criterion = self.eval(
                    &args[0],
                    base,
                    Frame {
                        this: base.first(),
                        ..fr
                    },
                )?;
                let criterion = match self.single(&criterion)? {
                    None => None,
                    Some(v) => match v.system(model) {
                        Some(Val::Bool(b)) => Some(b),
                        _ => return Err(error("iif() criterion must be a boolean")),
                    },
                };
                let branch = if criterion == Some(true) { 1 } else { 2 };
                match args.get(branch) {
                    Some(e) => self.eval(
                        e,
                        base,
                        Frame {
                            this: base.first(),
                            ..fr
                        },
                    ),
                    None => Ok(Vec::new()),
                }
            }
            "not" => {
                self.arity(name, args, &[0])?;
                Ok(self
                    .to_bool(base)?
                    .map(|b| Val::Bool(!b))
                    .into_iter()
                    .collect())
            }
            "children" => {
                self.arity(name, args, &[0])?;
                let mut out = Vec::new();
                for v in base {
                    self.children(v, &mut out);
                }
                Ok(out)
            }
            "descendants" => {
                self.arity(name, args, &[0])?;
                let mut out = Vec::new();
                let mut frontier = base.to_vec();
                while !frontier.is_empty() {
                    let mut next = Vec::new();
                    for v in &frontier {
                        self.children(v, &mut next);
                    }
                    out.extend(next.iter().cloned());
                    frontier = next;
                }
                Ok(out)
            }
            "hasValue" => {
                self.arity(name, args, &[0])?;
                boolean(base.len() == 1 && base[0].has_primitive_value(model))
            }
            "getValue" => {
                self.arity(name, args, &[0])?;
                Ok(match base {
                    [v] if v.has_primitive_value(model) => v.system(model).into_iter().collect(),
                    _ => Vec::new(),
                })
            }
            "extension" => {
                self.arity(name, args, &[1])?;
                let url = self.string_arg(&self.arg(args, 0, input, fr)?)?;
                let mut exts = Vec::new();
                for v in base {
                    if let Val::Node(n) = v {
                        let map = match (n.value, n.ext) {
                            (Some(Value::Object(m)), _) | (_, Some(Value::Object(m))) => m,
                            _ => continue,
                        };
                        self.push_json(
                            map.get("extension"),
                            None,
                            model.intern("Extension"),
                            &mut exts,
                        );
                    }
                }
                Ok(exts
                    .into_iter()
                    .filter(|e| match (e, &url) {
                        (
                            Val::Node(Node {
                                value: Some(Value::Object(m)),
                                ..
                            }),
                            Some(url),
                        ) => m.get("url").and_then(Value::as_str) == Some(url.as_str()),
                        _ => false,
                    })
                    .collect())
            }
            "trace" => {
                self.arity(name, args, &[1, 2])?;
                Ok(base.to_vec())
            }
            "resolve" => {
                self.arity(name, args, &[0])?;
                Ok(self.resolve(base))
            }
            "htmlChecks" | "htmlchecks" => {
                // Narrative is checked by the schema pass (xhtml), not here.
                self.arity(name, args, &[0])?;
                boolean(true)
            }
            "conformsTo" => {
                self.arity(name, args, &[1])?;
                let url = self
                    .string_arg(&self.arg(args, 0, input, fr)?)?
                    .unwrap_or_default();
                let Some(t) = url.strip_prefix("http://hl7.org/fhir/StructureDefinition/") else {
                    return Err(error("conformsTo() knows only core definitions"));
                };
                if model.get(t).is_none() {
                    return Err(error(format!("unknown profile {url}")));
                }
                Ok(match self.single(base)? {
                    None => Vec::new(),
                    Some(Val::Node(Node { ty: Some(ty), .. })) => {
                        vec![Val::Bool(model.derives_from(ty, t))]
                    }
                    Some(_) => vec![Val::Bool(false)],
                })
            }
            "aggregate" => {
                self.arity(name, args, &[1, 2])?;
                let mut total = self.arg(args, 1, input, fr)?;
                for (i, item) in base.iter().enumerate() {
                    let f = Frame {
                        this: Some(item),
                        index: Some(i),
                        total: Some(&total),
                    };
                    let next = self.eval(&args[0], std::slice::from_ref(item), f)?;
                    total = next;
                }
                Ok(total)
            }
            "defineVariable" => Err(error("defineVariable() is not supported")),
            "now" => {
                self.arity(name, args, &[0])?;
                one(Val::DateTime(self.now()))
            }
            "today" => {
                self.arity(name, args, &[0])?;
                one(Val::Date(self.now().date))
            }
            "timeOfDay" => {
                self.arity(name, args, &[0])?;
                Ok(self.now().time.map(Val::Time).into_iter().collect())
            }
            "toString" => {
                self.arity(name, args, &[0])?;
                Ok(self
                    .single(base)?
                    .and_then(|v| value::to_string(v, model))
                    .map(Val::Str)
                    .into_iter()
                    .collect())
            }
            "convertsToString" => {
                self.arity(name, args, &[0])?;
                Ok(self
                    .single(base)?
                    .map(|v| Val::Bool(value::to_string(v, model).is_some()))
                    .into_iter()
                    .collect())
            }
            "toBoolean" | "toInteger" | "toDecimal" | "toDate" | "toDateTime" | "toTime"
            | "toQuantity" | "convertsToBoolean" | "convertsToInteger" | "convertsToDecimal"
            | "convertsToDate" | "convertsToDateTime" | "convertsToTime" | "convertsToQuantity" => {
                self.arity(name, args, &[0, 1])?;
                let Some(v) = self.system_single(base)? else {
                    return Ok(Vec::new());
                };
                let unit = self.string_arg(&self.arg(args, 0, input, fr)?)?;
                let target = name
                    .trim_start_matches("to")
                    .trim_start_matches("convertsTo");
                let converted = convert(&v, target, unit.as_deref());
                if name.starts_with("convertsTo") {
                    boolean(converted.is_some())
                } else {
                    Ok(converted.into_iter().collect())
                }
            }
            "indexOf" => string_fn!([1], |s| {
                let Some(sub) = self.string_arg(&self.arg(args, 0, input, fr)?)? else {
                    return Ok(Vec::new());
                };
                one(Val::Int(match s.find(&sub) {
                    Some(byte) => s[..byte].chars().count() as i64,
                    None => -1,
                }))
            }),
            "substring" => string_fn!([1, 2], |s| {
                let Some(start) = self.int_arg(&self.arg(args, 0, input, fr)?)? else {
                    return Ok(Vec::new());
                };
                let len = self.int_arg(&self.arg(args, 1, input, fr)?)?;
                let chars: Vec<char> = s.chars().collect();
                if start < 0 || start as usize >= chars.len() {
                    return Ok(Vec::new());
                }
                let start = start as usize;
                let end = match len {
                    Some(l) => start.saturating_add(l.max(0) as usize).min(chars.len()),
                    None => chars.len(),
                };
                one(Val::Str(chars[start..end].iter().collect()))
            }),
            "startsWith" | "endsWith" | "contains" => string_fn!([1], |s| {
                let Some(sub) = self.string_arg(&self.arg(args, 0, input, fr)?)? else {
                    return Ok(Vec::new());
                };
                boolean(match name {
                    "startsWith" => s.starts_with(&sub),
                    "endsWith" => s.ends_with(&sub),
                    _ => s.contains(&sub),
                })
            }),
            "upper" => string_fn!([0], |s| one(Val::Str(s.to_uppercase()))),
            "lower" => string_fn!([0], |s| one(Val::Str(s.to_lowercase()))),
            "length" => string_fn!([0], |s| one(Val::Int(s.chars().count() as i64))),
            "trim" => string_fn!([0], |s| one(Val::Str(s.trim().to_string()))),
            "toChars" => string_fn!([0], |s| Ok(s
                .chars()
                .map(|c| Val::Str(c.to_string()))
                .collect())),
            "replace" => string_fn!([2], |s| {
                let (Some(pattern), Some(with)) = (
                    self.string_arg(&self.arg(args, 0, input, fr)?)?,
                    self.string_arg(&self.arg(args, 1, input, fr)?)?,
                ) else {
                    return Ok(Vec::new());
                };
                if pattern.is_empty() {
                    // Spec: an empty pattern surrounds every character.
                    let mut out = with.clone();
                    for c in s.chars() {
                        out.push(c);
                        out.push_str(&with);
                    }
                    return one(Val::Str(out));
                }
                one(Val::Str(s.replace(&pattern, &with)))
            }),
            "matches" | "matchesFull" => string_fn!([1], |s| {
                let Some(pattern) = self.string_arg(&self.arg(args, 0, input, fr)?)? else {
                    return Ok(Vec::new());
                };
                let full = name == "matchesFull";
                let re = self.regexes.get(&pattern, full)?;
                boolean(re.is_match(&s))
            }),
            "replaceMatches" => string_fn!([2], |s| {
                let (Some(pattern), Some(with)) = (
                    self.string_arg(&self.arg(args, 0, input, fr)?)?,
                    self.string_arg(&self.arg(args, 1, input, fr)?)?,
                ) else {
                    return Ok(Vec::new());
                };
                if pattern.is_empty() {
                    return one(Val::Str(s));
                }
                let re = self.regexes.get(&pattern, false)?;
                // FHIRPath uses `$1` for groups, as the regex crate does.
                one(Val::Str(re.replace_all(&s, with.as_str()).into_owned()))
            }),
            "split" => string_fn!([1], |s| {
                let Some(sep) = self.string_arg(&self.arg(args, 0, input, fr)?)? else {
                    return Ok(Vec::new());
                };
                Ok(s.split(sep.as_str())
                    .map(|p| Val::Str(p.to_string()))
                    .collect())
            }),
            "join" => {
                self.arity(name, args, &[0, 1])?;
                let sep = self
                    .string_arg(&self.arg(args, 0, input, fr)?)?
                    .unwrap_or_default();
                let mut parts = Vec::new();
                for v in base {
                    match v.system(model) {
                        Some(Val::Str(s)) => parts.push(s),
                        _ => return Err(error("join() needs strings")),
                    }
                }
                one(Val::Str(parts.join(&sep)))
            }
            "encode" | "decode" => string_fn!([1], |s| {
                let format = self
                    .string_arg(&self.arg(args, 0, input, fr)?)?
                    .unwrap_or_default();
                Ok(codec(name == "encode", &format, &s)
                    .map(Val::Str)
                    .into_iter()
                    .collect())
            }),
            "escape" | "unescape" => string_fn!([1], |s| {
                let format = self
                    .string_arg(&self.arg(args, 0, input, fr)?)?
                    .unwrap_or_default();
                Ok(escape(name == "escape", &format, &s)
                    .map(Val::Str)
                    .into_iter()
                    .collect())
            }),
            "abs" | "ceiling" | "floor" | "truncate" | "exp" | "ln" | "sqrt" | "round" | "log"
            | "power" => {
                self.arity(
                    name,
                    args,
                    if matches!(name, "log" | "power") {
                        &[1]
                    } else if name == "round" {
                        &[0, 1]
                    } else {
                        &[0]
                    },
                )?;
                let Some(v) = self.system_single(base)? else {
                    return Ok(Vec::new());
                };
                let arg = self.system_single(&self.arg(args, 0, input, fr)?)?;
                if args.len() == 1 && arg.is_none() {
                    return Ok(Vec::new());
                }
                math(name, &v, arg.as_ref()).map(|r| r.into_iter().collect())
            }
            "sort" => {
                self.arity(name, args, &[0, 1, 2, 3])?;
                // Each argument is a sort key; `-key` sorts that key descending.
                let keys: Vec<(&Expr, bool)> = args
                    .iter()
                    .map(|a| match a {
                        Expr::Negate(inner) => (inner.as_ref(), true),
                        other => (other, false),
                    })
                    .collect();
                let mut keyed: Vec<(Vec<Coll<'a>>, Val<'a>)> = Vec::new();
                for (i, item) in base.iter().enumerate() {
                    let f = Frame {
                        this: Some(item),
                        index: Some(i),
                        total: None,
                    };
                    let values = if keys.is_empty() {
                        vec![vec![item.clone()]]
                    } else {
                        keys.iter()
                            .map(|(k, _)| self.eval(k, std::slice::from_ref(item), f))
                            .collect::<R<Vec<_>>>()?
                    };
                    keyed.push((values, item.clone()));
                }
                let mut failed = false;
                keyed.sort_by(|(a, _), (b, _)| {
                    for (i, (x, y)) in a.iter().zip(b).enumerate() {
                        let descending = keys.get(i).is_some_and(|(_, d)| *d);
                        // Empty keys come first, in either direction.
                        let o = match (x.first(), y.first()) {
                            (Some(x), Some(y)) => {
                                let o = compare(x, y, model).unwrap_or_else(|| {
                                    failed = true;
                                    Ordering::Equal
                                });
                                if descending { o.reverse() } else { o }
                            }
                            (None, Some(_)) => Ordering::Less,
                            (Some(_), None) => Ordering::Greater,
                            (None, None) => Ordering::Equal,
                        };
                        if o != Ordering::Equal {
                            return o;
                        }
                    }
                    Ordering::Equal
                });
                if failed {
                    return Err(error("sort() on values that cannot be compared"));
                }
                Ok(keyed.into_iter().map(|(_, v)| v).collect())
            }
            "precision" => {
                self.arity(name, args, &[0])?;
                let Some(v) = self.system_single(base)? else {
                    return Ok(Vec::new());
                };
                Ok(precision(&v).map(Val::Int).into_iter().collect())
            }
            "lowBoundary" | "highBoundary" => {
                self.arity(name, args, &[0, 1])?;
                let Some(v) = self.system_single(base)? else {
                    return Ok(Vec::new());
                };
                let digits = self.int_arg(&self.arg(args, 0, input, fr)?)?;
                Ok(boundary(&v, digits, name == "highBoundary")
                    .into_iter()
                    .collect())
            }
            "comparable" => {
                self.arity(name, args, &[1])?;
                let (Some(Val::Quantity(_, a)), Some(Val::Quantity(_, b))) = (
                    self.system_single(base)?,
                    self.system_single(&self.arg(args, 0, input, fr)?)?,
                ) else {
                    return Ok(Vec::new());
                };
                boolean(quantity::comparable(&a, &b))
            }
            "memberOf" | "subsumes" | "subsumedBy" => Err(error(format!(
                "{name}() needs a terminology server, which Sprig does not consult here"
            ))),
            _ => Err(error(format!("unknown function {name}()"))),
        }
    }

    /// `resolve()`: local references only (`#id` to a contained resource, or a Bundle
    /// entry's `fullUrl`); never I/O.
    fn resolve(&self, base: &[Val<'a>]) -> Coll<'a> {
        let mut out = Vec::new();
        // References are resolved in the outermost resource (a contained resource's
        // `#id` points into its container).
        let Some(Val::Node(Node {
            value: Some(root), ..
        })) = &self.root_resource
        else {
            return out;
        };
        for v in base {
            let reference = match v {
                Val::Node(Node {
                    value: Some(Value::Object(m)),
                    ..
                }) => m.get("reference").and_then(Value::as_str),
                Val::Node(Node {
                    value: Some(Value::String(s)),
                    ..
                }) => Some(s.as_str()),
                Val::Str(_) => None,
                _ => None,
            };
            let Some(reference) = reference else { continue };
            if let Some(id) = reference.strip_prefix('#') {
                if let Some(Value::Array(contained)) = root.get("contained") {
                    for c in contained {
                        if c.get("id").and_then(Value::as_str) == Some(id) {
                            out.push(self.make_node(Some(c), None, None));
                        }
                    }
                }
            } else if let Some(Value::Array(entries)) = root.get("entry") {
                for e in entries {
                    let full = e.get("fullUrl").and_then(Value::as_str);
                    if (full == Some(reference)
                        || full.is_some_and(|f| f.ends_with(&format!("/{reference}"))))
                        && let Some(r) = e.get("resource")
                    {
                        out.push(self.make_node(Some(r), None, None));
                    }
                }
            }
        }
        out
    }
}

/// The type of JSON key `key` (a plain or choice element name) in type `def`.
fn child_type<'m>(def: &'m TypeDef, key: &str) -> Option<&'m str> {
    if let Some(el) = def.elements.get(key)
        && !el.choice
    {
        return el.types.first().map(String::as_str);
    }
    // Choice: the longest element-name prefix whose suffix names one of its types.
    // A choice key is `name` + capitalised type: try the splits before capitals only.
    for (i, c) in key.char_indices().rev() {
        if i == 0 {
            break;
        }
        if !c.is_ascii_uppercase() {
            continue;
        }
        if let Some(el) = def.elements.get(&key[..i])
            && el.choice
        {
            let suffix = &key[i..];
            return el
                .types
                .iter()
                .find(|t| type_suffix_matches(t, suffix))
                .map(String::as_str);
        }
    }
    None
}

fn distinct<'a>(base: &[Val<'a>], model: &Model) -> Coll<'a> {
    dedupe(base.to_vec(), model)
}

pub(crate) fn literal<'a>(l: &Literal) -> Val<'a> {
    match l {
        Literal::Boolean(b) => Val::Bool(*b),
        Literal::String(s) => Val::Str(s.clone()),
        Literal::Integer(i) => Val::Int(*i),
        Literal::Long(i) => Val::Long(*i),
        Literal::Decimal(d) => Val::Dec(*d),
        Literal::Date(d) => Val::Date(*d),
        Literal::DateTime(d) => Val::DateTime(*d),
        Literal::Time(t) => Val::Time(*t),
        Literal::Quantity(v, u) => Val::Quantity(*v, u.clone()),
    }
}

/// `toX()` conversions; `None` when the value does not convert.
fn convert<'a>(v: &Val<'a>, target: &str, unit: Option<&str>) -> Option<Val<'a>> {
    use Val::*;
    match (target, v) {
        ("Boolean", Bool(b)) => Some(Bool(*b)),
        ("Boolean", Int(1)) => Some(Bool(true)),
        ("Boolean", Int(0)) => Some(Bool(false)),
        ("Boolean", Dec(d)) if *d == Decimal::ONE => Some(Bool(true)),
        ("Boolean", Dec(d)) if d.is_zero() => Some(Bool(false)),
        ("Boolean", Str(s)) => match s.to_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" | "1.0" => Some(Bool(true)),
            "false" | "f" | "no" | "n" | "0" | "0.0" => Some(Bool(false)),
            _ => None,
        },
        ("Integer", Int(i)) => Some(Int(*i)),
        ("Integer", Bool(b)) => Some(Int(i64::from(*b))),
        ("Integer", Str(s)) => {
            let t = s.strip_prefix('+').unwrap_or(s);
            (!t.is_empty()
                && t.trim_start_matches('-')
                    .bytes()
                    .all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok().map(Int))
            .flatten()
        }
        ("Decimal", Int(i)) => Some(Dec(Decimal::from(*i))),
        ("Decimal", Dec(d)) => Some(Dec(*d)),
        ("Decimal", Bool(b)) => Some(Dec(if *b { Decimal::ONE } else { Decimal::ZERO })),
        ("Decimal", Str(s)) => {
            let t = s.strip_prefix('+').unwrap_or(s);
            let digits = t.trim_start_matches('-');
            let ok = !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                && digits.matches('.').count() <= 1
                && !digits.starts_with('.')
                && !digits.ends_with('.');
            ok.then(|| t.parse().ok().map(Dec)).flatten()
        }
        ("Date", Date(d)) => Some(Date(*d)),
        ("Date", DateTime(d)) => Some(Date(d.date)),
        ("Date", Str(s)) => temporal::Date::parse(s)
            .or_else(|| temporal::DateTime::parse(s).map(|d| d.date))
            .map(Date),
        ("DateTime", DateTime(d)) => Some(DateTime(*d)),
        ("DateTime", Date(d)) => Some(DateTime(temporal::DateTime::from_date(*d))),
        ("DateTime", Str(s)) => temporal::DateTime::parse(s).map(DateTime),
        ("Time", Time(t)) => Some(Time(*t)),
        ("Time", Str(s)) => temporal::Time::parse(s).map(Time),
        ("Quantity", Quantity(a, u)) => match unit {
            None => Some(Quantity(*a, u.clone())),
            Some(target) => {
                quantity::convert(*a, u, target).map(|v| Quantity(v, target.to_string()))
            }
        },
        ("Quantity", Int(_) | Dec(_)) => Some(Quantity(as_decimal(v)?, "1".into())),
        ("Quantity", Bool(b)) => Some(Quantity(
            if *b { Decimal::ONE } else { Decimal::ZERO },
            "1".into(),
        )),
        ("Quantity", Str(s)) => parse_quantity(s),
        _ => None,
    }
}

/// `'5 mg'`, `"1 'wk'"`, `'1 day'`, `'1.0'`.
fn parse_quantity<'a>(s: &str) -> Option<Val<'a>> {
    let s = s.trim();
    let (number, unit) = match s.split_once(' ') {
        Some((n, u)) => (n, u.trim()),
        None => (s, ""),
    };
    let value: Decimal = number.parse().ok()?;
    if number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    let unit = if unit.is_empty() {
        "1".to_string()
    } else if let Some(u) = unit.strip_prefix('\'').and_then(|u| u.strip_suffix('\'')) {
        u.to_string()
    } else if CalendarUnit::from_word(unit).is_some() {
        unit.to_string()
    } else {
        return None;
    };
    Some(Val::Quantity(value, unit))
}

fn math<'a>(name: &str, v: &Val<'a>, arg: Option<&Val<'a>>) -> R<Option<Val<'a>>> {
    use Val::*;
    let f = |d: Decimal| d.to_f64();
    let back = |x: f64| -> Option<Val<'a>> {
        if x.is_finite() {
            Decimal::from_f64(x).map(|d| Dec(d.normalize()))
        } else {
            None
        }
    };
    Ok(match (name, v) {
        ("abs", Int(i)) => Some(Int(i.checked_abs().ok_or_else(|| error("overflow"))?)),
        ("abs", Dec(d)) => Some(Dec(d.abs())),
        ("abs", Quantity(d, u)) => Some(Quantity(d.abs(), u.clone())),
        ("ceiling", Int(i)) => Some(Int(*i)),
        ("ceiling", Dec(d)) => d.ceil().to_i64().map(Int),
        ("floor", Int(i)) => Some(Int(*i)),
        ("floor", Dec(d)) => d.floor().to_i64().map(Int),
        ("truncate", Int(i)) => Some(Int(*i)),
        ("truncate", Dec(d)) => d.trunc().to_i64().map(Int),
        ("round", Int(_) | Dec(_)) => {
            let d = as_decimal(v).unwrap_or_default();
            let places = match arg {
                Some(Int(p)) if *p >= 0 => {
                    u32::try_from(*p).map_err(|_| error("round() precision is out of range"))?
                }
                None => 0,
                _ => return Err(error("round() precision must be a non-negative integer")),
            };
            Some(Dec(d.round_dp_with_strategy(
                places,
                rust_decimal::RoundingStrategy::MidpointAwayFromZero,
            )))
        }
        ("exp", Int(_) | Dec(_)) => as_decimal(v).and_then(f).and_then(|x| back(x.exp())),
        ("ln", Int(_) | Dec(_)) => as_decimal(v).and_then(f).and_then(|x| back(x.ln())),
        ("sqrt", Int(_) | Dec(_)) => as_decimal(v).and_then(f).and_then(|x| back(x.sqrt())),
        ("log", Int(_) | Dec(_)) => {
            let base = arg.and_then(as_decimal).and_then(f);
            match (as_decimal(v).and_then(f), base) {
                (Some(x), Some(b)) => back(x.ln() / b.ln()),
                _ => None,
            }
        }
        ("power", Int(a)) if matches!(arg, Some(Int(_))) => {
            let Some(Int(e)) = arg else { return Ok(None) };
            if *e < 0 {
                back((*a as f64).powf(*e as f64))
            } else {
                u32::try_from(*e)
                    .ok()
                    .and_then(|e| a.checked_pow(e))
                    .map(Int)
            }
        }
        ("power", Int(_) | Dec(_)) => match (
            as_decimal(v).and_then(f),
            arg.and_then(as_decimal).and_then(f),
        ) {
            (Some(x), Some(e)) => back(x.powf(e)),
            _ => None,
        },
        _ => return Err(error(format!("{name}() needs a number"))),
    })
}

fn precision(v: &Val<'_>) -> Option<i64> {
    Some(match v {
        Val::Dec(d) => i64::from(d.scale()),
        Val::Int(_) => 0,
        Val::Date(d) => [4, 7, 10][d.precision() as usize],
        Val::DateTime(d) => match d.precision() {
            temporal::Precision::Year => 4,
            temporal::Precision::Month => 6,
            temporal::Precision::Day => 8,
            temporal::Precision::Hour => 10,
            temporal::Precision::Minute => 12,
            temporal::Precision::Second => 14,
            temporal::Precision::Millisecond => 17,
        },
        Val::Time(t) => match t.precision() {
            temporal::Precision::Hour => 2,
            temporal::Precision::Minute => 4,
            temporal::Precision::Second => 6,
            _ => 9,
        },
        _ => return None,
    })
}

fn boundary<'a>(v: &Val<'a>, digits: Option<i64>, high: bool) -> Option<Val<'a>> {
    match v {
        Val::Dec(_) | Val::Int(_) => decimal_boundary(as_decimal(v)?, digits, high).map(Val::Dec),
        Val::Quantity(q, unit) => {
            decimal_boundary(*q, digits, high).map(|d| Val::Quantity(d, unit.clone()))
        }
        Val::Date(d) => {
            let digits = digits.unwrap_or(8);
            let year = d.year;
            let month = d.month.unwrap_or(if high { 12 } else { 1 });
            let day = d.day.unwrap_or(if high {
                temporal::days_in_month(year, month)
            } else {
                1
            });
            Some(match digits {
                4 => Val::Date(Date {
                    year,
                    month: None,
                    day: None,
                }),
                6 => Val::Date(Date {
                    year,
                    month: Some(month),
                    day: None,
                }),
                8 => Val::Date(Date {
                    year,
                    month: Some(month),
                    day: Some(day),
                }),
                _ => return None,
            })
        }
        Val::DateTime(dt) => {
            let digits = digits.unwrap_or(17);
            let d = dt.date;
            let year = d.year;
            let month = d.month.unwrap_or(if high { 12 } else { 1 });
            let day = d.day.unwrap_or(if high {
                temporal::days_in_month(year, month)
            } else {
                1
            });
            let t = dt.time.unwrap_or(Time {
                hour: if high { 23 } else { 0 },
                minute: None,
                second: None,
                millis: None,
            });
            let time = Time {
                hour: t.hour,
                minute: Some(t.minute.unwrap_or(if high { 59 } else { 0 })),
                second: Some(t.second.unwrap_or(if high { 59 } else { 0 })),
                millis: Some(t.millis.unwrap_or(if high { 999 } else { 0 })),
            };
            // Without a timezone the boundary spans all of them (-12:00 … +14:00).
            let tz = dt.tz.or(Some(if high { -12 * 60 } else { 14 * 60 }));
            let date = Date {
                year,
                month: Some(month),
                day: Some(day),
            };
            Some(match digits {
                4 => Val::DateTime(DateTime {
                    date: Date {
                        year,
                        month: None,
                        day: None,
                    },
                    time: None,
                    tz: None,
                }),
                6 => Val::DateTime(DateTime {
                    date: Date {
                        year,
                        month: Some(month),
                        day: None,
                    },
                    time: None,
                    tz: None,
                }),
                8 => Val::DateTime(DateTime {
                    date,
                    time: None,
                    tz: None,
                }),
                10 | 12 | 14 | 17 => {
                    let time = Time {
                        hour: time.hour,
                        minute: (digits >= 12).then_some(time.minute).flatten(),
                        second: (digits >= 14).then_some(time.second).flatten(),
                        millis: (digits >= 17).then_some(time.millis).flatten(),
                    };
                    Val::DateTime(DateTime {
                        date,
                        time: Some(time),
                        tz,
                    })
                }
                _ => return None,
            })
        }
        Val::Time(t) => {
            let digits = digits.unwrap_or(9);
            let time = Time {
                hour: t.hour,
                minute: Some(t.minute.unwrap_or(if high { 59 } else { 0 })),
                second: Some(t.second.unwrap_or(if high { 59 } else { 0 })),
                millis: Some(t.millis.unwrap_or(if high { 999 } else { 0 })),
            };
            Some(Val::Time(match digits {
                2 => Time {
                    minute: None,
                    second: None,
                    millis: None,
                    ..time
                },
                4 => Time {
                    second: None,
                    millis: None,
                    ..time
                },
                6 => Time {
                    millis: None,
                    ..time
                },
                9 => time,
                _ => return None,
            }))
        }
        _ => None,
    }
}

/// The lowest (highest) value a decimal could stand for, given its precision: half a unit
/// in its last place below (above) it, rounded down (up) to `digits` places (default 8).
fn decimal_boundary(d: Decimal, digits: Option<i64>, high: bool) -> Option<Decimal> {
    let digits = digits.unwrap_or(8);
    if !(0..=28).contains(&digits) {
        return None;
    }
    // At the maximum scale there is no finer digit: the value is its own boundary.
    let half = Decimal::try_new(5, d.scale() + 1).unwrap_or(Decimal::ZERO);
    let strategy = if high {
        rust_decimal::RoundingStrategy::ToPositiveInfinity
    } else {
        rust_decimal::RoundingStrategy::ToNegativeInfinity
    };
    let edge = if high {
        d.checked_add(half)?
    } else {
        d.checked_sub(half)?
    };
    let mut r = edge.round_dp_with_strategy(digits as u32, strategy);
    r.rescale(digits as u32);
    Some(r)
}

fn codec(encode: bool, format: &str, s: &str) -> Option<String> {
    match (format, encode) {
        ("hex", true) => Some(s.bytes().map(|b| format!("{b:02x}")).collect()),
        ("hex", false) => {
            let bytes: Option<Vec<u8>> = (0..s.len())
                .step_by(2)
                .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                .collect();
            String::from_utf8(bytes?).ok()
        }
        ("base64" | "urlbase64", true) => Some(base64_encode(s.as_bytes(), format == "urlbase64")),
        ("base64" | "urlbase64", false) => String::from_utf8(base64_decode(s)?).ok(),
        _ => None,
    }
}

fn base64_encode(bytes: &[u8], url: bool) -> String {
    let table: &[u8; 64] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(table[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

fn escape(escape: bool, format: &str, s: &str) -> Option<String> {
    match (format, escape) {
        ("html", true) => Some(
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
                .replace('\'', "&#39;"),
        ),
        ("html", false) => Some(
            s.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&amp;", "&"),
        ),
        ("json", true) => Some(s.replace('\\', "\\\\").replace('"', "\\\"")),
        ("json", false) => Some(s.replace("\\\"", "\"").replace("\\\\", "\\")),
        _ => None,
    }
}
