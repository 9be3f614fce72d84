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

/// Whether `reply` contains `phrase`, ignoring case.
pub fn contains(reply: &str, phrase: &str) -> bool {
    reply.to_lowercase().contains(&phrase.to_lowercase())
}
