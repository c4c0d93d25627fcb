//! What can be read of an expression without evaluating it: whether every function it calls
//! is in the table with an argument count the table accepts ([`check`], for
//! [`crate::fhirpath::FhirPath::compile_strict`]), and the `%variables` it reads
//! ([`variables`]).
//!
//! [`crate::fhirpath::FhirPath::compile`] does not refuse unknown functions: the R4 core
//! invariants call functions this engine does not implement (`memberOf`…), and the profile
//! pass reports those per use rather than refusing to start. Mapping files, in contrast, are
//! Sprig's own configuration, so a misspelt or unsupported function there must stop start-up:
//! they are compiled strictly.

use super::{FunctionDef, UNSUPPORTED};
use crate::fhirpath::FhirPathError;
use crate::fhirpath::parser::{Expr, position_of};

/// A call as [`check`] sees it: where its name is, the name, its argument count, and the
/// table's row, if any.
type CallSite<'e> = (usize, &'e str, usize, Option<&'static FunctionDef>);

/// The first call in `expr` (in source order) to a function the evaluator does not implement
/// or with an argument count it does not accept, as an error located at the function's name.
pub(crate) fn check(expr: &Expr, source: &str) -> Result<(), FhirPathError> {
    let mut calls = Vec::new();
    collect_calls(expr, &mut calls);
    // The tree is walked target-first, which is not always source order (`a(b(c))` vs
    // `x.f()`): report the leftmost offender, as a reader scans.
    calls.sort_by_key(|(at, ..)| *at);
    for (at, name, argc, function) in calls {
        let message = match function.map(|f| f.arities) {
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

fn collect_calls<'e>(expr: &'e Expr, out: &mut Vec<CallSite<'e>>) {
    walk(expr, &mut |e| {
        if let Expr::Call {
            name,
            args,
            at,
            function,
            ..
        } = e
        {
            out.push((*at, name.as_str(), args.len(), *function));
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
