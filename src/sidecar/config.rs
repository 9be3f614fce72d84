//! The sidecar's configuration: providers, model aliases, prices, budgets
//! and agents, read from one TOML file. Every mistake is refused at load
//! with the file and the field (`sidecar.toml: budgets.global.usd_per_day:
//! must be a number ≥ 0, got -5`); nothing half-loaded is ever used.
//!
//! ```toml
//! [providers.anthropic]
//! kind = "anthropic"                  # or "openai" (any OpenAI-compatible server)
//! base_url = "https://api.anthropic.com/v1"
//! api_key_env = "ANTHROPIC_API_KEY"   # the key is read from this variable
//!
//! [models.smart]                      # an alias clients ask for
//! provider = "anthropic"
//! model = "claude-sonnet-4-5"
//! fallbacks = ["local"]               # tried in order when retries are spent
//!
//! [prices."claude-sonnet-4-5"]        # dollars per million tokens
//! input = 3.0
//! output = 15.0
//!
//! [budgets.global]
//! usd_per_month = 50
//! on_exceeded = "degrade"
//! degrade_to = "local"
//!
//! [agents.coder]
//! key_env = "CAIRN_KEY_CODER"         # bearer key on the external port
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// A configuration that loaded: checked as a whole.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where it came from, for messages.
    pub origin: String,
    pub server: Server,
    pub providers: BTreeMap<String, Provider>,
    pub models: BTreeMap<String, Model>,
    pub prices: BTreeMap<String, Price>,
    pub global: Option<Budget>,
    pub agent_budgets: BTreeMap<String, Budget>,
    pub agents: BTreeMap<String, Agent>,
}

#[derive(Clone, Debug)]
pub struct Server {
    /// Largest request body accepted (413 past it).
    pub max_body_bytes: usize,
    /// The whole call, first attempt to last byte.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// From sending a request to the first byte of the answer (headers,
    /// and for streams the first event).
    pub first_byte_timeout: Duration,
    /// Further attempts after the first, per model, on 429/5xx/connection errors.
    pub retries: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// An attempt that failed after running this long may have been billed:
    /// it is counted and not retried.
    pub billed_after: Duration,
    /// Output tokens reserved for a call that sets no `max_tokens`.
    pub reserve_output_tokens: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Any server speaking OpenAI's chat completions.
    Openai,
    /// Anthropic's Messages API, translated both ways.
    Anthropic,
}

#[derive(Clone, Debug)]
pub struct Provider {
    pub name: String,
    pub kind: Kind,
    /// Without a trailing `/`, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// The variable the key is read from (and its value when set).
    pub api_key_env: Option<String>,
    pub api_key: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Model {
    pub alias: String,
    pub provider: String,
    /// The upstream's name for it.
    pub model: String,
    pub fallbacks: Vec<String>,
}

/// Dollars per million tokens.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExceeded {
    /// Refuse: HTTP 429, `budget_exceeded`.
    #[default]
    Stop,
    /// Log and count; the call passes.
    Alert,
    /// Serve the call with `degrade_to` instead.
    Degrade,
}

