//! FHIR search, without the database: which parameters exist, what a query
//! means, and what to index for a resource.
//!
//! - [`params`]: the table of supported parameters (name, type, R4 FHIRPath
//!   expression, documentation), the single source for parsing, indexing and
//!   the CapabilityStatement.
//! - [`SearchQuery::parse`]: a query string → a checked query, or the issues
//!   that make it a 400 (each names the parameter and what is allowed).
//! - [`index_entries`]: a resource → the token, reference and date values
//!   its parameters select.
//!
//! A query string's criteria: a comma is OR, a repeated parameter AND; `_count`, `_sort`,
//! `_total` and the paging cursor are read too. Under `Prefer: handling=lenient` a bad
//! parameter is a warning and ignored; an empty value is always an error, since ignoring it
//! would widen a conditional create's match to every resource. Indexed values: tokens
//! (Identifier, CodeableConcept codings, Coding, code and string primitives), references
//! normalised to `Type/id` (`#contained` skipped), and dates as the inclusive `[low, high]`
//! range of fixed-width UTC instants their precision names (`date`: `2026-11-20` is that
//! whole day), the form of `resources.last_updated`. Changing what the table indexes means
//! bumping `store::search::INDEX_VERSION` (the index is rebuilt at start-up).
//!
//! Pure and synchronous: no I/O, no async; `store::search` turns a query into
//! SQL, `api::search` into a Bundle.

mod date;
mod index;
pub mod params;

pub use date::{DateRange, MAX_INSTANT, MIN_INSTANT};
pub use index::{IndexEntry, IndexValue, IndexedReference, index_entries};
pub use params::{IncludeParam, ParamType, SearchParam, all_params, params_for};

use crate::fhir::outcome::shorten;
use crate::fhir::{FhirId, Instant, Issue, IssueSeverity, IssueType, ResourceType, VersionId};

/// Page size when `_count` is not given.
pub const DEFAULT_COUNT: u32 = 50;
/// The largest page served; a larger `_count` is reduced to it.
pub const MAX_COUNT: u32 = 1000;
/// The paging parameter Sprig puts in `next` links.
pub const CURSOR_PARAM: &str = "_cursor";
/// The most parameters one search may have (every `name=value` pair counts).
pub const MAX_PARAMS: usize = 30;
/// The most times one parameter may be given in one search.
pub const MAX_REPEATS: usize = 10;
/// The most comma-separated values one parameter may have.
pub const MAX_VALUES: usize = 100;

/// The order of results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    /// `-_lastUpdated`: newest first (the default), ties by id descending.
    #[default]
    NewestFirst,
    /// `_lastUpdated`: oldest first, ties by id ascending.
    OldestFirst,
}

/// Whether to count every match (`_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TotalMode {
    /// No `_total`: a `Bundle.total` only when it costs nothing: the first
    /// page holds every match (or `_count=0` asks for only the total).
    /// Counting every match of a broad search reads every match, which is
    /// what made search time grow with the data.
    #[default]
    WhenFree,
    /// `accurate`: every match counted exactly, on every page. A count that
    /// is not a lookup by a selective parameter waits its turn among a few
    /// (`store::CountGate`), so counts cannot take every reader connection.
    Accurate,
    /// `estimate`: a cheap total, on every page: for one token or reference
    /// parameter that is not a lookup, the number of that parameter's index rows
    /// that match (read from the index alone): never fewer than the matches, more
    /// only by the resources holding several matching values; an exact count
    /// otherwise. The searchset says which it is in an outcome entry.
    Estimate,
    /// `none`: no `Bundle.total`, no counting query.
    None,
}

/// A date comparison prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatePrefix {
    /// The search range contains the value's range.
    Eq,
    /// The search range does not contain the value's range.
    Ne,
    /// The value's range extends after the search range.
    Gt,
    /// `gt` or `eq`.
    Ge,
    /// The value's range extends before the search range.
    Lt,
    /// `lt` or `eq`.
    Le,
    /// The value's range starts after the search range ends.
    Sa,
    /// The value's range ends before the search range starts.
    Eb,
}

/// One date criterion: a prefix and the range the searched date covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateCriterion {
    /// How to compare.
    pub prefix: DatePrefix,
    /// The range the search value covers (`2026-11-20` is the whole day).
    pub range: DateRange,
}

