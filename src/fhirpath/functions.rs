//! The functions the evaluator implements, with the numbers of arguments each accepts, and
//! the static check built on them ([`super::Expression::check_functions`]).
//!
//! [`super::FhirPath::compile`] does not look at function names: the R4 core invariants call
//! functions this engine does not implement (`memberOf`…), and the profile pass reports those
//! per use rather than refusing to start. Mapping files, in contrast, are Sprig's own
//! configuration, so a misspelt or unsupported function there must stop start-up: they are
//! compiled with [`super::FhirPath::compile_strict`].
//!
//! The table is kept equal to the evaluator's `call` by two tests in `super::tests`: one
//! evaluates every listed function with every argument count from 0 to 4, the other reads the
//! function names out of `eval.rs` itself.

use super::FhirPathError;
use super::parser::{Expr, position_of};

/// Every function `eval::Ctx::call` implements, and the argument counts it accepts.
pub(crate) const FUNCTIONS: &[(&str, &[usize])] = &[
    ("empty", &[0]),
    ("exists", &[0, 1]),
    ("all", &[1]),
    ("allTrue", &[0]),
    ("anyTrue", &[0]),
    ("allFalse", &[0]),
    ("anyFalse", &[0]),
    ("subsetOf", &[1]),
    ("supersetOf", &[1]),
    ("count", &[0]),
    ("distinct", &[0]),
    ("isDistinct", &[0]),
    ("where", &[1]),
    ("select", &[1]),
    ("repeat", &[1]),
    ("ofType", &[1]),
    ("as", &[1]),
    ("is", &[1]),
    ("type", &[0]),
    ("single", &[0]),
    ("first", &[0]),
    ("last", &[0]),
    ("tail", &[0]),
    ("skip", &[1]),
    ("take", &[1]),
    ("intersect", &[1]),
    ("exclude", &[1]),
    ("union", &[1]),
    ("combine", &[1]),
    ("iif", &[2, 3]),
    ("not", &[0]),
    ("children", &[0]),
    ("descendants", &[0]),
    ("hasValue", &[0]),
    ("getValue", &[0]),
    ("extension", &[1]),
    ("trace", &[1, 2]),
    ("resolve", &[0]),
    ("htmlChecks", &[0]),
    ("htmlchecks", &[0]),
    ("conformsTo", &[1]),
    ("aggregate", &[1, 2]),
    ("now", &[0]),
    ("today", &[0]),
    ("timeOfDay", &[0]),
    ("toString", &[0]),
    ("convertsToString", &[0]),
    ("toBoolean", &[0, 1]),
    ("toInteger", &[0, 1]),
    ("toDecimal", &[0, 1]),
    ("toDate", &[0, 1]),
    ("toDateTime", &[0, 1]),
    ("toTime", &[0, 1]),
    ("toQuantity", &[0, 1]),
    ("convertsToBoolean", &[0, 1]),
    ("convertsToInteger", &[0, 1]),
    ("convertsToDecimal", &[0, 1]),
    ("convertsToDate", &[0, 1]),
    ("convertsToDateTime", &[0, 1]),
    ("convertsToTime", &[0, 1]),
    ("convertsToQuantity", &[0, 1]),
    ("indexOf", &[1]),
    ("substring", &[1, 2]),
    ("startsWith", &[1]),
    ("endsWith", &[1]),
    ("contains", &[1]),
    ("upper", &[0]),
    ("lower", &[0]),
    ("length", &[0]),
    ("trim", &[0]),
    ("toChars", &[0]),
    ("replace", &[2]),
    ("matches", &[1]),
    ("matchesFull", &[1]),
    ("replaceMatches", &[2]),
    ("split", &[1]),
    ("join", &[0, 1]),
    ("encode", &[1]),
    ("decode", &[1]),
    ("escape", &[1]),
    ("unescape", &[1]),
    ("abs", &[0]),
    ("ceiling", &[0]),
    ("floor", &[0]),
    ("truncate", &[0]),
    ("exp", &[0]),
    ("ln", &[0]),
    ("sqrt", &[0]),
    ("round", &[0, 1]),
    ("log", &[1]),
    ("power", &[1]),
    ("sort", &[0, 1, 2, 3]),
    ("precision", &[0]),
    ("lowBoundary", &[0, 1]),
    ("highBoundary", &[0, 1]),
    ("comparable", &[1]),
];

