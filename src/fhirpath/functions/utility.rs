//! The utility functions (FHIRPath section 5.9): `trace` and the clock (`now`, `today`,
//! `timeOfDay`).

use super::Call;
use crate::fhirpath::eval::{Coll, Ctx, R};
use crate::fhirpath::value::Val;

/// Sprig keeps no trace log: the input passes through, and the arguments are not evaluated.
pub(super) fn trace<'a>(_: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    Ok(call.base.to_vec())
}

pub(super) fn now<'a>(cx: &Ctx<'a>, _: &Call<'_, 'a>) -> R<Coll<'a>> {
    Ok(vec![Val::DateTime(cx.now())])
}

pub(super) fn today<'a>(cx: &Ctx<'a>, _: &Call<'_, 'a>) -> R<Coll<'a>> {
    Ok(vec![Val::Date(cx.now().date)])
}

pub(super) fn time_of_day<'a>(cx: &Ctx<'a>, _: &Call<'_, 'a>) -> R<Coll<'a>> {
    Ok(cx.now().time.map(Val::Time).into_iter().collect())
}
