//! The rules for `Narrative.div` (FHIR R4 §2.4.0.2, narrative.html#xhtml),
//! which the Narrative invariants `txt-1` and `txt-2` carry as
//! `htmlChecks()`, a function FHIRPath leaves to the validator:
//!
//! - "The XHTML content SHALL NOT contain a head, a body element, external
//!   stylesheet references, deprecated elements, scripts, forms,
//!   base/link/xlink, frames, iframes, objects or event related attributes
//!   (e.g. onClick)." (`txt-1`: only the basic HTML formatting elements and
//!   attributes). The lists are those of HL7's validator (`XhtmlValidator`),
//!   which is how the rule is applied in practice.
//! - "The contents of the div element are an XHTML fragment ... the root
//!   element SHALL be a div in the XHTML namespace" and it "SHALL have some
//!   non-whitespace content" (`txt-2`).
//! - It is XML, so "there is no support for HTML entities like `&nbsp;` or
//!   `&copy;`": only XML's five and character references.
//!
//! Pure: one pass of quick-xml's pull parser over the text, no allocation
//! beyond the problems found.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

/// The XHTML namespace, which the root `div` must declare.
const XHTML_NAMESPACE: &str = "http://www.w3.org/1999/xhtml";

/// At most this many problems are reported for one div: the first few say
/// what is wrong; hundreds of the same would only bury them.
const MAX_PROBLEMS: usize = 10;

/// Elements FHIR narrative may use.
const ELEMENTS: &[&str] = &[
    "p",
    "br",
    "div",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "a",
    "span",
    "b",
    "em",
    "i",
    "strong",
    "small",
    "big",
    "tt",
    "dfn",
    "q",
    "var",
    "abbr",
    "acronym",
    "cite",
    "blockquote",
    "hr",
    "address",
    "bdo",
    "kbd",
    "sub",
    "sup",
    "ul",
    "ol",
    "li",
    "dl",
    "dt",
    "dd",
    "pre",
    "table",
    "caption",
    "colgroup",
    "col",
    "thead",
    "tr",
    "tfoot",
    "tbody",
    "th",
    "td",
    "code",
    "samp",
    "img",
    "map",
    "area",
];

/// Attributes allowed on any of those elements.
const ATTRIBUTES: &[&str] = &[
    "title",
    "style",
    "class",
    "id",
    "lang",
    "xml:lang",
    "dir",
    "accesskey",
    "tabindex",
    // tables
    "span",
    "width",
    "align",
    "valign",
    "char",
    "charoff",
    "abbr",
    "axis",
    "headers",
    "scope",
    "rowspan",
    "colspan",
];

/// Attributes allowed on one element (`element.attribute`).
const ELEMENT_ATTRIBUTES: &[&str] = &[
    "a.href",
    "a.name",
    "a.charset",
    "a.type",
    "a.hreflang",
    "a.rel",
    "a.rev",
    "a.shape",
    "a.coords",
    "img.src",
    "img.border",
    "img.alt",
    "img.longdesc",
    "img.height",
    "img.width",
    "img.usemap",
    "img.ismap",
    "blockquote.cite",
    "q.cite",
    "map.name",
    "area.shape",
    "area.coords",
    "area.href",
    "area.nohref",
    "area.alt",
    "table.summary",
    "table.width",
    "table.border",
    "table.frame",
    "table.rules",
    "table.cellspacing",
    "table.cellpadding",
    "pre.space",
    "td.nowrap",
];

/// XML's predefined entities, the only named ones XHTML in FHIR may use.
const XML_ENTITIES: &[&str] = &["lt", "gt", "amp", "quot", "apos"];

/// One thing wrong with a div: an issue id and what to say after the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Problem {
    pub(super) id: &'static str,
    pub(super) text: String,
}

impl Problem {
    fn new(id: &'static str, text: impl Into<String>) -> Self {
        Self {
            id,
            text: text.into(),
        }
    }
}