/// Functions of the FHIRPath and FHIR specifications that this engine knows of but refuses
/// at evaluation, with the reason, so the check can say more than "unknown".
pub(crate) const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "defineVariable",
        "defineVariable() is not supported by Sprig's engine",
    ),
    (
        "memberOf",
        "memberOf() needs a terminology server, which Sprig's engine does not consult",
    ),
    (
        "subsumes",
        "subsumes() needs a terminology server, which Sprig's engine does not consult",
    ),
    (
        "subsumedBy",
        "subsumedBy() needs a terminology server, which Sprig's engine does not consult",
    ),
];

/// The argument counts `name` accepts, if the evaluator implements it.
pub(crate) fn arities(name: &str) -> Option<&'static [usize]> {
    FUNCTIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, arities)| *arities)
}

/// The first call in `expr` (in source order) to a function the evaluator does not implement
/// or with an argument count it does not accept, as an error located at the function's name.
pub(crate) fn check(expr: &Expr, source: &str) -> Result<(), FhirPathError> {
    let mut calls = Vec::new();
    collect_calls(expr, &mut calls);
    // The tree is walked target-first, which is not always source order (`a(b(c))` vs
    // `x.f()`): report the leftmost offender, as a reader scans.
    calls.sort_by_key(|(at, _, _)| *at);
    for (at, name, argc) in calls {
        let message = match arities(name) {
            Some(allowed) if allowed.contains(&argc) => continue,
            Some(allowed) => format!(
                "{name}() takes {} argument{}, not {argc}",
                describe(allowed),
                if allowed == [1] { "" } else { "s" }
            ),
            None => match UNSUPPORTED.iter().find(|(n, _)| *n == name) {
                Some((_, why)) => (*why).to_string(),
                None => format!("unknown function {name}()"),
            },
        };
        let (line, column) = position_of(source, at);
        return Err(FhirPathError::Function {
            position: at,
            line,
            column,
            name: name.to_string(),
            message,
        });
    }
    Ok(())
}

/// The `%variables` `expr` reads, in source order of first use, without duplicates.
pub(crate) fn variables(expr: &Expr) -> Vec<String> {
    let mut out = Vec::new();
    walk(expr, &mut |e| {
        if let Expr::Env(name) = e
            && !out.contains(name)
        {
            out.push(name.clone());
        }
    });
    out
}

/// `0`, `1 or 2`, `0, 1, 2 or 3`.
fn describe(allowed: &[usize]) -> String {
    match allowed {
        [] => "no number of".to_string(),
        [one] => one.to_string(),
        [rest @ .., last] => format!(
            "{} or {last}",
            rest.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn collect_calls<'e>(expr: &'e Expr, out: &mut Vec<(usize, &'e str, usize)>) {
    walk(expr, &mut |e| {
        if let Expr::Call { name, args, at, .. } = e {
            out.push((*at, name.as_str(), args.len()));
        }
    });
}

/// Calls `visit` on `expr` and every expression inside it.
fn walk<'e>(expr: &'e Expr, visit: &mut impl FnMut(&'e Expr)) {
    visit(expr);
    for part in expr.parts() {
        walk(part, visit);
    }
}

/// How a part of an expression ([`Expr::parts`]) is evaluated, relative to the expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Once, with the expression's own input and `$this`, `$index`, `$total`: a call's
    /// target, an operand, most functions' arguments.
    Same,
    /// Once per item of the function's input, that item as `$this` (`where`, `select`,
    /// `all`, `exists`, `repeat`, `aggregate`'s first argument): it cannot see the outer
    /// focus.
    PerItem,
    /// A `sort` key: per item, and a leading `-` (descending) is read, not evaluated.
    SortKey,
    /// Once, with the function's input as `$this` but the caller's `$index` and `$total`
    /// (`iif`).
    OnInput,
    /// Never evaluated: a type name (`ofType`, `is`, `as`) or `trace`'s arguments.
    NotEvaluated,
}

/// The [`Role`] of each of `expr`'s parts, in the order of [`Expr::parts`]: what the
/// evaluator's `call` does with each argument.
pub(crate) fn roles(expr: &Expr) -> Vec<Role> {
    let Expr::Call {
        target, name, args, ..
    } = expr
    else {
        return vec![Role::Same; expr.parts().len()];
    };
    let argument = |index: usize| match (name.as_str(), index) {
        ("where" | "select" | "all" | "exists" | "repeat", _) | ("aggregate", 0) => Role::PerItem,
        ("sort", _) => Role::SortKey,
        ("iif", _) => Role::OnInput,
        ("ofType" | "is" | "as" | "trace", _) => Role::NotEvaluated,
        _ => Role::Same,
    };
    target
        .iter()
        .map(|_| Role::Same)
        .chain((0..args.len()).map(argument))
        .collect()
}
