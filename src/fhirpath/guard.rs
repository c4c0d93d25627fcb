//! A shortcut for expressions about elements that are absent: `contained.contained.empty()`
//! (R4's `dom-2`) is true of every resource that has no `contained`, and a validator asks it
//! of every resource.
//!
//! [`Guard::of`] reads an expression once, when it is compiled, and finds the member names it
//! can read of its focus. If the focus is a JSON object holding none of them (nor their `_name`
//! or `nameType` forms), every path the expression takes from the focus is empty, so its result
//! is the same as on an empty object of the same type: [`Guard::with_result`] evaluates that once
//! per type and keeps it.
//!
//! That holds only where the expression cannot see the focus itself, or anything beyond it. An
//! expression gets no guard (and is always evaluated) if it
//! - uses an environment variable (`%resource`, `%context`…): those reach outside the focus;
//! - calls `children()`, `descendants()`, `resolve()`, the clock (`now()`…) or a function that
//!   needs a server (`memberOf()`, `conformsTo()`), anywhere;
//! - at the top level (where `$this` is the focus, not an item of an iteration) uses `$this`,
//!   starts a path with a type name (`Patient.name` returns the focus), or calls on the focus a
//!   function other than those that only count or test it (`exists()`, `empty()`, `not()`,
//!   `count()`, `hasValue()`, `iif()`, `extension()`…), since `where()`, `first()`, `trace()`,
//!   `ofType()` and the like hand the focus itself on.
//!
//! Every identifier and member name anywhere in the expression counts as read, even inside an
//! iteration where it is a name of the items, not of the focus: a superset is safe, it only
//! makes the shortcut apply less often.
//!
//! Which arguments of a call are evaluated per item comes from `functions::roles`, as for
//! `memo`. A test compares both ways for every core and Sprig invariant on every object of
//! `examples/`.

use std::sync::RwLock;

use serde_json::{Map, Value};

use super::Collection;
use super::functions::{self, Role};
use super::parser::Expr;
use crate::fhir::FastMap;

/// Functions that must always be evaluated.
const NEVER: [&str; 9] = [
    "children",
    "descendants",
    "resolve",
    "now",
    "today",
    "timeOfDay",
    "memberOf",
    "conformsTo",
    "getValue",
];

/// Functions that may be called on the focus at the top level: they count or test their
/// input, or (`iif`, `extension`) return something other than it.
const ON_FOCUS: [&str; 12] = [
    "empty",
    "exists",
    "not",
    "count",
    "hasValue",
    "allTrue",
    "anyTrue",
    "allFalse",
    "anyFalse",
    "isDistinct",
    "iif",
    "extension",
];

/// Iterations that do not evaluate their argument on an empty input.
const SKIPPED_ON_EMPTY: [&str; 4] = ["where", "select", "all", "exists"];

/// Functions that give an empty result for an empty input.
const EMPTY_TO_EMPTY: [&str; 11] = [
    "where", "select", "ofType", "as", "first", "last", "tail", "single", "distinct", "trace",
    "skip",
];

/// The member names an expression can read of its focus, and its result where the focus has
/// none of them, by focus type.
pub(crate) struct Guard {
    names: Vec<String>,
    /// Type name (`""` when untyped) → the result on an empty focus of that type; `None` when
    /// that evaluation failed, so the expression is evaluated every time.
    /// Fx-hashed: read on every evaluation the shortcut answers.
    results: RwLock<FastMap<String, Option<Collection>>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("names", &self.names).finish()
    }
}

impl Guard {
    /// The guard of `expr`, or `None` where no shortcut is sound.
    pub(crate) fn of(expr: &Expr) -> Option<Self> {
        let mut names = Vec::new();
        collect(expr, true, &mut names)?;
        Some(Self {
            names,
            results: RwLock::new(FastMap::default()),
        })
    }

    /// Whether `object` holds none of the names: not `name`, `_name`, `nameX` or `_nameX`
    /// (`X` an upper-case letter: a choice type, `valueString`).
    pub(crate) fn absent_from(&self, object: &Map<String, Value>) -> bool {
        // Asked for every guarded invariant on every element, over every key: comparing
        // first bytes before whole prefixes keeps most pairs from reaching `memcmp` (the
        // comparisons were about 4 % of validating `Bundle-dataelements.json`).
        object.keys().all(|key| {
            let key = key.strip_prefix('_').unwrap_or(key).as_bytes();
            !self.names.iter().any(|name| {
                let name = name.as_bytes();
                // An empty name (quoted, two backticks) has no first byte to compare.
                (name.is_empty() || key.first() == name.first())
                    && key.starts_with(name)
                    && key
                        .get(name.len())
                        .is_none_or(|next| next.is_ascii_uppercase())
            })
        })
    }

