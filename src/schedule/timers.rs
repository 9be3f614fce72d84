//! When time-driven items fire: the heartbeat, jobs and tasks, as a state
//! machine over explicit instants (ms since the epoch). Nothing here reads
//! a clock or sleeps, so the rules are tested over simulated days.
//!
//! - **Cron items** (heartbeat, scheduled jobs): the next fire is computed
//!   from the last *scheduled* fire, never from now, so a late wake or a
//!   long run does not drift the schedule. A fire whose previous run is
//!   still going is skipped and counted. Fires missed by more than
//!   [`LATE`] (cairn was down, the machine slept) are skipped, or with
//!   `catch-up: once` one of them fires.
//! - **Run-once jobs** (no schedule) fire once when first registered.
//! - **Task windows**: one fire per window (its session is the window's
//!   day), then with `loop` again `loop-gap` after each run ends, until
//!   the reply contains `done-when` or the window closes.

use std::time::Duration;

use super::calendar::{Window, Windows};
use super::cron::{Cron, Zone};
use super::defs::CatchUp;

/// A fire later than this after its instant counts as missed.
pub const LATE: i64 = 60_000;

/// What is due at an instant.
#[derive(Clone, Debug, PartialEq)]
pub enum Due {
    /// Dispatch now. `scheduled` is the instant it was for; `session` the
    /// session it belongs to, if the item has one (a task's day).
    Fire {
        scheduled: i64,
        session: Option<String>,
    },
    /// Not dispatched, and why (counted).
    Skip { scheduled: i64, why: &'static str },
}

#[derive(Clone, Debug)]
enum Rule {
    Cron {
        cron: Cron,
        zone: Zone,
        catch_up: CatchUp,
    },
    Once,
    Windows {
        windows: Windows,
        repeat: bool,
        gap_ms: i64,
        done_when: Option<String>,
    },
}

/// One item's timing state.
#[derive(Clone, Debug)]
pub struct Timer {
    rule: Rule,
    /// The last instant handled (fired or skipped).
    last: Option<i64>,
    next: Option<i64>,
    running: bool,
    /// Tasks: the day of the window that fired, and whether its loop is
    /// over for that day.
    day: Option<String>,
    done: bool,
}

/// What is known of an item's past, read from the store at registration.
#[derive(Clone, Debug, Default)]
pub struct Past {
    /// The scheduled instant of its last dispatch.
    pub last_scheduled: Option<i64>,
    /// Its last dispatch's session, end (ms) and reply, if it ended.
    pub last_session: Option<String>,
    pub last_end: Option<i64>,
    pub last_reply: Option<String>,
    pub running: bool,
    /// Whether it was ever dispatched.
    pub ever: bool,
}

impl Timer {
    pub fn cron(cron: Cron, zone: Zone, catch_up: CatchUp, past: &Past, now: i64) -> Timer {
        let next = match past.last_scheduled {
            Some(last) => cron.next_after(last, &zone),
            None => cron.next_after(now, &zone),
        };
        Timer {
            rule: Rule::Cron {
                cron,
                zone,
                catch_up,
            },
            last: past.last_scheduled,
            next,
            running: past.running,
            day: None,
            done: false,
        }
    }

    pub fn once(past: &Past, now: i64) -> Timer {
        Timer {
            rule: Rule::Once,
            last: past.last_scheduled,
            next: (!past.ever).then_some(now),
            running: past.running,
            day: None,
            done: false,
        }
    }

    pub fn windows(
        windows: Windows,
        repeat: bool,
        gap: Duration,
        done_when: Option<String>,
        past: &Past,
        now: i64,
    ) -> Timer {
        let mut t = Timer {
            rule: Rule::Windows {
                windows,
                repeat,
                gap_ms: gap.as_millis() as i64,
                done_when,
            },
            last: past.last_scheduled,
            next: None,
            running: past.running,
            day: None,
            done: false,
        };
        // The window that fired last, and whether its loop is over.
        if let (Some(session), Rule::Windows { done_when, .. }) = (&past.last_session, &t.rule) {
            if let Some(day) = session.rsplit(':').next() {
                t.day = Some(day.to_string());
            }
            t.done = match (done_when, &past.last_reply) {
                (Some(phrase), Some(reply)) => contains(reply, phrase),
                _ => false,
            };
        }
        t.next = t.next_window_fire(now, past.last_end);
        t
    }

