//! Task windows: a stretch of time that opens at the same wall-clock time on
//! chosen days, in an IANA time zone, and stays open for a fixed duration.
//!
//! Timestamps are `i64` milliseconds since the Unix epoch (UTC).
//!
//! A window belongs to the local date it opens on; that date (`YYYY-MM-DD`) is
//! its [`Window::day`] and serves as a session key. The weekday filter and the
//! `start`/`end` dates apply to that opening date only, so a window opening at
//! 22:00 on the last allowed day still runs past midnight into a day that is
//! not allowed.
//!
//! # Daylight saving time
//!
//! - A window whose opening time does not exist that day (02:30 when clocks
//!   jump from 02:00 to 03:00) opens at the first instant after the gap (03:00).
//! - A window whose opening time occurs twice (01:30 when clocks go back from
//!   02:00 to 01:00) opens at the first occurrence.
//! - The duration is elapsed time: an 8-hour window is open for 8 real hours
//!   even across a change, so its closing wall-clock time shifts by the change.
//!
//! A 24-hour window that spans a spring-forward change overlaps the next day's
//! window by the hour the clocks skipped. In that overlap
//! [`Windows::containing`] answers with the window that opened last, so every
//! window is the current one from its own opening on.

use std::fmt;

use jiff::Timestamp;
use jiff::civil::{Date as CivilDate, DateTime, Time};

use super::cron::{self, Zone};

/// Milliseconds in a day of 24 hours.
const DAY_MS: i64 = 24 * 3600 * 1000;

/// Days scanned by [`Windows::next_after`]: enough to pass the next two local
/// dates and then a full week for the weekday filter.
const MAX_DAYS_AHEAD: usize = 16;

/// Longest look-back, in days, of [`Windows::containing`], whatever duration
/// the caller set.
const MAX_DAYS_BACK: i64 = 366;

/// A set of weekdays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Days(u8);

impl Days {
    /// Cron weekday syntax (`1-5`, `MON,WED,FRI`, `0,6`, `*`) or ranges with
    /// names in any case (`Mon-Fri`, `sat-sun`). 0 and 7 are Sunday.
    pub fn parse(text: &str) -> Result<Days, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("days: empty (expected e.g. Mon-Fri, 1-5, MON,WED,FRI or *)".to_string());
        }
        cron::parse_weekdays(trimmed)
            .map(Days)
            .map_err(|e| format!("days `{}`: {}", cron::shown(&e.item), e.why))
    }

    /// Every day of the week.
    pub fn all() -> Days {
        Days(0b111_1111)
    }

    /// Whether `date` falls on one of these weekdays.
    fn includes(self, date: CivilDate) -> bool {
        let weekday = date.weekday().to_sunday_zero_offset();
        u32::try_from(weekday).is_ok_and(|bit| bit < 7 && self.0 & (1 << bit) != 0)
    }
}

/// A wall-clock time of day, to the minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimeOfDay {
    pub hour: u8,
    pub minute: u8,
}

impl TimeOfDay {
    /// Parses `HH:MM` on a 24-hour clock (`09:30`, `9:30`, `23:59`).
    pub fn parse(text: &str) -> Result<TimeOfDay, String> {
        let trimmed = text.trim();
        let bad = |why: &str| {
            format!(
                "time `{}`: {why} (expected HH:MM, 24-hour)",
                cron::shown(trimmed)
            )
        };
        let Some((hour, minute)) = trimmed.split_once(':') else {
            return Err(bad("missing `:`"));
        };
        let (Some(hour), Some(minute)) = (digits(hour, 1..=2), digits(minute, 2..=2)) else {
            return Err(bad("not a time"));
        };
        if hour > 23 {
            return Err(bad("hour must be 0-23"));
        }
        if minute > 59 {
            return Err(bad("minute must be 0-59"));
        }
        match (u8::try_from(hour), u8::try_from(minute)) {
            (Ok(hour), Ok(minute)) => Ok(TimeOfDay { hour, minute }),
            _ => Err(bad("not a time")),
        }
    }

