//! Subexpressions worth computing once per evaluation, marked at compile time.
//!
//! R4's invariants repeat work a tree walker would otherwise redo:
//! - inside an iteration, a part that does not read the item is the same for every item:
//!   `element.tail().all(path.startsWith(%resource.snapshot.element.first().path & '.'))`
//!   (`sdf-8`) walks the whole snapshot for each of its elements, n² in all;
//! - at the top, the same part written twice has the same value:
//!   `children().element.where(path.contains('.').not())` three times in `sdf-9`.
//!
//! [`plan`] wraps each such part in [`Expr::Memo`] with a slot number; the evaluator keeps
//! one result per slot for the duration of one evaluation, so nothing outlives the data it
//! was computed from. Only successes are kept: a part that fails fails again where it is
//! met next, as it would have without the memo.
//!
//! A kept part never changes a result: a part is kept only where its value cannot differ
//! between the places it is met (within an iteration, one that reads neither the item nor
//! `$index`/`$total`); which arguments are evaluated per item comes from `functions::roles`,
//! as for `guard`. The slots live in the evaluation's `Ctx` and die with it. A test compares
//! every shipped invariant with and without the memo on every object of the examples and of
//! Sprig's published definitions.

use super::functions::{Role, roles};
use super::parser::Expr;

/// Rewrites `expr`, returning how many memo slots it now uses.
pub(crate) fn plan(expr: &mut Expr) -> usize {
    let mut top = Vec::new();
    collect_top(expr, &mut top);
    // Shapes met more than once at the top.
    let mut shapes: Vec<(String, usize)> = Vec::new();
    for shape in top {
        match shapes.iter_mut().find(|(s, _)| *s == shape) {
            Some((_, count)) => *count += 1,
            None => shapes.push((shape, 1)),
        }
    }
    let mut planner = Planner {
        repeated_at_top: shapes
            .into_iter()
            .filter(|(_, count)| *count > 1)
            .map(|(shape, _)| (shape, None))
            .collect(),
        slots: 0,
    };
    planner.visit(expr, Position::Top);
    planner.slots
}

/// Where a part is evaluated, as far as keeping its value goes.
#[derive(Clone, Copy, PartialEq)]
enum Position {
    /// With the expression's own input and frame: one value per evaluation.
    Top,
    /// Perhaps many times, with different inputs (an iteration's argument, `iif`'s).
    PerItem,
    /// Inside a part already kept, with the same input: computed once with it.
    InsideKept,
}

struct Planner {
    /// Shapes written more than once at the top, and the slot given to the first one met.
    repeated_at_top: Vec<(String, Option<usize>)>,
    slots: usize,
}

impl Planner {
    fn visit(&mut self, expr: &mut Expr, position: Position) {
        // Decided on the part as written, before any of its own parts is wrapped.
        let slot = if worth_keeping(expr) {
            match position {
                Position::Top => self.shared_slot(&shape(expr)),
                Position::PerItem => focus_free(expr).then(|| self.next_slot()),
                Position::InsideKept => None,
            }
        } else {
            None
        };
        self.visit_parts(
            expr,
            if slot.is_some() {
                Position::InsideKept
            } else {
                position
            },
        );
        if let Some(slot) = slot {
            let inner = std::mem::replace(expr, Expr::Empty);
            *expr = Expr::Memo {
                slot,
                expr: Box::new(inner),
            };
        }
    }

    fn visit_parts(&mut self, expr: &mut Expr, position: Position) {
        let roles = roles(expr);
        for (part, role) in expr.parts_mut().into_iter().zip(roles) {
            match role {
                Role::Same => self.visit(part, position),
                Role::PerItem | Role::OnInput => self.visit(part, Position::PerItem),
                // The key stays as written (its `-` is read); its parts may be kept.
                Role::SortKey => self.visit_parts(part, Position::PerItem),
                Role::NotEvaluated => {}
            }
        }
    }

    /// The slot of a shape written more than once at the top, the same for each copy.
    fn shared_slot(&mut self, shape: &str) -> Option<usize> {
        let i = self.repeated_at_top.iter().position(|(s, _)| s == shape)?;
        if let Some(slot) = self.repeated_at_top[i].1 {
            return Some(slot);
        }
        let slot = self.next_slot();
        self.repeated_at_top[i].1 = Some(slot);
        Some(slot)
    }

    fn next_slot(&mut self) -> usize {
        self.slots += 1;
        self.slots - 1
    }
}

/// Whether keeping the value saves more than keeping it costs (a copy of the value): it
/// takes at least two steps of navigation or calls. `value.empty()` or `%resource.type`
/// is about as cheap to compute again as to copy.
fn worth_keeping(expr: &Expr) -> bool {
    steps(expr) >= 2
}

/// The member, call and index steps `expr` evaluates.
fn steps(expr: &Expr) -> usize {
    let own = usize::from(matches!(
        expr,
        Expr::Member(..) | Expr::Call { .. } | Expr::Indexer(..)
    ));
    let roles = roles(expr);
    own + expr
        .parts()
        .into_iter()
        .zip(roles)
        .filter(|(_, role)| *role != Role::NotEvaluated)
        .map(|(part, _)| steps(part))
        .sum::<usize>()
}

/// Whether `expr` has the same value wherever it is evaluated within one evaluation: it
/// reads neither its input nor `$this`, `$index` or `$total`. An iteration's argument reads
/// its own items, never the outer focus; `iif`'s arguments keep the outer `$index` and
/// `$total`, so they must be free of them too.
fn focus_free(expr: &Expr) -> bool {
    match expr {
        Expr::Ident(_) | Expr::This | Expr::Index | Expr::Total => false,
        // An unqualified call works on the focus.
        Expr::Call { target: None, .. } => false,
        _ => {
            let roles = roles(expr);
            expr.parts()
                .into_iter()
                .zip(roles)
                .all(|(part, role)| match role {
                    Role::Same | Role::OnInput => focus_free(part),
                    Role::PerItem | Role::SortKey | Role::NotEvaluated => true,
                })
        }
    }
}

