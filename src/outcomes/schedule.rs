//! Follow-ups as a pure function of dates: given a measure's schedule, the baseline date and
//! the dates measurements were recorded, what is done, upcoming, due soon, due, overdue or
//! missed on a given day. The caller injects "today" (a UK calendar date, [`uk_date`]), so
//! tests fix the clock and nothing here reads one.
//!
//! A follow-up's date is the baseline plus its months on the calendar (the 31st of a month
//! becomes the last day of a shorter month; 29 February plus a year is 28 February); its
//! window is `window_weeks` either side. The state on `today`:
//! done (a measurement inside the window), upcoming, due soon (within `due_soon_days` of the
//! window opening), due (window open, on or before the date), overdue (after the date, window
//! still open), missed (window closed without a measurement).

use serde::Serialize;
use time::{Date, Duration, Month, OffsetDateTime, UtcOffset, Weekday};

use super::definition::Schedule;

/// Where one follow-up stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Measured inside its window.
    Done,
    /// Not yet near.
    Upcoming,
    /// Its window opens within `due_soon_days`.
    DueSoon,
    /// Window open, on or before its date.
    Due,
    /// Past its date, window still open.
    Overdue,
    /// Window closed, never measured.
    Missed,
}

impl State {
    /// The state's code, as in the API (`due-soon`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Done => "done",
            State::Upcoming => "upcoming",
            State::DueSoon => "due-soon",
            State::Due => "due",
            State::Overdue => "overdue",
            State::Missed => "missed",
        }
    }
}

/// One follow-up's window and state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FollowUp {
    /// The follow-up's key (`6m`).
    pub key: String,
    /// Its label.
    pub label: String,
    /// Its date: the baseline plus its months.
    pub target: Date,
    /// First day it may be recorded.
    pub opens: Date,
    /// Last day it may be recorded.
    pub closes: Date,
    /// Its state on the day asked about.
    pub state: State,
    /// The day it was measured, when done (the first measurement inside the window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured_on: Option<Date>,
    /// The index of that measurement in the slice given.
    #[serde(skip)]
    pub measurement: Option<usize>,
}

/// `date` plus `months` calendar months, the day clamped to the month's length.
pub fn add_months(date: Date, months: u32) -> Date {
    let zero_based = date.year() as i64 * 12 + (date.month() as i64 - 1) + i64::from(months);
    let year = (zero_based.div_euclid(12)) as i32;
    let month = Month::try_from((zero_based.rem_euclid(12) + 1) as u8).unwrap_or(Month::December);
    let day = date.day().min(month.length(year));
    Date::from_calendar_date(year, month, day).unwrap_or(date)
}

/// The last Sunday of `month` in `year`.
fn last_sunday(year: i32, month: Month) -> Option<Date> {
    let last = Date::from_calendar_date(year, month, month.length(year)).ok()?;
    let back = last.weekday().number_days_from_sunday();
    last.checked_sub(Duration::days(i64::from(back)))
}

/// The UK civil date at `instant`. British Summer Time (UTC+1) runs from 01:00 UTC on the
/// last Sunday of March to 01:00 UTC on the last Sunday of October (the Summer Time Order
/// 2002); otherwise the UK is on UTC. A follow-up is due by the date people in the UK see,
/// so an instant just after midnight in summer is already the next day.
pub fn uk_date(instant: OffsetDateTime) -> Date {
    let utc = instant.to_offset(UtcOffset::UTC);
    let year = utc.year();
    let starts = last_sunday(year, Month::March).map(|d| d.with_hms(1, 0, 0));
    let ends = last_sunday(year, Month::October).map(|d| d.with_hms(1, 0, 0));
    let summer = match (starts, ends) {
        (Some(Ok(s)), Some(Ok(e))) => {
            let at = utc.date().with_time(utc.time());
            at >= s && at < e
        }
        _ => false,
    };
    if summer {
        (utc + Duration::hours(1)).date()
    } else {
        utc.date()
    }
}

/// The Monday-to-Sunday week holding `day`: its first and last days.
pub fn week_of(day: Date) -> (Date, Date) {
    let back = i64::from(day.weekday().number_days_from_monday());
    let monday = day.checked_sub(Duration::days(back)).unwrap_or(day);
    let sunday = monday.checked_add(Duration::days(6)).unwrap_or(day);
    debug_assert_eq!(monday.weekday(), Weekday::Monday);
    (monday, sunday)
}