/// One token criterion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCriterion {
    /// `code`: that code in any system (or none).
    Code(String),
    /// `system|code`.
    SystemCode(String, String),
    /// `|code`: that code with no system.
    CodeWithoutSystem(String),
    /// `system|`: any code of that system.
    System(String),
}

/// One reference criterion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceCriterion {
    /// `Type/id` (also an absolute URL on Sprig's own base).
    Typed(ResourceType, FhirId),
    /// A plain `id`: any target type the parameter allows.
    Id(FhirId),
    /// An absolute URL elsewhere, matched as written.
    Url(String),
}

/// What one query parameter asks; its alternatives (commas) are ORed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Criterion {
    /// `_id`.
    Id(Vec<FhirId>),
    /// `_lastUpdated`.
    LastUpdated(Vec<DateCriterion>),
    /// A token parameter from the table.
    Token(&'static str, Vec<TokenCriterion>),
    /// A reference parameter from the table.
    Reference(&'static str, Vec<ReferenceCriterion>),
    /// A date parameter from the table.
    Date(&'static str, Vec<DateCriterion>),
}

/// Where the next page starts: after the resource last served, in the sort
/// order (keyset paging, so results written meanwhile cannot shift a page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// `resources.last_updated` of the last resource served.
    pub last_updated: String,
    /// Its id.
    pub id: FhirId,
}

impl Cursor {
    /// The cursor after `id`, last updated at `last_updated`.
    pub fn after(last_updated: Instant, id: FhirId) -> Self {
        Self {
            last_updated: last_updated.to_fhir(),
            id,
        }
    }

    /// The cursor as it appears in a `next` link: `{instant}_{id}` (neither
    /// part can hold `_`).
    pub fn encode(&self) -> String {
        format!("{}_{}", self.last_updated, self.id)
    }

    /// Reads a cursor written by [`Cursor::encode`].
    pub fn decode(text: &str) -> Option<Self> {
        let (at, id) = text.split_once('_')?;
        let instant = Instant::parse(at).ok()?;
        // Only the fixed-width form Sprig writes, so text order is time order.
        (instant.to_fhir() == at).then_some(())?;
        Some(Self {
            last_updated: at.to_owned(),
            id: FhirId::parse(id).ok()?,
        })
    }
}

/// How to read a query.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParseOptions<'a> {
    /// `Prefer: handling=lenient`: unknown parameters and bad values are
    /// ignored and reported as warnings instead of refusing the search.
    pub lenient: bool,
    /// `Prefer: handling=strict`: an unknown parameter refuses the search.
    /// Neither: an unknown parameter is ignored (reported as a warning, as
    /// FHIR says a server SHOULD), a bad value of a known one refuses it.
    pub strict: bool,
    /// The server's own FHIR base (`https://sprig.example/fhir`), so that
    /// absolute references to it are read as `Type/id`.
    pub base: Option<&'a str>,
}

/// A checked search of one resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// The type searched.
    pub resource_type: ResourceType,
    /// Every criterion must hold (a parameter repeated is ANDed).
    pub criteria: Vec<Criterion>,
    /// At most this many resources per page (0: only the total).
    pub count: u32,
    /// The order of results.
    pub sort: SortOrder,
    /// Whether to count every match.
    pub total: TotalMode,
    /// Where this page starts.
    pub cursor: Option<Cursor>,
    /// Parameters ignored under `handling=lenient`, with why.
    pub warnings: Vec<Issue>,
    /// The accepted parameters as `(name, value)`, for the `self` and `next`
    /// links (without the cursor).
    pub link_params: Vec<(String, String)>,
    /// `_elements`: the top-level elements to return (with the mandatory
    /// ones, `id` and `meta`), or every element.
    pub elements: Option<Vec<String>>,
    /// `_include`: references of each match to return beside it.
    pub includes: Vec<&'static IncludeParam>,
    /// `_revinclude`: resources referring to each match to return beside it.
    pub revincludes: Vec<&'static IncludeParam>,
}

impl SearchQuery {
    /// Parses `raw_query` (`application/x-www-form-urlencoded`, as in a URL
    /// or a `_search` body) strictly.
    pub fn parse(resource_type: ResourceType, raw_query: &str) -> Result<SearchQuery, Vec<Issue>> {
        let strict = ParseOptions {
            strict: true,
            ..ParseOptions::default()
        };
        Self::parse_with(resource_type, raw_query, strict)
    }

