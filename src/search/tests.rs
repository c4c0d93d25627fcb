//! Unit tests of search: query parsing, index extraction and dates against the R4 rules.

use serde_json::{Value, json};

use super::*;

const SR: ResourceType = ResourceType::SERVICE_REQUEST;

fn parse(query: &str) -> SearchQuery {
    SearchQuery::parse(SR, query).unwrap_or_else(|issues| panic!("{query}: {issues:?}"))
}

/// The one error `query` gives: its message id and message.
fn refused(resource_type: ResourceType, query: &str) -> (&'static str, String) {
    match SearchQuery::parse(resource_type, query) {
        Ok(parsed) => panic!("{query} was accepted: {parsed:?}"),
        Err(issues) => {
            assert_eq!(issues.len(), 1, "{query}: {issues:?}");
            assert!(issues[0].severity.is_error());
            (issues[0].message_id, issues[0].message.clone())
        }
    }
}

fn day(date: &str) -> DateRange {
    date::range_of(date).expect("a date")
}

#[test]
fn every_table_expression_compiles_and_names_are_unique() {
    let table = params::compiled().expect("the table's FHIRPath compiles");
    assert_eq!(
        table.len(),
        params::TABLE.iter().map(|(_, p)| p.len()).sum::<usize>()
    );
    for (type_name, params) in params::TABLE {
        let resource_type = ResourceType::parse(type_name).expect("an R4 type");
        let mut names: Vec<&str> = all_params(resource_type).map(|p| p.name).collect();
        names.sort_unstable();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count, "{type_name} repeats a parameter");
        for param in *params {
            assert!(
                param.expression.starts_with(&format!("{type_name}.")),
                "{type_name}.{}",
                param.name
            );
            assert!(!param.documentation.is_empty());
        }
    }
    // The brief's list, so a parameter cannot silently disappear.
    let names = |t: &str| -> Vec<&str> {
        params_for(ResourceType::parse(t).expect("type"))
            .iter()
            .map(|p| p.name)
            .collect()
    };
    assert_eq!(
        names("ServiceRequest"),
        [
            "identifier",
            "status",
            "subject",
            "patient",
            "requester",
            "authored",
            "code"
        ]
    );
    assert_eq!(
        names("Task"),
        [
            "identifier",
            "based-on",
            "focus",
            "status",
            "business-status",
            "patient",
            "subject",
            "owner",
            "modified"
        ]
    );
    assert_eq!(
        names("Observation"),
        [
            "identifier",
            "based-on",
            "code",
            "status",
            "patient",
            "subject",
            "date",
            "derived-from"
        ]
    );
    assert!(names("Encounter").is_empty());
}

#[test]
fn defaults_and_result_parameters() {
    let q = parse("");
    assert_eq!(q.count, DEFAULT_COUNT);
    assert_eq!(q.sort, SortOrder::NewestFirst);
    assert_eq!(q.total, TotalMode::WhenFree);
    assert!(q.criteria.is_empty() && q.cursor.is_none() && q.warnings.is_empty());

    let q = parse("_count=0&_sort=_lastUpdated&_total=none");
    assert_eq!(
        (q.count, q.sort, q.total),
        (0, SortOrder::OldestFirst, TotalMode::None)
    );
    assert_eq!(parse("_count=5000").count, MAX_COUNT);
    assert_eq!(parse("_sort=-_lastUpdated").sort, SortOrder::NewestFirst);
    assert_eq!(parse("_total=estimate").total, TotalMode::Estimate);
    assert_eq!(parse("_total=accurate").total, TotalMode::Accurate);
    // _format and _pretty belong to negotiation, and are kept in links.
    let q = parse("_format=json&_pretty=true");
    assert!(q.criteria.is_empty());
    assert_eq!(q.self_query(), "_format=json&_pretty=true&_count=50");
}