/// What is wrong with `div` under FHIR's narrative rules (empty when none).
pub(super) fn check(div: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut reader = Reader::from_str(div);
    // Well-formedness, not leniency: end tags must match their start tags.
    reader.config_mut().check_end_names = true;
    reader.config_mut().check_comments = true;
    let mut depth = 0usize;
    let mut roots = 0usize;
    let mut content = false;
    loop {
        if problems.len() >= MAX_PROBLEMS {
            break;
        }
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(error) => {
                problems.push(Problem::new(
                    "xhtml-malformed",
                    format!(
                        "is not well-formed XHTML (at byte {}: {error})",
                        reader.error_position()
                    ),
                ));
                break;
            }
        };
        match event {
            Event::Eof => {
                if depth > 0 {
                    problems.push(Problem::new(
                        "xhtml-malformed",
                        "is not well-formed XHTML: it ends before every element is closed",
                    ));
                }
                break;
            }
            Event::Start(_) | Event::Empty(_) if depth == 0 && roots > 0 => {
                problems.push(Problem::new(
                    "xhtml-malformed",
                    "has more than one root element; it must be one div",
                ));
                break;
            }
            Event::Start(start) => {
                if depth == 0 {
                    roots += 1;
                    root(&start, &mut problems);
                }
                content |= start.local_name().as_ref() == b"img";
                element(&start, &mut problems);
                depth += 1;
            }
            Event::Empty(start) => {
                if depth == 0 {
                    roots += 1;
                    root(&start, &mut problems);
                }
                content |= start.local_name().as_ref() == b"img";
                element(&start, &mut problems);
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(text) => {
                let blank = text.iter().all(u8::is_ascii_whitespace);
                if depth == 0 && !blank {
                    problems.push(Problem::new(
                        "xhtml-malformed",
                        "has text outside its div; the narrative must be one div element",
                    ));
                } else if !blank {
                    content = true;
                }
            }
            Event::CData(_) => content |= depth > 0,
            Event::GeneralRef(reference) => {
                if depth == 0 {
                    problems.push(Problem::new(
                        "xhtml-malformed",
                        "has text outside its div; the narrative must be one div element",
                    ));
                }
                let name = String::from_utf8_lossy(&reference).into_owned();
                if reference.is_char_ref() {
                    match reference.resolve_char_ref() {
                        Ok(Some(_)) => content = true,
                        _ => problems.push(Problem::new(
                            "xhtml-entity",
                            format!("has '&{name};', which is not a valid character reference"),
                        )),
                    }
                } else if XML_ENTITIES.contains(&name.as_str()) {
                    content = true;
                } else {
                    problems.push(Problem::new(
                        "xhtml-entity",
                        format!(
                            "uses the entity '&{name};', which XHTML in FHIR does not define (only &lt; &gt; &amp; &quot; &apos;): write the character itself or a character reference such as &#160;"
                        ),
                    ));
                }
            }
            Event::Comment(_) => {}
            Event::Decl(_) => problems.push(Problem::new(
                "xhtml-processing-instruction",
                "has an XML declaration; the narrative is a div fragment, without one",
            )),
            Event::PI(_) => problems.push(Problem::new(
                "xhtml-processing-instruction",
                "has a processing instruction, which narrative may not contain",
            )),
            Event::DocType(_) => problems.push(Problem::new(
                "xhtml-doctype",
                "has a DOCTYPE, which narrative may not contain",
            )),
        }
    }
    // What is found in text that is not XML may be an artefact of where the
    // parser lost its way: the malformation alone is said.
    if let Some(malformed) = problems.iter().position(|p| p.id == "xhtml-malformed") {
        let malformed = problems.swap_remove(malformed);
        return vec![malformed];
    }
    if problems.is_empty() {
        if roots == 0 {
            problems.push(Problem::new(
                "xhtml-malformed",
                "holds no element; it must be a div in the XHTML namespace",
            ));
        } else if !content {
            problems.push(Problem::new(
                "xhtml-empty",
                "txt-2: The narrative SHALL have some non-whitespace content (the div is empty)",
            ));
        }
    }
    problems
}

