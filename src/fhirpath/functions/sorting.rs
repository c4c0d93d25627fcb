//! `sort` (FHIRPath 3.0, trial use): the input ordered by its keys.

use std::cmp::Ordering;

use super::Call;
use crate::fhirpath::eval::{Coll, Ctx, Frame, R, error};
use crate::fhirpath::parser::Expr;
use crate::fhirpath::value::{Val, compare};

/// Each argument is a sort key, evaluated per item; `-key` sorts that key descending.
/// Without keys the items sort by their own values.
pub(super) fn sort<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let model = cx.model;
    let keys: Vec<(&Expr, bool)> = call
        .sort_keys()
        .map(|a| match a {
            Expr::Negate(inner) => (inner.as_ref(), true),
            other => (other, false),
        })
        .collect();
    let mut keyed: Vec<(Vec<Coll<'a>>, Val<'a>)> = Vec::new();
    for (i, item) in call.base.iter().enumerate() {
        let f = Frame {
            this: Some(item),
            index: Some(i),
            total: None,
        };
        let values = if keys.is_empty() {
            vec![vec![item.clone()]]
        } else {
            keys.iter()
                .map(|(k, _)| cx.eval(k, std::slice::from_ref(item), f))
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
