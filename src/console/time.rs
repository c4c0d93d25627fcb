//! Instants on screen in UK local time (`Europe/London`), stored as UTC.
//!
//! The UK rule, by hand rather than a time-zone database: British Summer Time (UTC+1)
//! runs from 01:00 UTC on the last Sunday in March to 01:00 UTC on the last Sunday in
//! October (Summer Time Order 2002, unchanged since); GMT otherwise.

use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset, Weekday};

/// 01:00 UTC on the last Sunday of `month` in `year`.
fn last_sunday_1am(year: i32, month: Month) -> Option<OffsetDateTime> {
    let next_first = match month {
        Month::December => Date::from_calendar_date(year + 1, Month::January, 1).ok()?,
        m => Date::from_calendar_date(year, m.next(), 1).ok()?,
    };
    let mut day = next_first.previous_day()?;
    while day.weekday() != Weekday::Sunday {
        day = day.previous_day()?;
    }
    Some(PrimitiveDateTime::new(day, Time::from_hms(1, 0, 0).ok()?).assume_utc())
}

/// The UK's offset from UTC at `instant`.
fn uk_offset(instant: OffsetDateTime) -> UtcOffset {
    let year = instant.year();
    let summer = match (
        last_sunday_1am(year, Month::March),
        last_sunday_1am(year, Month::October),
    ) {
        (Some(start), Some(end)) => instant >= start && instant < end,
        _ => false,
    };
    if summer {
        UtcOffset::from_hms(1, 0, 0).unwrap_or(UtcOffset::UTC)
    } else {
        UtcOffset::UTC
    }
}

fn parse(instant: &str) -> Option<OffsetDateTime> {
    let parsed = OffsetDateTime::parse(instant, &Rfc3339).ok()?;
    Some(parsed.to_offset(uk_offset(parsed)))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `4 Dec 2026, 20:01` in UK time; the text as given if it is not an instant.
pub fn date_time(instant: &str) -> String {
    match parse(instant) {
        Some(t) => format!(
            "{} {} {}, {:02}:{:02}",
            t.day(),
            MONTHS[usize::from(u8::from(t.month())) - 1],
            t.year(),
            t.hour(),
            t.minute()
        ),
        None => instant.to_owned(),
    }
}

/// `4 Dec 2026` in UK time (a FHIR date is shown as its own day).
pub fn date(value: &str) -> String {
    if let Ok(d) = Date::parse(
        value.get(..10).unwrap_or(value),
        time::macros::format_description!("[year]-[month]-[day]"),
    ) && value.len() == 10
    {
        return format!(
            "{} {} {}",
            d.day(),
            MONTHS[usize::from(u8::from(d.month())) - 1],
            d.year()
        );
    }
    match parse(value) {
        Some(t) => format!(
            "{} {} {}",
            t.day(),
            MONTHS[usize::from(u8::from(t.month())) - 1],
            t.year()
        ),
        None => value.to_owned(),
    }
}

/// Whole years from a birth date (`YYYY-MM-DD`) to today in the UK.
pub fn age(birth_date: &str) -> Option<i32> {
    let born = Date::parse(
        birth_date.get(..10)?,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .ok()?;
    let now = OffsetDateTime::now_utc();
    let today = now.to_offset(uk_offset(now)).date();
    let mut years = today.year() - born.year();
    if (today.month(), today.day()) < (born.month(), born.day()) {
        years -= 1;
    }
    Some(years)
}

/// The UK date at `instant`.
pub fn london_date(instant: OffsetDateTime) -> Date {
    instant.to_offset(uk_offset(instant)).date()
}

/// The FHIR instant (UTC) at which `date` begins in the UK. The offset is the one in
/// force at that UTC midnight: the clocks change at 01:00 UTC, never near midnight.
pub fn london_midnight_utc(date: Date) -> String {
    let utc_midnight = PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_utc();
    let local = PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_offset(uk_offset(utc_midnight));
    crate::fhir::Instant::parse(&local.format(&Rfc3339).unwrap_or_default())
        .map(crate::fhir::Instant::to_fhir)
        .unwrap_or_else(|_| format!("{date}T00:00:00.000Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summer_time_starts_and_ends_at_one_utc_on_the_last_sundays() {
        // 2026: BST from 29 March 01:00 UTC to 25 October 01:00 UTC.
        assert_eq!(date_time("2026-03-29T00:59:00Z"), "29 Mar 2026, 00:59");
        assert_eq!(date_time("2026-03-29T01:00:00Z"), "29 Mar 2026, 02:00");
        assert_eq!(date_time("2026-10-25T00:59:00Z"), "25 Oct 2026, 01:59");
        assert_eq!(date_time("2026-10-25T01:00:00Z"), "25 Oct 2026, 01:00");
        assert_eq!(date_time("2026-12-04T20:01:49.123Z"), "4 Dec 2026, 20:01");
        assert_eq!(date_time("2026-07-01T23:30:00Z"), "2 Jul 2026, 00:30");
        assert_eq!(date("1984-02-29"), "29 Feb 1984");
        assert_eq!(date_time("not a time"), "not a time");
    }
}
