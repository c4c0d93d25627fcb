//! The math functions (FHIRPath section 5.7: `abs`, `ceiling`, `exp`, `floor`, `ln`, `log`,
//! `power`, `round`, `sqrt`, `truncate`), and `comparable()`, section 6.2's test of whether
//! two quantities' units compare.

use rust_decimal::Decimal;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};

use super::Call;
use crate::fhirpath::FhirPathError;
use crate::fhirpath::eval::{Coll, Ctx, R, error};
use crate::fhirpath::quantity;
use crate::fhirpath::value::{Val, as_decimal};
use Val::{Dec, Int, Quantity};

/// `f` of the input, a single number, and of the argument (a single value, if the function
/// takes one). Empty for an empty input or an empty argument; `f`'s `None` is empty too.
fn number<'a>(
    cx: &Ctx<'a>,
    call: &Call<'_, 'a>,
    f: impl FnOnce(&Val<'a>, Option<&Val<'a>>) -> R<Option<Val<'a>>>,
) -> R<Coll<'a>> {
    let Some(v) = cx.system_single(call.base)? else {
        return Ok(Vec::new());
    };
    let arg = cx.system_single(&call.arg(cx, 0)?)?;
    if call.argc() == 1 && arg.is_none() {
        return Ok(Vec::new());
    }
    f(&v, arg.as_ref()).map(|r| r.into_iter().collect())
}

#[cold]
fn needs_a_number(call: &Call<'_, '_>) -> FhirPathError {
    error(format!("{}() needs a number", call.def.name))
}

fn to_f64(d: Decimal) -> Option<f64> {
    d.to_f64()
}

/// A float result as a decimal; none for infinities and NaN.
fn from_f64<'a>(x: f64) -> Option<Val<'a>> {
    if x.is_finite() {
        Decimal::from_f64(x).map(|d| Dec(d.normalize()))
    } else {
        None
    }
}

/// `f` of a number's value as a float (`exp`, `ln`, `sqrt`).
fn float<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>, f: fn(f64) -> f64) -> R<Coll<'a>> {
    number(cx, call, |v, _| match v {
        Int(_) | Dec(_) => Ok(as_decimal(v).and_then(to_f64).and_then(|x| from_f64(f(x)))),
        _ => Err(needs_a_number(call)),
    })
}

/// An integer as itself, a decimal by `f` (`ceiling`, `floor`, `truncate`).
fn integral<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>, f: fn(&Decimal) -> Decimal) -> R<Coll<'a>> {
    number(cx, call, |v, _| match v {
        Int(i) => Ok(Some(Int(*i))),
        Dec(d) => Ok(f(d).to_i64().map(Int)),
        _ => Err(needs_a_number(call)),
    })
}

pub(super) fn abs<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    number(cx, call, |v, _| match v {
        Int(i) => Ok(Some(Int(i
            .checked_abs()
            .ok_or_else(|| error("overflow"))?))),
        Dec(d) => Ok(Some(Dec(d.abs()))),
        Quantity(d, u) => Ok(Some(Quantity(d.abs(), u.clone()))),
        _ => Err(needs_a_number(call)),
    })
}

pub(super) fn ceiling<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    integral(cx, call, Decimal::ceil)
}

pub(super) fn floor<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    integral(cx, call, Decimal::floor)
}

pub(super) fn truncate<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    integral(cx, call, Decimal::trunc)
}

pub(super) fn exp<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    float(cx, call, f64::exp)
}

pub(super) fn ln<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    float(cx, call, f64::ln)
}

pub(super) fn sqrt<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    float(cx, call, f64::sqrt)
}

pub(super) fn round<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    number(cx, call, |v, arg| match v {
        Int(_) | Dec(_) => {
            let d = as_decimal(v).unwrap_or_default();
            let places = match arg {
                Some(Int(p)) if *p >= 0 => {
                    u32::try_from(*p).map_err(|_| error("round() precision is out of range"))?
                }
                None => 0,
                _ => return Err(error("round() precision must be a non-negative integer")),
            };
            Ok(Some(Dec(d.round_dp_with_strategy(
                places,
                rust_decimal::RoundingStrategy::MidpointAwayFromZero,
            ))))
        }
        _ => Err(needs_a_number(call)),
    })
}

pub(super) fn log<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    number(cx, call, |v, arg| match v {
        Int(_) | Dec(_) => {
            let base = arg.and_then(as_decimal).and_then(to_f64);
            Ok(match (as_decimal(v).and_then(to_f64), base) {
                (Some(x), Some(b)) => from_f64(x.ln() / b.ln()),
                _ => None,
            })
        }
        _ => Err(needs_a_number(call)),
    })
}

pub(super) fn power<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    number(cx, call, |v, arg| match (v, arg) {
        // An integer to a non-negative integer power stays an integer.
        (Int(a), Some(Int(e))) => Ok(if *e < 0 {
            from_f64((*a as f64).powf(*e as f64))
        } else {
            u32::try_from(*e)
                .ok()
                .and_then(|e| a.checked_pow(e))
                .map(Int)
        }),
        (Int(_) | Dec(_), _) => Ok(
            match (
                as_decimal(v).and_then(to_f64),
                arg.and_then(as_decimal).and_then(to_f64),
            ) {
                (Some(x), Some(e)) => from_f64(x.powf(e)),
                _ => None,
            },
        ),
        _ => Err(needs_a_number(call)),
    })
}

pub(super) fn comparable<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let (Some(Val::Quantity(_, a)), Some(Val::Quantity(_, b))) = (
        cx.system_single(call.base)?,
        cx.system_single(&call.arg(cx, 0)?)?,
    ) else {
        return Ok(Vec::new());
    };
    Ok(vec![Val::Bool(quantity::comparable(&a, &b))])
}
