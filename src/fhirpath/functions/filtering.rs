//! The filtering and projection functions (FHIRPath section 5.2): `where`, `select`,
//! `repeat`, `ofType`.

use super::{Call, types};
use crate::fhirpath::eval::{Coll, Ctx, R, error};
use crate::fhirpath::value::equals;

pub(super) fn r#where<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let mut out = Vec::new();
    call.each(cx, 0, call.base, |item, r| {
        if cx.to_bool(&r)? == Some(true) {
            out.push(item.clone());
        }
        Ok(true)
    })?;
    Ok(out)
}

pub(super) fn select<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let mut out = Vec::new();
    call.each(cx, 0, call.base, |_, r| {
        out.extend(r);
        Ok(true)
    })?;
    Ok(out)
}

pub(super) fn repeat<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let mut out: Coll<'a> = Vec::new();
    let mut frontier = call.base.to_vec();
    // Bounded: a projection that keeps producing new items would never end.
    for _ in 0..1000 {
        let mut next = Vec::new();
        call.each(cx, 0, &frontier, |_, r| {
            next.extend(r);
            Ok(true)
        })?;
        let mut fresh = Vec::new();
        for v in next {
            if !out.iter().any(|o| equals(o, &v, cx.model) == Some(true)) {
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

/// `as` by another name: this engine filters with `as` too (see `known-failures.txt`).
pub(super) fn of_type<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    cx.of_type(call.base, &types::type_arg(call)?)
}
