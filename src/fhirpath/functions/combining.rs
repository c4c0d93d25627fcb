//! The combining functions (FHIRPath section 5.4): `union`, `combine`.

use super::Call;
use crate::fhirpath::eval::{Coll, Ctx, R};
use crate::fhirpath::operators::dedupe;

/// The function form of the `|` operator.
pub(super) fn union<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let other = call.arg(cx, 0)?;
    let mut items = call.base.to_vec();
    items.extend(other);
    Ok(dedupe(items, cx.model))
}

pub(super) fn combine<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let mut out = call.base.to_vec();
    out.extend(call.arg(cx, 0)?);
    Ok(out)
}
