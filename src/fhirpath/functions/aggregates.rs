//! Aggregates (FHIRPath section 7): `aggregate`.

use super::Call;
use crate::fhirpath::eval::{Coll, Ctx, Frame, R};

/// The aggregator (the first argument) evaluated on each item in turn, with the result so
/// far (starting from the second argument) as `$total`.
pub(super) fn aggregate<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let mut total = call.arg(cx, 1)?;
    let Some(aggregator) = call.per_item(0) else {
        return Ok(total);
    };
    for (i, item) in call.base.iter().enumerate() {
        let f = Frame {
            this: Some(item),
            index: Some(i),
            total: Some(&total),
        };
        let next = cx.eval(aggregator, std::slice::from_ref(item), f)?;
        total = next;
    }
    Ok(total)
}
