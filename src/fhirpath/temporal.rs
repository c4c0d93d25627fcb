//! FHIRPath Date, DateTime and Time: partial values that remember their precision.
//!
//! Comparison follows the spec: values are compared component by component down to the
//! coarser precision; when they agree that far and the precisions differ, the answer is
//! unknown (`None`, an empty result). Seconds and milliseconds count as one precision.

use std::cmp::Ordering;
use std::fmt;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

/// Precision in FHIRPath's own numbering for `precision()`: digits of the canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Precision {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Date {
    pub year: i32,
    pub month: Option<u8>,
    pub day: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Time {
    pub hour: u8,
    pub minute: Option<u8>,
    pub second: Option<u8>,
    /// Milliseconds, present when the literal had a fraction.
    pub millis: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DateTime {
    pub date: Date,
    pub time: Option<Time>,
    /// Offset from UTC in minutes; `None` when no timezone was given.
    pub tz: Option<i16>,
}

fn digits(s: &str, n: usize) -> Option<u32> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

pub(crate) fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 (proleptic Gregorian), after Howard Hinnant's algorithm.
fn days_from_civil(y: i32, m: u8, d: u8) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    ((y + i64::from(m <= 2)) as i32, m, d)
}

impl Date {
    pub fn parse(s: &str) -> Option<Date> {
        let mut parts = s.split('-');
        let year = digits(parts.next()?, 4)? as i32;
        let month = match parts.next() {
            Some(m) => Some(digits(m, 2).filter(|m| (1..=12).contains(m))? as u8),
            None => None,
        };
        let day = match parts.next() {
            Some(d) => {
                let d = digits(d, 2)? as u8;
                (d >= 1 && d <= days_in_month(year, month?)).then_some(d)?;
                Some(d)
            }
            None => None,
        };
        parts.next().is_none().then_some(Date { year, month, day })
    }

    pub fn precision(&self) -> Precision {
        match (self.month, self.day) {
            (None, _) => Precision::Year,
            (Some(_), None) => Precision::Month,
            _ => Precision::Day,
        }
    }

    fn parts(&self) -> Vec<i64> {
        let mut v = vec![i64::from(self.year)];
        v.extend(self.month.map(i64::from));
        v.extend(self.day.map(i64::from));
        v
    }

    /// Adds whole calendar months, clamping the day to the month's length.
    pub fn add_months(&self, months: i64) -> Option<Date> {
        let total = i64::from(self.year) * 12 + i64::from(self.month.unwrap_or(1)) - 1 + months;
        let year = i32::try_from(total.div_euclid(12)).ok()?;
        let month = (total.rem_euclid(12) + 1) as u8;
        (1..=9999).contains(&year).then_some(())?;
        Some(Date {
            year,
            month: self.month.map(|_| month),
            day: self.day.map(|d| d.min(days_in_month(year, month))),
        })
    }

    pub fn add_days(&self, days: i64) -> Option<Date> {
        let (Some(m), Some(d)) = (self.month, self.day) else {
            return Some(*self);
        };
        let (year, month, day) = civil_from_days(days_from_civil(self.year, m, d) + days);
        (1..=9999).contains(&year).then_some(Date {
            year,
            month: Some(month),
            day: Some(day),
        })
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}", self.year)?;
        if let Some(m) = self.month {
            write!(f, "-{m:02}")?;
        }
        if let Some(d) = self.day {
            write!(f, "-{d:02}")?;
        }
        Ok(())
    }
}

impl Time {
    pub fn parse(s: &str) -> Option<Time> {
        let mut parts = s.split(':');
        let hour = digits(parts.next()?, 2).filter(|h| *h < 24)? as u8;
        let minute = match parts.next() {
            Some(m) => Some(digits(m, 2).filter(|m| *m < 60)? as u8),
            None => None,
        };
        let (second, millis) = match parts.next() {
            Some(s) => {
                let (sec, frac) = match s.split_once('.') {
                    Some((sec, frac)) => (sec, Some(frac)),
                    None => (s, None),
                };
                let second = digits(sec, 2).filter(|s| *s < 60)? as u8;
                let millis = match frac {
                    Some(frac) if !frac.is_empty() && frac.bytes().all(|b| b.is_ascii_digit()) => {
                        let mut ms = frac.chars().take(3).collect::<String>();
                        while ms.len() < 3 {
                            ms.push('0');
                        }
                        Some(ms.parse().ok()?)
                    }
                    Some(_) => return None,
                    None => None,
                };
                (Some(second), millis)
            }
            None => (None, None),
        };
        parts.next().is_none().then_some(Time {
            hour,
            minute,
            second,
            millis,
        })
    }