#[test]
fn tokens_in_every_form() {
    let q = parse(
        "identifier=https://gp.example/Id/referral|REF-1&status=active,on-hold&code=|x&identifier=https://gp.example/Id/referral|",
    );
    assert_eq!(
        q.criteria,
        vec![
            Criterion::Token(
                "identifier",
                vec![TokenCriterion::SystemCode(
                    "https://gp.example/Id/referral".into(),
                    "REF-1".into()
                )]
            ),
            Criterion::Token(
                "status",
                vec![
                    TokenCriterion::Code("active".into()),
                    TokenCriterion::Code("on-hold".into())
                ]
            ),
            Criterion::Token("code", vec![TokenCriterion::CodeWithoutSystem("x".into())]),
            Criterion::Token(
                "identifier",
                vec![TokenCriterion::System(
                    "https://gp.example/Id/referral".into()
                )]
            ),
        ]
    );
    // Percent-encoding is undone (`%7C` is `|`).
    assert_eq!(
        parse("identifier=sys%7CREF%2D1").criteria,
        vec![Criterion::Token(
            "identifier",
            vec![TokenCriterion::SystemCode("sys".into(), "REF-1".into())]
        )]
    );
    assert_eq!(
        parse("_id=a,b-1").criteria,
        vec![Criterion::Id(vec![
            FhirId::parse("a").expect("id"),
            FhirId::parse("b-1").expect("id")
        ])]
    );
}

#[test]
fn references_in_every_form() {
    let base = ParseOptions {
        lenient: false,
        strict: true,
        base: Some("https://sprig.example/fhir/"),
    };
    let q = SearchQuery::parse_with(
        SR,
        "subject=Patient/p1,p2,https://sprig.example/fhir/Patient/p3,https://elsewhere.example/fhir/Patient/p4&requester:Organization=o1",
        base,
    )
    .expect("valid");
    let id = |s: &str| FhirId::parse(s).expect("id");
    let patient = ResourceType::parse("Patient").expect("type");
    let organization = ResourceType::parse("Organization").expect("type");
    assert_eq!(
        q.criteria,
        vec![
            Criterion::Reference(
                "subject",
                vec![
                    ReferenceCriterion::Typed(patient, id("p1")),
                    ReferenceCriterion::Id(id("p2")),
                    ReferenceCriterion::Typed(patient, id("p3")),
                    ReferenceCriterion::Url("https://elsewhere.example/fhir/Patient/p4".into()),
                ]
            ),
            Criterion::Reference(
                "requester",
                vec![ReferenceCriterion::Typed(organization, id("o1"))]
            ),
        ]
    );
    // Without a configured base, an absolute URL is matched as written.
    assert_eq!(
        parse("subject=https://sprig.example/fhir/Patient/p3").criteria,
        vec![Criterion::Reference(
            "subject",
            vec![ReferenceCriterion::Url(
                "https://sprig.example/fhir/Patient/p3".into()
            )]
        )]
    );
}

#[test]
fn dates_with_prefixes_and_precision() {
    let q = parse(
        "_lastUpdated=gt2026-11-20&_lastUpdated=le2026-11-21T10:00:00Z&authored=2026-11&authored=sa2026-11-20T09:30:00+01:00",
    );
    assert_eq!(
        q.criteria,
        vec![
            Criterion::LastUpdated(vec![DateCriterion {
                prefix: DatePrefix::Gt,
                range: day("2026-11-20")
            }]),
            Criterion::LastUpdated(vec![DateCriterion {
                prefix: DatePrefix::Le,
                range: day("2026-11-21T10:00:00Z")
            }]),
            Criterion::Date(
                "authored",
                vec![DateCriterion {
                    prefix: DatePrefix::Eq,
                    range: day("2026-11")
                }]
            ),
            // An unencoded `+` arrives as a space and is read as the zone's `+`.
            Criterion::Date(
                "authored",
                vec![DateCriterion {
                    prefix: DatePrefix::Sa,
                    range: day("2026-11-20T08:30:00Z")
                }]
            ),
        ]
    );
    for (prefix, expected) in [
        ("eq", DatePrefix::Eq),
        ("ne", DatePrefix::Ne),
        ("gt", DatePrefix::Gt),
        ("ge", DatePrefix::Ge),
        ("lt", DatePrefix::Lt),
        ("le", DatePrefix::Le),
        ("sa", DatePrefix::Sa),
        ("eb", DatePrefix::Eb),
    ] {
        let q = parse(&format!("_lastUpdated={prefix}2026"));
        assert_eq!(
            q.criteria,
            vec![Criterion::LastUpdated(vec![DateCriterion {
                prefix: expected,
                range: day("2026")
            }])]
        );
    }
}