    /// Parses the condition of a conditional create or update
    /// (`If-None-Exist`, `request.ifNoneExist`, `PUT Type?…`) strictly. It
    /// must hold at least one criterion: one of only `_count`, `_format` or
    /// nothing at all would match every resource of the type, so an unrelated
    /// resource would be answered as "already there" and the new one dropped.
    pub fn parse_condition(
        resource_type: ResourceType,
        raw_query: &str,
    ) -> Result<SearchQuery, Vec<Issue>> {
        let query = Self::parse(resource_type, raw_query)?;
        if query.criteria.is_empty() {
            return Err(vec![Issue::error(
                IssueType::Invalid,
                "conditional-without-criteria",
                format!(
                    "A condition must name at least one search parameter of {resource_type}, such as identifier=system|value; '{}' names none",
                    shorten(raw_query, 60)
                ),
            )]);
        }
        Ok(query)
    }

    /// Parses `raw_query` with `options`. Every problem is reported, not only
    /// the first; under `lenient` each becomes a warning and its parameter is
    /// ignored.
    pub fn parse_with(
        resource_type: ResourceType,
        raw_query: &str,
        options: ParseOptions<'_>,
    ) -> Result<SearchQuery, Vec<Issue>> {
        let mut query = SearchQuery {
            resource_type,
            criteria: Vec::new(),
            count: DEFAULT_COUNT,
            sort: SortOrder::default(),
            total: TotalMode::default(),
            cursor: None,
            warnings: Vec::new(),
            link_params: Vec::new(),
            elements: None,
            includes: Vec::new(),
            revincludes: Vec::new(),
        };
        let mut issues = Vec::new();
        let mut seen_results: Vec<&'static str> = Vec::new();
        let mut repeats: Vec<(String, usize)> = Vec::new();
        for (n, (key, value)) in form_urlencoded::parse(raw_query.as_bytes()).enumerate() {
            // The limits come first, and stop the reading: refusing costs no more
            // than the limit allows, whatever was sent.
            if n == MAX_PARAMS {
                return Err(vec![too_costly(
                    "search-too-many-params",
                    format!(
                        "A search may have at most {MAX_PARAMS} parameters; this one has more. Narrow it, or search in steps"
                    ),
                )]);
            }
            let name = key.split_once(':').map_or(key.as_ref(), |(name, _)| name);
            let count = match repeats.iter_mut().find(|(seen, _)| seen == name) {
                Some((_, count)) => {
                    *count += 1;
                    *count
                }
                None => {
                    repeats.push((name.to_owned(), 1));
                    1
                }
            };
            if count > MAX_REPEATS {
                return Err(vec![too_costly(
                    "search-param-too-many-repeats",
                    format!(
                        "{} is given more than {MAX_REPEATS} times; a parameter may be repeated at most {MAX_REPEATS} times in one search",
                        shorten(name, 60)
                    ),
                )]);
            }
            match query.apply(&key, &value, &mut seen_results, options) {
                Ok(Keep::Link) => query
                    .link_params
                    .push((key.into_owned(), value.into_owned())),
                Ok(Keep::No) => {}
                Err(issue) => issues.push(issue),
            }
        }
        if options.lenient {
            // A limit is never waived: ignoring the parameter would widen the search.
            let (over_limit, ignorable): (Vec<Issue>, Vec<Issue>) = issues
                .into_iter()
                .partition(|i| i.code == IssueType::TooCostly);
            if !over_limit.is_empty() {
                return Err(over_limit);
            }
            query.warnings = ignored_leniently(ignorable);
            Ok(query)
        } else if !options.strict && issues.iter().all(is_unknown_param) {
            query.warnings = ignored_unknown(issues);
            Ok(query)
        } else if issues.is_empty() {
            Ok(query)
        } else {
            Err(issues)
        }
    }