    pub fn precision(&self) -> Precision {
        match (self.minute, self.second, self.millis) {
            (None, _, _) => Precision::Hour,
            (Some(_), None, _) => Precision::Minute,
            (_, Some(_), None) => Precision::Second,
            _ => Precision::Millisecond,
        }
    }

    /// Components for comparison; seconds carry milliseconds (one precision).
    fn parts(&self) -> Vec<i64> {
        let mut v = vec![i64::from(self.hour)];
        v.extend(self.minute.map(i64::from));
        v.extend(
            self.second
                .map(|s| i64::from(s) * 1000 + i64::from(self.millis.unwrap_or(0))),
        );
        v
    }

    fn millis_of_day(&self) -> i64 {
        ((i64::from(self.hour) * 60 + i64::from(self.minute.unwrap_or(0))) * 60
            + i64::from(self.second.unwrap_or(0)))
            * 1000
            + i64::from(self.millis.unwrap_or(0))
    }

    fn with_millis_of_day(&self, ms: i64) -> Time {
        let ms = ms.rem_euclid(86_400_000);
        Time {
            hour: (ms / 3_600_000) as u8,
            minute: self.minute.map(|_| ((ms / 60_000) % 60) as u8),
            second: self.second.map(|_| ((ms / 1000) % 60) as u8),
            millis: self.millis.map(|_| (ms % 1000) as u16),
        }
    }

    pub fn add_millis(&self, ms: i64) -> Time {
        self.with_millis_of_day(self.millis_of_day() + ms)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}", self.hour)?;
        if let Some(m) = self.minute {
            write!(f, ":{m:02}")?;
        }
        if let Some(s) = self.second {
            write!(f, ":{s:02}")?;
        }
        if let Some(ms) = self.millis {
            write!(f, ".{ms:03}")?;
        }
        Ok(())
    }
}

fn parse_tz(s: &str) -> Option<i16> {
    if s == "Z" {
        return Some(0);
    }
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = s[1..].split_once(':')?;
    let h = digits(h, 2).filter(|h| *h <= 14)? as i16;
    let m = digits(m, 2).filter(|m| *m < 60)? as i16;
    Some(sign * (h * 60 + m))
}

impl DateTime {
    /// Parses `2014-01-02T10:30:00.000+10:00`, `2014-01-02T` or `2014T`.
    pub fn parse(s: &str) -> Option<DateTime> {
        let (date, rest) = match s.split_once('T') {
            Some((d, r)) => (d, r),
            None => (s, ""),
        };
        let date = Date::parse(date)?;
        if rest.is_empty() {
            return Some(DateTime {
                date,
                time: None,
                tz: None,
            });
        }
        let (time, tz) = if let Some(t) = rest.strip_suffix('Z') {
            (t, Some(0))
        } else if let Some(i) = rest.rfind(['+', '-']) {
            (&rest[..i], Some(parse_tz(&rest[i..])?))
        } else {
            (rest, None)
        };
        Some(DateTime {
            date,
            time: Some(Time::parse(time)?),
            tz,
        })
    }

    /// Parses the FHIR `dateTime`/`instant` JSON forms (time without `T`-only partials).
    pub fn parse_fhir(s: &str) -> Option<DateTime> {
        if s.ends_with('T') {
            return None;
        }
        DateTime::parse(s)
    }

    pub fn precision(&self) -> Precision {
        match &self.time {
            Some(t) => t.precision(),
            None => self.date.precision(),
        }
    }

    pub fn from_date(date: Date) -> DateTime {
        DateTime {
            date,
            time: None,
            tz: None,
        }
    }

    fn parts(&self) -> Vec<i64> {
        let mut v = self.date.parts();
        if let Some(t) = &self.time {
            v.extend(t.parts());
        }
        v
    }

