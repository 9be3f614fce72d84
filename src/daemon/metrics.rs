//! The daemon's Prometheus metrics (the sidecar's follow them on the same
//! page): dispatches by agent and how they ended, the queue, what runs,
//! refusals, reloads, and each agent's health.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Ended {
    pub agent: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabel {
    pub agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub result: String,
}

/// A scheduled item's event: `kind` is its class (`job`, `task`,
/// `heartbeat`, `trigger`, `continuation`), not its name, to keep the
/// series few with many items.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Scheduled {
    pub agent: String,
    pub kind: String,
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Delivered {
    pub agent: String,
    pub webhook: String,
    pub result: String,
}

pub struct Metrics {
    registry: Registry,
    pub dispatches: Family<Ended, Counter>,
    pub queue_depth: Gauge,
    pub running: Gauge,
    pub busy: Counter,
    pub reloads: Family<Outcome, Counter>,
    pub healthy: Family<AgentLabel, Gauge>,
    pub requests_unauthorized: Counter,
    pub scheduled: Family<Scheduled, Counter>,
    pub deliveries: Family<Delivered, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cairn");
        let dispatches = Family::<Ended, Counter>::default();
        registry.register(
            "dispatches",
            "Dispatches that ended, by agent and final state",
            dispatches.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Dispatches waiting for the shared workspace",
            queue_depth.clone(),
        );
        let running = Gauge::default();
        registry.register(
            "dispatches_running",
            "Dispatches running now",
            running.clone(),
        );
        let busy = Counter::default();
        registry.register(
            "dispatches_refused_busy",
            "Dispatches refused because the queue was full",
            busy.clone(),
        );
        let reloads = Family::<Outcome, Counter>::default();
        registry.register(
            "config_reloads",
            "Agent configuration reloads, applied or refused",
            reloads.clone(),
        );
        let healthy = Family::<AgentLabel, Gauge>::default();
        registry.register(
            "agent_healthy",
            "1 when every guest of the agent is prepared",
            healthy.clone(),
        );
        let requests_unauthorized = Counter::default();
        registry.register(
            "requests_unauthorized",
            "Requests refused for a missing or wrong token",
            requests_unauthorized.clone(),
        );
        let scheduled = Family::<Scheduled, Counter>::default();
        registry.register(
            "scheduled",
            "Scheduler items fired or skipped (still running, at a cap, missed while down, loop stopped)",
            scheduled.clone(),
        );
        let deliveries = Family::<Delivered, Counter>::default();
        registry.register(
            "webhook_attempts",
            "Webhook delivery attempts: delivered, retried or failed",
            deliveries.clone(),
        );
        Metrics {
            registry,
            scheduled,
            deliveries,
            dispatches,
            queue_depth,
            running,
            busy,
            reloads,
            healthy,
            requests_unauthorized,
        }
    }
}

impl Metrics {
    pub fn ended(&self, agent: &str, state: &str) {
        self.dispatches
            .get_or_create(&Ended {
                agent: agent.into(),
                state: state.into(),
            })
            .inc();
    }

    /// `key` is the item's dispatch kind (`job:nightly`); `event` is
    /// `fired` or `skipped`.
    pub fn scheduled(&self, agent: &str, key: &str, event: &str) {
        let kind = key.split(':').next().unwrap_or(key);
        self.scheduled
            .get_or_create(&Scheduled {
                agent: agent.into(),
                kind: kind.into(),
                event: event.into(),
            })
            .inc();
    }

    pub fn delivery(&self, agent: &str, webhook: &str, result: &str) {
        self.deliveries
            .get_or_create(&Delivered {
                agent: agent.into(),
                webhook: webhook.into(),
                result: result.into(),
            })
            .inc();
    }

    pub fn set_health(&self, agent: &str, healthy: bool) {
        self.healthy
            .get_or_create(&AgentLabel {
                agent: agent.into(),
            })
            .set(i64::from(healthy));
    }

    pub fn forget(&self, agent: &str) {
        self.healthy.remove(&AgentLabel {
            agent: agent.into(),
        });
    }

    pub fn reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.reloads
            .get_or_create(&Outcome {
                result: result.into(),
            })
            .inc();
    }

    /// The OpenMetrics text, without its `# EOF` line (the caller appends
    /// the sidecar's page, which ends with one).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            return String::new();
        }
        out.trim_end_matches("# EOF\n").to_string()
    }
}