    fn apply(
        &mut self,
        key: &str,
        value: &str,
        seen_results: &mut Vec<&'static str>,
        options: ParseOptions<'_>,
    ) -> Result<Keep, Issue> {
        let (name, modifier) = match key.split_once(':') {
            Some((name, modifier)) => (name, Some(modifier)),
            None => (key, None),
        };
        let result_param = match name {
            // Negotiation reads these (api::negotiate); links keep them.
            "_format" | "_pretty" => return Ok(Keep::Link),
            // fhirpy's count() sends it beside `_count=0`; Sprig's total is
            // always counted, so there is nothing to choose.
            "_totalMethod" => return Ok(Keep::No),
            "_include" | "_revinclude" => {
                if let Some(modifier) = modifier {
                    return Err(modifier_refused(
                        name,
                        modifier,
                        "no modifiers (no :iterate)",
                    ));
                }
                return self.apply_include(name == "_revinclude", value);
            }
            "_elements" => Some("_elements"),
            "_summary" => Some("_summary"),
            "_count" => Some("_count"),
            "_sort" => Some("_sort"),
            "_total" => Some("_total"),
            CURSOR_PARAM => Some(CURSOR_PARAM),
            _ => None,
        };
        if let Some(result_param) = result_param {
            if let Some(modifier) = modifier {
                return Err(modifier_refused(result_param, modifier, "no modifiers"));
            }
            if seen_results.contains(&result_param) {
                return Err(Issue::error(
                    IssueType::Invalid,
                    "search-param-repeated",
                    format!("{result_param} is given more than once; give it once"),
                ));
            }
            seen_results.push(result_param);
            return self.apply_result(result_param, value);
        }

        let Some(param) = all_params(self.resource_type).find(|p| p.name == name) else {
            return Err(unknown_param(self.resource_type, key));
        };
        if value.is_empty() {
            // Ignoring it instead would widen a conditional create's match to everything.
            return Err(Issue::error(
                IssueType::Value,
                "search-value-empty",
                format!(
                    "{name} has no value; give {} or leave the parameter out",
                    param.syntax()
                ),
            ));
        }
        let criterion = match param.kind {
            ParamType::Token => {
                if let Some(modifier) = modifier {
                    return Err(modifier_refused(
                        name,
                        modifier,
                        "no modifiers on token parameters",
                    ));
                }
                if param.name == "_id" {
                    Criterion::Id(alternatives(value, |v| FhirId::parse(v).ok(), param)?)
                } else {
                    Criterion::Token(param.name, alternatives(value, parse_token, param)?)
                }
            }
            ParamType::Reference => {
                // `subject:Patient=123` is `subject=Patient/123`.
                let as_type = match modifier {
                    None => None,
                    Some(m) => Some(ResourceType::parse(m).map_err(|_| {
                        modifier_refused(name, m, "only a resource type, as in subject:Patient=123")
                    })?),
                };
                let parse = |v: &str| parse_reference(v, as_type, param, options.base);
                Criterion::Reference(param.name, alternatives(value, parse, param)?)
            }
            ParamType::Date => {
                if let Some(modifier) = modifier {
                    return Err(modifier_refused(
                        name,
                        modifier,
                        "no modifiers on date parameters",
                    ));
                }
                let criteria = alternatives(value, parse_date_criterion, param)?;
                if param.name == "_lastUpdated" {
                    Criterion::LastUpdated(criteria)
                } else {
                    Criterion::Date(param.name, criteria)
                }
            }
        };
        // The same criterion twice asks nothing more: the query stays linear in
        // what the search really asks.
        if !self.criteria.contains(&criterion) {
            self.criteria.push(criterion);
        }
        Ok(Keep::Link)
    }

