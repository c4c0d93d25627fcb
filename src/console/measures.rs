//! What the outcome questionnaire forms show: each measure's items and answer options.
//! Read only through [`questionnaire`], the one adapter between the console and the
//! measure definitions: the title, hint, item wording and answer labels all come from the
//! loaded definitions (`outcomes/measures/*.toml`, or the service's own), so the form shows
//! exactly what the definition says, a service that supplies licensed wording sees it here,
//! and a measure the service adds has a form without a release.
//!
//! Licensing decides the wording the shipped definitions carry: ONS4's questions are Crown
//! copyright under the Open Government Licence, so they are shown; WEMWBS and SWEMWBS
//! statements are licensed (and UCLA-3's questions are not Sprig's to ship), so their items
//! show as "Item 1 …" with the answer scale, for the service to read from its own copy.

use std::ops::RangeInclusive;

use crate::outcomes::{Catalogue, MeasureDefinition};

/// One measure's form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Questionnaire {
    /// The measure's code (the form's hidden `measure` field).
    pub measure: String,
    /// Its name as staff know it.
    pub title: String,
    /// What the form says above the items.
    pub hint: String,
    /// The items' text, in the published order.
    pub items: Vec<String>,
    /// Per item, the answer options (score, label), lowest score first.
    pub options: Vec<Vec<(i64, String)>>,
}

/// The form of `definition`: its items' wording where the definition has it, else
/// "Item n"; each answer's label where it has one, else its score.
pub fn form(definition: &MeasureDefinition) -> Questionnaire {
    Questionnaire {
        measure: definition.code.clone(),
        title: format!("{} ({})", definition.title, definition.name),
        hint: definition.hint.clone().unwrap_or_else(|| {
            "Read each item from your copy of the measure and record the answer.".to_owned()
        }),
        items: definition
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.text
                    .clone()
                    .unwrap_or_else(|| format!("Item {}", i + 1))
            })
            .collect(),
        options: definition
            .items
            .iter()
            .map(|item| {
                item.answers
                    .iter()
                    .map(|a| {
                        (
                            a.value,
                            a.label.clone().unwrap_or_else(|| a.value.to_string()),
                        )
                    })
                    .collect()
            })
            .collect(),
    }
}

/// The form of the measure with code `measure`, if the catalogue defines it.
pub fn questionnaire(catalogue: &Catalogue, measure: &str) -> Option<Questionnaire> {
    catalogue.get(measure).map(form)
}

/// A measure a referral page offers to record and charts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered {
    /// Its code.
    pub code: String,
    /// Its short name (`SWEMWBS`).
    pub name: String,
    /// The range of its total (the chart's scale); `None` without a total.
    pub sum_range: Option<RangeInclusive<i64>>,
}

/// The measures a referral page offers, shipped ones first in the order staff know them,
/// then the service's own by code.
pub fn offered(catalogue: &Catalogue) -> Vec<Offered> {
    let first = crate::outcomes::definition::REQUIRED;
    first
        .iter()
        .filter_map(|code| catalogue.get(code))
        .chain(
            catalogue
                .iter()
                .filter(|m| !first.contains(&m.code.as_str())),
        )
        .map(|m| Offered {
            code: m.code.clone(),
            name: m.name.clone(),
            sum_range: m.sum_range().map(|(low, high)| low..=high),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_follows_its_definition() {
        let catalogue = Catalogue::shipped().expect("shipped measures");
        for definition in catalogue.iter() {
            let form = form(definition);
            assert_eq!(
                form.items.len(),
                definition.items.len(),
                "{}",
                definition.code
            );
            for (options, item) in form.options.iter().zip(&definition.items) {
                let scores: Vec<i64> = options.iter().map(|(s, _)| *s).collect();
                assert_eq!(scores, (item.min..=item.max).collect::<Vec<_>>());
            }
        }
        let swemwbs = questionnaire(&catalogue, "swemwbs").expect("swemwbs");
        assert_eq!(swemwbs.items[6], "Item 7");
        // The response scale comes from the definition's answer labels.
        assert_eq!(swemwbs.options[0][0].1, "None of the time");
        assert_eq!(swemwbs.options[0][4].1, "All of the time");
        let ucla3 = questionnaire(&catalogue, "ucla3").expect("ucla3");
        assert_eq!(ucla3.options[2][0].1, "Hardly ever");
        let ons4 = questionnaire(&catalogue, "ons4").expect("ons4");
        assert!(ons4.items[0].starts_with("Overall, how satisfied"));
        assert_eq!(ons4.options[0][5].1, "5");
        assert!(questionnaire(&catalogue, "nope").is_none());
        let offered: Vec<String> = offered(&catalogue).into_iter().map(|m| m.code).collect();
        assert_eq!(offered, ["swemwbs", "wemwbs", "ons4", "ucla3"]);
    }
}