/// The follow-ups of `schedule` after a baseline on `baseline`, on `today`. `measured` are
/// the days this measure was recorded after the baseline (any order).
pub fn follow_ups(
    schedule: &Schedule,
    baseline: Date,
    measured: &[Date],
    today: Date,
) -> Vec<FollowUp> {
    let window = Duration::weeks(i64::from(schedule.window_weeks));
    let soon = Duration::days(i64::from(schedule.due_soon_days));
    schedule
        .follow_ups
        .iter()
        .map(|f| {
            let target = add_months(baseline, f.months);
            let opens = target.checked_sub(window).unwrap_or(target);
            let closes = target.checked_add(window).unwrap_or(target);
            let hit = measured
                .iter()
                .enumerate()
                .filter(|(_, d)| (opens..=closes).contains(*d))
                .min_by_key(|(_, d)| **d);
            let state = match hit {
                Some((_, on)) if *on <= today => State::Done,
                _ if today > closes => State::Missed,
                _ if today > target => State::Overdue,
                _ if today >= opens => State::Due,
                _ if opens.checked_sub(soon).is_some_and(|s| today >= s) => State::DueSoon,
                _ => State::Upcoming,
            };
            FollowUp {
                key: f.key.clone(),
                label: f.label.clone(),
                target,
                opens,
                closes,
                state,
                measured_on: hit.filter(|_| state == State::Done).map(|(_, d)| *d),
                measurement: hit.filter(|_| state == State::Done).map(|(i, _)| i),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    use crate::outcomes::definition::FollowUpDef;

    fn schedule() -> Schedule {
        Schedule {
            follow_ups: vec![
                FollowUpDef {
                    key: "6m".into(),
                    label: "6 months".into(),
                    months: 6,
                },
                FollowUpDef {
                    key: "12m".into(),
                    label: "12 months".into(),
                    months: 12,
                },
            ],
            window_weeks: 4,
            due_soon_days: 14,
        }
    }

    #[test]
    fn months_are_added_on_the_calendar() {
        assert_eq!(add_months(date!(2026 - 08 - 31), 6), date!(2027 - 02 - 28));
        assert_eq!(
            add_months(date!(2027 - 08 - 31), 6),
            date!(2028 - 02 - 29),
            "leap year"
        );
        assert_eq!(add_months(date!(2028 - 02 - 29), 12), date!(2029 - 02 - 28));
        assert_eq!(add_months(date!(2028 - 02 - 29), 48), date!(2032 - 02 - 29));
        assert_eq!(add_months(date!(2026 - 07 - 31), 6), date!(2027 - 01 - 31));
        assert_eq!(
            add_months(date!(2026 - 12 - 15), 1),
            date!(2027 - 01 - 15),
            "year end"
        );
        assert_eq!(add_months(date!(2026 - 03 - 31), 6), date!(2026 - 09 - 30));
    }

    #[test]
    fn uk_dates_follow_summer_time() {
        // 2026: BST from 29 March 01:00 UTC to 25 October 01:00 UTC.
        assert_eq!(
            uk_date(datetime!(2026-03-28 23:30 UTC)),
            date!(2026 - 03 - 28),
            "GMT"
        );
        assert_eq!(
            uk_date(datetime!(2026-03-29 00:59 UTC)),
            date!(2026 - 03 - 29)
        );
        assert_eq!(
            uk_date(datetime!(2026-06-30 23:30 UTC)),
            date!(2026 - 07 - 01),
            "BST"
        );
        assert_eq!(
            uk_date(datetime!(2026-10-24 23:30 UTC)),
            date!(2026 - 10 - 25),
            "still BST"
        );
        assert_eq!(
            uk_date(datetime!(2026-10-25 00:59 UTC)),
            date!(2026 - 10 - 25)
        );
        assert_eq!(
            uk_date(datetime!(2026-10-25 23:30 UTC)),
            date!(2026 - 10 - 25),
            "GMT again"
        );
        assert_eq!(
            uk_date(datetime!(2026-12-31 23:59 UTC)),
            date!(2026 - 12 - 31)
        );
        // An instant with another offset is the same instant.
        assert_eq!(
            uk_date(datetime!(2026-07-01 01:30 +02:00)),
            date!(2026 - 07 - 01)
        );
        assert_eq!(
            uk_date(datetime!(2026-07-01 00:30 +02:00)),
            date!(2026 - 06 - 30)
        );
    }

    #[test]
    fn states_across_a_window() {
        // Baseline 31 August 2027: 6 months is 29 February 2028 (a leap day), window
        // 1 February to 28 March 2028 (which crosses no clock change; the 12-month one
        // crosses October's).
        let baseline = date!(2027 - 08 - 31);
        let state = |today: Date, measured: &[Date]| {
            follow_ups(&schedule(), baseline, measured, today)[0].state
        };
        let six = &follow_ups(&schedule(), baseline, &[], date!(2027 - 09 - 01))[0];
        assert_eq!(
            (six.target, six.opens, six.closes),
            (
                date!(2028 - 02 - 29),
                date!(2028 - 02 - 01),
                date!(2028 - 03 - 28)
            )
        );
        assert_eq!(state(date!(2028 - 01 - 17), &[]), State::Upcoming);
        assert_eq!(
            state(date!(2028 - 01 - 18), &[]),
            State::DueSoon,
            "14 days before opening"
        );
        assert_eq!(state(date!(2028 - 01 - 31), &[]), State::DueSoon);
        assert_eq!(state(date!(2028 - 02 - 01), &[]), State::Due);
        assert_eq!(
            state(date!(2028 - 02 - 29), &[]),
            State::Due,
            "the leap day itself"
        );
        assert_eq!(state(date!(2028 - 03 - 01), &[]), State::Overdue);
        assert_eq!(
            state(date!(2028 - 03 - 28), &[]),
            State::Overdue,
            "the window's last day"
        );
        assert_eq!(state(date!(2028 - 03 - 29), &[]), State::Missed);
        assert_eq!(
            state(date!(2028 - 03 - 29), &[date!(2028 - 03 - 28)]),
            State::Done
        );
        assert_eq!(
            state(date!(2028 - 04 - 01), &[date!(2028 - 01 - 31)]),
            State::Missed,
            "before the window"
        );
        let twelve = &follow_ups(
            &schedule(),
            baseline,
            &[date!(2028 - 09 - 01)],
            date!(2028 - 09 - 02),
        )[1];
        assert_eq!(twelve.target, date!(2028 - 08 - 31));
        assert_eq!(
            (twelve.state, twelve.measured_on),
            (State::Done, Some(date!(2028 - 09 - 01)))
        );
    }

    #[test]
    fn a_measurement_late_on_a_summer_night_is_the_next_uk_day() {
        // Window of the 6-month follow-up after 1 October 2026 closes 29 April 2027 (BST).
        let baseline = date!(2026 - 10 - 01);
        let f = &follow_ups(&schedule(), baseline, &[], date!(2027 - 04 - 29))[0];
        assert_eq!(f.closes, date!(2027 - 04 - 29));
        let late = uk_date(datetime!(2027-04-29 23:30 UTC));
        assert_eq!(late, date!(2027 - 04 - 30));
        assert_eq!(
            follow_ups(&schedule(), baseline, &[late], late)[0].state,
            State::Missed
        );
        let in_time = uk_date(datetime!(2027-04-29 22:30 UTC));
        assert_eq!(
            follow_ups(&schedule(), baseline, &[in_time], in_time)[0].state,
            State::Done
        );
    }

    #[test]
    fn weeks_run_monday_to_sunday_across_month_and_year_ends() {
        assert_eq!(
            week_of(date!(2026 - 12 - 31)),
            (date!(2026 - 12 - 28), date!(2027 - 01 - 03))
        );
        assert_eq!(
            week_of(date!(2028 - 02 - 28)),
            (date!(2028 - 02 - 28), date!(2028 - 03 - 05))
        );
        assert_eq!(
            week_of(date!(2026 - 03 - 29)),
            (date!(2026 - 03 - 23), date!(2026 - 03 - 29))
        );
    }
}