    fn apply_result(&mut self, name: &'static str, value: &str) -> Result<Keep, Issue> {
        let invalid = |allowed: &str| {
            Issue::error(
                IssueType::Value,
                "search-result-param-invalid",
                format!("{name}={} is not allowed: {allowed}", shorten(value, 40)),
            )
        };
        match name {
            "_count" => {
                self.count = parse_count(value)?;
                return Ok(Keep::No);
            }
            "_elements" => {
                let names: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect();
                let element_name = |n: &String| {
                    n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        && n.starts_with(|c: char| c.is_ascii_lowercase())
                };
                if names.is_empty() || !names.iter().all(element_name) {
                    return Err(invalid(
                        "give top-level element names separated by commas, e.g. status,subject",
                    ));
                }
                self.elements = Some(names);
            }
            "_summary" => match value {
                // Only the total: as `_count=0`.
                "count" => {
                    self.count = 0;
                    self.total = TotalMode::Accurate;
                }
                "false" => {}
                _ => {
                    return Err(Issue::error(
                        IssueType::NotSupported,
                        "search-result-param-invalid",
                        format!(
                            "_summary={} is not supported: Sprig supports _summary=count (only the total) and false (everything); _elements chooses elements",
                            shorten(value, 40)
                        ),
                    ));
                }
            },
            "_sort" => {
                self.sort = match value {
                    "_lastUpdated" => SortOrder::OldestFirst,
                    "-_lastUpdated" => SortOrder::NewestFirst,
                    _ => {
                        return Err(invalid(
                            "Sprig sorts by _lastUpdated (oldest first) or -_lastUpdated (newest first, the default)",
                        ));
                    }
                }
            }
            "_total" => {
                self.total = match value {
                    "accurate" => TotalMode::Accurate,
                    "estimate" => TotalMode::Estimate,
                    "none" => TotalMode::None,
                    _ => {
                        return Err(invalid(
                            "give none, estimate or accurate (without _total, Sprig gives the total when the first page holds every match, and an exact total for _count=0)",
                        ));
                    }
                }
            }
            _ => {
                self.cursor = Some(Cursor::decode(value).ok_or_else(|| {
                    Issue::error(
                        IssueType::Value,
                        "search-cursor-invalid",
                        format!(
                            "{CURSOR_PARAM} is not one Sprig wrote; follow the next link of a search Bundle instead of making one"
                        ),
                    )
                })?);
                return Ok(Keep::No);
            }
        }
        Ok(Keep::Link)
    }

    fn apply_include(&mut self, reverse: bool, value: &str) -> Result<Keep, Issue> {
        let name = if reverse { "_revinclude" } else { "_include" };
        let mut parts = value.split(':');
        let (source, param, target) = (parts.next(), parts.next(), parts.next());
        let found = match (source, param, parts.next()) {
            (Some(source), Some(param), None) => params::INCLUDES.iter().find(|i| {
                i.source == source
                    && i.param == param
                    && target.is_none_or(|t| i.targets.contains(&t))
                    && if reverse {
                        i.targets.contains(&self.resource_type.as_str())
                    } else {
                        i.source == self.resource_type.as_str()
                    }
            }),
            _ => None,
        };
        let Some(found) = found else {
            let offered: Vec<String> = if reverse {
                params::revincludes_to(self.resource_type)
                    .map(|i| format!("{}:{}", i.source, i.param))
                    .collect()
            } else {
                params::includes_from(self.resource_type)
                    .map(|i| format!("{}:{}", i.source, i.param))
                    .collect()
            };
            let offered = if offered.is_empty() {
                "none".to_owned()
            } else {
                offered.join(", ")
            };
            return Err(Issue::error(
                IssueType::NotSupported,
                "search-param-unknown",
                format!(
                    "{name}={} is not supported on a search of {}; Sprig supports {offered}",
                    shorten(value, 60),
                    self.resource_type
                ),
            ));
        };
        let list = if reverse {
            &mut self.revincludes
        } else {
            &mut self.includes
        };
        if !list.contains(&found) {
            list.push(found);
        }
        Ok(Keep::Link)
    }

    /// The query string of this search's `self` link.
    pub fn self_query(&self) -> String {
        self.link_query(None)
    }

    /// The query string of the page after `cursor`.
    pub fn next_query(&self, cursor: &Cursor) -> String {
        self.link_query(Some(cursor))
    }

    fn link_query(&self, cursor: Option<&Cursor>) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (key, value) in &self.link_params {
            out.append_pair(key, value);
        }
        // `_count` as served (a larger one was reduced), so every page is the same size.
        out.append_pair("_count", &self.count.to_string());
        if let Some(cursor) = cursor.or(self.cursor.as_ref()) {
            out.append_pair(CURSOR_PARAM, &cursor.encode());
        }
        out.finish()
    }
}

enum Keep {
    /// Accepted; repeat it in links.
    Link,
    /// Accepted; the link writes it itself (`_count`, `_cursor`).
    No,
}

/// The `_history` parameters: `_count` and the paging cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// At most this many versions per page (0: only the total).
    pub count: u32,
    /// Serve versions older than this one (from a `next` link).
    pub before: Option<VersionId>,
}

