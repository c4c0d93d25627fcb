//! The one table of the functions the evaluator implements ([`FUNCTIONS`]): per function its
//! name, the argument counts it accepts, how it evaluates each argument ([`Role`]) and its
//! implementation.
//!
//! The parser resolves a call's name to its row once ([`lookup`]), so evaluating a call is a
//! function-pointer call, not a search by name; [`FunctionDef::call`] checks the argument
//! count, for all functions alike, before calling the implementation; the static check
//! ([`check`], for [`super::FhirPath::compile_strict`]) reports unknown functions and wrong
//! counts; the guard and the memo plan read the roles ([`roles`]). The implementations are
//! in this module's files, grouped by the FHIRPath specification's sections; `fhir` holds
//! FHIR's own additions.

mod aggregates;
mod boundaries;
mod check;
mod combining;
mod conversion;
mod existence;
mod fhir;
mod filtering;
mod math;
mod navigation;
mod sorting;
mod strings;
mod subsetting;
mod types;
mod utility;

use std::fmt;
use std::sync::LazyLock;

use super::FhirPathError;
use super::eval::{Coll, Ctx, Frame, R, error};
use super::parser::Expr;
use super::value::Val;
use crate::fhir::FastMap;
pub(crate) use check::{check, variables};

/// How an argument of a function (a part of an expression, [`Expr::parts`]) is evaluated,
/// relative to the expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Once, with the expression's own input and `$this`, `$index`, `$total`: a call's
    /// target, an operand, most functions' arguments.
    Same,
    /// Once per item of the function's input, that item as `$this` (`where`, `select`,
    /// `all`, `exists`, `repeat`, `aggregate`'s first argument): it cannot see the outer
    /// focus.
    PerItem,
    /// A `sort` key: per item, and a leading `-` (descending) is read, not evaluated.
    SortKey,
    /// Once, with the function's input as `$this` but the caller's `$index` and `$total`
    /// (`iif`).
    OnInput,
    /// Never evaluated: a type name (`ofType`, `is`, `as`) or `trace`'s arguments.
    NotEvaluated,
}

/// An implementation: the function's result for one call, its argument count already
/// checked against [`FunctionDef::arities`].
pub(crate) type Imp = for<'a> fn(&Ctx<'a>, &Call<'_, 'a>) -> R<Coll<'a>>;

/// A row of the table: one function.
pub(crate) struct FunctionDef {
    /// The name, as called.
    pub(crate) name: &'static str,
    /// The argument counts it accepts.
    pub(crate) arities: &'static [usize],
    /// How it evaluates its arguments, by position: the last stands for any later ones, and
    /// none means every argument is [`Role::Same`].
    roles: &'static [Role],
    imp: Imp,
}

impl FunctionDef {
    /// A function whose arguments are all [`Role::Same`].
    const fn new(name: &'static str, arities: &'static [usize], imp: Imp) -> Self {
        FunctionDef {
            name,
            arities,
            roles: &[],
            imp,
        }
    }

    /// The function, with its arguments evaluated as `roles` says ([`FunctionDef::role`]).
    const fn roles(self, roles: &'static [Role]) -> Self {
        FunctionDef { roles, ..self }
    }

    /// How the function evaluates its argument at `index`.
    pub(crate) fn role(&self, index: usize) -> Role {
        self.roles
            .get(index)
            .or(self.roles.last())
            .copied()
            .unwrap_or(Role::Same)
    }

    /// Calls the function on `base` (its target's result, or the focus) with `args`, in the
    /// caller's `input` and frame.
    #[inline]
    pub(crate) fn call<'a>(
        &'static self,
        cx: &Ctx<'a>,
        base: &[Val<'a>],
        args: &[Expr],
        input: &[Val<'a>],
        fr: Frame<'_, 'a>,
    ) -> R<Coll<'a>> {
        if !self.arities.contains(&args.len()) {
            return Err(self.wrong_arity(args.len()));
        }
        (self.imp)(
            cx,
            &Call {
                def: self,
                base,
                args,
                input,
                fr,
            },
        )
    }

    /// The error for a call with `argc` arguments, which the function does not accept.
    #[cold]
    fn wrong_arity(&self, argc: usize) -> FhirPathError {
        error(format!(
            "{}() takes {:?} arguments, not {argc}",
            self.name, self.arities
        ))
    }
}

