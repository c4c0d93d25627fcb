//! FHIR dates as ranges of instants.
//!
//! A FHIR `date`, `dateTime` or `instant` has a precision, and means the
//! whole span it names: `2026-11-20` is every instant of that day. Both the
//! index and the search values are turned into an inclusive `[low, high]`
//! range of instants written as fixed-width UTC text
//! (`2026-11-20T00:00:00.000Z`), the same form as `resources.last_updated`,
//! so the database compares them as plain text, in any SQL dialect.

use time::{Date, Duration, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

use crate::fhir::types::fixed_width_utc;

/// The earliest instant the index can hold (an open `Period.start`).
pub const MIN_INSTANT: &str = "0001-01-01T00:00:00.000Z";
/// The latest instant the index can hold (an open `Period.end`).
pub const MAX_INSTANT: &str = "9999-12-31T23:59:59.999Z";

/// An inclusive range of instants, as fixed-width UTC text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateRange {
    /// The first instant of the range.
    pub low: String,
    /// The last instant of the range (inclusive, millisecond precision).
    pub high: String,
}

/// `text` (a FHIR date, dateTime or instant, or a search date without a
/// time zone, which is read as UTC) as the range it covers; `None` when it
/// is not one.
pub fn range_of(text: &str) -> Option<DateRange> {
    let (date_part, time_part) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let (year, month, day) = parse_date(date_part)?;
    let Some(time_part) = time_part else {
        // Date precision: the whole year, month or day, in UTC.
        let first =
            Date::from_calendar_date(year, month.unwrap_or(Month::January), day.unwrap_or(1))
                .ok()?;
        // The first day after the span (`None` past year 9999).
        let after = match (month, day) {
            (_, Some(_)) => first.next_day(),
            (Some(Month::December), None) => {
                Date::from_calendar_date(year + 1, Month::January, 1).ok()
            }
            (Some(m), None) => Date::from_calendar_date(year, m.next(), 1).ok(),
            (None, _) => Date::from_calendar_date(year + 1, Month::January, 1).ok(),
        };
        let low = PrimitiveDateTime::new(first, Time::MIDNIGHT).assume_utc();
        let high = after.and_then(|after| {
            PrimitiveDateTime::new(after, Time::MIDNIGHT)
                .assume_utc()
                .checked_sub(Duration::milliseconds(1))
        });
        return Some(DateRange {
            low: render(Some(low), MIN_INSTANT),
            high: render(high, MAX_INSTANT),
        });
    };
    let date = Date::from_calendar_date(year, month?, day?).ok()?;
    let (clock, offset) = split_zone(time_part)?;
    let (time, span) = parse_time(clock)?;
    let local = PrimitiveDateTime::new(date, time);
    let high = match local.checked_add(span - Duration::milliseconds(1)) {
        Some(high) => to_utc(high, offset),
        None => MAX_INSTANT.to_owned(),
    };
    Some(DateRange {
        low: to_utc(local, offset),
        high,
    })
}

