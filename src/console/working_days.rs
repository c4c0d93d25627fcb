//! Working days for the first-contact target (`console.first_contact_target_working_days`):
//! Monday to Friday, England and Wales bank holidays excepted, counted on UK local dates.
//!
//! The bank holidays are shipped, not fetched: GOV.UK's list for England and Wales
//! (<https://www.gov.uk/bank-holidays.json>, `england-and-wales`, read 2026-12-04), 2025
//! to 2027, the years it published. Past the list only weekends count, and the worklist
//! would call a referral overdue a day early around a holiday: extend the list when GOV.UK
//! publishes the next year (a test fails from December 2027 as a reminder).

use time::{Date, Month, OffsetDateTime, Weekday};

use super::time::london_midnight_utc;
use crate::fhir::Instant;

/// England and Wales bank holidays (GOV.UK), as (year, month, day).
pub const BANK_HOLIDAYS: &[(i32, u8, u8)] = &[
    (2025, 1, 1),
    (2025, 4, 18),
    (2025, 4, 21),
    (2025, 5, 5),
    (2025, 5, 26),
    (2025, 8, 25),
    (2025, 12, 25),
    (2025, 12, 26),
    (2026, 1, 1),
    (2026, 4, 3),
    (2026, 4, 6),
    (2026, 5, 4),
    (2026, 5, 25),
    (2026, 8, 31),
    (2026, 12, 25),
    (2026, 12, 28),
    (2027, 1, 1),
    (2027, 3, 26),
    (2027, 3, 29),
    (2027, 5, 3),
    (2027, 5, 31),
    (2027, 8, 30),
    (2027, 12, 27),
    (2027, 12, 28),
];

/// The last date the shipped list covers.
#[cfg(test)]
pub const LIST_ENDS: (i32, u8, u8) = (2027, 12, 31);

fn is_bank_holiday(date: Date) -> bool {
    let key = (date.year(), u8::from(date.month()), date.day());
    BANK_HOLIDAYS.contains(&key)
}

/// Whether `date` is a working day.
pub fn is_working_day(date: Date) -> bool {
    !matches!(date.weekday(), Weekday::Saturday | Weekday::Sunday) && !is_bank_holiday(date)
}

/// The date `days` working days before `today`.
pub fn working_days_before(today: Date, days: u32) -> Date {
    let mut date = today;
    let mut left = days;
    while left > 0 {
        let Some(previous) = date.previous_day() else {
            return date;
        };
        date = previous;
        if is_working_day(date) {
            left -= 1;
        }
    }
    date
}

/// The working days from `from` to `to` (UK dates): those after `from`, up to and
/// including `to` (contacted the next working day: 1; the same day: 0). Counting stops
/// at ten years, a bound no real referral reaches.
pub fn working_days_between(from: Date, to: Date) -> u32 {
    let mut days = 0;
    let mut date = from;
    while date < to && days < 2610 {
        let Some(next) = date.next_day() else {
            break;
        };
        date = next;
        if is_working_day(date) {
            days += 1;
        }
    }
    days
}

/// The instant before which a referral not yet contacted is overdue at `now`: UK
/// midnight starting the day `days` working days before today (UK date). Received on
/// a Monday with a 5-day target, it is overdue from the Tuesday a week later, when five
/// whole working days have passed.
pub fn first_contact_cutoff(now: OffsetDateTime, days: u32) -> String {
    let today = super::time::london_date(now);
    london_midnight_utc(working_days_before(today, days))
}

/// The FHIR instant of `date`'s UK midnight, for a filter's lower bound; the day after
/// for an upper bound given as a date (inclusive).
pub fn day_bounds(date: Date) -> (String, String) {
    let next = date.next_day().unwrap_or(date);
    (london_midnight_utc(date), london_midnight_utc(next))
}

/// `2026-12-04` as a date.
pub fn parse_date(text: &str) -> Option<Date> {
    let mut parts = text.trim().splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.parse().ok()?;
    Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()
}

/// Now, for the cut-off.
pub fn now() -> OffsetDateTime {
    Instant::now().as_offset_date_time()
}

#[cfg(test)]
mod tests {
    use time::macros::{date, datetime};

    use super::*;

    #[test]
    fn weekends_and_bank_holidays_do_not_count() {
        // Friday 4 December 2026, five working days back: Friday 27 November.
        assert_eq!(
            working_days_before(date!(2026 - 12 - 04), 5),
            date!(2026 - 11 - 27)
        );
        // Over Christmas 2026: 25 (Fri) and 28 (Mon, Boxing Day's substitute) are holidays.
        assert_eq!(
            working_days_before(date!(2026 - 12 - 31), 3),
            date!(2026 - 12 - 24)
        );
        // Over Easter 2026 (Good Friday 3 April, Easter Monday 6 April).
        assert_eq!(
            working_days_before(date!(2026 - 04 - 08), 2),
            date!(2026 - 04 - 02)
        );
        assert!(!is_working_day(date!(2027 - 08 - 30)));
        assert!(is_working_day(date!(2027 - 08 - 31)));
    }

    #[test]
    fn working_days_between_count_the_days_after_receipt() {
        // Friday to Monday: one working day; the same day: none.
        assert_eq!(
            working_days_between(date!(2026 - 12 - 04), date!(2026 - 12 - 07)),
            1
        );
        assert_eq!(
            working_days_between(date!(2026 - 12 - 04), date!(2026 - 12 - 04)),
            0
        );
        // Over Christmas 2026: 24 Dec to 31 Dec is 29, 30, 31 (25 and 28 are holidays).
        assert_eq!(
            working_days_between(date!(2026 - 12 - 24), date!(2026 - 12 - 31)),
            3
        );
        // The wrong way round: none.
        assert_eq!(
            working_days_between(date!(2026 - 12 - 07), date!(2026 - 12 - 04)),
            0
        );
    }

    #[test]
    fn the_cutoff_is_uk_midnight_in_utc() {
        // Winter: UK midnight is 00:00 UTC.
        assert_eq!(
            first_contact_cutoff(datetime!(2026-12-04 10:00 UTC), 5),
            "2026-11-27T00:00:00.000Z"
        );
        // Summer: UK midnight is 23:00 UTC the day before.
        assert_eq!(
            first_contact_cutoff(datetime!(2026-07-10 10:00 UTC), 5),
            "2026-07-02T23:00:00.000Z"
        );
        // Just after UK midnight in summer it is already the next UK day.
        assert_eq!(
            first_contact_cutoff(datetime!(2026-07-09 23:30 UTC), 1),
            "2026-07-08T23:00:00.000Z"
        );
    }

    #[test]
    fn dates_parse_and_bound_a_whole_uk_day() {
        assert_eq!(parse_date("2026-12-04"), Some(date!(2026 - 12 - 04)));
        assert_eq!(parse_date("2026-02-30"), None);
        assert_eq!(parse_date("yesterday"), None);
        assert_eq!(
            day_bounds(date!(2026 - 06 - 01)),
            (
                "2026-05-31T23:00:00.000Z".to_owned(),
                "2026-06-01T23:00:00.000Z".to_owned()
            )
        );
    }

    #[test]
    fn the_shipped_bank_holidays_still_cover_today() {
        let (year, month, day) = LIST_ENDS;
        let ends = Date::from_calendar_date(year, Month::try_from(month).expect("month"), day)
            .expect("date");
        let today = now().date();
        assert!(
            today + time::Duration::days(30) <= ends,
            "extend BANK_HOLIDAYS from https://www.gov.uk/bank-holidays.json"
        );
    }
}