    /// This instant moved to UTC; only meaningful with a full date and a time.
    fn to_utc(self) -> DateTime {
        match (self.tz, self.time, self.date.month, self.date.day) {
            (Some(tz), Some(time), Some(_), Some(_)) if tz != 0 => {
                // Only at the edge of year 9999 does the move fail; the
                // instant then compares in its own zone.
                let Some(mut moved) = self.add_millis(-i64::from(tz) * 60_000) else {
                    return self;
                };
                moved.tz = Some(0);
                moved.time = moved.time.map(|t| Time {
                    minute: t.minute.or(time.minute.map(|_| 0)),
                    ..t
                });
                moved
            }
            _ => self,
        }
    }

    /// This instant `ms` milliseconds later; `None` past the years FHIR can write.
    pub fn add_millis(&self, ms: i64) -> Option<DateTime> {
        let Some(time) = self.time else {
            return Some(*self);
        };
        let total = time.millis_of_day().checked_add(ms)?;
        let days = total.div_euclid(86_400_000);
        Some(DateTime {
            date: self.date.add_days(days)?,
            time: Some(time.with_millis_of_day(total)),
            tz: self.tz,
        })
    }
}

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.date)?;
        if let Some(t) = &self.time {
            write!(f, "T{t}")?;
            match self.tz {
                Some(0) => write!(f, "Z")?,
                Some(tz) => {
                    let sign = if tz < 0 { '-' } else { '+' };
                    write!(f, "{sign}{:02}:{:02}", tz.abs() / 60, tz.abs() % 60)?;
                }
                None => {}
            }
        } else if self.date.day.is_some() && self.tz.is_some() {
            write!(f, "T")?;
        }
        Ok(())
    }
}

/// Compares component lists; `None` when they agree as far as both go but differ in length.
fn compare_parts(a: &[i64], b: &[i64]) -> Option<Ordering> {
    for (x, y) in a.iter().zip(b) {
        match x.cmp(y) {
            Ordering::Equal => {}
            other => return Some(other),
        }
    }
    (a.len() == b.len()).then_some(Ordering::Equal)
}

pub(crate) fn compare_dates(a: &Date, b: &Date) -> Option<Ordering> {
    compare_parts(&a.parts(), &b.parts())
}

pub(crate) fn compare_times(a: &Time, b: &Time) -> Option<Ordering> {
    compare_parts(&a.parts(), &b.parts())
}

pub(crate) fn compare_datetimes(a: &DateTime, b: &DateTime) -> Option<Ordering> {
    let (a, b) = match (a.tz, b.tz, a.time, b.time) {
        // Timezones matter only once there is a time of day.
        (Some(_), Some(_), Some(_), Some(_)) => (a.to_utc(), b.to_utc()),
        (Some(_), None, Some(_), Some(_)) | (None, Some(_), Some(_), Some(_)) => return None,
        _ => (*a, *b),
    };
    compare_parts(&a.parts(), &b.parts())
}

/// A calendar duration unit for date arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CalendarUnit {
    Year,
    Month,
    Week,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

impl CalendarUnit {
    /// Calendar words and the UCUM codes FHIRPath allows in date arithmetic (not `a`
    /// and `mo`: UCUM's year and month are not calendar years and months).
    pub fn from_unit(unit: &str) -> Option<CalendarUnit> {
        Self::from_word(unit).or(match unit {
            "wk" => Some(CalendarUnit::Week),
            "d" => Some(CalendarUnit::Day),
            "h" => Some(CalendarUnit::Hour),
            "min" => Some(CalendarUnit::Minute),
            "s" => Some(CalendarUnit::Second),
            "ms" => Some(CalendarUnit::Millisecond),
            _ => None,
        })
    }

    /// A calendar duration word (`year`, `weeks`, `millisecond`…), the only unquoted units
    /// a FHIRPath quantity may have.
    pub fn from_word(word: &str) -> Option<CalendarUnit> {
        Some(match word {
            "year" | "years" => CalendarUnit::Year,
            "month" | "months" => CalendarUnit::Month,
            "week" | "weeks" => CalendarUnit::Week,
            "day" | "days" => CalendarUnit::Day,
            "hour" | "hours" => CalendarUnit::Hour,
            "minute" | "minutes" => CalendarUnit::Minute,
            "second" | "seconds" => CalendarUnit::Second,
            "millisecond" | "milliseconds" => CalendarUnit::Millisecond,
            _ => return None,
        })
    }

