//! The evaluator: walks the [`Expr`] tree over collections of [`Val`]s. Paths, variables and
//! literals are evaluated here; a call goes to its function's row of the table
//! ([`super::functions`]), an operator to [`super::operators`].

use std::collections::HashMap;

use serde_json::Value;

use super::model::Model;
use super::parser::{Expr, Literal};
use super::temporal::DateTime;
use super::value::{Node, Val};
use super::{FhirPathError, functions};
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
    /// The Bundle `%rootResource` is an entry of (`Scope::bundle`), for `resolve()`.
    pub bundle: Option<&'a crate::fhir::reference::BundleIndex<'a>>,
    /// `%rootResource`'s own entries when it is a Bundle (and `bundle` is not given),
    /// indexed by the first `resolve()` that needs them.
    pub own_bundle: std::cell::OnceCell<crate::fhir::reference::BundleIndex<'a>>,
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

/// The `_name` sibling of `name` (a primitive's id and extensions), found without building
/// the key `_name`, which would allocate.
pub(crate) fn underscore<'m>(
    map: &'m serde_json::Map<String, Value>,
    name: &str,
) -> Option<&'m Value> {
    // One pass over the keys, without building `_name`.
    map.iter()
        .find(|(key, _)| key.strip_prefix('_') == Some(name))
        .map(|(_, value)| value)
}

/// `suffix` is `type_name` with its first letter capitalised (`Quantity`, `DateTime`).
pub(crate) fn type_suffix_matches(type_name: &str, suffix: &str) -> bool {
    let (mut t, mut s) = (type_name.chars(), suffix.chars());
    match (t.next(), s.next()) {
        (Some(a), Some(b)) => a.to_ascii_uppercase() == b && t.as_str() == s.as_str(),
        _ => false,
    }
}

impl<'a> Ctx<'a> {
    /// The evaluation's `now()`, read once.
    pub(crate) fn now(&self) -> DateTime {
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
                target,
                name,
                args,
                function,
                ..
            } => {
                let base = match target {
                    Some(t) => self.eval(t, input, fr)?,
                    None => match fr.this {
                        Some(v) => vec![v.clone()],
                        None => input.to_vec(),
                    },
                };
                match function {
                    Some(function) => function.call(self, &base, args, input, fr),
                    None => Err(functions::not_implemented(name)),
                }
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
    pub(crate) fn make_node(
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

    pub(crate) fn push_json(
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
