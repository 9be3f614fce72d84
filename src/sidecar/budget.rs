//! Budgets, race-free: a call reserves its estimated cost before it is
//! forwarded and settles with the actual usage after, all under one lock.
//! A budget is checked against `spent + reserved + asked`, so with any
//! number of concurrent calls the overspend is bounded by what calls in
//! flight reserved beyond what they used — never by how many there are.
//!
//! Windows are UTC days and months. Spending of the current windows is
//! seeded from the store at start; per-dispatch spending lives in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::config::{Budget, Config, OnExceeded};
use crate::store::usage::Spent;
use crate::store::{Store, civil};

/// What a call is expected to cost.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Amount {
    pub tokens: u64,
    pub usd: f64,
}

/// A budget a call would break: which, and its numbers.
#[derive(Clone, Debug)]
pub struct Exceeded {
    pub scope: String,
    /// `usd_per_day`, `tokens_per_dispatch`, …
    pub limit_name: &'static str,
    pub limit: f64,
    pub spent: f64,
    pub reserved: f64,
    pub asked: f64,
    pub on_exceeded: OnExceeded,
    pub degrade_to: Option<String>,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |v: f64| {
            if self.limit_name.starts_with("usd") {
                format!("${v:.4}")
            } else {
                format!("{v:.0} tokens")
            }
        };
        write!(
            f,
            "budget exceeded: {} {}: {} spent + {} in flight + {} asked > {}",
            self.scope,
            self.limit_name,
            n(self.spent),
            n(self.reserved),
            n(self.asked),
            n(self.limit)
        )
    }
}

/// Spending of one scope in the current windows.
#[derive(Clone, Debug, Default)]
struct Tally {
    day: i64,
    month: i64,
    day_spent: Amount,
    month_spent: Amount,
    reserved: Amount,
}

#[derive(Default)]
struct State {
    scopes: HashMap<String, Tally>,
    /// Per dispatch: tokens spent and reserved.
    dispatches: HashMap<String, (u64, u64)>,
}

pub struct Ledger {
    global: Option<Budget>,
    /// Per-agent budgets; replaced whole when agents are reloaded.
    agents: RwLock<Arc<HashMap<String, Budget>>>,
    state: Mutex<State>,
}

/// Who a call is for, as the ledger sees it.
pub struct Payer<'a> {
    pub agent: &'a str,
    pub dispatch: Option<&'a str>,
    /// The dispatch's own `max-tokens`.
    pub dispatch_max_tokens: Option<u64>,
}

/// A reservation held by a call in flight; settled once.
pub struct Reservation {
    ledger: Arc<Ledger>,
    keys: Vec<String>,
    dispatch: Option<String>,
    amount: Amount,
    settled: bool,
    /// Budgets over their limit that only alert.
    pub alerts: Vec<Exceeded>,
}

fn windows(ms: i64) -> (i64, i64) {
    let (y, m, d, _) = civil(ms);
    (y * 10_000 + m * 100 + d, y * 100 + m)
}

/// The first millisecond of the UTC month of `ms`.
fn month_start(ms: i64) -> i64 {
    let (_, _, d, rem) = civil(ms);
    ms - (d - 1) * 86_400_000 - rem * 1000 - ms.rem_euclid(1000)
}

fn day_start(ms: i64) -> i64 {
    ms - ms.rem_euclid(86_400_000)
}

impl Tally {
    fn roll(&mut self, now: i64) {
        let (day, month) = windows(now);
        if day != self.day {
            self.day = day;
            self.day_spent = Amount::default();
        }
        if month != self.month {
            self.month = month;
            self.month_spent = Amount::default();
        }
    }
}

impl Ledger {
    pub fn new(config: &Config) -> Ledger {
        Ledger {
            global: config.global.clone(),
            agents: RwLock::new(Arc::new(
                config
                    .agent_budgets
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )),
            state: Mutex::new(State::default()),
        }
    }