#[derive(Clone, Debug, Default)]
pub struct Budget {
    /// `global` or `agent <name>`, for messages.
    pub scope: String,
    pub usd_per_day: Option<f64>,
    pub usd_per_month: Option<f64>,
    pub tokens_per_day: Option<u64>,
    pub tokens_per_month: Option<u64>,
    /// Tokens (in + out) one dispatch may use.
    pub tokens_per_dispatch: Option<u64>,
    pub on_exceeded: OnExceeded,
    pub degrade_to: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Agent {
    /// The bearer key on the external port (from `key_env`).
    pub key: Option<String>,
    pub key_env: Option<String>,
    /// Hosts (`host` or `host:port`) a guest of this agent may reach besides the sidecar.
    pub allow_hosts: Vec<String>,
}

/// The file as written; every field optional so errors can name it.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    models: BTreeMap<String, RawModel>,
    #[serde(default)]
    prices: BTreeMap<String, toml::Value>,
    #[serde(default)]
    budgets: RawBudgets,
    #[serde(default)]
    agents: BTreeMap<String, RawAgent>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    max_body_bytes: Option<toml::Value>,
    timeout_secs: Option<toml::Value>,
    connect_timeout_secs: Option<toml::Value>,
    first_byte_timeout_secs: Option<toml::Value>,
    retries: Option<toml::Value>,
    backoff_ms: Option<toml::Value>,
    max_backoff_ms: Option<toml::Value>,
    billed_after_secs: Option<toml::Value>,
    reserve_output_tokens: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    kind: Kind,
    base_url: String,
    api_key_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    provider: String,
    model: String,
    #[serde(default)]
    fallbacks: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBudgets {
    global: Option<RawBudget>,
    #[serde(default)]
    agents: BTreeMap<String, RawBudget>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    usd_per_day: Option<toml::Value>,
    usd_per_month: Option<toml::Value>,
    tokens_per_day: Option<toml::Value>,
    tokens_per_month: Option<toml::Value>,
    tokens_per_dispatch: Option<toml::Value>,
    #[serde(default)]
    on_exceeded: OnExceeded,
    degrade_to: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    key_env: Option<String>,
    #[serde(default)]
    allow_hosts: Vec<String>,
}

/// Why a configuration was refused, in one line naming file and field.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{origin}: cannot be read: {e}")))?;
        Config::parse(&text, &origin, &|name| std::env::var(name).ok())
    }

    /// Parses `text`; `env` reads the variables that hold keys.
    pub fn parse(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let fail = |field: &str, why: String| ConfigError(format!("{origin}: {field}: {why}"));
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| format!("line {}: ", text[..s.start].matches('\n').count() + 1))
                .unwrap_or_default();
            ConfigError(format!("{origin}: {line}{}", e.message()))
        })?;

        let s = &file.server;
        let secs =
            |v: &Option<toml::Value>, field: &str, default: f64| -> Result<Duration, ConfigError> {
                let n = number(v, &format!("server.{field}"), origin)?.unwrap_or(default);
                if n <= 0.0 {
                    return Err(fail(
                        &format!("server.{field}"),
                        format!("must be > 0, got {n}"),
                    ));
                }
                Ok(Duration::from_secs_f64(n))
            };
        let count =
            |v: &Option<toml::Value>, field: &str, default: u64| -> Result<u64, ConfigError> {
                Ok(whole(v, &format!("server.{field}"), origin)?.unwrap_or(default))
            };
        let server = Server {
            max_body_bytes: count(&s.max_body_bytes, "max_body_bytes", 4 << 20)? as usize,
            timeout: secs(&s.timeout_secs, "timeout_secs", 600.0)?,
            connect_timeout: secs(&s.connect_timeout_secs, "connect_timeout_secs", 10.0)?,
            first_byte_timeout: secs(&s.first_byte_timeout_secs, "first_byte_timeout_secs", 120.0)?,
            retries: count(&s.retries, "retries", 2)?.min(10) as u32,
            backoff: Duration::from_millis(count(&s.backoff_ms, "backoff_ms", 250)?),
            max_backoff: Duration::from_millis(count(&s.max_backoff_ms, "max_backoff_ms", 8000)?),
            billed_after: secs(&s.billed_after_secs, "billed_after_secs", 30.0)?,
            reserve_output_tokens: count(&s.reserve_output_tokens, "reserve_output_tokens", 4096)?,
        };

        let mut providers = BTreeMap::new();
        for (name, p) in file.providers {
            let field = format!("providers.{name}");
            let base_url = p.base_url.trim_end_matches('/').to_string();
            let scheme_ok = base_url.starts_with("http://") || base_url.starts_with("https://");
            if !scheme_ok || base_url.parse::<http::Uri>().is_err() {
                return Err(fail(
                    &format!("{field}.base_url"),
                    format!("`{}` is not an http(s) URL", p.base_url),
                ));
            }
            let api_key = p
                .api_key_env
                .as_deref()
                .and_then(env)
                .filter(|k| !k.is_empty());
            providers.insert(
                name.clone(),
                Provider {
                    name,
                    kind: p.kind,
                    base_url,
                    api_key_env: p.api_key_env,
                    api_key,
                },
            );
        }

        let mut models = BTreeMap::new();
        for (alias, m) in &file.models {
            let field = format!("models.{alias}");
            if !providers.contains_key(&m.provider) {
                return Err(fail(
                    &format!("{field}.provider"),
                    format!(
                        "no provider `{}` (add [providers.{}])",
                        m.provider, m.provider
                    ),
                ));
            }
            for f in &m.fallbacks {
                if !file.models.contains_key(f) || f == alias {
                    return Err(fail(
                        &format!("{field}.fallbacks"),
                        format!("`{f}` is not another model alias"),
                    ));
                }
            }
            models.insert(
                alias.clone(),
                Model {
                    alias: alias.clone(),
                    provider: m.provider.clone(),
                    model: m.model.clone(),
                    fallbacks: m.fallbacks.clone(),
                },
            );
        }

        let mut prices = BTreeMap::new();
        for (model, v) in file.prices {
            let field = format!("prices.\"{model}\"");
            let table = v
                .as_table()
                .ok_or_else(|| fail(&field, "must be a table { input = …, output = … }".into()))?;
            let mut price = Price::default();
            for (k, v) in table {
                let slot = match k.as_str() {
                    "input" => &mut price.input,
                    "output" => &mut price.output,
                    other => {
                        return Err(fail(
                            &format!("{field}.{other}"),
                            "unknown field (expected input, output)".into(),
                        ));
                    }
                };
                *slot = non_negative(Some(v), &format!("{field}.{k}"), origin)?.unwrap_or(0.0);
            }
            prices.insert(model, price);
        }

        let budget = |raw: &RawBudget, field: &str, scope: String| -> Result<Budget, ConfigError> {
            let usd = |v: &Option<toml::Value>, f: &str| {
                non_negative(v.as_ref(), &format!("{field}.{f}"), origin)
            };
            let tok = |v: &Option<toml::Value>, f: &str| whole(v, &format!("{field}.{f}"), origin);
            let b = Budget {
                scope,
                usd_per_day: usd(&raw.usd_per_day, "usd_per_day")?,
                usd_per_month: usd(&raw.usd_per_month, "usd_per_month")?,
                tokens_per_day: tok(&raw.tokens_per_day, "tokens_per_day")?,
                tokens_per_month: tok(&raw.tokens_per_month, "tokens_per_month")?,
                tokens_per_dispatch: tok(&raw.tokens_per_dispatch, "tokens_per_dispatch")?,
                on_exceeded: raw.on_exceeded,
                degrade_to: raw.degrade_to.clone(),
            };
            match (&b.on_exceeded, &b.degrade_to) {
                (OnExceeded::Degrade, None) => {
                    return Err(fail(
                        &format!("{field}.degrade_to"),
                        "on_exceeded = \"degrade\" needs a model alias to degrade to".into(),
                    ));
                }
                (_, Some(to)) if !models.contains_key(to) => {
                    return Err(fail(
                        &format!("{field}.degrade_to"),
                        format!("`{to}` is not a model alias"),
                    ));
                }
                _ => {}
            }
            Ok(b)
        };
        let global = match &file.budgets.global {
            Some(raw) => Some(budget(raw, "budgets.global", "global".into())?),
            None => None,
        };
        let mut agent_budgets = BTreeMap::new();
        for (name, raw) in &file.budgets.agents {
            let b = budget(
                raw,
                &format!("budgets.agents.{name}"),
                format!("agent {name}"),
            )?;
            agent_budgets.insert(name.clone(), b);
        }

        let mut agents = BTreeMap::new();
        for (name, a) in file.agents {
            let key = a.key_env.as_deref().and_then(env).filter(|k| !k.is_empty());
            for h in &a.allow_hosts {
                if h.is_empty() || h.contains('/') || h.contains(char::is_whitespace) {
                    return Err(fail(
                        &format!("agents.{name}.allow_hosts"),
                        format!("`{h}` is not a host or host:port"),
                    ));
                }
            }
            agents.insert(
                name,
                Agent {
                    key,
                    key_env: a.key_env,
                    allow_hosts: a
                        .allow_hosts
                        .iter()
                        .map(|h| h.to_ascii_lowercase())
                        .collect(),
                },
            );
        }

        let config = Config {
            origin: origin.to_string(),
            server,
            providers,
            models,
            prices,
            global,
            agent_budgets,
            agents,
        };
        config.warn_unpriced();
        config.warn_missing_keys();
        Ok(config)
    }

    /// A key variable that is named but not set is a call refused later by
    /// the upstream (401), or an agent shut out of the port: said at load.
    fn warn_missing_keys(&self) {
        for p in self.providers.values() {
            if let (Some(var), None) = (&p.api_key_env, &p.api_key) {
                tracing::warn!(
                    "{}: providers.{}.api_key_env: ${var} is not set; calls go to {} without a key",
                    self.origin,
                    p.name,
                    p.base_url
                );
            }
        }
        for (name, a) in &self.agents {
            if let (Some(var), None) = (&a.key_env, &a.key) {
                tracing::warn!(
                    "{}: agents.{name}.key_env: ${var} is not set; agent {name} cannot use the port",
                    self.origin
                );
            }
        }
    }

    /// A dollar budget cannot see a model without a price: said once, at load.
    fn warn_unpriced(&self) {
        let dollars = self
            .global
            .iter()
            .chain(self.agent_budgets.values())
            .any(|b| b.usd_per_day.is_some() || b.usd_per_month.is_some());
        if !dollars {
            return;
        }
        for m in self.models.values() {
            if !self.prices.contains_key(&m.model) {
                tracing::warn!(
                    "{}: model `{}` ({}) has no price: its calls cost $0 against dollar budgets (add [prices.\"{}\"])",
                    self.origin,
                    m.alias,
                    m.model,
                    m.model
                );
            }
        }
    }

    /// The price of an upstream model, $0 when none is configured.
    pub fn price(&self, upstream_model: &str) -> Price {
        self.prices.get(upstream_model).copied().unwrap_or_default()
    }
}