/// The root must be a `div` declaring the XHTML namespace.
fn root(start: &BytesStart, problems: &mut Vec<Problem>) {
    let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
    if name != "div" {
        problems.push(Problem::new(
            "xhtml-root",
            format!("has the root element '{name}'; the narrative's root element must be a div"),
        ));
    }
    let namespace = start
        .attributes()
        .with_checks(false)
        .flatten()
        .find(|attribute| attribute.key.as_ref() == b"xmlns")
        .map(|attribute| attribute.value);
    // Another namespace is reported with the element's attributes.
    if namespace.is_none() {
        problems.push(Problem::new(
            "xhtml-namespace",
            format!(
                "does not declare the XHTML namespace: the div must have xmlns=\"{XHTML_NAMESPACE}\""
            ),
        ));
    }
}

/// `txt-1` for one element and its attributes.
fn element(start: &BytesStart, problems: &mut Vec<Problem>) {
    let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
    if !ELEMENTS.contains(&name.as_str()) {
        problems.push(Problem::new(
            "xhtml-element",
            format!(
                "txt-1: the element '{name}' is not allowed in narrative (only basic HTML formatting: no scripts, forms, objects, frames, head or body)"
            ),
        ));
    }
    for attribute in start.attributes() {
        let attribute = match attribute {
            Ok(attribute) => attribute,
            Err(error) => {
                problems.push(Problem::new(
                    "xhtml-malformed",
                    format!("is not well-formed XHTML (an attribute of '{name}': {error})"),
                ));
                return;
            }
        };
        let key = String::from_utf8_lossy(attribute.key.as_ref()).into_owned();
        let value = match attribute.normalized_value(quick_xml::XmlVersion::Implicit1_0) {
            Ok(value) => value.into_owned(),
            Err(error) => {
                problems.push(Problem::new(
                    "xhtml-entity",
                    format!(
                        "has an attribute '{key}' on '{name}' whose value is not well-formed ({error}); only &lt; &gt; &amp; &quot; &apos; and character references are defined"
                    ),
                ));
                continue;
            }
        };
        if key.starts_with("xmlns") {
            if key == "xmlns" && value != XHTML_NAMESPACE {
                problems.push(Problem::new(
                    "xhtml-namespace",
                    format!(
                        "puts '{name}' in the namespace '{value}'; narrative is XHTML ({XHTML_NAMESPACE}) throughout"
                    ),
                ));
            }
            continue;
        }
        let combined = format!("{name}.{key}");
        if key.len() > 2 && key.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("on")) {
            problems.push(Problem::new(
                "xhtml-attribute",
                format!(
                    "txt-1: the event attribute '{key}' on '{name}' is not allowed in narrative (no scripts)"
                ),
            ));
        } else if !ATTRIBUTES.contains(&key.as_str())
            && !ELEMENT_ATTRIBUTES.contains(&combined.as_str())
        {
            problems.push(Problem::new(
                "xhtml-attribute",
                format!("txt-1: the attribute '{key}' is not allowed on '{name}' in narrative"),
            ));
        } else if matches!(key.as_str(), "href" | "src" | "longdesc" | "cite")
            && is_script_url(&value)
        {
            problems.push(Problem::new(
                "xhtml-attribute",
                format!(
                    "txt-1: '{name}' has {key}=\"javascript:...\"; narrative may not contain scripts"
                ),
            ));
        }
    }
}

