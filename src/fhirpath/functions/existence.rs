//! The existence functions (FHIRPath section 5.1: `empty`, `exists`, `all`, `allTrue`…,
//! `subsetOf`, `supersetOf`, `count`, `distinct`, `isDistinct`), and `not()`, the one function
//! of section 6.5 (Boolean logic), which tests its input as they do.

use super::Call;
use crate::fhirpath::eval::{Coll, Ctx, R, error};
use crate::fhirpath::operators::dedupe;
use crate::fhirpath::value::{Val, equals};

fn boolean<'a>(b: bool) -> R<Coll<'a>> {
    Ok(vec![Val::Bool(b)])
}

pub(super) fn empty<'a>(_: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    boolean(call.base.is_empty())
}

pub(super) fn exists<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    if call.argc() == 0 {
        return boolean(!call.base.is_empty());
    }
    let mut found = false;
    call.each(cx, 0, call.base, |_, r| {
        found = cx.to_bool(&r)? == Some(true);
        Ok(!found)
    })?;
    boolean(found)
}

pub(super) fn all<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let mut all = true;
    call.each(cx, 0, call.base, |_, r| {
        all = cx.to_bool(&r)? == Some(true);
        Ok(all)
    })?;
    boolean(all)
}

/// The input's items, each of which must be a boolean.
fn booleans<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Vec<bool>> {
    let mut bools = Vec::with_capacity(call.base.len());
    for v in call.base {
        match v.system(cx.model) {
            Some(Val::Bool(b)) => bools.push(b),
            _ => return Err(error(format!("{}() needs booleans", call.def.name))),
        }
    }
    Ok(bools)
}

pub(super) fn all_true<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    boolean(booleans(cx, call)?.iter().all(|b| *b))
}

pub(super) fn any_true<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    boolean(booleans(cx, call)?.iter().any(|b| *b))
}

pub(super) fn all_false<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    boolean(booleans(cx, call)?.iter().all(|b| !b))
}

pub(super) fn any_false<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    boolean(booleans(cx, call)?.iter().any(|b| !b))
}

/// Whether every item of `sub` equals some item of `sup`.
fn is_subset(cx: &Ctx<'_>, sub: &[Val<'_>], sup: &[Val<'_>]) -> bool {
    sub.iter()
        .all(|x| sup.iter().any(|y| equals(x, y, cx.model) == Some(true)))
}

pub(super) fn subset_of<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let other = call.arg(cx, 0)?;
    boolean(is_subset(cx, call.base, &other))
}

pub(super) fn superset_of<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let other = call.arg(cx, 0)?;
    boolean(is_subset(cx, &other, call.base))
}

pub(super) fn count<'a>(_: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    Ok(vec![Val::Int(call.base.len() as i64)])
}

pub(super) fn distinct<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    Ok(dedupe(call.base.to_vec(), cx.model))
}

pub(super) fn is_distinct<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    boolean(dedupe(call.base.to_vec(), cx.model).len() == call.base.len())
}

pub(super) fn not<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    Ok(cx
        .to_bool(call.base)?
        .map(|b| Val::Bool(!b))
        .into_iter()
        .collect())
}