    /// As a calendar time; `None` if the public fields were set out of range.
    fn civil(self) -> Option<Time> {
        let hour = i8::try_from(self.hour).ok()?;
        let minute = i8::try_from(self.minute).ok()?;
        Time::new(hour, minute, 0, 0).ok()
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

/// A calendar date with no time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Date(CivilDate);

impl Date {
    /// Parses `YYYY-MM-DD`, exactly that shape.
    pub fn parse(text: &str) -> Result<Date, String> {
        let trimmed = text.trim();
        let bad = |why: &str| {
            format!(
                "date `{}`: {why} (expected YYYY-MM-DD)",
                cron::shown(trimmed)
            )
        };
        let mut parts = trimmed.split('-');
        let (Some(year), Some(month), Some(day), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not a date"));
        };
        let (Some(year), Some(month), Some(day)) = (
            digits(year, 4..=4).and_then(|y| i16::try_from(y).ok()),
            digits(month, 2..=2),
            digits(day, 2..=2),
        ) else {
            return Err(bad("not a date"));
        };
        if !(1..=12).contains(&month) {
            return Err(bad("month must be 01-12"));
        }
        let (Ok(month), Ok(day)) = (i8::try_from(month), i8::try_from(day)) else {
            return Err(bad("not a date"));
        };
        CivilDate::new(year, month, day)
            .map(Date)
            .map_err(|_| bad("no such day in that month"))
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// ASCII digits only, with a length in `len`; small enough for the callers'
/// fields (at most four digits).
fn digits(text: &str, len: std::ops::RangeInclusive<usize>) -> Option<u16> {
    if !len.contains(&text.len()) || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A recurring window: opens at `window_start` local time on each allowed
/// day, for `duration_ms` of elapsed time.
#[derive(Clone, Debug, PartialEq)]
pub struct Windows {
    pub zone: Zone,
    pub days: Days,
    /// The first date a window may open on (inclusive).
    pub start: Option<Date>,
    /// The last date a window may open on (inclusive).
    pub end: Option<Date>,
    pub window_start: TimeOfDay,
    /// 1 ms to 24 h; checked by the caller. Longer windows are found by
    /// [`Windows::containing`] up to a year back.
    pub duration_ms: i64,
}

/// One window: the local date it opened on (`YYYY-MM-DD`, the session key)
/// and its absolute bounds, `open_ms <= t < close_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    pub day: String,
    pub open_ms: i64,
    pub close_ms: i64,
}

impl Windows {
    /// The window containing `at_ms` (`open_ms <= at_ms < close_ms`), if any.
    ///
    /// Looks at the windows of the nearby opening days, newest first, so when
    /// two windows overlap the one that opened last is returned.
    pub fn containing(&self, at_ms: i64) -> Option<Window> {
        let today = self.local_date(at_ms)?;
        let days_back = self.duration_ms.div_euclid(DAY_MS).clamp(0, MAX_DAYS_BACK) + 2;
        // A repeated hour around midnight can put `at_ms` inside tomorrow's
        // window while the wall clock still shows today.
        let mut day = today.tomorrow().unwrap_or(today);
        for _ in 0..=days_back + 1 {
            if let Some(window) = self.window_opening_on(day)
                && window.open_ms <= at_ms
                && at_ms < window.close_ms
            {
                return Some(window);
            }
            day = day.yesterday().ok()?;
        }
        None
    }

    /// The first window that opens strictly after `after_ms`.
    pub fn next_after(&self, after_ms: i64) -> Option<Window> {
        let today = self.local_date(after_ms)?;
        // Yesterday's window can still open after `after_ms` during a
        // repeated hour around midnight; opening times only grow with the date.
        let mut day = today.yesterday().unwrap_or(today);
        if let Some(start) = self.start {
            day = day.max(start.0);
        }
        for _ in 0..MAX_DAYS_AHEAD {
            if self.end.is_some_and(|end| day > end.0) {
                return None;
            }
            if let Some(window) = self.window_opening_on(day)
                && window.open_ms > after_ms
            {
                return Some(window);
            }
            day = day.tomorrow().ok()?;
        }
        None
    }

    /// The window that opens on local date `day`, if that day is allowed.
    fn window_opening_on(&self, day: CivilDate) -> Option<Window> {
        if !self.opens_on(day) {
            return None;
        }
        let local = cron::local_secs(DateTime::from_parts(day, self.window_start.civil()?))?;
        let open_ms = cron::first_reaching(self.zone.rules(), local)?.checked_mul(1000)?;
        let close_ms = open_ms.checked_add(self.duration_ms)?;
        Some(Window {
            day: day.to_string(),
            open_ms,
            close_ms,
        })
    }

    /// The weekday filter and date range, applied to the opening date.
    fn opens_on(&self, day: CivilDate) -> bool {
        self.days.includes(day)
            && self.start.is_none_or(|start| day >= start.0)
            && self.end.is_none_or(|end| day <= end.0)
    }

    /// The zone's calendar date at an instant.
    fn local_date(&self, at_ms: i64) -> Option<CivilDate> {
        let at = Timestamp::from_millisecond(at_ms).ok()?;
        Some(self.zone.rules().to_datetime(at).date())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: i64 = 3600 * 1000;

    fn zone(name: &str) -> Zone {
        Zone::parse(name).unwrap_or_else(|e| panic!("{e}"))
    }

    fn days(text: &str) -> Days {
        Days::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn date(text: &str) -> Date {
        Date::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn time(text: &str) -> TimeOfDay {
        TimeOfDay::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Milliseconds for an RFC 3339 instant such as `2025-03-09T01:30:00-05:00`.
    fn ms(instant: &str) -> i64 {
        instant
            .parse::<Timestamp>()
            .unwrap_or_else(|e| panic!("{instant}: {e}"))
            .as_millisecond()
    }

    /// An instant as wall-clock time with offset in `zone`.
    fn local(at_ms: i64, zone: &Zone) -> String {
        match Timestamp::from_millisecond(at_ms) {
            Ok(ts) => ts
                .to_zoned(zone.rules().clone())
                .strftime("%Y-%m-%dT%H:%M:%S%:z")
                .to_string(),
            Err(_) => format!("out of range {at_ms}"),
        }
    }

    fn windows(zone_name: &str, start: &str, hours: i64) -> Windows {
        Windows {
            zone: zone(zone_name),
            days: Days::all(),
            start: None,
            end: None,
            window_start: time(start),
            duration_ms: hours * HOUR_MS,
        }
    }

    /// A window as (day, local open, local close) for readable asserts.
    fn show(window: Option<Window>, zone: &Zone) -> Option<(String, String, String)> {
        window.map(|w| (w.day, local(w.open_ms, zone), local(w.close_ms, zone)))
    }

    fn shown(day: &str, open: &str, close: &str) -> Option<(String, String, String)> {
        Some((day.to_string(), open.to_string(), close.to_string()))
    }

    // ---- parsing ----

    #[test]
    fn days_parse_cron_and_name_forms() {
        let weekdays = Days(0b011_1110);
        assert_eq!(days("1-5"), weekdays);
        assert_eq!(days("Mon-Fri"), weekdays);
        assert_eq!(days("mon-fri"), weekdays);
        assert_eq!(days("MON,TUE,WED,THU,FRI"), weekdays);
        assert_eq!(days("MON,WED,FRI"), Days(0b010_1010));
        assert_eq!(days("0,6"), Days(0b100_0001));
        assert_eq!(days("sat-sun"), Days(0b100_0001));
        assert_eq!(days("6-7"), Days(0b100_0001));
        assert_eq!(days("7"), Days(0b000_0001));
        assert_eq!(days("*"), Days::all());
        assert_eq!(days(" Mon - Wed , Fri "), Days(0b010_1110));
    }

    #[test]
    fn days_errors_are_one_line() {
        assert_eq!(
            Days::parse("Mon-Fox").unwrap_err(),
            "days `Mon-Fox`: unknown value `Fox` (expected 0-7 or SUN-SAT)"
        );
        assert_eq!(Days::parse("8").unwrap_err(), "days `8`: out of range 0-7");
        assert_eq!(
            Days::parse("Fri-Mon").unwrap_err(),
            "days `Fri-Mon`: range 5-1 runs backwards"
        );
        assert_eq!(
            Days::parse("").unwrap_err(),
            "days: empty (expected e.g. Mon-Fri, 1-5, MON,WED,FRI or *)"
        );
        for bad in [
            "Monday", "Mon,,Tue", "\n", "1-", "-", "*/0", "🙂", "Mon Tue", "1 2",
        ] {
            let err = Days::parse(bad).expect_err(bad);
            assert!(!err.contains('\n'), "{err:?}");
        }
    }

    #[test]
    fn time_of_day_parses_24_hour_clock() {
        assert_eq!(
            time("09:30"),
            TimeOfDay {
                hour: 9,
                minute: 30
            }
        );
        assert_eq!(
            time("9:30"),
            TimeOfDay {
                hour: 9,
                minute: 30
            }
        );
        assert_eq!(time("00:00"), TimeOfDay { hour: 0, minute: 0 });
        assert_eq!(
            time("23:59"),
            TimeOfDay {
                hour: 23,
                minute: 59
            }
        );
        assert_eq!(time("23:59").to_string(), "23:59");
        assert_eq!(time("7:05").to_string(), "07:05");
    }

    #[test]
    fn time_of_day_errors() {
        assert_eq!(
            TimeOfDay::parse("24:00").unwrap_err(),
            "time `24:00`: hour must be 0-23 (expected HH:MM, 24-hour)"
        );
        assert_eq!(
            TimeOfDay::parse("12:60").unwrap_err(),
            "time `12:60`: minute must be 0-59 (expected HH:MM, 24-hour)"
        );
        assert_eq!(
            TimeOfDay::parse("noon").unwrap_err(),
            "time `noon`: missing `:` (expected HH:MM, 24-hour)"
        );
        for bad in [
            "",
            ":",
            "12:",
            ":30",
            "12:5",
            "123:00",
            "12:345",
            "+1:00",
            "-1:00",
            "1:2:3",
            "١٢:٣٠",
            "12:3\n0",
            "12h30",
            "99999999999:00",
        ] {
            let err = TimeOfDay::parse(bad).expect_err(bad);
            assert!(!err.contains('\n'), "{err:?}");
        }
    }

    #[test]
    fn date_parses_iso_dates() {
        assert_eq!(date("2025-03-09").to_string(), "2025-03-09");
        assert_eq!(date(" 2024-02-29 ").to_string(), "2024-02-29");
        assert!(date("2025-01-01") < date("2025-01-02"));
    }

    #[test]
    fn date_errors() {
        assert_eq!(
            Date::parse("2025-02-30").unwrap_err(),
            "date `2025-02-30`: no such day in that month (expected YYYY-MM-DD)"
        );
        assert_eq!(
            Date::parse("2025-13-01").unwrap_err(),
            "date `2025-13-01`: month must be 01-12 (expected YYYY-MM-DD)"
        );
        for bad in [
            "",
            "2025",
            "2025-1-01",
            "2025-01-1",
            "25-01-01",
            "2025/01/01",
            "2025-01-01T00:00",
            "2025-01-01-01",
            "+2025-01-01",
            "2025-00-10",
            "2025-01-00",
            "２０２５-01-01",
            "2025-01-\n1",
            "--",
            "-2025-01-01",
        ] {
            let err = Date::parse(bad).expect_err(bad);
            assert!(err.starts_with("date `"), "{err}");
            assert!(!err.contains('\n'), "{err:?}");
        }
    }

    // ---- plain windows ----

    #[test]
    fn containing_respects_exact_bounds() {
        let w = windows("UTC", "09:00", 8);
        let open = ms("2025-06-02T09:00:00Z");
        let close = ms("2025-06-02T17:00:00Z");
        let expected = Some(Window {
            day: "2025-06-02".to_string(),
            open_ms: open,
            close_ms: close,
        });
        assert_eq!(w.containing(open), expected);
        assert_eq!(w.containing(close - 1), expected);
        assert_eq!(w.containing(close), None);
        assert_eq!(w.containing(open - 1), None);
    }

    #[test]
    fn next_after_is_strict() {
        let w = windows("UTC", "09:00", 8);
        let open = ms("2025-06-02T09:00:00Z");
        assert_eq!(w.next_after(open - 1).map(|w| w.open_ms), Some(open));
        assert_eq!(
            w.next_after(open).map(|w| w.day),
            Some("2025-06-03".to_string())
        );
        assert_eq!(
            w.next_after(ms("2025-06-02T12:00:00Z")).map(|w| w.day),
            Some("2025-06-03".to_string())
        );
    }

    #[test]
    fn window_crossing_midnight_belongs_to_opening_day() {
        let mut w = windows("Europe/Paris", "22:00", 4);
        w.days = days("Mon"); // 2025-06-02 is a Monday.
        let paris = w.zone.clone();
        let monday = shown(
            "2025-06-02",
            "2025-06-02T22:00:00+02:00",
            "2025-06-03T02:00:00+02:00",
        );
        assert_eq!(
            show(w.containing(ms("2025-06-02T22:00:00+02:00")), &paris),
            monday
        );
        assert_eq!(
            show(w.containing(ms("2025-06-03T01:59:59.999+02:00")), &paris),
            monday
        );
        assert_eq!(w.containing(ms("2025-06-03T02:00:00+02:00")), None);
        assert_eq!(w.containing(ms("2025-06-02T21:59:59.999+02:00")), None);
        // Tuesday is not allowed, so there is no Tuesday-night window.
        assert_eq!(w.containing(ms("2025-06-03T23:00:00+02:00")), None);
        assert_eq!(
            show(w.next_after(ms("2025-06-02T23:00:00+02:00")), &paris),
            shown(
                "2025-06-09",
                "2025-06-09T22:00:00+02:00",
                "2025-06-10T02:00:00+02:00"
            )
        );
    }

    #[test]
    fn weekday_filter_skips_weekend() {
        let mut w = windows("America/New_York", "09:00", 8);
        w.days = days("Mon-Fri");
        let ny = w.zone.clone();
        // 2025-06-06 is a Friday.
        assert_eq!(
            show(w.next_after(ms("2025-06-06T18:00:00-04:00")), &ny),
            shown(
                "2025-06-09",
                "2025-06-09T09:00:00-04:00",
                "2025-06-09T17:00:00-04:00"
            )
        );
        assert_eq!(w.containing(ms("2025-06-07T10:00:00-04:00")), None);
        let mut opened = Vec::new();
        let mut at = ms("2025-06-01T00:00:00-04:00");
        for _ in 0..10 {
            let next = w.next_after(at).expect("a window");
            opened.push(next.day);
            at = next.open_ms;
        }
        assert_eq!(
            opened,
            [
                "2025-06-02",
                "2025-06-03",
                "2025-06-04",
                "2025-06-05",
                "2025-06-06",
                "2025-06-09",
                "2025-06-10",
                "2025-06-11",
                "2025-06-12",
                "2025-06-13",
            ]
        );
    }

    #[test]
    fn date_range_limits_opening_days() {
        let mut w = windows("UTC", "22:00", 4);
        w.start = Some(date("2025-06-10"));
        w.end = Some(date("2025-06-12"));
        assert_eq!(
            w.next_after(ms("2025-01-01T00:00:00Z")).map(|w| w.day),
            Some("2025-06-10".to_string())
        );
        assert_eq!(
            w.next_after(ms("2025-06-11T23:00:00Z")).map(|w| w.day),
            Some("2025-06-12".to_string())
        );
        assert_eq!(w.next_after(ms("2025-06-12T22:00:00Z")), None);
        assert_eq!(w.next_after(ms("2030-01-01T00:00:00Z")), None);
        // The last window still runs past midnight into the 13th.
        assert_eq!(
            w.containing(ms("2025-06-13T01:00:00Z")).map(|w| w.day),
            Some("2025-06-12".to_string())
        );
        assert_eq!(w.containing(ms("2025-06-13T22:30:00Z")), None);
        assert_eq!(w.containing(ms("2025-06-09T22:30:00Z")), None);
        assert_eq!(
            w.containing(ms("2025-06-10T22:30:00Z")).map(|w| w.day),
            Some("2025-06-10".to_string())
        );
    }

    // ---- daylight saving ----

    #[test]
    fn opening_in_gap_opens_after_gap() {
        // Paris, 2025-03-30: 02:00 CET jumps to 03:00 CEST.
        let w = windows("Europe/Paris", "02:30", 1);
        let paris = w.zone.clone();
        let gap_day = shown(
            "2025-03-30",
            "2025-03-30T03:00:00+02:00",
            "2025-03-30T04:00:00+02:00",
        );
        assert_eq!(
            show(w.next_after(ms("2025-03-29T12:00:00+01:00")), &paris),
            gap_day
        );
        assert_eq!(
            show(w.containing(ms("2025-03-30T03:30:00+02:00")), &paris),
            gap_day
        );
        assert_eq!(w.containing(ms("2025-03-30T01:59:00+01:00")), None);
        assert_eq!(
            show(w.next_after(ms("2025-03-30T03:00:00+02:00")), &paris),
            shown(
                "2025-03-31",
                "2025-03-31T02:30:00+02:00",
                "2025-03-31T03:30:00+02:00"
            )
        );
    }

    #[test]
    fn opening_at_midnight_gap() {
        // Havana, 2025-03-09: 00:00 CST jumps to 01:00 CDT.
        let w = windows("America/Havana", "00:00", 2);
        let havana = w.zone.clone();
        assert_eq!(
            show(w.next_after(ms("2025-03-08T12:00:00-05:00")), &havana),
            shown(
                "2025-03-09",
                "2025-03-09T01:00:00-04:00",
                "2025-03-09T03:00:00-04:00"
            )
        );
    }

    #[test]
    fn opening_in_repeated_hour_uses_first_occurrence() {
        // New York, 2025-11-02: 02:00 EDT goes back to 01:00 EST.
        let w = windows("America/New_York", "01:30", 1);
        let ny = w.zone.clone();
        let expected = shown(
            "2025-11-02",
            "2025-11-02T01:30:00-04:00",
            "2025-11-02T01:30:00-05:00",
        );
        assert_eq!(
            show(w.next_after(ms("2025-11-01T12:00:00-04:00")), &ny),
            expected
        );
        // Open through the first pass and into the second: one real hour.
        assert_eq!(
            show(w.containing(ms("2025-11-02T01:45:00-04:00")), &ny),
            expected
        );
        assert_eq!(
            show(w.containing(ms("2025-11-02T01:15:00-05:00")), &ny),
            expected
        );
        assert_eq!(w.containing(ms("2025-11-02T01:30:00-05:00")), None);
        assert_eq!(w.containing(ms("2025-11-02T01:45:00-05:00")), None);
        // Asked during the second pass, the next window is tomorrow's.
        assert_eq!(
            w.next_after(ms("2025-11-02T01:20:00-05:00")).map(|w| w.day),
            Some("2025-11-03".to_string())
        );
    }

    #[test]
    fn opening_in_repeated_midnight() {
        // Havana, 2025-11-02: 01:00 CDT goes back to 00:00 CST, so the
        // second 00:30 of the 2nd lies inside the window of the 2nd.
        let w = windows("America/Havana", "00:00", 1);
        let havana = w.zone.clone();
        let expected = shown(
            "2025-11-02",
            "2025-11-02T00:00:00-04:00",
            "2025-11-02T00:00:00-05:00",
        );
        assert_eq!(
            show(w.containing(ms("2025-11-02T00:30:00-04:00")), &havana),
            expected
        );
        assert_eq!(w.containing(ms("2025-11-02T00:30:00-05:00")), None);
        assert_eq!(
            w.next_after(ms("2025-11-02T00:30:00-05:00")).map(|w| w.day),
            Some("2025-11-03".to_string())
        );
    }

    #[test]
    fn duration_is_elapsed_time_across_changes() {
        let w = windows("Europe/Paris", "22:00", 8);
        let paris = w.zone.clone();
        // Spring forward during the night: 8 real hours end at 07:00 local.
        assert_eq!(
            show(w.containing(ms("2025-03-30T06:30:00+02:00")), &paris),
            shown(
                "2025-03-29",
                "2025-03-29T22:00:00+01:00",
                "2025-03-30T07:00:00+02:00"
            )
        );
        // Fall back during the night: 8 real hours end at 05:00 local.
        assert_eq!(
            show(w.containing(ms("2025-10-26T04:30:00+01:00")), &paris),
            shown(
                "2025-10-25",
                "2025-10-25T22:00:00+02:00",
                "2025-10-26T05:00:00+01:00"
            )
        );
        assert_eq!(w.containing(ms("2025-10-26T05:00:00+01:00")), None);
    }

    #[test]
    fn overlapping_full_day_windows_prefer_newest() {
        // 24h windows from midnight. Sunday 2025-03-30 in Paris is 23 hours
        // long, so Sunday's window runs an hour into Monday's.
        let w = windows("Europe/Paris", "00:00", 24);
        let sunday_close = ms("2025-03-31T01:00:00+02:00");
        let monday_open = ms("2025-03-31T00:00:00+02:00");
        assert_eq!(
            w.containing(monday_open - 1).map(|w| w.day),
            Some("2025-03-30".to_string())
        );
        let monday = w.containing(monday_open).expect("Monday's window");
        assert_eq!(monday.day, "2025-03-31");
        assert_eq!(monday.open_ms, monday_open);
        assert_eq!(
            w.containing(sunday_close - 1).map(|w| w.day),
            Some("2025-03-31".to_string())
        );
        let sunday = w.next_after(monday_open - 25 * HOUR_MS).expect("Sunday");
        assert_eq!(
            (sunday.day.as_str(), sunday.close_ms),
            ("2025-03-30", sunday_close)
        );
    }

    #[test]
    fn a_year_of_windows_opens_at_the_same_local_time() {
        let mut w = windows("Europe/Paris", "09:15", 2);
        w.days = days("Tue,Thu");
        let paris = w.zone.clone();
        let mut at = ms("2025-01-01T00:00:00Z");
        for _ in 0..104 {
            let next = w.next_after(at).expect("a window");
            let opened = local(next.open_ms, &paris);
            assert!(opened.starts_with(&next.day), "{opened} vs {}", next.day);
            assert_eq!(&opened[10..19], "T09:15:00");
            assert_eq!(next.close_ms - next.open_ms, 2 * HOUR_MS);
            assert_eq!(w.containing(next.open_ms), Some(next.clone()));
            assert!(next.open_ms > at);
            at = next.open_ms;
        }
        assert_eq!(local(at, &paris), "2025-12-30T09:15:00+01:00");
    }

    #[test]
    fn containing_agrees_with_enumerated_windows() {
        let zones = [
            "Europe/Paris",
            "America/New_York",
            "America/Havana",
            "Australia/Lord_Howe",
        ];
        let starts = [
            "00:00", "00:30", "01:30", "02:00", "02:30", "22:00", "23:45",
        ];
        let durations = [1, 4, 8, 24];
        let day_sets = ["*", "Mon-Fri", "Sun", "Sat"];
        // The weekends of the 2025 changes in these zones.
        let periods = [
            ("2025-03-07T00:00:00Z", "2025-03-11T00:00:00Z"),
            ("2025-03-28T00:00:00Z", "2025-04-01T00:00:00Z"),
            ("2025-04-04T00:00:00Z", "2025-04-08T00:00:00Z"),
            ("2025-10-03T00:00:00Z", "2025-10-07T00:00:00Z"),
            ("2025-10-24T00:00:00Z", "2025-10-28T00:00:00Z"),
            ("2025-10-31T00:00:00Z", "2025-11-04T00:00:00Z"),
        ];
        let step = 30 * 60 * 1000;
        let mut checked = 0;
        for zone_name in zones {
            for start in starts {
                for hours in durations {
                    for day_set in day_sets {
                        let mut w = windows(zone_name, start, hours);
                        w.days = days(day_set);
                        for (from, to) in periods {
                            let (from, to) = (ms(from), ms(to));
                            // Every window that could touch the period, in order.
                            let mut all = Vec::new();
                            let mut at = from - 3 * DAY_MS;
                            while let Some(next) = w.next_after(at).filter(|n| n.open_ms < to) {
                                at = next.open_ms;
                                all.push(next);
                            }
                            for pair in all.windows(2) {
                                assert!(pair[0].open_ms < pair[1].open_ms);
                                assert!(pair[0].day < pair[1].day);
                            }
                            let mut at = from;
                            while at < to {
                                let expected = all
                                    .iter()
                                    .rev()
                                    .find(|w| w.open_ms <= at && at < w.close_ms)
                                    .cloned();
                                assert_eq!(w.containing(at), expected, "{w:?} at {at}");
                                let first_after = all.iter().find(|w| w.open_ms > at).cloned();
                                if first_after.is_some() {
                                    assert_eq!(w.next_after(at), first_after, "{w:?} after {at}");
                                }
                                checked += 1;
                                at += step;
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 50_000, "{checked}");
    }

    // ---- robustness ----

    #[test]
    fn odd_inputs_do_not_panic() {
        let mut w = windows("Europe/Paris", "09:00", 8);
        let instants = [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX];
        for duration in [i64::MIN, -1, 0, 1, DAY_MS, 3 * DAY_MS, i64::MAX] {
            w.duration_ms = duration;
            for at in instants {
                let _ = w.containing(at);
                let _ = w.next_after(at);
            }
        }
        w.duration_ms = 0;
        assert_eq!(w.containing(ms("2025-06-02T09:00:00+02:00")), None);
        w.window_start = TimeOfDay {
            hour: 99,
            minute: 99,
        };
        w.duration_ms = HOUR_MS;
        for at in instants {
            assert_eq!(w.containing(at), None);
            assert_eq!(w.next_after(at), None);
        }
        w.window_start = time("09:00");
        w.start = Some(date("2025-06-12"));
        w.end = Some(date("2025-06-10"));
        assert_eq!(w.next_after(0), None);
        assert_eq!(w.containing(ms("2025-06-11T10:00:00+02:00")), None);
    }

    #[test]
    fn longer_than_a_day_still_found() {
        // Three windows contain this instant; the newest is returned.
        let mut w = windows("UTC", "09:00", 72);
        assert_eq!(
            w.containing(ms("2025-06-05T08:00:00Z")).map(|w| w.day),
            Some("2025-06-04".to_string())
        );
        w.days = days("Mon"); // 2025-06-02 is a Monday.
        assert_eq!(
            w.containing(ms("2025-06-05T08:59:59Z")).map(|w| w.day),
            Some("2025-06-02".to_string())
        );
        assert_eq!(w.containing(ms("2025-06-05T09:00:00Z")), None);
    }
}