    /// The next instant something may be due; None: never again.
    pub fn next(&self) -> Option<i64> {
        self.next
    }

    pub fn running(&self) -> bool {
        self.running
    }

    /// The session of a task's window: one per day.
    pub fn day_session(name: &str, day: &str) -> String {
        format!("task:{name}:{day}")
    }

    /// What is due at `now` (call when `now >= next()`). `name` names a
    /// task's session.
    pub fn due(&mut self, now: i64, name: &str) -> Vec<Due> {
        let Some(next) = self.next.filter(|n| *n <= now) else {
            return Vec::new();
        };
        match self.rule.clone() {
            Rule::Once => {
                self.next = None;
                self.last = Some(next);
                vec![self.fire(next, None)]
            }
            Rule::Cron {
                cron,
                zone,
                catch_up,
            } => self.due_cron(&cron, &zone, catch_up, next, now),
            Rule::Windows { windows, .. } => {
                let out = match windows.containing(now) {
                    Some(w) if !(self.day.as_deref() == Some(&w.day) && self.done) => {
                        let session = Self::day_session(name, &w.day);
                        let first = self.day.as_deref() != Some(&w.day);
                        self.day = Some(w.day.clone());
                        self.done = false;
                        self.last = Some(next);
                        if self.running && !first {
                            // A loop fires again when the run ends.
                            Vec::new()
                        } else {
                            vec![self.fire(next, Some(session))]
                        }
                    }
                    _ => Vec::new(),
                };
                // Until the run ends, only the next window can be due.
                self.next = self.after_window(now, &windows);
                out
            }
        }
    }

    fn fire(&mut self, scheduled: i64, session: Option<String>) -> Due {
        if self.running {
            return Due::Skip {
                scheduled,
                why: "its previous run is still going",
            };
        }
        self.running = true;
        Due::Fire { scheduled, session }
    }

    fn due_cron(
        &mut self,
        cron: &Cron,
        zone: &Zone,
        catch_up: CatchUp,
        first: i64,
        now: i64,
    ) -> Vec<Due> {
        // Every scheduled instant up to now; a bounded count of them
        // (a year of minutes is past any outage worth listing).
        let mut instants = vec![first];
        let mut at = first;
        while let Some(n) = cron.next_after(at, zone).filter(|n| *n <= now) {
            at = n;
            if instants.len() < 1024 {
                instants.push(n);
            } else {
                *instants.last_mut().expect("not empty") = n;
            }
        }
        let latest = *instants.last().expect("not empty");
        let mut out: Vec<Due> = instants[..instants.len() - 1]
            .iter()
            .map(|&s| Due::Skip {
                scheduled: s,
                why: "missed while cairn was not running",
            })
            .collect();
        if now - latest <= LATE || catch_up == CatchUp::Once {
            out.push(self.fire(latest, None));
        } else {
            out.push(Due::Skip {
                scheduled: latest,
                why: "missed while cairn was not running",
            });
        }
        self.last = Some(latest);
        self.next = cron.next_after(latest, zone);
        out
    }

    /// A fire [`Timer::due`] gave was not dispatched after all.
    pub fn release(&mut self) {
        self.running = false;
    }

    /// A run it started ended at `now` with this reply.
    pub fn ended(&mut self, now: i64, reply: &str) {
        self.running = false;
        if let Rule::Windows {
            windows,
            repeat,
            gap_ms,
            done_when,
        } = &self.rule
        {
            if let Some(phrase) = done_when
                && contains(reply, phrase)
            {
                self.done = true;
            }
            if !*repeat {
                self.done = true;
            }
            let windows = windows.clone();
            let gap = *gap_ms;
            self.next = match windows.containing(now + gap) {
                Some(w) if !self.done && self.day.as_deref() == Some(&w.day) => Some(now + gap),
                _ => self.after_window(now, &windows),
            };
        }
    }

    /// For a task after a restart: fire in the current window unless its
    /// day already fired (and, for a loop, finished); else the next window.
    fn next_window_fire(&self, now: i64, last_end: Option<i64>) -> Option<i64> {
        let Rule::Windows {
            windows, gap_ms, ..
        } = &self.rule
        else {
            return None;
        };
        match windows.containing(now) {
            Some(w) if self.day.as_deref() != Some(&w.day) => Some(now),
            Some(w) if !self.done && !self.running && self.repeat() => {
                let at = last_end.map_or(now, |e| (e + gap_ms).max(now));
                if at < w.close_ms {
                    Some(at)
                } else {
                    self.after_window(now, windows)
                }
            }
            _ => self.after_window(now, windows),
        }
    }