/// The shapes of the parts evaluated with the expression's own input and frame.
fn collect_top(expr: &Expr, shapes: &mut Vec<String>) {
    if worth_keeping(expr) {
        shapes.push(shape(expr));
    }
    let roles = roles(expr);
    for (part, role) in expr.parts().into_iter().zip(roles) {
        if role == Role::Same {
            collect_top(part, shapes);
        }
    }
}

/// A text that two parts share exactly when they are written alike: the tree, without the
/// positions of calls (kept for error messages) or the function rows the parser found for
/// them (the same for the same name).
fn shape(expr: &Expr) -> String {
    let mut out = String::new();
    write_shape(expr, &mut out);
    out
}

/// Writes each node as its kind and what it holds besides its parts (names and literals in
/// their `Debug` form, quoted, so no two trees write alike), then its parts in brackets.
/// Written out rather than taken from the tree's `Debug` form: that form costs several times
/// as much, and compiling an expression shapes most of its parts.
fn write_shape(expr: &Expr, out: &mut String) {
    use std::fmt::Write as _;
    // Writing to a String cannot fail.
    let _ = match expr {
        Expr::Empty => write!(out, "Empty"),
        Expr::Literal(literal) => write!(out, "Literal({literal:?})"),
        Expr::Ident(name) => write!(out, "Ident({name:?})"),
        Expr::This => write!(out, "This"),
        Expr::Index => write!(out, "Index"),
        Expr::Total => write!(out, "Total"),
        Expr::Env(name) => write!(out, "Env({name:?})"),
        Expr::Member(_, name) => write!(out, "Member({name:?})"),
        // Whether there is a target tells `a.f(b)` from `f(a, b)`.
        Expr::Call { target, name, .. } => write!(out, "Call({name:?}, {})", target.is_some()),
        Expr::Indexer(..) => write!(out, "Indexer"),
        Expr::Negate(_) => write!(out, "Negate"),
        Expr::Binary(op, ..) => write!(out, "Binary({op:?})"),
        Expr::Is(_, spec) => write!(out, "Is({spec:?})"),
        Expr::As(_, spec) => write!(out, "As({spec:?})"),
        Expr::Memo { slot, .. } => write!(out, "Memo({slot})"),
    };
    out.push('[');
    for part in expr.parts() {
        write_shape(part, out);
        out.push(',');
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhirpath::parser::parse;

    fn planned(text: &str) -> (usize, String) {
        let mut expr = parse(text).expect("parses");
        let slots = plan(&mut expr);
        (slots, format!("{expr:?}"))
    }

    #[test]
    fn shapes_ignore_positions_but_tell_apart_what_is_written_differently() {
        let shape_of = |text: &str| shape(&parse(text).expect("parses"));
        assert_eq!(shape_of("a.where(b)"), shape_of("  a . where( b )"));
        for (x, y) in [
            ("a.f(b)", "f(a, b)"),
            ("a.b.c", "a.`b.c`"),
            ("1", "1.0"),
            ("'1'", "1"),
            ("a is String", "a is FHIR.String"),
            ("a.where(b)", "a.where(c)"),
            ("a - b", "a + b"),
        ] {
            assert_ne!(shape_of(x), shape_of(y), "{x} and {y}");
        }
    }

    #[test]
    fn a_part_of_an_iteration_that_does_not_read_the_item_is_kept() {
        let (slots, tree) = planned(
            "element.tail().all(path.startsWith(%resource.snapshot.element.first().path & '.'))",
        );
        assert_eq!(slots, 1, "{tree}");
        assert!(
            tree.contains("Memo { slot: 0, expr: Binary(Concat"),
            "{tree}"
        );
    }

    #[test]
    fn parts_that_read_the_item_or_its_index_are_not_kept() {
        for text in [
            "a.where(b = $this.c)",
            "a.where(b.exists())",
            "a.select($index + 1)",
            "a.where(exists())",
            // `iif` keeps the outer `$index`; `aggregate` reads its start value outside.
            "a.all(%x.iif($index = 0, 1, 2) = 1)",
            "a.select(%b.aggregate($total + $this.c, $index))",
        ] {
            let (slots, tree) = planned(text);
            assert_eq!(slots, 0, "{text}: {tree}");
        }
    }

    #[test]
    fn a_part_written_twice_at_the_top_shares_one_slot() {
        let (slots, tree) = planned(
            "children().element.where(path.contains('.').not()).label.empty() and \
             children().element.where(path.contains('.').not()).code.empty()",
        );
        assert_eq!(slots, 1, "{tree}");
        assert_eq!(tree.matches("Memo { slot: 0").count(), 2, "{tree}");
    }

    #[test]
    fn the_same_text_inside_an_iteration_is_not_shared_with_the_top() {
        // `b.c` inside `where` reads the item, so it is not the top's `b.c`.
        let (slots, tree) = planned("b.c.exists() and a.where(b.c.exists()).exists()");
        assert_eq!(slots, 0, "{tree}");
    }

    #[test]
    fn a_sort_key_keeps_its_leading_minus() {
        let (slots, tree) = planned("a.sort(-%resource.b.count())");
        assert_eq!(slots, 1, "{tree}");
        assert!(tree.contains("Negate(Memo"), "{tree}");
    }
}