impl HistoryQuery {
    /// Parses the query string of `GET /{type}/{id}/_history`. `_since`,
    /// `_at` and anything else are refused (or, under `lenient`, ignored with
    /// a warning, returned beside the query).
    pub fn parse(raw_query: &str, lenient: bool) -> Result<(HistoryQuery, Vec<Issue>), Vec<Issue>> {
        let mut query = HistoryQuery {
            count: DEFAULT_COUNT,
            before: None,
        };
        let mut issues = Vec::new();
        for (key, value) in form_urlencoded::parse(raw_query.as_bytes()) {
            match key.as_ref() {
                "_format" | "_pretty" => {}
                "_count" => match parse_count(&value) {
                    Ok(count) => query.count = count,
                    Err(issue) => issues.push(issue),
                },
                CURSOR_PARAM => match VersionId::parse(&value) {
                    Ok(version) => query.before = Some(version),
                    Err(_) => issues.push(Issue::error(
                        IssueType::Value,
                        "search-cursor-invalid",
                        format!("{CURSOR_PARAM} is not one Sprig wrote; follow the next link of a history Bundle"),
                    )),
                },
                other => issues.push(Issue::error(
                    IssueType::NotSupported,
                    "search-param-unknown",
                    format!(
                        "The history parameter '{}' is not supported; Sprig's history takes _count (and follows its own next links)",
                        shorten(other, 60)
                    ),
                )),
            }
        }
        if lenient {
            Ok((query, ignored_leniently(issues)))
        } else if issues.is_empty() {
            Ok((query, Vec::new()))
        } else {
            Err(issues)
        }
    }
}

/// `_count`, the same for search and history: a whole number (no sign),
/// reduced to [`MAX_COUNT`].
fn parse_count(value: &str) -> Result<u32, Issue> {
    value
        .parse::<u32>()
        .ok()
        .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
        .map(|count| count.min(MAX_COUNT))
        .ok_or_else(|| {
            Issue::error(
                IssueType::Value,
                "search-result-param-invalid",
                format!(
                    "_count={} is not allowed: give a whole number from 0 (only the total) to {MAX_COUNT} (default {DEFAULT_COUNT})",
                    shorten(value, 40)
                ),
            )
        })
}

fn is_unknown_param(issue: &Issue) -> bool {
    issue.message_id == "search-param-unknown"
}

/// Without `Prefer: handling`, an unknown parameter is ignored, and the
/// warning says how to have it refused instead.
fn ignored_unknown(issues: Vec<Issue>) -> Vec<Issue> {
    issues
        .into_iter()
        .map(|i| {
            let message = format!(
                "{} (ignored; send Prefer: handling=strict to have it refused)",
                i.message
            );
            Issue { message, ..i }.with_severity(IssueSeverity::Warning)
        })
        .collect()
}

/// Under `Prefer: handling=lenient` the refusals become warnings that say
/// the parameter was ignored.
fn ignored_leniently(issues: Vec<Issue>) -> Vec<Issue> {
    issues
        .into_iter()
        .map(|i| {
            let message = format!("{} (ignored: Prefer: handling=lenient)", i.message);
            Issue { message, ..i }.with_severity(IssueSeverity::Warning)
        })
        .collect()
}

/// Splits `value` at commas and parses each alternative, or reports the
/// first bad one with the parameter's accepted forms.
fn alternatives<T: PartialEq>(
    value: &str,
    parse: impl Fn(&str) -> Option<T>,
    param: &SearchParam,
) -> Result<Vec<T>, Issue> {
    // FHIR escapes a literal comma in a value as `\,`; Sprig's parameters
    // take codes, ids, references and dates, none of which holds one, so a
    // backslash is simply invalid.
    let count = value.bytes().filter(|b| *b == b',').count() + 1;
    if count > MAX_VALUES {
        return Err(too_costly(
            "search-too-many-values",
            format!(
                "{} has {count} comma-separated values; a parameter may have at most {MAX_VALUES}",
                param.name
            ),
        ));
    }
    let mut parsed: Vec<T> = Vec::new();
    for v in value.split(',') {
        let item = parse(v).ok_or_else(|| {
            Issue::error(
                IssueType::Value,
                "search-value-invalid",
                format!(
                    "{}: '{}' is not a valid {} value; give {}",
                    param.name,
                    shorten(v, 60),
                    param.kind.code(),
                    param.syntax()
                ),
            )
        })?;
        // A value given twice is asked once.
        if !parsed.contains(&item) {
            parsed.push(item);
        }
    }
    Ok(parsed)
}