/// Only the name: the row of a parsed call ([`Expr::Call`]) prints and compares as it.
impl fmt::Debug for FunctionDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// Names are unique in the table (a test says so), so a row is its name.
impl PartialEq for FunctionDef {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

use Role::{NotEvaluated, OnInput, PerItem, SortKey};

/// Every function the evaluator implements.
pub(crate) static FUNCTIONS: &[FunctionDef] = &[
    // Existence, and not() from Boolean logic.
    FunctionDef::new("empty", &[0], existence::empty),
    FunctionDef::new("exists", &[0, 1], existence::exists).roles(&[PerItem]),
    FunctionDef::new("all", &[1], existence::all).roles(&[PerItem]),
    FunctionDef::new("allTrue", &[0], existence::all_true),
    FunctionDef::new("anyTrue", &[0], existence::any_true),
    FunctionDef::new("allFalse", &[0], existence::all_false),
    FunctionDef::new("anyFalse", &[0], existence::any_false),
    FunctionDef::new("subsetOf", &[1], existence::subset_of),
    FunctionDef::new("supersetOf", &[1], existence::superset_of),
    FunctionDef::new("count", &[0], existence::count),
    FunctionDef::new("distinct", &[0], existence::distinct),
    FunctionDef::new("isDistinct", &[0], existence::is_distinct),
    FunctionDef::new("not", &[0], existence::not),
    // Filtering and projection.
    FunctionDef::new("where", &[1], filtering::r#where).roles(&[PerItem]),
    FunctionDef::new("select", &[1], filtering::select).roles(&[PerItem]),
    FunctionDef::new("repeat", &[1], filtering::repeat).roles(&[PerItem]),
    FunctionDef::new("ofType", &[1], filtering::of_type).roles(&[NotEvaluated]),
    // Types.
    FunctionDef::new("as", &[1], types::r#as).roles(&[NotEvaluated]),
    FunctionDef::new("is", &[1], types::is).roles(&[NotEvaluated]),
    FunctionDef::new("type", &[0], types::r#type),
    // Subsetting.
    FunctionDef::new("single", &[0], subsetting::single),
    FunctionDef::new("first", &[0], subsetting::first),
    FunctionDef::new("last", &[0], subsetting::last),
    FunctionDef::new("tail", &[0], subsetting::tail),
    FunctionDef::new("skip", &[1], subsetting::skip),
    FunctionDef::new("take", &[1], subsetting::take),
    FunctionDef::new("intersect", &[1], subsetting::intersect),
    FunctionDef::new("exclude", &[1], subsetting::exclude),
    // Combining.
    FunctionDef::new("union", &[1], combining::union),
    FunctionDef::new("combine", &[1], combining::combine),
    // Conversion.
    FunctionDef::new("iif", &[2, 3], conversion::iif).roles(&[OnInput]),
    FunctionDef::new("toString", &[0], conversion::to_string),
    FunctionDef::new("convertsToString", &[0], conversion::converts_to_string),
    FunctionDef::new("toBoolean", &[0, 1], conversion::to_boolean),
    FunctionDef::new("toInteger", &[0, 1], conversion::to_integer),
    FunctionDef::new("toDecimal", &[0, 1], conversion::to_decimal),
    FunctionDef::new("toDate", &[0, 1], conversion::to_date),
    FunctionDef::new("toDateTime", &[0, 1], conversion::to_date_time),
    FunctionDef::new("toTime", &[0, 1], conversion::to_time),
    FunctionDef::new("toQuantity", &[0, 1], conversion::to_quantity),
    FunctionDef::new(
        "convertsToBoolean",
        &[0, 1],
        conversion::converts_to_boolean,
    ),
    FunctionDef::new(
        "convertsToInteger",
        &[0, 1],
        conversion::converts_to_integer,
    ),
    FunctionDef::new(
        "convertsToDecimal",
        &[0, 1],
        conversion::converts_to_decimal,
    ),
    FunctionDef::new("convertsToDate", &[0, 1], conversion::converts_to_date),
    FunctionDef::new(
        "convertsToDateTime",
        &[0, 1],
        conversion::converts_to_date_time,
    ),
    FunctionDef::new("convertsToTime", &[0, 1], conversion::converts_to_time),
    FunctionDef::new(
        "convertsToQuantity",
        &[0, 1],
        conversion::converts_to_quantity,
    ),
    // String manipulation.
    FunctionDef::new("indexOf", &[1], strings::index_of),
    FunctionDef::new("substring", &[1, 2], strings::substring),
    FunctionDef::new("startsWith", &[1], strings::starts_with),
    FunctionDef::new("endsWith", &[1], strings::ends_with),
    FunctionDef::new("contains", &[1], strings::contains),
    FunctionDef::new("upper", &[0], strings::upper),
    FunctionDef::new("lower", &[0], strings::lower),
    FunctionDef::new("length", &[0], strings::length),
    FunctionDef::new("trim", &[0], strings::trim),
    FunctionDef::new("toChars", &[0], strings::to_chars),
    FunctionDef::new("replace", &[2], strings::replace),
    FunctionDef::new("matches", &[1], strings::matches),
    FunctionDef::new("matchesFull", &[1], strings::matches_full),
    FunctionDef::new("replaceMatches", &[2], strings::replace_matches),
    FunctionDef::new("split", &[1], strings::split),
    FunctionDef::new("join", &[0, 1], strings::join),
    FunctionDef::new("encode", &[1], strings::encode),
    FunctionDef::new("decode", &[1], strings::decode),
    FunctionDef::new("escape", &[1], strings::escape),
    FunctionDef::new("unescape", &[1], strings::unescape),
    // Math.
    FunctionDef::new("abs", &[0], math::abs),
    FunctionDef::new("ceiling", &[0], math::ceiling),
    FunctionDef::new("floor", &[0], math::floor),
    FunctionDef::new("truncate", &[0], math::truncate),
    FunctionDef::new("exp", &[0], math::exp),
    FunctionDef::new("ln", &[0], math::ln),
    FunctionDef::new("sqrt", &[0], math::sqrt),
    FunctionDef::new("round", &[0, 1], math::round),
    FunctionDef::new("log", &[1], math::log),
    FunctionDef::new("power", &[1], math::power),
    FunctionDef::new("comparable", &[1], math::comparable),
    // Tree navigation.
    FunctionDef::new("children", &[0], navigation::children),
    FunctionDef::new("descendants", &[0], navigation::descendants),
    // Utility.
    FunctionDef::new("trace", &[1, 2], utility::trace).roles(&[NotEvaluated]),
    FunctionDef::new("now", &[0], utility::now),
    FunctionDef::new("today", &[0], utility::today),
    FunctionDef::new("timeOfDay", &[0], utility::time_of_day),
    // Aggregates.
    FunctionDef::new("aggregate", &[1, 2], aggregates::aggregate).roles(&[PerItem, Role::Same]),
    // Sorting.
    FunctionDef::new("sort", &[0, 1, 2, 3], sorting::sort).roles(&[SortKey]),
    // Boundaries and precision.
    FunctionDef::new("precision", &[0], boundaries::precision),
    FunctionDef::new("lowBoundary", &[0, 1], boundaries::low_boundary),
    FunctionDef::new("highBoundary", &[0, 1], boundaries::high_boundary),
    // FHIR's additions.
    FunctionDef::new("hasValue", &[0], fhir::has_value),
    FunctionDef::new("getValue", &[0], fhir::get_value),
    FunctionDef::new("extension", &[1], fhir::extension),
    FunctionDef::new("resolve", &[0], fhir::resolve),
    FunctionDef::new("htmlChecks", &[0], fhir::html_checks),
    FunctionDef::new("htmlchecks", &[0], fhir::html_checks),
    FunctionDef::new("conformsTo", &[1], fhir::conforms_to),
];

/// [`FUNCTIONS`] by name, built once.
static BY_NAME: LazyLock<FastMap<&'static str, &'static FunctionDef>> =
    LazyLock::new(|| FUNCTIONS.iter().map(|f| (f.name, f)).collect());

/// The row of the function called `name`, if the evaluator implements it.
pub(crate) fn lookup(name: &str) -> Option<&'static FunctionDef> {
    BY_NAME.get(name).copied()
}

/// Functions of the FHIRPath and FHIR specifications that this engine knows of but refuses
/// at evaluation, with the reason, so the check can say more than "unknown".
pub(crate) const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "defineVariable",
        "defineVariable() is not supported by Sprig's engine",
    ),
    (
        "memberOf",
        "memberOf() needs a terminology server, which Sprig's engine does not consult",
    ),
    (
        "subsumes",
        "subsumes() needs a terminology server, which Sprig's engine does not consult",
    ),
    (
        "subsumedBy",
        "subsumedBy() needs a terminology server, which Sprig's engine does not consult",
    ),
];

/// The evaluation error for a call to `name`, which is not in the table. Worded apart from
/// [`UNSUPPORTED`]'s reasons, as the evaluator always has: outcomes quote these messages
/// (`invariant-not-evaluated`).
#[cold]
pub(crate) fn not_implemented(name: &str) -> FhirPathError {
    error(match name {
        "defineVariable" => "defineVariable() is not supported".to_string(),
        "memberOf" | "subsumes" | "subsumedBy" => {
            format!("{name}() needs a terminology server, which Sprig does not consult here")
        }
        _ => format!("unknown function {name}()"),
    })
}

/// The [`Role`] of each of `expr`'s parts, in the order of [`Expr::parts`]: for a call, the
/// table's roles of its arguments, after its target; for anything else (and a function the
/// table lacks, which fails when evaluated), [`Role::Same`].
pub(crate) fn roles(expr: &Expr) -> Vec<Role> {
    let Expr::Call {
        target,
        args,
        function,
        ..
    } = expr
    else {
        return vec![Role::Same; expr.parts().len()];
    };
    let argument = |index: usize| function.map_or(Role::Same, |f| f.role(index));
    target
        .iter()
        .map(|_| Role::Same)
        .chain((0..args.len()).map(argument))
        .collect()
}

/// One call being evaluated: what an implementation reads. Arguments are read through
/// methods named for their [`Role`], which check (in debug builds) that the table gives the
/// argument that role, so the guard and the memo plan, which trust the table, cannot be
/// misled by an implementation that evaluates an argument differently.
pub(crate) struct Call<'c, 'a> {
    /// The row of the function called.
    pub(crate) def: &'static FunctionDef,
    /// The function's input: its target's result, or the focus.
    pub(crate) base: &'c [Val<'a>],
    args: &'c [Expr],
    /// The input and frame of the expression the call is part of.
    input: &'c [Val<'a>],
    fr: Frame<'c, 'a>,
}