    /// `read` of the result on an empty focus of `type_name`, evaluated by `evaluate` the
    /// first time. `read` sees the kept result in place: most callers want a boolean of it,
    /// not a copy.
    pub(crate) fn with_result<T>(
        &self,
        type_name: &str,
        evaluate: impl FnOnce() -> Option<Collection>,
        read: impl FnOnce(Option<&Collection>) -> T,
    ) -> T {
        if let Ok(results) = self.results.read()
            && let Some(result) = results.get(type_name)
        {
            return read(result.as_ref());
        }
        let result = evaluate();
        let answer = read(result.as_ref());
        if let Ok(mut results) = self.results.write() {
            results.insert(type_name.to_owned(), result);
        }
        answer
    }
}

/// Whether `expr`, at the top level (only there are its names the focus's), is empty when the focus has none of the names it reads:
/// a path from the focus (`contained`, `entry.resource`, `a.where(…).first()`).
fn vanishes(expr: &Expr) -> bool {
    match expr {
        Expr::Ident(name) => !name.starts_with(|c: char| c.is_ascii_uppercase()),
        Expr::Member(target, _) => vanishes(target),
        Expr::Memo { expr, .. } => vanishes(expr),
        Expr::Call {
            target: Some(target),
            name,
            ..
        } => EMPTY_TO_EMPTY.contains(&name.as_str()) && vanishes(target),
        _ => false,
    }
}

