//! Precision and boundaries (FHIRPath 3.0, trial use): `precision`, `lowBoundary`,
//! `highBoundary` of decimals, quantities, dates, date-times and times.

use rust_decimal::Decimal;

use super::Call;
use crate::fhirpath::eval::{Coll, Ctx, R};
use crate::fhirpath::temporal::{self, Date, DateTime, Time};
use crate::fhirpath::value::{Val, as_decimal};

pub(super) fn precision<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    let Some(v) = cx.system_single(call.base)? else {
        return Ok(Vec::new());
    };
    Ok(precision_of(&v).map(Val::Int).into_iter().collect())
}

/// `lowBoundary` (`high`: `highBoundary`), to the precision the argument gives, if any.
fn boundary_of<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>, high: bool) -> R<Coll<'a>> {
    let Some(v) = cx.system_single(call.base)? else {
        return Ok(Vec::new());
    };
    let digits = call.int(cx, 0)?;
    Ok(boundary(&v, digits, high).into_iter().collect())
}

pub(super) fn low_boundary<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    boundary_of(cx, call, false)
}

pub(super) fn high_boundary<'a>(cx: &Ctx<'a>, call: &Call<'_, 'a>) -> R<Coll<'a>> {
    boundary_of(cx, call, true)
}

fn precision_of(v: &Val<'_>) -> Option<i64> {
    Some(match v {
        Val::Dec(d) => i64::from(d.scale()),
        Val::Int(_) => 0,
        Val::Date(d) => [4, 7, 10][d.precision() as usize],
        Val::DateTime(d) => match d.precision() {
            temporal::Precision::Year => 4,
            temporal::Precision::Month => 6,
            temporal::Precision::Day => 8,
            temporal::Precision::Hour => 10,
            temporal::Precision::Minute => 12,
            temporal::Precision::Second => 14,
            temporal::Precision::Millisecond => 17,
        },
        Val::Time(t) => match t.precision() {
            temporal::Precision::Hour => 2,
            temporal::Precision::Minute => 4,
            temporal::Precision::Second => 6,
            _ => 9,
        },
        _ => return None,
    })
}

fn boundary<'a>(v: &Val<'a>, digits: Option<i64>, high: bool) -> Option<Val<'a>> {
    match v {
        Val::Dec(_) | Val::Int(_) => decimal_boundary(as_decimal(v)?, digits, high).map(Val::Dec),
        Val::Quantity(q, unit) => {
            decimal_boundary(*q, digits, high).map(|d| Val::Quantity(d, unit.clone()))
        }
        Val::Date(d) => {
            let digits = digits.unwrap_or(8);
            let year = d.year;
            let month = d.month.unwrap_or(if high { 12 } else { 1 });
            let day = d.day.unwrap_or(if high {
                temporal::days_in_month(year, month)
            } else {
                1
            });
            Some(match digits {
                4 => Val::Date(Date {
                    year,
                    month: None,
                    day: None,
                }),
                6 => Val::Date(Date {
                    year,
                    month: Some(month),
                    day: None,
                }),
                8 => Val::Date(Date {
                    year,
                    month: Some(month),
                    day: Some(day),
                }),
                _ => return None,
            })
        }
        Val::DateTime(dt) => {
            let digits = digits.unwrap_or(17);
            let d = dt.date;
            let year = d.year;
            let month = d.month.unwrap_or(if high { 12 } else { 1 });
            let day = d.day.unwrap_or(if high {
                temporal::days_in_month(year, month)
            } else {
                1
            });
            let t = dt.time.unwrap_or(Time {
                hour: if high { 23 } else { 0 },
                minute: None,
                second: None,
                millis: None,
            });
            let time = Time {
                hour: t.hour,
                minute: Some(t.minute.unwrap_or(if high { 59 } else { 0 })),
                second: Some(t.second.unwrap_or(if high { 59 } else { 0 })),
                millis: Some(t.millis.unwrap_or(if high { 999 } else { 0 })),
            };
            // Without a timezone the boundary spans all of them (-12:00 … +14:00).
            let tz = dt.tz.or(Some(if high { -12 * 60 } else { 14 * 60 }));
            let date = Date {
                year,
                month: Some(month),
                day: Some(day),
            };
            Some(match digits {
                4 => Val::DateTime(DateTime {
                    date: Date {
                        year,
                        month: None,
                        day: None,
                    },
                    time: None,
                    tz: None,
                }),
                6 => Val::DateTime(DateTime {
                    date: Date {
                        year,
                        month: Some(month),
                        day: None,
                    },
                    time: None,
                    tz: None,
                }),
                8 => Val::DateTime(DateTime {
                    date,
                    time: None,
                    tz: None,
                }),
                10 | 12 | 14 | 17 => {
                    let time = Time {
                        hour: time.hour,
                        minute: (digits >= 12).then_some(time.minute).flatten(),
                        second: (digits >= 14).then_some(time.second).flatten(),
                        millis: (digits >= 17).then_some(time.millis).flatten(),
                    };
                    Val::DateTime(DateTime {
                        date,
                        time: Some(time),
                        tz,
                    })
                }
                _ => return None,
            })
        }
        Val::Time(t) => {
            let digits = digits.unwrap_or(9);
            let time = Time {
                hour: t.hour,
                minute: Some(t.minute.unwrap_or(if high { 59 } else { 0 })),
                second: Some(t.second.unwrap_or(if high { 59 } else { 0 })),
                millis: Some(t.millis.unwrap_or(if high { 999 } else { 0 })),
            };
            Some(Val::Time(match digits {
                2 => Time {
                    minute: None,
                    second: None,
                    millis: None,
                    ..time
                },
                4 => Time {
                    second: None,
                    millis: None,
                    ..time
                },
                6 => Time {
                    millis: None,
                    ..time
                },
                9 => time,
                _ => return None,
            }))
        }
        _ => None,
    }
}

/// The lowest (highest) value a decimal could stand for, given its precision: half a unit
/// in its last place below (above) it, rounded down (up) to `digits` places (default 8).
fn decimal_boundary(d: Decimal, digits: Option<i64>, high: bool) -> Option<Decimal> {
    let digits = digits.unwrap_or(8);
    if !(0..=28).contains(&digits) {
        return None;
    }
    // At the maximum scale there is no finer digit: the value is its own boundary.
    let half = Decimal::try_new(5, d.scale() + 1).unwrap_or(Decimal::ZERO);
    let strategy = if high {
        rust_decimal::RoundingStrategy::ToPositiveInfinity
    } else {
        rust_decimal::RoundingStrategy::ToNegativeInfinity
    };
    let edge = if high {
        d.checked_add(half)?
    } else {
        d.checked_sub(half)?
    };
    let mut r = edge.round_dp_with_strategy(digits as u32, strategy);
    r.rescale(digits as u32);
    Some(r)
}