#[test]
fn every_error_names_the_parameter_and_what_is_allowed() {
    let task = ResourceType::TASK;
    let cases: &[(ResourceType, &str, &str, &[&str])] = &[
        (
            SR,
            "colour=red",
            "search-param-unknown",
            &[
                "'colour'",
                "ServiceRequest",
                "identifier",
                "authored",
                "_count",
            ],
        ),
        (
            SR,
            "_summary=text",
            "search-result-param-invalid",
            &["_summary=text", "_summary=count", "_elements"],
        ),
        (
            // Task's parameters are not ServiceRequest's.
            SR,
            "based-on=ServiceRequest/1",
            "search-param-unknown",
            &["'based-on'"],
        ),
        (
            ResourceType::parse("Encounter").expect("type"),
            "status=planned",
            "search-param-unknown",
            &["_id, _lastUpdated"],
        ),
        (
            SR,
            "status=",
            "search-value-empty",
            &["status has no value", "system|code"],
        ),
        (
            SR,
            "identifier=|",
            "search-value-invalid",
            &["identifier: '|'", "token", "system|code"],
        ),
        (
            SR,
            "status=active,",
            "search-value-invalid",
            &["status: ''"],
        ),
        (
            SR,
            "_id=not_an_id",
            "search-value-invalid",
            &["_id: 'not_an_id'", "logical ids"],
        ),
        (
            SR,
            "subject=Nonsense/1",
            "search-value-invalid",
            &["subject: 'Nonsense/1'", "Type/id"],
        ),
        (
            SR,
            "subject=Patient/",
            "search-value-invalid",
            &["subject: 'Patient/'"],
        ),
        (
            SR,
            "patient=Group/1",
            "search-value-invalid",
            &["patient: 'Group/1'"],
        ),
        (
            SR,
            "subject:Patient=Group/1",
            "search-value-invalid",
            &["subject: 'Group/1'"],
        ),
        (
            SR,
            "subject:Patient=https://elsewhere.example/Patient/1",
            "search-value-invalid",
            &["subject"],
        ),
        (
            SR,
            "authored=yesterday",
            "search-value-invalid",
            &[
                "authored: 'yesterday'",
                "eq, ne, gt, ge, lt, le, sa, eb",
                "YYYY-MM-DD",
            ],
        ),
        (
            SR,
            "_lastUpdated=ap2026-11-20",
            "search-value-invalid",
            &["_lastUpdated: 'ap2026-11-20'"],
        ),
        (
            task,
            "modified=gt2026-13-01",
            "search-value-invalid",
            &["modified: 'gt2026-13-01'"],
        ),
        (
            SR,
            "status:not=active",
            "search-modifier-unsupported",
            &["':not'", "status", "no modifiers on token parameters"],
        ),
        (
            SR,
            "authored:missing=true",
            "search-modifier-unsupported",
            &["':missing'", "authored"],
        ),
        (
            SR,
            "subject:identifier=x|1",
            "search-modifier-unsupported",
            &["':identifier'", "subject", "resource type"],
        ),
        (SR, "_count:x=1", "search-modifier-unsupported", &["_count"]),
        (
            SR,
            "_count=-1",
            "search-result-param-invalid",
            &["_count=-1", "whole number from 0", "1000"],
        ),
        (
            SR,
            "_count=%2B5",
            "search-result-param-invalid",
            &["_count=+5"],
        ),
        (
            SR,
            "_count=1&_count=2",
            "search-param-repeated",
            &["_count is given more than once"],
        ),
        (
            SR,
            "_sort=status",
            "search-result-param-invalid",
            &["_sort=status", "_lastUpdated", "-_lastUpdated"],
        ),
        (
            SR,
            "_total=all",
            "search-result-param-invalid",
            &["_total=all", "none", "accurate"],
        ),
        (
            SR,
            "_cursor=abc",
            "search-cursor-invalid",
            &["_cursor", "next link"],
        ),
        (
            SR,
            "_cursor=2026-11-20T10:00:00Z_abc",
            "search-cursor-invalid",
            &["_cursor"],
        ),
    ];
    for (resource_type, query, message_id, fragments) in cases {
        let (id, message) = refused(*resource_type, query);
        assert_eq!(id, *message_id, "{query}: {message}");
        for fragment in *fragments {
            assert!(
                message.contains(fragment),
                "{query}: '{message}' lacks '{fragment}'"
            );
        }
    }
    // Every problem is reported, not only the first.
    let issues = SearchQuery::parse(SR, "colour=red&status=&_count=x").expect_err("refused");
    assert_eq!(issues.len(), 3);
}