    /// Seeds the current day's and month's spending from the store.
    pub fn seed(&self, store: &Store, now: i64) -> anyhow::Result<()> {
        let month = store.spent_since(month_start(now))?;
        let day = store.spent_since(day_start(now))?;
        let mut state = self.lock();
        let add = |t: &mut Tally, d: Spent, m: Spent| {
            t.day_spent.tokens += d.tokens;
            t.day_spent.usd += d.usd;
            t.month_spent.tokens += m.tokens;
            t.month_spent.usd += m.usd;
        };
        for (agent, m) in &month {
            let d = day.get(agent).copied().unwrap_or_default();
            let global = state.scopes.entry("global".into()).or_default();
            global.roll(now);
            add(global, d, *m);
            let t = state.scopes.entry(format!("agent {agent}")).or_default();
            t.roll(now);
            add(t, d, *m);
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the per-agent budgets. Spending is kept: every agent's
    /// scope is tallied whether or not it has a budget, so a budget added
    /// later sees what was already spent in its windows.
    pub fn set_agents(&self, budgets: HashMap<String, Budget>) {
        *self.agents.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(budgets);
    }

    fn agents(&self) -> Arc<HashMap<String, Budget>> {
        self.agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks every budget that applies and, when none refuses, reserves
    /// `amount` in all of them. `Err` is the first budget that stops or
    /// degrades the call (stopping ones first). A call already `degraded`
    /// is refused only by budgets that stop: it is what they degrade to.
    pub fn reserve(
        self: &Arc<Self>,
        payer: &Payer<'_>,
        amount: Amount,
        now: i64,
        degraded: bool,
    ) -> Result<Reservation, Exceeded> {
        let agents = self.agents();
        let budgets: Vec<&Budget> = self.global.iter().chain(agents.get(payer.agent)).collect();
        let mut state = self.lock();
        let mut over: Vec<Exceeded> = Vec::new();
        for b in budgets.iter().copied() {
            let t = state.scopes.entry(b.scope.clone()).or_default();
            t.roll(now);
            let checks: [(&'static str, Option<f64>, f64, f64, f64); 4] = [
                (
                    "usd_per_day",
                    b.usd_per_day,
                    t.day_spent.usd,
                    t.reserved.usd,
                    amount.usd,
                ),
                (
                    "usd_per_month",
                    b.usd_per_month,
                    t.month_spent.usd,
                    t.reserved.usd,
                    amount.usd,
                ),
                (
                    "tokens_per_day",
                    b.tokens_per_day.map(|v| v as f64),
                    t.day_spent.tokens as f64,
                    t.reserved.tokens as f64,
                    amount.tokens as f64,
                ),
                (
                    "tokens_per_month",
                    b.tokens_per_month.map(|v| v as f64),
                    t.month_spent.tokens as f64,
                    t.reserved.tokens as f64,
                    amount.tokens as f64,
                ),
            ];
            for (name, limit, spent, reserved, asked) in checks {
                if let Some(limit) = limit
                    && spent + reserved + asked > limit
                {
                    over.push(Exceeded {
                        scope: b.scope.clone(),
                        limit_name: name,
                        limit,
                        spent,
                        reserved,
                        asked,
                        on_exceeded: b.on_exceeded,
                        degrade_to: b.degrade_to.clone(),
                    });
                }
            }
        }
        if let Some(dispatch) = payer.dispatch {
            let configured = budgets.iter().filter_map(|b| {
                b.tokens_per_dispatch
                    .map(|l| (l, b.on_exceeded, b.degrade_to.clone()))
            });
            let own = payer
                .dispatch_max_tokens
                .map(|l| (l, OnExceeded::Stop, None));
            let (spent, reserved) = state.dispatches.get(dispatch).copied().unwrap_or_default();
            for (limit, on_exceeded, degrade_to) in configured.chain(own) {
                if spent + reserved + amount.tokens > limit {
                    over.push(Exceeded {
                        scope: format!("dispatch {dispatch}"),
                        limit_name: "tokens_per_dispatch",
                        limit: limit as f64,
                        spent: spent as f64,
                        reserved: reserved as f64,
                        asked: amount.tokens as f64,
                        on_exceeded,
                        degrade_to,
                    });
                }
            }
        }
        let (alerts, refusing): (Vec<_>, Vec<_>) = over.into_iter().partition(|e| {
            e.on_exceeded == OnExceeded::Alert || (degraded && e.on_exceeded == OnExceeded::Degrade)
        });
        if let Some(first) = refusing
            .iter()
            .find(|e| e.on_exceeded == OnExceeded::Stop)
            .or(refusing.first())
        {
            return Err(first.clone());
        }
        let own_scope = format!("agent {}", payer.agent);
        let mut keys: Vec<String> = budgets.iter().map(|b| b.scope.clone()).collect();
        if !keys.contains(&own_scope) {
            keys.push(own_scope);
        }
        for k in &keys {
            let t = state.scopes.entry(k.clone()).or_default();
            t.reserved.tokens += amount.tokens;
            t.reserved.usd += amount.usd;
        }
        if let Some(d) = payer.dispatch {
            state.dispatches.entry(d.to_string()).or_default().1 += amount.tokens;
        }
        Ok(Reservation {
            ledger: self.clone(),
            keys,
            dispatch: payer.dispatch.map(str::to_string),
            amount,
            settled: false,
            alerts,
        })
    }

    /// Tokens a dispatch spent and holds in flight.
    pub fn dispatch_used(&self, dispatch: &str) -> u64 {
        let state = self.lock();
        state
            .dispatches
            .get(dispatch)
            .map_or(0, |(spent, reserved)| spent + reserved)
    }

    /// What is left of each limit: `(scope, limit name, remaining)`.
    pub fn remaining(&self, now: i64) -> Vec<(String, &'static str, f64)> {
        let agents = self.agents();
        let mut state = self.lock();
        let mut out = Vec::new();
        for b in self.global.iter().chain(agents.values()) {
            let t = state.scopes.entry(b.scope.clone()).or_default();
            t.roll(now);
            for (name, limit, spent) in [
                ("usd_per_day", b.usd_per_day, t.day_spent.usd),
                ("usd_per_month", b.usd_per_month, t.month_spent.usd),
                (
                    "tokens_per_day",
                    b.tokens_per_day.map(|v| v as f64),
                    t.day_spent.tokens as f64,
                ),
                (
                    "tokens_per_month",
                    b.tokens_per_month.map(|v| v as f64),
                    t.month_spent.tokens as f64,
                ),
            ] {
                if let Some(limit) = limit {
                    out.push((b.scope.clone(), name, limit - spent));
                }
            }
        }
        out
    }
}

impl Reservation {
    /// Replaces the reservation with what the call actually cost.
    pub fn settle(mut self, actual: Amount, now: i64) {
        self.finish(actual, now);
    }

    fn finish(&mut self, actual: Amount, now: i64) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let mut state = self.ledger.lock();
        for k in &self.keys {
            let t = state.scopes.entry(k.clone()).or_default();
            t.reserved.tokens = t.reserved.tokens.saturating_sub(self.amount.tokens);
            t.reserved.usd = (t.reserved.usd - self.amount.usd).max(0.0);
            t.roll(now);
            for w in [&mut t.day_spent, &mut t.month_spent] {
                w.tokens += actual.tokens;
                w.usd += actual.usd;
            }
        }
        if let Some(d) = &self.dispatch {
            let e = state.dispatches.entry(d.clone()).or_default();
            e.1 = e.1.saturating_sub(self.amount.tokens);
            e.0 += actual.tokens;
        }
    }
}

impl Drop for Reservation {
    /// A reservation dropped unsettled (a call cancelled mid-way) counts as
    /// spent in full: it may have been billed.
    fn drop(&mut self) {
        let amount = self.amount;
        self.finish(amount, crate::store::now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(budgets: &str) -> Arc<Ledger> {
        let text = format!(
            "[providers.p]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1\"\n[models.m]\nprovider = \"p\"\nmodel = \"m\"\n{budgets}"
        );
        Arc::new(Ledger::new(
            &Config::parse(&text, "t.toml", &|_| None).unwrap(),
        ))
    }

    const NOW: i64 = 1_790_000_000_000;

    fn payer() -> Payer<'static> {
        Payer {
            agent: "a",
            dispatch: Some("d1"),
            dispatch_max_tokens: None,
        }
    }

    #[test]
    fn reservations_count_against_the_limit_until_settled() {
        // Dropping a reservation settles it at the current time.
        let now = crate::store::now_ms();
        let l = ledger("[budgets.global]\ntokens_per_day = 100\n");
        let ask = Amount {
            tokens: 40,
            usd: 0.0,
        };
        let r1 = l.reserve(&payer(), ask, now, false).unwrap();
        let r2 = l.reserve(&payer(), ask, now, false).unwrap();
        let e = l.reserve(&payer(), ask, now, false).err().unwrap();
        assert_eq!(
            e.to_string(),
            "budget exceeded: global tokens_per_day: 0 tokens spent + 80 tokens in flight + 40 tokens asked > 100 tokens"
        );
        r1.settle(
            Amount {
                tokens: 10,
                usd: 0.0,
            },
            now,
        );
        drop(r2); // unsettled: counted in full
        assert_eq!(
            l.remaining(now),
            vec![("global".to_string(), "tokens_per_day", 50.0)]
        );
        // The next day starts afresh.
        assert!(
            l.reserve(
                &payer(),
                Amount {
                    tokens: 90,
                    usd: 0.0
                },
                now + 86_400_000,
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn stop_wins_over_degrade_and_alerts_pass() {
        let l = ledger(
            "[budgets.global]\nusd_per_month = 1\non_exceeded = \"alert\"\n[budgets.agents.a]\nusd_per_day = 1\non_exceeded = \"degrade\"\ndegrade_to = \"m\"\ntokens_per_dispatch = 10\n",
        );
        let r = l.reserve(
            &payer(),
            Amount {
                tokens: 5,
                usd: 2.0,
            },
            NOW,
            false,
        );
        assert_eq!(r.err().unwrap().on_exceeded, OnExceeded::Degrade);
        let p = Payer {
            dispatch_max_tokens: Some(3),
            ..payer()
        };
        let e = l
            .reserve(
                &p,
                Amount {
                    tokens: 5,
                    usd: 0.5,
                },
                NOW,
                false,
            )
            .err()
            .unwrap();
        assert_eq!(
            (e.limit_name, e.on_exceeded),
            ("tokens_per_dispatch", OnExceeded::Stop)
        );
        let ok = l
            .reserve(
                &payer(),
                Amount {
                    tokens: 5,
                    usd: 0.0,
                },
                NOW,
                false,
            )
            .unwrap();
        assert!(ok.alerts.is_empty());
        ok.settle(
            Amount {
                tokens: 5,
                usd: 1.5,
            },
            NOW,
        );
        // Already degraded: the degrading budget no longer refuses.
        let alerted = l
            .reserve(
                &payer(),
                Amount {
                    tokens: 1,
                    usd: 0.0,
                },
                NOW,
                true,
            )
            .unwrap();
        assert_eq!(
            alerted.alerts.len(),
            2,
            "the agent's day degrades (already done) and the global month alerts"
        );
    }

    #[test]
    fn windows_start_on_utc_boundaries() {
        // 2026-09-21 14:13:20 UTC
        let (y, m, d, _) = civil(NOW);
        assert_eq!((y, m, d), (2026, 9, 21));
        assert_eq!(civil(month_start(NOW)), (2026, 9, 1, 0));
        assert_eq!(civil(day_start(NOW)), (2026, 9, 21, 0));
    }

    #[test]
    fn agent_budgets_set_later_see_what_was_already_spent() {
        let l = ledger("");
        let ask = Amount {
            tokens: 40,
            usd: 0.0,
        };
        // No budget yet: spending is tallied all the same.
        l.reserve(&payer(), ask, NOW, false)
            .unwrap()
            .settle(ask, NOW);
        let budget = Budget {
            scope: "agent a".into(),
            tokens_per_day: Some(100),
            ..Budget::default()
        };
        l.set_agents(HashMap::from([("a".to_string(), budget)]));
        let r = l.reserve(&payer(), ask, NOW, false).unwrap();
        let e = l.reserve(&payer(), ask, NOW, false).err().unwrap();
        assert_eq!(
            e.to_string(),
            "budget exceeded: agent a tokens_per_day: 40 tokens spent + 40 tokens in flight + 40 tokens asked > 100 tokens"
        );
        r.settle(ask, NOW);
        // Removed again: the agent is not limited any more.
        l.set_agents(HashMap::new());
        l.reserve(&payer(), ask, NOW, false)
            .unwrap()
            .settle(ask, NOW);
        assert!(l.remaining(NOW).is_empty());
    }
}