/// Adds the names `expr` reads to `names`; `None` if the expression must always be evaluated.
/// `top` is true where `$this` and an unqualified call's input are the focus.
fn collect(expr: &Expr, top: bool, names: &mut Vec<String>) -> Option<()> {
    let add = |name: &str, names: &mut Vec<String>| {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    };
    match expr {
        Expr::Empty | Expr::Literal(_) | Expr::Index | Expr::Total => {}
        Expr::Env(_) => return None,
        Expr::This => {
            if top {
                return None;
            }
        }
        Expr::Ident(name) => {
            // `Patient.name` starts with the focus itself.
            if top && name.starts_with(|c: char| c.is_ascii_uppercase()) {
                return None;
            }
            add(name, names);
        }
        Expr::Member(target, name) => {
            add(name, names);
            collect(target, top, names)?;
        }
        Expr::Negate(target)
        | Expr::Is(target, _)
        | Expr::As(target, _)
        | Expr::Memo { expr: target, .. } => {
            collect(target, top, names)?;
        }
        Expr::Indexer(a, b) | Expr::Binary(_, a, b) => {
            collect(a, top, names)?;
            collect(b, top, names)?;
        }
        Expr::Call {
            target, name, args, ..
        } => {
            let name = name.as_str();
            if NEVER.contains(&name) {
                return None;
            }
            if name == "extension" {
                add("extension", names);
            }
            match target {
                Some(target) => collect(target, top, names)?,
                None if top && !ON_FOCUS.contains(&name) => return None,
                None => {}
            }
            // An iteration over a path that is empty when the names are absent
            // never runs its argument (`contained.where(…%resource…)` runs it only
            // on `contained` items, and without `contained` there are none).
            if top && SKIPPED_ON_EMPTY.contains(&name) && target.as_deref().is_some_and(vanishes) {
                return Some(());
            }
            // How the evaluator runs each argument (`functions::roles`, shared with
            // `memo`): one evaluated per item, or on the function's input, sees
            // those items as `$this`, which are the focus itself only for an
            // unqualified call at the top (`exists($this.x)`).
            let roles = functions::roles(expr);
            let argument_roles = roles.iter().skip(usize::from(target.is_some()));
            for (arg, role) in args.iter().zip(argument_roles) {
                let arg_top = match role {
                    Role::NotEvaluated => continue,
                    Role::PerItem | Role::SortKey | Role::OnInput => top && target.is_none(),
                    Role::Same => top,
                };
                collect(arg, arg_top, names)?;
            }
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhirpath::parser;

    fn names(text: &str) -> Option<Vec<String>> {
        let expr = parser::parse(text).expect("parses");
        Guard::of(&expr).map(|guard| guard.names)
    }

    /// The guard's own lists name functions the table (or the list of unsupported ones)
    /// knows, so a renamed or misspelt function cannot drop out of them unnoticed.
    #[test]
    fn its_lists_name_known_functions() {
        let lists: [&[&str]; 4] = [&NEVER, &ON_FOCUS, &SKIPPED_ON_EMPTY, &EMPTY_TO_EMPTY];
        for name in lists.into_iter().flatten() {
            assert!(
                functions::lookup(name).is_some()
                    || functions::UNSUPPORTED.iter().any(|(n, _)| n == name),
                "{name}() is neither implemented nor known to be unsupported"
            );
        }
    }

    #[test]
    fn finds_the_names_an_invariant_reads() {
        assert_eq!(
            names("contained.contained.empty()"),
            Some(vec!["contained".to_owned()])
        );
        assert_eq!(
            names("code.empty() or system.exists()"),
            Some(vec!["code".to_owned(), "system".to_owned()])
        );
        assert_eq!(
            names("extension.exists() != value.exists()"),
            Some(vec!["extension".to_owned(), "value".to_owned()])
        );
        // Without `item`, neither argument is ever evaluated.
        assert_eq!(
            names("item.where(type = 'group').all(item.exists())"),
            Some(vec!["item".to_owned()])
        );
        assert_eq!(
            names("(a | b).where(type = 'group').exists()"),
            Some(vec!["a".to_owned(), "b".to_owned(), "type".to_owned()])
        );
        assert_eq!(
            names("extension('http://x').exists()"),
            Some(vec!["extension".to_owned()])
        );
    }

    #[test]
    fn refuses_expressions_that_see_more_than_the_named_members() {
        // The focus itself, or what lies outside it.
        assert_eq!(names("$this.a.exists()"), None);
        assert_eq!(names("%resource.contained.exists()"), None);
        assert_eq!(names("Patient.name.exists()"), None);
        assert_eq!(names("children().count() > 1"), None);
        assert_eq!(names("a.exists() or descendants().exists()"), None);
        assert_eq!(names("a.resolve().exists()"), None);
        assert_eq!(names("where(a.exists()).exists()"), None);
        assert_eq!(names("trace('x').a.exists()"), None);
        assert_eq!(names("ofType(Quantity).exists()"), None);
        assert_eq!(names("a < today()"), None);
        // `$this` inside an iteration over the focus is the focus.
        assert_eq!(names("exists($this.a)"), None);
        // `aggregate`'s starting value is evaluated once, with the focus as `$this`.
        assert_eq!(names("a.aggregate($total, $this)"), None);
    }

    #[test]
    fn skips_arguments_that_an_absent_path_never_evaluates() {
        // R4's dom-3, shortened: `%resource` is only read for `contained` items.
        assert_eq!(
            names(
                "contained.where(('#'+id in %resource.descendants().reference).not()).trace('unmatched', id).empty()"
            ),
            Some(vec!["contained".to_owned()])
        );
        assert_eq!(
            names("a.all(%resource.b.exists())"),
            Some(vec!["a".to_owned()])
        );
        // Not where the iteration's input may be non-empty without the names.
        assert_eq!(names("(a | 'x').where(%resource.b.exists()).empty()"), None);
        assert_eq!(names("a.count().where(%resource.exists()).empty()"), None);
    }

    #[test]
    fn allows_this_inside_an_iteration_over_members() {
        assert_eq!(
            names("a.where($this = 'x').empty()"),
            Some(vec!["a".to_owned()])
        );
        assert_eq!(
            names("value.ofType(Quantity).exists()"),
            Some(vec!["value".to_owned()])
        );
    }

    #[test]
    fn matches_primitive_extensions_and_choice_types() {
        let guard = Guard::of(&parser::parse("value.exists() or code.empty()").expect("parses"))
            .expect("a guard");
        let object = |v: Value| v.as_object().cloned().expect("an object");
        assert!(guard.absent_from(&object(serde_json::json!({"system": "x", "values": 1}))));
        assert!(!guard.absent_from(&object(serde_json::json!({"valueQuantity": {}}))));
        assert!(!guard.absent_from(&object(serde_json::json!({"_code": {}}))));
        assert!(!guard.absent_from(&object(serde_json::json!({"code": "a"}))));
        assert!(!guard.absent_from(&object(serde_json::json!({"_valueString": {}}))));
    }
}