/// A search over one of the limits: refused whole (a 400), also under
/// `handling=lenient`.
fn too_costly(message_id: &'static str, message: String) -> Issue {
    Issue::error(IssueType::TooCostly, message_id, message)
}

fn parse_token(value: &str) -> Option<TokenCriterion> {
    let criterion = match value.split_once('|') {
        None => TokenCriterion::Code(value.to_owned()),
        Some(("", "")) => return None,
        Some(("", code)) => TokenCriterion::CodeWithoutSystem(code.to_owned()),
        Some((system, "")) => TokenCriterion::System(system.to_owned()),
        Some((system, code)) => TokenCriterion::SystemCode(system.to_owned(), code.to_owned()),
    };
    match &criterion {
        TokenCriterion::Code(c) if c.is_empty() || c.contains('\\') => None,
        _ => Some(criterion),
    }
}

fn parse_reference(
    value: &str,
    as_type: Option<ResourceType>,
    param: &SearchParam,
    base: Option<&str>,
) -> Option<ReferenceCriterion> {
    let local = base
        .map(|b| b.trim_end_matches('/'))
        .filter(|b| b.contains("://"))
        .and_then(|b| value.strip_prefix(b))
        .and_then(|rest| rest.strip_prefix('/'));
    let relative = match local {
        Some(rest) => rest,
        None if value.contains("://") => {
            // Elsewhere: matched as written (a `patient` parameter only
            // indexes references it can see are to a Patient).
            return (as_type.is_none()).then(|| ReferenceCriterion::Url(value.to_owned()));
        }
        None => value,
    };
    let criterion = match relative.split_once('/') {
        Some((type_name, id)) => {
            let resource_type = ResourceType::parse(type_name).ok()?;
            if as_type.is_some_and(|t| t != resource_type) {
                return None;
            }
            ReferenceCriterion::Typed(resource_type, FhirId::parse(id).ok()?)
        }
        None => {
            let id = FhirId::parse(relative).ok()?;
            match as_type {
                Some(t) => ReferenceCriterion::Typed(t, id),
                None => ReferenceCriterion::Id(id),
            }
        }
    };
    if param.patient_only
        && matches!(&criterion, ReferenceCriterion::Typed(t, _) if t.as_str() != "Patient")
    {
        return None;
    }
    Some(criterion)
}

fn parse_date_criterion(value: &str) -> Option<DateCriterion> {
    let prefixes = [
        ("eq", DatePrefix::Eq),
        ("ne", DatePrefix::Ne),
        ("gt", DatePrefix::Gt),
        ("ge", DatePrefix::Ge),
        ("lt", DatePrefix::Lt),
        ("le", DatePrefix::Le),
        ("sa", DatePrefix::Sa),
        ("eb", DatePrefix::Eb),
    ];
    let (prefix, rest) = prefixes
        .iter()
        .find_map(|(text, prefix)| value.strip_prefix(text).map(|rest| (*prefix, rest)))
        .unwrap_or((DatePrefix::Eq, value));
    // A `+` in a query string reads as a space unless the client encoded it
    // (`%2B`); in a date it can only have been a time zone's `+`.
    let rest = rest.replace(' ', "+");
    Some(DateCriterion {
        prefix,
        range: date::range_of(&rest)?,
    })
}

fn modifier_refused(name: &str, modifier: &str, allowed: &str) -> Issue {
    Issue::error(
        IssueType::NotSupported,
        "search-modifier-unsupported",
        format!(
            "The modifier ':{}' is not supported on {name}: Sprig supports {allowed}",
            shorten(modifier, 40)
        ),
    )
}

fn unknown_param(resource_type: ResourceType, key: &str) -> Issue {
    let names: Vec<&str> = all_params(resource_type).map(|p| p.name).collect();
    Issue::error(
        IssueType::NotSupported,
        "search-param-unknown",
        format!(
            "Unknown search parameter '{}' for {resource_type}; Sprig supports {} and _count, _sort, _total, _summary=count, _elements, _include, _revinclude (GET /fhir/metadata lists them)",
            shorten(key, 60),
            names.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests;