#[test]
fn lenient_handling_ignores_bad_parameters_with_warnings() {
    let options = ParseOptions {
        lenient: true,
        strict: false,
        base: None,
    };
    let q = SearchQuery::parse_with(SR, "colour=red&status=active&_count=x", options)
        .expect("lenient never refuses");
    assert_eq!(
        q.criteria,
        vec![Criterion::Token(
            "status",
            vec![TokenCriterion::Code("active".into())]
        )]
    );
    assert_eq!(q.count, DEFAULT_COUNT);
    assert_eq!(q.warnings.len(), 2);
    assert!(
        q.warnings
            .iter()
            .all(|w| w.severity == IssueSeverity::Warning)
    );
    assert_eq!(q.warnings[0].message_id, "search-param-unknown");
    assert!(q.warnings[0].message.contains("ignored"));
    // The ignored parameter is not in the links.
    assert_eq!(q.self_query(), "status=active&_count=50");
}

#[test]
fn links_repeat_the_query_and_carry_the_cursor() {
    let q = parse("identifier=sys|REF 1&_sort=_lastUpdated&_count=2");
    assert_eq!(
        q.self_query(),
        "identifier=sys%7CREF+1&_sort=_lastUpdated&_count=2"
    );
    let cursor = Cursor::after(
        Instant::parse("2026-11-20T10:00:00.123Z").expect("instant"),
        FhirId::parse("019a-b.c").expect("id"),
    );
    let next = q.next_query(&cursor);
    assert_eq!(
        next,
        "identifier=sys%7CREF+1&_sort=_lastUpdated&_count=2&_cursor=2026-11-20T10%3A00%3A00.123Z_019a-b.c"
    );
    // Following the link reads the same query, one page on.
    let followed = parse(&next);
    assert_eq!(followed.cursor, Some(cursor.clone()));
    assert_eq!(followed.criteria, q.criteria);
    assert_eq!(followed.self_query(), next);
    assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
}

#[test]
fn history_parameters() {
    assert_eq!(
        HistoryQuery::parse("", false),
        Ok((
            HistoryQuery {
                count: DEFAULT_COUNT,
                before: None
            },
            vec![]
        ))
    );
    let (q, _) = HistoryQuery::parse("_count=2&_cursor=7&_format=json", false).expect("valid");
    assert_eq!(q.count, 2);
    assert_eq!(q.before.map(VersionId::get), Some(7));
    assert_eq!(
        HistoryQuery::parse("_count=9999", false).map(|(q, _)| q.count),
        Ok(MAX_COUNT)
    );
    for (bad, id) in [
        ("_since=2026-01-01", "search-param-unknown"),
        ("_count=x", "search-result-param-invalid"),
        ("_cursor=0", "search-cursor-invalid"),
    ] {
        let issues = HistoryQuery::parse(bad, false).expect_err(bad);
        assert_eq!(issues[0].message_id, id, "{bad}");
    }
    let (q, warnings) = HistoryQuery::parse("_since=2026-01-01&_count=3", true).expect("lenient");
    assert_eq!(q.count, 3);
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].severity, IssueSeverity::Warning);
}

fn token(param: &'static str, system: Option<&str>, code: &str) -> IndexEntry {
    IndexEntry {
        param,
        value: IndexValue::Token {
            system: system.map(str::to_owned),
            code: code.to_owned(),
        },
    }
}

