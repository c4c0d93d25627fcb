//! The operators (FHIRPath's operations, spec section 6): `=`, `~`, the comparisons, `|`,
//! `in`/`contains`, the Boolean operators, arithmetic (numbers, quantities, dates and times),
//! `&` and unary minus. `is` and `as` are with the type functions (`functions::types`).

use std::cmp::Ordering;

use rust_decimal::prelude::ToPrimitive;

use super::eval::{Coll, Ctx, Frame, R, error};
use super::model::Model;
use super::parser::{BinOp, Expr};
use super::quantity;
use super::temporal::{self, CalendarUnit};
use super::value::{self, Val, as_decimal, compare, equals, equivalent};

impl<'a> Ctx<'a> {
    /// `-operand`.
    pub(crate) fn negate(
        &self,
        operand: &Expr,
        input: &[Val<'a>],
        fr: Frame<'_, 'a>,
    ) -> R<Coll<'a>> {
        let v = self.eval(operand, input, fr)?;
        let Some(v) = self.single(&v)? else {
            return Ok(Vec::new());
        };
        Ok(vec![match v.system(self.model) {
            Some(Val::Int(i)) => Val::Int(i.checked_neg().ok_or_else(|| error("overflow"))?),
            Some(Val::Long(i)) => Val::Long(i.checked_neg().ok_or_else(|| error("overflow"))?),
            Some(Val::Dec(d)) => Val::Dec(-d),
            Some(Val::Quantity(d, u)) => Val::Quantity(-d, u),
            _ => return Err(error("unary minus needs a number or a quantity")),
        }])
    }

    /// `l op r`.
    pub(crate) fn binary(
        &self,
        op: BinOp,
        l: &Expr,
        r: &Expr,
        input: &[Val<'a>],
        fr: Frame<'_, 'a>,
    ) -> R<Coll<'a>> {
        // Boolean operators short-circuit where the spec's three-valued logic allows it.
        match op {
            BinOp::And | BinOp::Or | BinOp::Implies | BinOp::Xor => {
                let a = self.to_bool(&self.eval(l, input, fr)?)?;
                let short = match (op, a) {
                    (BinOp::And, Some(false)) => Some(false),
                    (BinOp::Or, Some(true)) => Some(true),
                    (BinOp::Implies, Some(false)) => Some(true),
                    _ => None,
                };
                if let Some(s) = short {
                    return Ok(vec![Val::Bool(s)]);
                }
                let b = self.to_bool(&self.eval(r, input, fr)?)?;
                let result = match op {
                    BinOp::And => match (a, b) {
                        (Some(true), Some(true)) => Some(true),
                        (_, Some(false)) => Some(false),
                        _ => None,
                    },
                    BinOp::Or => match (a, b) {
                        (Some(false), Some(false)) => Some(false),
                        (_, Some(true)) => Some(true),
                        _ => None,
                    },
                    BinOp::Xor => match (a, b) {
                        (Some(x), Some(y)) => Some(x != y),
                        _ => None,
                    },
                    _ => match (a, b) {
                        (Some(true), b) => b,
                        (None, Some(true)) => Some(true),
                        _ => None,
                    },
                };
                return Ok(result.map(Val::Bool).into_iter().collect());
            }
            _ => {}
        }
        let a = self.eval(l, input, fr)?;
        let b = self.eval(r, input, fr)?;
        let model = self.model;
        let boolean = |v: Option<bool>| Ok(v.map(Val::Bool).into_iter().collect());
        match op {
            BinOp::Union => {
                let mut items = a;
                items.extend(b);
                Ok(dedupe(items, model))
            }
            BinOp::Eq | BinOp::Ne => {
                if a.is_empty() || b.is_empty() {
                    return Ok(Vec::new());
                }
                let eq = if a.len() != b.len() {
                    Some(false)
                } else {
                    let mut result = Some(true);
                    for (x, y) in a.iter().zip(&b) {
                        match equals(x, y, model) {
                            Some(true) => {}
                            Some(false) => {
                                result = Some(false);
                                break;
                            }
                            None => result = None,
                        }
                    }
                    result
                };
                boolean(if op == BinOp::Eq { eq } else { eq.map(|e| !e) })
            }
            BinOp::Equiv | BinOp::NotEquiv => {
                let eq = a.len() == b.len() && {
                    let mut used = vec![false; b.len()];
                    a.iter().all(|x| {
                        let found = b
                            .iter()
                            .enumerate()
                            .find(|(i, y)| !used[*i] && equivalent(x, y, model));
                        if let Some((i, _)) = found {
                            used[i] = true;
                            true
                        } else {
                            false
                        }
                    })
                };
                boolean(Some(if op == BinOp::Equiv { eq } else { !eq }))
            }
            BinOp::Lt | BinOp::Gt | BinOp::Le | BinOp::Ge => {
                let (Some(x), Some(y)) = (self.single(&a)?, self.single(&b)?) else {
                    return Ok(Vec::new());
                };
                let (sx, sy) = (x.system(model), y.system(model));
                if let (Some(sx), Some(sy)) = (&sx, &sy)
                    && !comparable_types(sx, sy)
                {
                    return Err(error("these values cannot be compared"));
                }
                boolean(compare(x, y, model).map(|o| match op {
                    BinOp::Lt => o == Ordering::Less,
                    BinOp::Gt => o == Ordering::Greater,
                    BinOp::Le => o != Ordering::Greater,
                    _ => o != Ordering::Less,
                }))
            }
            BinOp::In | BinOp::Contains => {
                let (item, coll) = if op == BinOp::In { (&a, &b) } else { (&b, &a) };
                let Some(item) = self.single(item)? else {
                    return Ok(Vec::new());
                };
                boolean(Some(
                    coll.iter().any(|c| equals(item, c, model) == Some(true)),
                ))
            }
            BinOp::Concat => {
                let x = self.string_arg(&a)?.unwrap_or_default();
                let y = self.string_arg(&b)?.unwrap_or_default();
                Ok(vec![Val::Str(x + &y)])
            }
            _ => {
                let (Some(x), Some(y)) = (self.system_single(&a)?, self.system_single(&b)?) else {
                    return Ok(Vec::new());
                };
                arithmetic(op, &x, &y).map(|v| v.into_iter().collect())
            }
        }
    }
}

