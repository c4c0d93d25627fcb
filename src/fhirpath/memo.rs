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

use super::parser::Expr;

/// Functions that evaluate their argument(s) once per item, with the item as `$this` and
/// as the input of unqualified names; none of those arguments can see the outer focus.
const PER_ITEM: [&str; 6] = ["where", "select", "all", "exists", "repeat", "sort"];

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

#[derive(Clone, Copy, PartialEq)]
enum Position {
    /// Evaluated with the expression's own input and frame: every part has one value
    /// per evaluation.
    Top,
    /// Evaluated once per item of an iteration (or of `iif`'s chosen input).
    PerItem,
}

struct Planner {
    /// Shapes written more than once at the top, and the slot given to the first one met.
    repeated_at_top: Vec<(String, Option<usize>)>,
    slots: usize,
}

impl Planner {
    fn visit(&mut self, expr: &mut Expr, position: Position) {
        if worth_keeping(expr) {
            let slot = match position {
                Position::PerItem if focus_free(expr) => Some(self.next_slot()),
                Position::Top => {
                    let shape = shape(expr);
                    let existing = self.repeated_at_top.iter().position(|(s, _)| *s == shape);
                    match existing {
                        Some(i) => Some(match self.repeated_at_top[i].1 {
                            Some(slot) => slot,
                            None => {
                                let slot = self.next_slot();
                                self.repeated_at_top[i].1 = Some(slot);
                                slot
                            }
                        }),
                        None => None,
                    }
                }
                Position::PerItem => None,
            };
            if let Some(slot) = slot {
                // Computed once, but iterations inside it still run per item.
                self.children(expr, Position::PerItem, true);
                let inner = std::mem::replace(expr, Expr::Empty);
                *expr = Expr::Memo {
                    slot,
                    expr: Box::new(inner),
                };
                return;
            }
        }
        self.children(expr, position, false);
    }

    /// Visits the parts of `expr`. With `inside_memo`, only parts evaluated per item are
    /// candidates (the rest is computed once with the memo'd whole).
    fn children(&mut self, expr: &mut Expr, position: Position, inside_memo: bool) {
        let own = if inside_memo {
            Position::PerItem
        } else {
            position
        };
        // Parts evaluated with this node's input and frame: per item only if this node is.
        let same = |p: Position| if inside_memo { Position::PerItem } else { p };
        match expr {
            Expr::Empty
            | Expr::Literal(_)
            | Expr::Ident(_)
            | Expr::This
            | Expr::Index
            | Expr::Total
            | Expr::Env(_) => {}
            Expr::Member(target, _)
            | Expr::Negate(target)
            | Expr::Is(target, _)
            | Expr::As(target, _) => self.visit_same(target, own, inside_memo),
            Expr::Indexer(a, b) | Expr::Binary(_, a, b) => {
                self.visit_same(a, own, inside_memo);
                self.visit_same(b, own, inside_memo);
            }
            Expr::Memo { expr, .. } => self.visit(expr, same(position)),
            Expr::Call {
                target, name, args, ..
            } => {
                if let Some(target) = target {
                    self.visit_same(target, own, inside_memo);
                }
                let per_item_args = PER_ITEM.contains(&name.as_str()) || name == "iif";
                for (i, arg) in args.iter_mut().enumerate() {
                    let per_item = per_item_args || (name == "aggregate" && i == 0);
                    if name == "sort" {
                        // `sort` reads a leading `-` of an argument as "descending":
                        // the argument itself must stay as written.
                        match arg {
                            Expr::Negate(key) => self.visit(key, Position::PerItem),
                            other => self.children(other, Position::PerItem, false),
                        }
                    } else if per_item {
                        self.visit(arg, Position::PerItem);
                    } else {
                        self.visit_same(arg, own, inside_memo);
                    }
                }
            }
        }
    }