fn reference(param: &'static str, text: &str) -> IndexEntry {
    IndexEntry {
        param,
        value: IndexValue::Reference(index::normalise_reference(text).expect("a reference")),
    }
}

fn date_entry(param: &'static str, low: &str, high: &str) -> IndexEntry {
    IndexEntry {
        param,
        value: IndexValue::Date(DateRange {
            low: low.to_owned(),
            high: high.to_owned(),
        }),
    }
}

fn example(name: &str) -> Value {
    let path = format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("example exists")).expect("JSON")
}

#[test]
fn a_referral_indexes_identifier_status_code_and_authored_but_not_contained_references() {
    let entries = index_entries(SR, &example("referral-servicerequest.json"));
    assert_eq!(
        entries,
        vec![
            token(
                "identifier",
                Some("https://gp-system.example.org/Id/referral"),
                "REF-2026-000123"
            ),
            token("status", None, "active"),
            // subject, patient and requester are `#contained`: nothing to index.
            date_entry(
                "authored",
                "2026-11-20T09:30:00.000Z",
                "2026-11-20T09:30:00.999Z"
            ),
            token("code", Some("http://snomed.info/sct"), "871731000000106"),
        ]
    );
}

#[test]
fn a_task_indexes_references_and_codeable_concepts() {
    let entries = index_entries(ResourceType::TASK, &example("task-accepted.json"));
    let sr = "ServiceRequest/019a4b2c-7d8e-7f90-a1b2-c3d4e5f6a7b8";
    let patient = "Patient/b7e8c2f4-3d5a-4e61-9a0b-5c7d8e9f1a23";
    assert_eq!(
        entries,
        vec![
            reference("based-on", sr),
            reference("focus", sr),
            token("status", None, "accepted"),
            token(
                "business-status",
                Some("https://sprig-gateway.org/fhir/CodeSystem/sprig-referral-stage"),
                "accepted"
            ),
            reference("patient", patient),
            reference("subject", patient),
            reference("owner", "Organization/5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b"),
            date_entry(
                "modified",
                "2026-11-21T11:15:00.000Z",
                "2026-11-21T11:15:00.999Z"
            ),
        ]
    );
}

#[test]
fn an_observation_indexes_its_effective_date_and_periods() {
    let observation = example("observation-ucla3.json");
    let entries = index_entries(ResourceType::OBSERVATION, &observation);
    assert!(entries.contains(&date_entry(
        "date",
        "2027-02-26T10:30:00.000Z",
        "2027-02-26T10:30:00.999Z"
    )));
    assert!(entries.contains(&token(
        "code",
        Some("https://sprig-gateway.org/fhir/CodeSystem/sprig-outcome-measure"),
        "ucla3"
    )));
    // Components' codes are not the Observation's code.
    assert!(!entries.iter().any(|e| matches!(
        &e.value,
        IndexValue::Token { code, .. } if code == "item-1"
    )));

    let mut with_period = observation.clone();
    if let Some(map) = with_period.as_object_mut() {
        map.shift_remove("effectiveDateTime");
        map.insert("effectivePeriod".into(), json!({"start": "2027-02-01"}));
    }
    let entries = index_entries(ResourceType::OBSERVATION, &with_period);
    assert!(entries.contains(&date_entry("date", "2027-02-01T00:00:00.000Z", MAX_INSTANT)));
}

#[test]
fn references_are_normalised() {
    let normalised = |text: &str| index::normalise_reference(text);
    let patient = ResourceType::parse("Patient").ok();
    assert_eq!(
        normalised("Patient/1/_history/3"),
        Some(IndexedReference {
            reference: "Patient/1".into(),
            target_type: patient,
            target_id: Some("1".into())
        })
    );
    // Another server's Patient/1 is not found by a plain-id search.
    assert_eq!(
        normalised("https://elsewhere.example/fhir/Patient/1"),
        Some(IndexedReference {
            reference: "https://elsewhere.example/fhir/Patient/1".into(),
            target_type: patient,
            target_id: None
        })
    );
    assert_eq!(normalised("#patient"), None);
    assert_eq!(normalised("Patient"), None);
    assert_eq!(normalised("Nonsense/1"), None);
    assert_eq!(normalised("a/Patient/1"), None);
    assert_eq!(normalised(""), None);
    // A `patient` parameter only indexes references to a Patient.
    let condition = json!({
        "resourceType": "Condition",
        "subject": {"reference": "Group/g1"},
    });
    let entries = index_entries(ResourceType::parse("Condition").expect("type"), &condition);
    assert_eq!(entries, vec![reference("subject", "Group/g1")]);
}