/// Whether a URL runs script: `javascript:` (or `vbscript:`), in any case,
/// with the whitespace and control characters browsers ignore in it.
fn is_script_url(url: &str) -> bool {
    let compact: String = url
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .take(11)
        .collect::<String>()
        .to_ascii_lowercase();
    compact.starts_with("javascript:") || compact.starts_with("vbscript:")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "xmlns=\"http://www.w3.org/1999/xhtml\"";

    fn ids(div: &str) -> Vec<&'static str> {
        check(div).into_iter().map(|p| p.id).collect()
    }

    #[test]
    fn a_plain_narrative_is_kept() {
        let div = format!(
            "<div {NS}><p>Referral for <b>social prescribing</b> &amp; follow-up &#160;&#x2014;</p>\
             <table border=\"1\"><tr><td colspan=\"2\">x</td></tr></table>\
             <a href=\"https://example.org/x\">link</a><img src=\"#a\" alt=\"a\"/><br/><!-- note --></div>"
        );
        assert_eq!(check(&div), Vec::new());
    }

    #[test]
    fn the_root_must_be_a_div_in_the_xhtml_namespace() {
        assert_eq!(ids("<div>text</div>"), ["xhtml-namespace"]);
        assert_eq!(
            ids("<div xmlns=\"http://example.org\">text</div>"),
            ["xhtml-namespace"]
        );
        assert_eq!(ids(&format!("<p {NS}>text</p>")), ["xhtml-root"]);
        assert_eq!(ids("just text"), ["xhtml-malformed"]);
        assert_eq!(ids(""), ["xhtml-malformed"]);
        assert_eq!(
            ids(&format!("<div {NS}>a</div><div {NS}>b</div>")),
            ["xhtml-malformed"]
        );
    }

    #[test]
    fn it_must_be_well_formed() {
        assert_eq!(
            ids(&format!("<div {NS}><p>open</div>")),
            ["xhtml-malformed"]
        );
        assert_eq!(ids(&format!("<div {NS}><p>open</p>")), ["xhtml-malformed"]);
        assert_eq!(ids(&format!("<div {NS}>a < b</div>")), ["xhtml-malformed"]);
    }

    #[test]
    fn txt_2_the_div_must_have_content() {
        assert_eq!(ids(&format!("<div {NS}>  </div>")), ["xhtml-empty"]);
        assert_eq!(ids(&format!("<div {NS}/>")), ["xhtml-empty"]);
        assert_eq!(ids(&format!("<div {NS}><p> </p></div>")), ["xhtml-empty"]);
        assert_eq!(
            ids(&format!("<div {NS}><img src=\"#x\"/></div>")),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn txt_1_scripts_forms_objects_frames_are_refused() {
        for element in [
            "script", "form", "object", "iframe", "body", "head", "link", "input", "font",
        ] {
            let div = format!("<div {NS}>x<{element}>y</{element}></div>");
            assert_eq!(ids(&div), ["xhtml-element"], "{element}");
        }
    }

    #[test]
    fn txt_1_event_attributes_and_script_urls_are_refused() {
        assert_eq!(
            ids(&format!("<div {NS}><p onclick=\"x()\">a</p></div>")),
            ["xhtml-attribute"]
        );
        assert_eq!(
            ids(&format!(
                "<div {NS}><a href=\" JavaScript:alert(1)\">a</a></div>"
            )),
            ["xhtml-attribute"]
        );
        assert_eq!(
            ids(&format!(
                "<div {NS}><p href=\"https://example.org\">a</p></div>"
            )),
            ["xhtml-attribute"]
        );
        assert_eq!(
            ids(&format!(
                "<div {NS}><img src=\"x.png\" data-x=\"1\"/></div>"
            )),
            ["xhtml-attribute"]
        );
    }

    #[test]
    fn only_xml_entities_are_defined() {
        assert_eq!(ids(&format!("<div {NS}>a&nbsp;b</div>")), ["xhtml-entity"]);
        assert_eq!(
            ids(&format!("<div {NS}>&copy; 2020</div>")),
            ["xhtml-entity"]
        );
        assert_eq!(ids(&format!("<div {NS}>&#xZZ;</div>")), ["xhtml-entity"]);
        assert_eq!(
            ids(&format!("<div {NS}><span title=\"&nbsp;\">a</span></div>")),
            ["xhtml-entity"]
        );
        assert_eq!(
            ids(&format!("<div {NS}>&lt;&gt;&quot;&apos;&#65;</div>")),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn no_doctype_or_processing_instructions() {
        assert!(ids(&format!("<!DOCTYPE html><div {NS}>a</div>")).contains(&"xhtml-doctype"));
        assert!(
            ids(&format!("<div {NS}>a<?php echo 1 ?></div>"))
                .contains(&"xhtml-processing-instruction")
        );
        assert!(
            ids(&format!("<?xml version=\"1.0\"?><div {NS}>a</div>"))
                .contains(&"xhtml-processing-instruction")
        );
    }
}