/// A local date-time at `offset` as fixed-width UTC text; shifting past year
/// 1 or 9999 (possible only at the very edges) clamps.
fn to_utc(local: PrimitiveDateTime, offset: UtcOffset) -> String {
    let shift = Duration::seconds(i64::from(offset.whole_seconds()));
    match local.checked_sub(shift) {
        Some(utc) => render(Some(utc.assume_utc()), MIN_INSTANT),
        None if offset.is_positive() => MIN_INSTANT.to_owned(),
        None => MAX_INSTANT.to_owned(),
    }
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`.
fn parse_date(text: &str) -> Option<(i32, Option<Month>, Option<u8>)> {
    let mut parts = text.split('-');
    let year = parts
        .next()
        .filter(|y| y.len() == 4 && all_digits(y))?
        .parse()
        .ok()?;
    let month = match parts.next() {
        None => None,
        Some(m) if m.len() == 2 && all_digits(m) => {
            Some(Month::try_from(m.parse::<u8>().ok()?).ok()?)
        }
        Some(_) => return None,
    };
    let day = match parts.next() {
        None => None,
        Some(d) if d.len() == 2 && all_digits(d) => Some(d.parse().ok()?),
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((year, month, day))
}

/// Splits `10:00:00+01:00` into the clock and the offset (UTC when absent:
/// FHIR leaves a search value without a zone to the server).
fn split_zone(text: &str) -> Option<(&str, UtcOffset)> {
    if let Some(clock) = text.strip_suffix('Z') {
        return Some((clock, UtcOffset::UTC));
    }
    match text.rfind(['+', '-']) {
        Some(at) => {
            let (clock, zone) = text.split_at(at);
            let sign: i8 = if zone.starts_with('-') { -1 } else { 1 };
            let (h, m) = zone[1..].split_once(':')?;
            if h.len() != 2 || m.len() != 2 || !all_digits(h) || !all_digits(m) {
                return None;
            }
            let offset = UtcOffset::from_hms(
                sign * h.parse::<i8>().ok()?,
                sign * m.parse::<i8>().ok()?,
                0,
            )
            .ok()?;
            Some((clock, offset))
        }
        None => Some((text, UtcOffset::UTC)),
    }
}

/// `hh:mm`, `hh:mm:ss` or `hh:mm:ss.fff…`: the time and how long a span its
/// precision covers.
fn parse_time(text: &str) -> Option<(Time, Duration)> {
    let (clock, fraction) = match text.split_once('.') {
        Some((c, f)) if !f.is_empty() && all_digits(f) => (c, Some(f)),
        Some(_) => return None,
        None => (text, None),
    };
    let fields: Vec<&str> = clock.split(':').collect();
    if fields.iter().any(|f| f.len() != 2 || !all_digits(f)) {
        return None;
    }
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u8>().ok());
    let (hour, minute) = (number(0)?, number(1)?);
    match (fields.len(), fraction) {
        (2, None) => Some((Time::from_hms(hour, minute, 0).ok()?, Duration::minutes(1))),
        (3, None) => Some((
            Time::from_hms(hour, minute, number(2)?).ok()?,
            Duration::seconds(1),
        )),
        (3, Some(fraction)) => {
            // Millisecond precision is what Sprig stores; finer digits are dropped.
            let digits = fraction.len().min(3);
            let scaled: u16 = fraction[..digits].parse().ok()?;
            let millis = scaled * 10u16.pow(3 - digits as u32);
            let span = Duration::milliseconds(10i64.pow(3 - digits as u32));
            Some((
                Time::from_hms_milli(hour, minute, number(2)?, millis).ok()?,
                span,
            ))
        }
        _ => None,
    }
}

fn all_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// Fixed-width UTC text (`fallback` when there is no instant); instants
/// before year 1 are clamped so text order stays time order.
fn render(at: Option<OffsetDateTime>, fallback: &str) -> String {
    let Some(at) = at else {
        return fallback.to_owned();
    };
    let t = at.to_offset(UtcOffset::UTC);
    if t.year() < 1 {
        return MIN_INSTANT.to_owned();
    }
    if t.year() > 9999 {
        return MAX_INSTANT.to_owned();
    }
    fixed_width_utc(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> Option<(String, String)> {
        range_of(text).map(|r| (r.low, r.high))
    }

    fn pair(low: &str, high: &str) -> Option<(String, String)> {
        Some((low.to_owned(), high.to_owned()))
    }

    #[test]
    fn each_precision_covers_its_whole_span() {
        assert_eq!(
            range("2026"),
            pair("2026-01-01T00:00:00.000Z", "2026-12-31T23:59:59.999Z")
        );
        assert_eq!(
            range("2024-02"),
            pair("2024-02-01T00:00:00.000Z", "2024-02-29T23:59:59.999Z")
        );
        assert_eq!(
            range("2026-12"),
            pair("2026-12-01T00:00:00.000Z", "2026-12-31T23:59:59.999Z")
        );
        assert_eq!(
            range("2026-11-20"),
            pair("2026-11-20T00:00:00.000Z", "2026-11-20T23:59:59.999Z")
        );
        assert_eq!(
            range("2026-11-20T09:30"),
            pair("2026-11-20T09:30:00.000Z", "2026-11-20T09:30:59.999Z")
        );
        assert_eq!(
            range("2026-11-20T09:30:00+01:00"),
            pair("2026-11-20T08:30:00.000Z", "2026-11-20T08:30:00.999Z")
        );
        assert_eq!(
            range("2026-11-20T09:30:00.5-02:30"),
            pair("2026-11-20T12:00:00.500Z", "2026-11-20T12:00:00.599Z")
        );
        assert_eq!(
            range("2026-11-20T09:30:00.123456Z"),
            pair("2026-11-20T09:30:00.123Z", "2026-11-20T09:30:00.123Z")
        );
        assert_eq!(
            range("9999-12-31T23:59:59-01:00"),
            pair(MAX_INSTANT, MAX_INSTANT)
        );
        // Before year 1 in UTC: clamped to the earliest instant.
        assert_eq!(
            range("0001-01-01T00:00:00+01:00"),
            pair(MIN_INSTANT, MIN_INSTANT)
        );
        assert_eq!(range("9999"), pair("9999-01-01T00:00:00.000Z", MAX_INSTANT));
        assert_eq!(
            range("9999-12-31"),
            pair("9999-12-31T00:00:00.000Z", MAX_INSTANT)
        );
    }

    #[test]
    fn malformed_dates_are_refused() {
        for bad in [
            "",
            "26",
            "2026-1",
            "2026-13",
            "2026-02-30",
            "2026-11-20T",
            "2026-11-20T25:00",
            "2026-11-20T09",
            "2026-11-20T09:30:00.",
            "2026-11-20T09:30:00+1:00",
            "2026-11-20T09:30:00+01",
            "2026-11-20 09:30",
            "2026-11-20-01",
            "yesterday",
            "2026-11T09:00:00Z",
        ] {
            assert_eq!(range(bad), None, "{bad}");
        }
    }
}
