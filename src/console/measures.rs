//! What the outcome questionnaire forms show: each measure's items and answer options.
//! Read only through [`questionnaire`], the one adapter between the console and the
//! measure definitions: item wording comes from the loaded definitions
//! (`outcomes/measures/*.toml`, or the service's own), so the form shows exactly what the
//! definition says, and a service that supplies licensed wording sees it here.
//!
//! Licensing decides the wording: ONS4's questions are Crown copyright under the Open
//! Government Licence, so they are shown; WEMWBS and SWEMWBS wording is licensed (and
//! UCLA-3's is not Sprig's to ship), so their items show as "Item 1 …" with the answer
//! scale, for the service to read from its own licensed copy.

use crate::outcomes::Catalogue;
use crate::referral::measure::Measure;

/// One measure's form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Questionnaire {
    /// The measure.
    pub measure: Measure,
    /// Its name as staff know it.
    pub title: &'static str,
    /// What the form says above the items.
    pub hint: &'static str,
    /// The items' text, in the published order.
    pub items: Vec<String>,
    /// The answer options (score, label), lowest score first; the same for every item.
    pub options: Vec<(i64, String)>,
}

const WARWICK_SCALE: [&str; 5] = [
    "None of the time",
    "Rarely",
    "Some of the time",
    "Often",
    "All of the time",
];

/// The items' wording from `catalogue` where its definition has it (only licensed
/// wording is shipped: ONS4's, Crown copyright, OGL v3.0), else "Item n".
fn items(catalogue: &Catalogue, measure: Measure, count: usize) -> Vec<String> {
    let defined = catalogue.get(measure.as_str()).map(|d| d.items.as_slice());
    (1..=count)
        .map(|n| {
            defined
                .and_then(|items| items.get(n - 1))
                .and_then(|item| item.text.clone())
                .unwrap_or_else(|| format!("Item {n}"))
        })
        .collect()
}

/// The form of `measure`.
pub fn questionnaire(catalogue: &Catalogue, measure: Measure) -> Questionnaire {
    let range = measure.item_range();
    let count = measure.item_count();
    let (title, hint, items, labels): (_, _, _, Vec<String>) = match measure {
        Measure::Swemwbs => (
            "Short Warwick-Edinburgh Mental Wellbeing Scale (SWEMWBS)",
            "Read each statement from your licensed copy of the scale and record how the person has felt over the last 2 weeks.",
            items(catalogue, measure, count),
            WARWICK_SCALE.iter().map(|s| (*s).to_owned()).collect(),
        ),
        Measure::Wemwbs => (
            "Warwick-Edinburgh Mental Wellbeing Scale (WEMWBS)",
            "Read each statement from your licensed copy of the scale and record how the person has felt over the last 2 weeks.",
            items(catalogue, measure, count),
            WARWICK_SCALE.iter().map(|s| (*s).to_owned()).collect(),
        ),
        Measure::Ons4 => (
            "ONS personal well-being (ONS4)",
            "Answer on a scale of 0 to 10, where 0 is \u{201c}not at all\u{201d} and 10 is \u{201c}completely\u{201d}.",
            items(catalogue, measure, count),
            range.clone().map(|n| n.to_string()).collect(),
        ),
        Measure::Ucla3 => (
            "Three-item loneliness scale (UCLA-3)",
            "Read each question from your copy of the scale.",
            items(catalogue, measure, count),
            vec![
                "Hardly ever".to_owned(),
                "Some of the time".to_owned(),
                "Often".to_owned(),
            ],
        ),
    };
    Questionnaire {
        measure,
        title,
        hint,
        items,
        options: range.zip(labels).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_matches_its_measure() {
        let catalogue = Catalogue::shipped().expect("shipped measures");
        for measure in Measure::ALL {
            let form = questionnaire(&catalogue, measure);
            assert_eq!(form.items.len(), measure.item_count(), "{measure:?}");
            let scores: Vec<i64> = form.options.iter().map(|(s, _)| *s).collect();
            assert_eq!(
                scores,
                measure.item_range().collect::<Vec<_>>(),
                "{measure:?}"
            );
        }
        assert_eq!(
            questionnaire(&catalogue, Measure::Swemwbs).items[6],
            "Item 7"
        );
        assert!(
            questionnaire(&catalogue, Measure::Ons4).items[0].starts_with("Overall, how satisfied")
        );
    }
}
