//! The sidecar's Prometheus metrics: calls, tokens, cost, latency and the
//! sidecar's own overhead per agent, model and provider; upstream errors,
//! retries, and what is left of each budget.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Call {
    pub agent: String,
    pub model: String,
    pub provider: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    pub agent: String,
    pub model: String,
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Tokens {
    pub agent: String,
    pub model: String,
    pub provider: String,
    /// `in` or `out`.
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamError {
    pub provider: String,
    /// `status_429`, `status_5xx`, `connect`, `timeout`, `garbage`, `died`, …
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Provider {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Limit {
    pub scope: String,
    pub limit: String,
}

type Hist = Family<Route, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub requests: Family<Call, Counter>,
    pub tokens: Family<Tokens, Counter>,
    pub cost: Family<Route, Counter<f64, AtomicU64>>,
    pub latency: Hist,
    pub overhead: Hist,
    pub upstream_errors: Family<UpstreamError, Counter>,
    pub retries: Family<Provider, Counter>,
    pub budget_remaining: Family<Limit, Gauge<f64, AtomicU64>>,
    pub budget_exceeded: Family<Limit, Counter>,
}

fn latency_buckets() -> Histogram {
    // 1 ms … ~8 min.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 20,
    ))
}

fn overhead_buckets() -> Histogram {
    // 10 µs … ~80 ms.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_01, 2.0, 14,
    ))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            requests: Family::default(),
            tokens: Family::default(),
            cost: Family::default(),
            latency: Family::new_with_constructor(latency_buckets),
            overhead: Family::new_with_constructor(overhead_buckets),
            upstream_errors: Family::default(),
            retries: Family::default(),
            budget_remaining: Family::default(),
            budget_exceeded: Family::default(),
            registry: Registry::with_prefix("cairn_sidecar"),
        };
        let registry = &mut m.registry;
        registry.register("requests", "Model calls, by outcome", m.requests.clone());
        registry.register("tokens", "Tokens in and out", m.tokens.clone());
        registry.register("cost_usd", "Dollars spent", m.cost.clone());
        registry.register(
            "latency_seconds",
            "Whole call, request to last byte",
            m.latency.clone(),
        );
        registry.register(
            "overhead_seconds",
            "Time the sidecar itself added to a call (parsing, budgets, translation)",
            m.overhead.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed upstream attempts",
            m.upstream_errors.clone(),
        );
        registry.register("retries", "Upstream attempts retried", m.retries.clone());
        registry.register(
            "budget_remaining",
            "What is left of each budget limit (dollars or tokens)",
            m.budget_remaining.clone(),
        );
        registry.register(
            "budget_exceeded",
            "Calls that found a budget exceeded (stopped, degraded or alerted)",
            m.budget_exceeded.clone(),
        );
        m
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