impl<'c, 'a> Call<'c, 'a> {
    /// How many arguments the call passes.
    pub(crate) fn argc(&self) -> usize {
        self.args.len()
    }

    /// The argument at `index`, which the implementation is about to evaluate as `role`.
    fn expr(&self, index: usize, role: Role) -> Option<&'c Expr> {
        debug_assert_eq!(
            self.def.role(index),
            role,
            "{}() reads argument {index} in a role the table does not give it",
            self.def.name
        );
        self.args.get(index)
    }

    /// The argument at `index` ([`Role::Same`]) evaluated; empty when it is absent.
    pub(crate) fn arg(&self, cx: &Ctx<'a>, index: usize) -> R<Coll<'a>> {
        match self.expr(index, Role::Same) {
            Some(arg) => cx.eval(arg, self.input, self.fr),
            None => Ok(Vec::new()),
        }
    }

    /// The argument at `index` ([`Role::Same`]) as a single string, if any.
    pub(crate) fn string(&self, cx: &Ctx<'a>, index: usize) -> R<Option<String>> {
        cx.string_arg(&self.arg(cx, index)?)
    }

    /// The argument at `index` ([`Role::Same`]) as a single integer, if any.
    pub(crate) fn int(&self, cx: &Ctx<'a>, index: usize) -> R<Option<i64>> {
        cx.int_arg(&self.arg(cx, index)?)
    }

    /// The argument at `index` ([`Role::PerItem`]) evaluated on each of `items` in turn,
    /// that item as `$this` and its position as `$index`; `each` gets the item and the
    /// result, and says whether to go on. Nothing is evaluated when the argument is absent.
    pub(crate) fn each(
        &self,
        cx: &Ctx<'a>,
        index: usize,
        items: &[Val<'a>],
        mut each: impl FnMut(&Val<'a>, Coll<'a>) -> R<bool>,
    ) -> R<()> {
        let Some(arg) = self.expr(index, Role::PerItem) else {
            return Ok(());
        };
        for (i, item) in items.iter().enumerate() {
            let fr = Frame {
                this: Some(item),
                index: Some(i),
                total: None,
            };
            let result = cx.eval(arg, std::slice::from_ref(item), fr)?;
            if !each(item, result)? {
                break;
            }
        }
        Ok(())
    }

    /// The argument at `index` ([`Role::PerItem`]), for an implementation that sets the
    /// frame itself (`aggregate`'s `$total`).
    pub(crate) fn per_item(&self, index: usize) -> Option<&'c Expr> {
        self.expr(index, Role::PerItem)
    }

    /// The argument at `index` ([`Role::OnInput`]) evaluated with the function's input as
    /// `$this` and the caller's `$index` and `$total`; empty when it is absent.
    pub(crate) fn on_input(&self, cx: &Ctx<'a>, index: usize) -> R<Coll<'a>> {
        match self.expr(index, Role::OnInput) {
            Some(arg) => cx.eval(
                arg,
                self.base,
                Frame {
                    this: self.base.first(),
                    ..self.fr
                },
            ),
            None => Ok(Vec::new()),
        }
    }

    /// The arguments, all [`Role::SortKey`]s.
    pub(crate) fn sort_keys(&self) -> impl Iterator<Item = &'c Expr> + '_ {
        (0..self.args.len()).filter_map(|index| self.expr(index, Role::SortKey))
    }

    /// The argument at `index` ([`Role::NotEvaluated`]), as written.
    pub(crate) fn unevaluated(&self, index: usize) -> Option<&'c Expr> {
        self.expr(index, Role::NotEvaluated)
    }
}