    /// The unit compared with UCUM quantities: years and months have no exact UCUM equal
    /// (spec), so they stay themselves.
    pub fn comparable_unit(self) -> &'static str {
        match self {
            CalendarUnit::Year => "year",
            CalendarUnit::Month => "month",
            CalendarUnit::Week => "wk",
            CalendarUnit::Day => "d",
            CalendarUnit::Hour => "h",
            CalendarUnit::Minute => "min",
            CalendarUnit::Second => "s",
            CalendarUnit::Millisecond => "ms",
        }
    }

    fn millis(self) -> i64 {
        match self {
            CalendarUnit::Week => 7 * 86_400_000,
            CalendarUnit::Day => 86_400_000,
            CalendarUnit::Hour => 3_600_000,
            CalendarUnit::Minute => 60_000,
            CalendarUnit::Second => 1000,
            _ => 1,
        }
    }
}

/// `date + amount unit`; fractional amounts of calendar units are truncated (spec).
pub(crate) fn add_to_date(d: &Date, amount: Decimal, unit: CalendarUnit) -> Option<Date> {
    // Far beyond year 9999 in any unit: refuse before any arithmetic can overflow.
    if amount.abs() > Decimal::from(1_000_000_000) {
        return None;
    }
    let whole = amount.trunc().to_i64()?;
    match unit {
        CalendarUnit::Year => d.add_months(whole.checked_mul(12)?),
        CalendarUnit::Month => d.add_months(whole),
        CalendarUnit::Week => d.add_days(whole.checked_mul(7)?),
        CalendarUnit::Day => d.add_days(whole),
        // A date has no time of day: whole days of the amount count, the rest is dropped.
        _ => d.add_days(amount.checked_mul(Decimal::from(unit.millis()))?.to_i64()? / 86_400_000),
    }
}

pub(crate) fn add_to_datetime(
    dt: &DateTime,
    amount: Decimal,
    unit: CalendarUnit,
) -> Option<DateTime> {
    // Far beyond year 9999 in any unit: refuse before any arithmetic can overflow.
    if amount.abs() > Decimal::from(1_000_000_000) {
        return None;
    }
    let whole = amount.trunc().to_i64()?;
    match unit {
        CalendarUnit::Year | CalendarUnit::Month | CalendarUnit::Week | CalendarUnit::Day
            if dt.time.is_none() =>
        {
            Some(DateTime {
                date: add_to_date(&dt.date, amount, unit)?,
                ..*dt
            })
        }
        CalendarUnit::Year => Some(DateTime {
            date: dt.date.add_months(whole.checked_mul(12)?)?,
            ..*dt
        }),
        CalendarUnit::Month => Some(DateTime {
            date: dt.date.add_months(whole)?,
            ..*dt
        }),
        CalendarUnit::Millisecond => dt.add_millis(whole),
        _ if dt.time.is_none() => Some(DateTime {
            date: add_to_date(&dt.date, amount, unit)?,
            ..*dt
        }),
        _ => dt.add_millis(whole.checked_mul(unit.millis())?),
    }
}

pub(crate) fn add_to_time(t: &Time, amount: Decimal, unit: CalendarUnit) -> Option<Time> {
    // Far beyond year 9999 in any unit: refuse before any arithmetic can overflow.
    if amount.abs() > Decimal::from(1_000_000_000) {
        return None;
    }
    let whole = amount.trunc().to_i64()?;
    match unit {
        CalendarUnit::Hour | CalendarUnit::Minute | CalendarUnit::Second => {
            Some(t.add_millis(whole.checked_mul(unit.millis())?))
        }
        CalendarUnit::Millisecond => Some(t.add_millis(whole)),
        _ => None,
    }
}

impl DateTime {
    /// The current instant in UTC, to the millisecond.
    pub fn now() -> DateTime {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
        let (year, month, day) = civil_from_days(ms.div_euclid(86_400_000));
        let date = Date {
            year,
            month: Some(month),
            day: Some(day),
        };
        let time = Time {
            hour: 0,
            minute: Some(0),
            second: Some(0),
            millis: Some(0),
        }
        .add_millis(ms.rem_euclid(86_400_000));
        DateTime {
            date,
            time: Some(time),
            tz: Some(0),
        }
    }
}