    fn repeat(&self) -> bool {
        matches!(self.rule, Rule::Windows { repeat: true, .. })
    }

    fn after_window(&self, now: i64, windows: &Windows) -> Option<i64> {
        windows.next_after(now).map(|w: Window| w.open_ms)
    }
}

/// Fan-in progress of continuations with several patterns: which were met
/// in a session, since when. Partial progress older than the
/// continuation's TTL starts over.
#[derive(Default)]
pub struct FanIn {
    /// (agent, continuation, session) → (first met, indexes met).
    partial: std::collections::HashMap<
        (String, String, String),
        (i64, std::collections::BTreeSet<usize>),
    >,
}

impl FanIn {
    /// Records that patterns `met` (indexes among `total`) were met at
    /// `now`; true when all are met, and the progress is cleared.
    pub fn met(
        &mut self,
        key: (String, String, String),
        met: &[usize],
        total: usize,
        now: i64,
        ttl_ms: i64,
    ) -> bool {
        if total <= 1 {
            return !met.is_empty();
        }
        let entry = self.partial.entry(key.clone()).or_default();
        if entry.1.is_empty() || now - entry.0 > ttl_ms {
            *entry = (now, Default::default());
        }
        entry.1.extend(met);
        if entry.1.len() < total {
            return false;
        }
        self.partial.remove(&key);
        true
    }
}

/// Whether `reply` contains `phrase`, ignoring case.
pub fn contains(reply: &str, phrase: &str) -> bool {
    reply.to_lowercase().contains(&phrase.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::calendar::{Date, Days, TimeOfDay};
    use jiff::Timestamp;

    fn ms(instant: &str) -> i64 {
        instant.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn local(at: i64, zone: &Zone) -> String {
        Timestamp::from_millisecond(at)
            .unwrap()
            .to_zoned(zone.rules().clone())
            .strftime("%Y-%m-%dT%H:%M%:z")
            .to_string()
    }

    /// Runs a timer over simulated time from `from` to `to`: wakes exactly
    /// when it asks (plus `late` ms), each fire's run lasting `run` ms.
    /// Returns the fired instants and the skip count.
    fn simulate(t: &mut Timer, to: i64, late: i64, run: i64) -> (Vec<i64>, usize) {
        let (mut fired, mut skipped) = (Vec::new(), 0);
        let mut running_until: Option<i64> = None;
        loop {
            let next = match (t.next(), running_until) {
                (Some(n), Some(r)) => n.min(r),
                (Some(n), None) => n,
                (None, Some(r)) => r,
                (None, None) => break,
            };
            if next > to {
                break;
            }
            if running_until.is_some_and(|r| r <= next) {
                t.ended(running_until.unwrap(), "");
                running_until = None;
                continue;
            }
            let now = next + late;
            for d in t.due(now, "x") {
                match d {
                    Due::Fire { scheduled, .. } => {
                        fired.push(scheduled);
                        running_until = Some(now + run);
                    }
                    Due::Skip { .. } => skipped += 1,
                }
            }
        }
        (fired, skipped)
    }

    #[test]
    fn cron_is_drift_free_over_simulated_days_despite_late_wakes_and_long_runs() {
        let paris = Zone::parse("Europe/Paris").unwrap();
        let cron = Cron::parse("0 9 * * *").unwrap();
        let start = ms("2026-01-01T00:00:00Z");
        let mut t = Timer::cron(cron, paris.clone(), CatchUp::None, &Past::default(), start);
        // Every wake 7 s late, every run 3 hours: 400 days, across both DST
        // changes, always 09:00 local.
        let (fired, skipped) = simulate(&mut t, start + 400 * 86_400_000, 7_000, 3 * 3_600_000);
        assert_eq!(fired.len(), 400);
        assert_eq!(skipped, 0);
        assert!(fired.iter().all(|f| local(*f, &paris).contains("T09:00")));
    }

    #[test]
    fn a_fire_while_the_previous_run_goes_is_skipped_and_counted() {
        let cron = Cron::parse("*/10 * * * *").unwrap();
        let start = ms("2026-03-01T00:00:00Z");
        let mut t = Timer::cron(cron, Zone::utc(), CatchUp::None, &Past::default(), start);
        // Runs of 25 minutes: of each 3 fires, 2 are skipped.
        let (fired, skipped) = simulate(&mut t, start + 3_600_000, 0, 25 * 60_000);
        assert_eq!(fired.len(), 2, "{fired:?}");
        assert_eq!(skipped, 4);
    }

    #[test]
    fn fires_across_dst_changes_follow_the_wall_clock() {
        let ny = Zone::parse("America/New_York").unwrap();
        // 02:30 does not exist on 2026-03-08: it fires once, at 03:00.
        let cron = Cron::parse("30 2 * * *").unwrap();
        let start = ms("2026-03-06T12:00:00Z");
        let mut t = Timer::cron(cron, ny.clone(), CatchUp::None, &Past::default(), start);
        let (fired, _) = simulate(&mut t, start + 3 * 86_400_000, 0, 1000);
        let shown: Vec<String> = fired.iter().map(|f| local(*f, &ny)).collect();
        assert_eq!(
            shown,
            [
                "2026-03-07T02:30-05:00",
                "2026-03-08T03:00-04:00",
                "2026-03-09T02:30-04:00"
            ]
        );
        // 01:30 happens twice on 2026-11-01: it fires once.
        let cron = Cron::parse("30 1 * * *").unwrap();
        let start = ms("2026-10-31T12:00:00Z");
        let mut t = Timer::cron(cron, ny.clone(), CatchUp::None, &Past::default(), start);
        let (fired, _) = simulate(&mut t, start + 2 * 86_400_000, 0, 1000);
        let shown: Vec<String> = fired.iter().map(|f| local(*f, &ny)).collect();
        assert_eq!(shown, ["2026-11-01T01:30-04:00", "2026-11-02T01:30-05:00"]);
    }

    #[test]
    fn fires_missed_while_down_are_skipped_or_caught_up_once() {
        let cron = Cron::parse("0 * * * *").unwrap();
        let last = ms("2026-05-01T10:00:00Z");
        let past = Past {
            last_scheduled: Some(last),
            ever: true,
            ..Past::default()
        };
        // Down for five hours and a half.
        let now = ms("2026-05-01T15:30:00Z");
        let mut none = Timer::cron(cron.clone(), Zone::utc(), CatchUp::None, &past, now);
        let due = none.due(now, "x");
        assert_eq!(due.len(), 5);
        assert!(due.iter().all(|d| matches!(d, Due::Skip { .. })));
        assert_eq!(none.next(), Some(ms("2026-05-01T16:00:00Z")));

        let mut once = Timer::cron(cron, Zone::utc(), CatchUp::Once, &past, now);
        let due = once.due(now, "x");
        let fires: Vec<_> = due
            .iter()
            .filter(|d| matches!(d, Due::Fire { .. }))
            .collect();
        assert_eq!(fires.len(), 1);
        assert_eq!(
            fires[0],
            &Due::Fire {
                scheduled: ms("2026-05-01T15:00:00Z"),
                session: None
            }
        );
        assert_eq!(once.next(), Some(ms("2026-05-01T16:00:00Z")));
    }

    #[test]
    fn fan_in_fires_when_all_patterns_met_in_one_session_within_the_ttl() {
        let key = |s: &str| ("a".to_string(), "c".to_string(), s.to_string());
        let mut f = FanIn::default();
        let hour = 3_600_000;
        // Two patterns: the first, then the second in another session: no.
        assert!(!f.met(key("s1"), &[0], 2, 0, hour));
        assert!(!f.met(key("s2"), &[1], 2, 10, hour));
        // The second in the same session: yes, and it starts over.
        assert!(f.met(key("s1"), &[1], 2, 20, hour));
        assert!(!f.met(key("s1"), &[1], 2, 30, hour));
        // The partial state expires after the TTL.
        assert!(!f.met(key("s3"), &[0], 2, 0, hour));
        assert!(!f.met(key("s3"), &[1], 2, 2 * hour, hour));
        assert!(f.met(key("s3"), &[0], 2, 2 * hour + 1, hour));
        // Repeats of one pattern do not count twice.
        assert!(!f.met(key("s4"), &[0], 3, 0, hour));
        assert!(!f.met(key("s4"), &[0], 3, 1, hour));
        assert!(!f.met(key("s4"), &[1], 3, 2, hour));
        assert!(f.met(key("s4"), &[2], 3, 3, hour));
    }

    #[test]
    fn a_job_without_schedule_runs_once_ever() {
        let now = ms("2026-05-01T10:00:00Z");
        let mut t = Timer::once(&Past::default(), now);
        assert_eq!(t.due(now, "x").len(), 1);
        assert_eq!(t.next(), None);
        let ran = Past {
            ever: true,
            ..Past::default()
        };
        assert_eq!(Timer::once(&ran, now).next(), None);
    }

    fn night_windows() -> Windows {
        Windows {
            zone: Zone::parse("Europe/Paris").unwrap(),
            days: Days::parse("Mon-Fri").unwrap(),
            start: Some(Date::parse("2026-06-01").unwrap()),
            end: Some(Date::parse("2026-06-05").unwrap()),
            window_start: TimeOfDay::parse("22:00").unwrap(),
            duration_ms: 4 * 3_600_000,
        }
    }

    #[test]
    fn a_task_fires_once_per_window_across_midnight_with_one_session_per_day() {
        let start = ms("2026-05-31T12:00:00Z");
        let mut t = Timer::windows(
            night_windows(),
            false,
            Duration::from_secs(60),
            None,
            &Past::default(),
            start,
        );
        let mut sessions = Vec::new();
        let mut now = start;
        while let Some(next) = t.next() {
            now = next.max(now);
            for d in t.due(now, "night") {
                if let Due::Fire { session, .. } = d {
                    sessions.push((
                        local(now, &Zone::parse("Europe/Paris").unwrap()),
                        session.unwrap(),
                    ));
                    t.ended(now + 60_000, "");
                }
            }
        }
        // Monday 1 June to Friday 5 June: five windows, each opening at
        // 22:00 and its session the day it opened.
        assert_eq!(sessions.len(), 5, "{sessions:?}");
        assert_eq!(
            sessions[0],
            (
                "2026-06-01T22:00+02:00".into(),
                "task:night:2026-06-01".into()
            )
        );
        assert_eq!(sessions[4].1, "task:night:2026-06-05");
    }

    #[test]
    fn a_loop_runs_until_done_when_or_the_window_closes() {
        let open = ms("2026-06-01T20:00:00Z"); // 22:00 in Paris
        let mut t = Timer::windows(
            night_windows(),
            true,
            Duration::from_secs(30 * 60),
            Some("ALL DONE".into()),
            &Past::default(),
            open,
        );
        let mut fires = 0;
        let mut now = open;
        // Each run takes 10 minutes; the third says it is done.
        while let Some(next) = t.next().filter(|n| *n < open + 6 * 3_600_000) {
            now = next.max(now);
            for d in t.due(now, "night") {
                if let Due::Fire { session, .. } = d {
                    assert_eq!(session.as_deref(), Some("task:night:2026-06-01"));
                    fires += 1;
                    now += 10 * 60_000;
                    t.ended(now, if fires == 3 { "all done" } else { "more to do" });
                }
            }
        }
        assert_eq!(fires, 3);
        // Without done-when, the loop stops when the window closes: runs
        // at 22:00, 22:40, …, 01:20 (every 40 minutes within 4 hours).
        let mut t = Timer::windows(
            night_windows(),
            true,
            Duration::from_secs(30 * 60),
            None,
            &Past::default(),
            open,
        );
        let mut fires = 0;
        let mut now = open;
        while let Some(next) = t.next().filter(|n| *n < open + 6 * 3_600_000) {
            now = next.max(now);
            for d in t.due(now, "night") {
                if matches!(d, Due::Fire { .. }) {
                    fires += 1;
                    now += 10 * 60_000;
                    t.ended(now, "");
                }
            }
        }
        assert_eq!(fires, 6);
    }

    #[test]
    fn a_restart_inside_a_window_that_already_fired_does_not_fire_again() {
        let now = ms("2026-06-01T21:00:00Z"); // 23:00 in Paris, in Monday's window
        let past = Past {
            last_session: Some("task:night:2026-06-01".into()),
            last_end: Some(now - 30 * 60_000),
            ever: true,
            ..Past::default()
        };
        let t = Timer::windows(
            night_windows(),
            false,
            Duration::from_secs(60),
            None,
            &past,
            now,
        );
        // Next: Tuesday's window.
        assert_eq!(t.next(), Some(ms("2026-06-02T20:00:00Z")));
        // Without that past, it fires now (at least once).
        let t = Timer::windows(
            night_windows(),
            false,
            Duration::from_secs(60),
            None,
            &Past::default(),
            now,
        );
        assert_eq!(t.next(), Some(now));
    }
}