#[test]
fn a_condition_must_name_a_criterion() {
    for empty in ["", "_count=1", "_format=json&_total=none"] {
        let issues = SearchQuery::parse_condition(SR, empty).expect_err(empty);
        assert_eq!(issues.len(), 1, "{empty}");
        assert_eq!(issues[0].message_id, "conditional-without-criteria");
        assert_eq!(issues[0].code, IssueType::Invalid);
    }
    // A condition Sprig cannot read is refused as a search would be.
    let issues = SearchQuery::parse_condition(SR, "colour=red").expect_err("unknown");
    assert_eq!(issues[0].message_id, "search-param-unknown");
    let query = SearchQuery::parse_condition(SR, "identifier=https://example.org|R1&_count=5")
        .expect("a criterion");
    assert_eq!(query.criteria.len(), 1);
}

#[test]
fn a_search_is_bounded_in_parameters_repeats_and_values() {
    // 200 repeats of one parameter: refused at the eleventh, naming the limit.
    let repeated = vec!["status=active"; 200].join("&");
    let (id, message) = refused(SR, &repeated);
    assert_eq!(id, "search-param-too-many-repeats");
    assert!(
        message.contains("status") && message.contains("10"),
        "{message}"
    );
    // Ten are fine, and ask once.
    let ten = ["status=active"; 10].join("&");
    assert_eq!(parse(&ten).criteria.len(), 1);

    // 1,000 comma-separated values.
    let values = (0..1000).map(|n| format!("c{n}")).collect::<Vec<_>>();
    let (id, message) = refused(SR, &format!("code={}", values.join(",")));
    assert_eq!(id, "search-too-many-values");
    assert!(
        message.contains("code") && message.contains("100"),
        "{message}"
    );
    let hundred = format!("code={}", values[..100].join(","));
    assert!(matches!(&parse(&hundred).criteria[0], Criterion::Token(_, t) if t.len() == 100));

    // More than 30 parameters in all, whatever they are.
    let many = (0..31)
        .map(|n| match n % 3 {
            0 => format!("_id=x{n}"),
            1 => format!("status=s{n}"),
            _ => format!("code=c{n}"),
        })
        .collect::<Vec<_>>()
        .join("&");
    let (id, message) = refused(SR, &many);
    assert_eq!(id, "search-too-many-params");
    assert!(message.contains("30"), "{message}");

    // Leniency never waives a limit.
    let lenient = ParseOptions {
        lenient: true,
        strict: false,
        base: None,
    };
    let issues = SearchQuery::parse_with(SR, &repeated, lenient).expect_err("refused");
    // ...and neither does the default handling of unknown parameters.
    let issues_default =
        SearchQuery::parse_with(SR, &repeated, ParseOptions::default()).expect_err("refused");
    assert_eq!(issues_default[0].code, IssueType::TooCostly);
    assert_eq!(issues[0].code, IssueType::TooCostly);
}

#[test]
fn a_criterion_or_value_given_twice_is_asked_once() {
    let query = parse("status=active,active,draft&status=draft,active&status=active,draft");
    assert_eq!(
        query.criteria,
        vec![
            Criterion::Token(
                "status",
                vec![
                    TokenCriterion::Code("active".into()),
                    TokenCriterion::Code("draft".into())
                ]
            ),
            Criterion::Token(
                "status",
                vec![
                    TokenCriterion::Code("draft".into()),
                    TokenCriterion::Code("active".into())
                ]
            ),
        ]
    );
    // The links still say what was asked.
    assert_eq!(query.link_params.len(), 3);
}