fn number(v: &Option<toml::Value>, field: &str, origin: &str) -> Result<Option<f64>, ConfigError> {
    match v {
        None => Ok(None),
        Some(toml::Value::Integer(i)) => Ok(Some(*i as f64)),
        Some(toml::Value::Float(f)) if f.is_finite() => Ok(Some(*f)),
        Some(other) => Err(ConfigError(format!(
            "{origin}: {field}: must be a number, got {other}"
        ))),
    }
}

fn non_negative(
    v: Option<&toml::Value>,
    field: &str,
    origin: &str,
) -> Result<Option<f64>, ConfigError> {
    let n = number(&v.cloned(), field, origin)?;
    match n {
        Some(n) if n < 0.0 => Err(ConfigError(format!(
            "{origin}: {field}: must be a number ≥ 0, got {n}"
        ))),
        n => Ok(n),
    }
}

fn whole(v: &Option<toml::Value>, field: &str, origin: &str) -> Result<Option<u64>, ConfigError> {
    match v {
        None => Ok(None),
        Some(toml::Value::Integer(i)) if *i >= 0 => Ok(Some(*i as u64)),
        Some(other) => Err(ConfigError(format!(
            "{origin}: {field}: must be a whole number ≥ 0, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "sidecar.toml", &|name| {
            (name == "KEY").then(|| "sk-1".to_string())
        })
    }

    const BASE: &str = r#"
[providers.up]
kind = "openai"
base_url = "http://127.0.0.1:9/v1/"
api_key_env = "KEY"
[models.small]
provider = "up"
model = "fake-small"
[models.local]
provider = "up"
model = "fake-large"
"#;

    #[test]
    fn a_full_config_loads() {
        let c = parse(&format!(
            "{BASE}[prices.\"fake-small\"]\ninput = 1\noutput = 2.5\n[budgets.global]\nusd_per_day = 3\non_exceeded = \"degrade\"\ndegrade_to = \"local\"\n[budgets.agents.a]\ntokens_per_dispatch = 100\n[agents.a]\nkey_env = \"KEY\"\nallow_hosts = [\"Example.com:443\"]\n"
        ))
        .unwrap();
        assert_eq!(c.providers["up"].base_url, "http://127.0.0.1:9/v1");
        assert_eq!(c.providers["up"].api_key.as_deref(), Some("sk-1"));
        assert_eq!(c.price("fake-small").output, 2.5);
        assert_eq!(c.global.as_ref().unwrap().on_exceeded, OnExceeded::Degrade);
        assert_eq!(c.agent_budgets["a"].tokens_per_dispatch, Some(100));
        assert_eq!(c.agents["a"].allow_hosts, ["example.com:443"]);
        assert_eq!(c.server.max_body_bytes, 4 << 20);
    }

    #[test]
    fn bad_amounts_name_file_and_field() {
        for (extra, want) in [
            (
                "[budgets.global]\nusd_per_day = -5\n",
                "sidecar.toml: budgets.global.usd_per_day: must be a number ≥ 0, got -5",
            ),
            (
                "[budgets.agents.x]\nusd_per_month = \"ten\"\n",
                "sidecar.toml: budgets.agents.x.usd_per_month: must be a number, got \"ten\"",
            ),
            (
                "[budgets.global]\ntokens_per_day = 1.5\n",
                "sidecar.toml: budgets.global.tokens_per_day: must be a whole number ≥ 0, got 1.5",
            ),
            (
                "[prices.m]\ninput = -1\n",
                "sidecar.toml: prices.\"m\".input: must be a number ≥ 0, got -1",
            ),
            (
                "[budgets.global]\non_exceeded = \"degrade\"\n",
                "sidecar.toml: budgets.global.degrade_to: on_exceeded = \"degrade\" needs a model alias",
            ),
            (
                "[models.x]\nprovider = \"nope\"\nmodel = \"m\"\n",
                "sidecar.toml: models.x.provider: no provider `nope`",
            ),
        ] {
            let err = parse(&format!("{BASE}{extra}")).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err}\nwanted {want}");
        }
        let err = parse("[server]\nmax_body = 3\n").unwrap_err().to_string();
        assert!(
            err.starts_with("sidecar.toml: line 2: unknown field `max_body`"),
            "{err}"
        );
    }
}