    /// A part evaluated with its parent's input and frame.
    fn visit_same(&mut self, expr: &mut Expr, position: Position, inside_memo: bool) {
        if inside_memo {
            // Computed with the memo'd whole: only what runs per item inside it is kept.
            self.children(expr, Position::PerItem, true);
        } else {
            self.visit(expr, position);
        }
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
    steps(expr, 2) >= 2
}

/// The member, call and index steps in `expr`, counted up to `enough`.
fn steps(expr: &Expr, enough: usize) -> usize {
    match expr {
        Expr::Empty
        | Expr::Literal(_)
        | Expr::Ident(_)
        | Expr::This
        | Expr::Index
        | Expr::Total
        | Expr::Env(_) => 0,
        Expr::Negate(inner) | Expr::Is(inner, _) | Expr::As(inner, _) => steps(inner, enough),
        Expr::Memo { expr, .. } => steps(expr, enough),
        Expr::Binary(_, a, b) => {
            let a = steps(a, enough);
            if a >= enough {
                a
            } else {
                a + steps(b, enough - a)
            }
        }
        Expr::Member(target, _) => 1 + steps(target, enough.saturating_sub(1)),
        Expr::Indexer(a, b) => 1 + steps(a, enough.saturating_sub(1)) + steps(b, enough),
        Expr::Call { target, args, .. } => {
            let mut count = 1 + target.as_deref().map_or(0, |t| steps(t, enough));
            for arg in args {
                if count >= enough {
                    break;
                }
                count += steps(arg, enough - count);
            }
            count
        }
    }
}

/// Whether `expr` has the same value wherever it is evaluated within one evaluation: it
/// reads neither its input nor `$this`, `$index` or `$total` (an iteration's argument
/// reads its own items, not the outer focus).
pub(crate) fn focus_free(expr: &Expr) -> bool {
    match expr {
        Expr::Empty | Expr::Literal(_) | Expr::Env(_) => true,
        Expr::Ident(_) | Expr::This | Expr::Index | Expr::Total => false,
        Expr::Member(target, _)
        | Expr::Negate(target)
        | Expr::Is(target, _)
        | Expr::As(target, _) => focus_free(target),
        Expr::Indexer(a, b) | Expr::Binary(_, a, b) => focus_free(a) && focus_free(b),
        Expr::Memo { expr, .. } => focus_free(expr),
        Expr::Call { target: None, .. } => false,
        Expr::Call {
            target: Some(target),
            name,
            args,
            ..
        } => {
            focus_free(target)
                && match name.as_str() {
                    n if PER_ITEM.contains(&n) => true,
                    // `trace` only logs; its arguments are not evaluated.
                    "trace" => true,
                    // The aggregator runs per item; the initial value is read outside.
                    "aggregate" => args.get(1).is_none_or(focus_free),
                    // `iif` reads its arguments against its input but keeps the outer
                    // `$index` and `$total`, so every argument must be free of them too.
                    _ => args.iter().all(focus_free),
                }
        }
    }
}

/// The positions whose shapes may repeat at the top: every part evaluated with the
/// expression's own input and frame.
fn collect_top(expr: &Expr, shapes: &mut Vec<String>) {
    if worth_keeping(expr) {
        shapes.push(shape(expr));
    }
    match expr {
        Expr::Empty
        | Expr::Literal(_)
        | Expr::Ident(_)
        | Expr::This
        | Expr::Index
        | Expr::Total
        | Expr::Env(_) => {}
        Expr::Member(target, _)
        | Expr::Negate(target)
        | Expr::Is(target, _)
        | Expr::As(target, _) => collect_top(target, shapes),
        Expr::Indexer(a, b) | Expr::Binary(_, a, b) => {
            collect_top(a, shapes);
            collect_top(b, shapes);
        }
        Expr::Memo { expr, .. } => collect_top(expr, shapes),
        Expr::Call {
            target, name, args, ..
        } => {
            if let Some(target) = target {
                collect_top(target, shapes);
            }
            if !(PER_ITEM.contains(&name.as_str()) || name == "iif" || name == "aggregate") {
                for arg in args {
                    collect_top(arg, shapes);
                }
            }
        }
    }
}

/// A text that two parts share exactly when they are written alike (positions ignored).
fn shape(expr: &Expr) -> String {
    let mut out = String::new();
    write_shape(expr, &mut out);
    out
}

fn write_shape(expr: &Expr, out: &mut String) {
    use std::fmt::Write;
    // Debug output of the leaves is unambiguous (strings quoted, variants named); the
    // brackets keep nesting apart.
    match expr {
        Expr::Empty => out.push_str("{}"),
        Expr::Literal(literal) => {
            let _ = write!(out, "{literal:?}");
        }
        Expr::Ident(name) => {
            let _ = write!(out, "I{name:?}");
        }
        Expr::This => out.push_str("$this"),
        Expr::Index => out.push_str("$index"),
        Expr::Total => out.push_str("$total"),
        Expr::Env(name) => {
            let _ = write!(out, "%{name:?}");
        }
        Expr::Member(target, name) => {
            out.push('(');
            write_shape(target, out);
            let _ = write!(out, ").{name:?}");
        }
        Expr::Call {
            target, name, args, ..
        } => {
            out.push('(');
            if let Some(target) = target {
                write_shape(target, out);
            }
            let _ = write!(out, ").{name:?}(");
            for arg in args {
                write_shape(arg, out);
                out.push(',');
            }
            out.push(')');
        }
        Expr::Indexer(a, b) => {
            out.push('(');
            write_shape(a, out);
            out.push_str(")[");
            write_shape(b, out);
            out.push(']');
        }
        Expr::Negate(inner) => {
            out.push_str("-(");
            write_shape(inner, out);
            out.push(')');
        }
        Expr::Binary(op, a, b) => {
            out.push('(');
            write_shape(a, out);
            let _ = write!(out, " {op:?} ");
            write_shape(b, out);
            out.push(')');
        }
        Expr::Is(inner, spec) => {
            out.push('(');
            write_shape(inner, out);
            let _ = write!(out, " is {spec:?})");
        }
        Expr::As(inner, spec) => {
            out.push('(');
            write_shape(inner, out);
            let _ = write!(out, " as {spec:?})");
        }
        Expr::Memo { expr, .. } => write_shape(expr, out),
    }
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