fn comparable_types(a: &Val<'_>, b: &Val<'_>) -> bool {
    use Val::*;
    matches!(
        (a, b),
        (Int(_) | Long(_) | Dec(_), Int(_) | Long(_) | Dec(_))
            | (Str(_), Str(_))
            | (Date(_) | DateTime(_), Date(_) | DateTime(_))
            | (Str(_), Date(_) | DateTime(_) | Time(_))
            | (Date(_) | DateTime(_) | Time(_), Str(_))
            | (Time(_), Time(_))
            | (Quantity(..), Quantity(..))
    )
}

/// The items in order, without those equal to an earlier one.
pub(crate) fn dedupe<'a>(items: Coll<'a>, model: &Model) -> Coll<'a> {
    // Codes, ids, paths and links (`csd-1`, `sdf-1`, `que-2` over thousands of them) are
    // strings whose equality is their text's: a hash set then does in one pass what
    // comparing each with every earlier one does in n² / 2.
    if items.len() > 8 && items.iter().all(|v| value::plain_text(v).is_some()) {
        let mut seen: std::collections::HashSet<&str, rustc_hash::FxBuildHasher> =
            std::collections::HashSet::with_capacity_and_hasher(items.len(), Default::default());
        let keep: Vec<bool> = items
            .iter()
            .map(|v| value::plain_text(v).is_some_and(|text| seen.insert(text)))
            .collect();
        drop(seen);
        return items
            .into_iter()
            .zip(keep)
            .filter_map(|(v, keep)| keep.then_some(v))
            .collect();
    }
    let mut out: Coll<'a> = Vec::with_capacity(items.len());
    for v in items {
        if !out.iter().any(|o| equals(o, &v, model) == Some(true)) {
            out.push(v);
        }
    }
    out
}

