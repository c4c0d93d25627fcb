//! The subsetting functions (FHIRPath section 5.3): `single`, `first`, `last`, `tail`,
//! `skip`, `take`, `intersect`, `exclude`.

use super::Call;
use crate::fhirpath::eval::{Coll, Ctx, R};
use crate::fhirpath::value::equals;

pub(super) fn single<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    Ok(cx.single(call.base)?.cloned().into_iter().collect())
}

pub(super) fn first<'a>(_: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    Ok(call.base.first().cloned().into_iter().collect())
}

pub(super) fn last<'a>(_: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    Ok(call.base.last().cloned().into_iter().collect())
}

pub(super) fn tail<'a>(_: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    Ok(call.base.iter().skip(1).cloned().collect())
}

/// The count `skip` and `take` read: empty or negative is 0.
fn count_arg<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<usize> {
    let n = call.int(cx, 0)?.unwrap_or(0);
    Ok(usize::try_from(n.max(0)).unwrap_or(0))
}

pub(super) fn skip<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let n = count_arg(cx, call)?;
    Ok(call.base.iter().skip(n).cloned().collect())
}

pub(super) fn take<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let n = count_arg(cx, call)?;
    Ok(call.base.iter().take(n).cloned().collect())
}

pub(super) fn intersect<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let other = call.arg(cx, 0)?;
    let mut out: Coll<'a> = Vec::new();
    for v in call.base {
        if other.iter().any(|o| equals(o, v, cx.model) == Some(true))
            && !out.iter().any(|o| equals(o, v, cx.model) == Some(true))
        {
            out.push(v.clone());
        }
    }
    Ok(out)
}

pub(super) fn exclude<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let other = call.arg(cx, 0)?;
    Ok(call
        .base
        .iter()
        .filter(|v| !other.iter().any(|o| equals(o, v, cx.model) == Some(true)))
        .cloned()
        .collect())
}