fn arithmetic<'a>(op: BinOp, x: &Val<'a>, y: &Val<'a>) -> R<Option<Val<'a>>> {
    use Val::*;
    let overflow = || error("arithmetic overflow");
    Ok(match (op, x, y) {
        (BinOp::Add, Str(a), Str(b)) => Some(Str(format!("{a}{b}"))),
        (BinOp::Add, Int(a), Int(b)) => Some(Int(a.checked_add(*b).ok_or_else(overflow)?)),
        (BinOp::Sub, Int(a), Int(b)) => Some(Int(a.checked_sub(*b).ok_or_else(overflow)?)),
        (BinOp::Mul, Int(a), Int(b)) => Some(Int(a.checked_mul(*b).ok_or_else(overflow)?)),
        (BinOp::Add | BinOp::Sub | BinOp::Mul, Int(_) | Long(_), Int(_) | Long(_)) => {
            let (Some(a), Some(b)) = (int_of(x), int_of(y)) else {
                return Ok(None);
            };
            let r = match op {
                BinOp::Add => a.checked_add(b),
                BinOp::Sub => a.checked_sub(b),
                _ => a.checked_mul(b),
            };
            Some(Long(r.ok_or_else(overflow)?))
        }
        (BinOp::IntDiv, Int(_) | Long(_), Int(_) | Long(_)) => {
            let (Some(a), Some(b)) = (int_of(x), int_of(y)) else {
                return Ok(None);
            };
            // Integer `div` truncates towards zero, as Rust's `/` does.
            if b == 0 {
                None
            } else {
                Some(Int(a.checked_div(b).ok_or_else(overflow)?))
            }
        }
        (BinOp::Mod, Int(_) | Long(_), Int(_) | Long(_)) => {
            let (Some(a), Some(b)) = (int_of(x), int_of(y)) else {
                return Ok(None);
            };
            if b == 0 {
                None
            } else {
                Some(Int(a.checked_rem(b).ok_or_else(overflow)?))
            }
        }
        (
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::IntDiv | BinOp::Mod,
            Int(_) | Long(_) | Dec(_),
            Int(_) | Long(_) | Dec(_),
        ) => {
            let (Some(a), Some(b)) = (as_decimal(x), as_decimal(y)) else {
                return Ok(None);
            };
            match op {
                BinOp::Add => Some(Dec(a.checked_add(b).ok_or_else(overflow)?)),
                BinOp::Sub => Some(Dec(a.checked_sub(b).ok_or_else(overflow)?)),
                BinOp::Mul => Some(Dec(a.checked_mul(b).ok_or_else(overflow)?)),
                BinOp::Div => {
                    if b.is_zero() {
                        None
                    } else {
                        Some(Dec(a.checked_div(b).ok_or_else(overflow)?.normalize()))
                    }
                }
                BinOp::IntDiv => {
                    if b.is_zero() {
                        None
                    } else {
                        let quotient = a.checked_div(b).ok_or_else(overflow)?;
                        Some(Int(quotient.trunc().to_i64().ok_or_else(overflow)?))
                    }
                }
                _ => {
                    if b.is_zero() {
                        None
                    } else {
                        Some(Dec(a.checked_rem(b).ok_or_else(overflow)?))
                    }
                }
            }
        }
        (BinOp::Add | BinOp::Sub, Quantity(a, u), Quantity(b, w)) => {
            let b = quantity::convert(*b, w, u)
                .ok_or_else(|| error("quantities with incompatible units"))?;
            Some(Quantity(
                if op == BinOp::Add {
                    a.checked_add(b)
                } else {
                    a.checked_sub(b)
                }
                .ok_or_else(overflow)?,
                u.clone(),
            ))
        }
        (BinOp::Mul, Quantity(a, u), Quantity(b, w)) => Some(Quantity(
            a.checked_mul(*b).ok_or_else(overflow)?,
            unit_product(u, w, '.'),
        )),
        (BinOp::Div, Quantity(a, u), Quantity(b, w)) => {
            if b.is_zero() {
                None
            } else if u == w {
                Some(Quantity(
                    a.checked_div(*b).ok_or_else(overflow)?,
                    "1".into(),
                ))
            } else {
                Some(Quantity(
                    a.checked_div(*b).ok_or_else(overflow)?,
                    unit_product(u, w, '/'),
                ))
            }
        }
        (BinOp::Mul, Quantity(a, u), Int(_) | Dec(_)) => Some(Quantity(
            a.checked_mul(as_decimal(y).unwrap_or_default())
                .ok_or_else(overflow)?,
            u.clone(),
        )),
        (BinOp::Mul, Int(_) | Dec(_), Quantity(b, u)) => Some(Quantity(
            as_decimal(x)
                .unwrap_or_default()
                .checked_mul(*b)
                .ok_or_else(overflow)?,
            u.clone(),
        )),
        (BinOp::Div, Quantity(a, u), Int(_) | Dec(_)) => {
            let d = as_decimal(y).unwrap_or_default();
            if d.is_zero() {
                None
            } else {
                Some(Quantity(a.checked_div(d).ok_or_else(overflow)?, u.clone()))
            }
        }
        (BinOp::Add | BinOp::Sub, Date(_) | DateTime(_) | Time(_), Quantity(amount, unit)) => {
            let Some(cal) = CalendarUnit::from_unit(unit) else {
                return Err(error(format!("cannot add '{unit}' to a date")));
            };
            let amount = if op == BinOp::Sub { -*amount } else { *amount };
            match x {
                Date(d) => temporal::add_to_date(d, amount, cal).map(Date),
                DateTime(d) => temporal::add_to_datetime(d, amount, cal).map(DateTime),
                Time(t) => temporal::add_to_time(t, amount, cal).map(Time),
                _ => None,
            }
        }
        _ => return Err(error("operands of the wrong types for this operator")),
    })
}

fn unit_product(u: &str, w: &str, sep: char) -> String {
    if u == "1" {
        w.to_string()
    } else if w == "1" {
        u.to_string()
    } else {
        format!("{u}{sep}{w}")
    }
}

fn int_of(v: &Val<'_>) -> Option<i64> {
    match v {
        Val::Int(i) | Val::Long(i) => Some(*i),
        _ => None,
    }
}
