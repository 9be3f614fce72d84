//! Which model `cairn init` wires the coder agent to: what the repository's
//! `sidecar.toml` already names, else a provider found in the environment.
//!
//! In order, the first that holds:
//! 1. `--model-url URL` / `--model NAME` given: an OpenAI-compatible server
//!    there (Ollama, llama.cpp, vLLM…), keyless.
//! 2. `.cairn/sidecar.toml` defines models: the coder uses one of them (the
//!    alias `--model` names, else `smart`, `default`, else the first).
//! 3. `ANTHROPIC_API_KEY` set: Anthropic (`ANTHROPIC_BASE_URL` honoured).
//! 4. `OPENAI_API_KEY` set: OpenAI (`OPENAI_BASE_URL` honoured).
//! 5. `OLLAMA_HOST` set, or an Ollama answering on 127.0.0.1:11434: that
//!    Ollama, with the model `--model` names, else a model it lists
//!    (`GET /v1/models`) with "coder" in its name, else the first listed.
//!
//! A `--model-url` server without `--model` gets a model the same way.
//!
//! No process state is read here: the environment and the Ollama probe are
//! passed in, so every rule is tested without a network.

use std::path::Path;

/// Ollama's default address.
pub const OLLAMA_DEFAULT: &str = "http://127.0.0.1:11434";

/// The model suggested when an Ollama has none pulled.
pub const OLLAMA_SUGGESTED: &str = "qwen2.5-coder:7b";

/// What the user asked for on the command line.
#[derive(Clone, Debug, Default)]
pub struct Ask {
    /// The model (an alias of an existing sidecar.toml, or the upstream's
    /// model name).
    pub model: Option<String>,
    /// An OpenAI-compatible server's base URL (an Ollama's is accepted with
    /// or without `/v1`).
    pub model_url: Option<String>,
}

/// The model the coder will use.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    /// An alias the repository's sidecar.toml already defines.
    Existing { alias: String },
    /// A provider to write into a new sidecar.toml.
    New(Provider),
}

impl Choice {
    /// The alias the coder's `model =` names.
    pub fn alias(&self) -> &str {
        match self {
            Choice::Existing { alias } => alias,
            Choice::New(p) => p.alias,
        }
    }

    /// For people: which model, and why it was chosen.
    pub fn describe(&self) -> String {
        match self {
            Choice::Existing { alias } => format!("`{alias}`, from .cairn/sidecar.toml"),
            Choice::New(p) => format!("`{}`: {} at {} ({})", p.alias, p.model, p.base_url, p.found),
        }
    }
}

/// A provider and model, as the generated sidecar.toml declares them.
#[derive(Clone, Debug, PartialEq)]
pub struct Provider {
    /// The provider's name in sidecar.toml.
    pub name: &'static str,
    /// `openai` or `anthropic`.
    pub kind: &'static str,
    pub base_url: String,
    /// The variable holding the key; None for a keyless server.
    pub key_env: Option<&'static str>,
    pub model: String,
    /// The alias in sidecar.toml.
    pub alias: &'static str,
    /// Dollars per million tokens in and out, when known.
    pub price: Option<(f64, f64)>,
    /// What was found ("ANTHROPIC_API_KEY is set").
    pub found: String,
    /// Something the user should do before the model works.
    pub hint: Option<String>,
}

impl Provider {
    /// Whether calls cost money (a keyed provider).
    pub fn paid(&self) -> bool {
        self.key_env.is_some()
    }
}

/// What a server at a base URL answered to `GET /v1/models`: the models it
/// lists, or None when nothing answered.
pub type Probe<'a> = &'a dyn Fn(&str) -> Option<Vec<String>>;

/// The model for the coder, or None when there is none to be had. `models`
/// is the alias list of the repository's sidecar.toml (empty when it has
/// none or there is no file).
pub fn choose(
    ask: &Ask,
    models: &[String],
    env: &dyn Fn(&str) -> Option<String>,
    probe: Probe,
) -> Result<Option<Choice>, String> {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if let Some(url) = &ask.model_url {
        let base = openai_base(url)?;
        let listed = || probe(&base);
        return Ok(Some(keyless(
            "local",
            &base,
            "--model-url".into(),
            ask,
            listed,
        )));
    }
    if !models.is_empty() {
        let alias = match &ask.model {
            Some(m) if models.contains(m) => m.clone(),
            Some(m) => {
                return Err(format!(
                    "--model {m}: .cairn/sidecar.toml defines no such model (it has {})",
                    models.join(", ")
                ));
            }
            None => ["smart", "default"]
                .iter()
                .find(|a| models.iter().any(|m| m == *a))
                .map(|a| a.to_string())
                .unwrap_or_else(|| models[0].clone()),
        };
        return Ok(Some(Choice::Existing { alias }));
    }
    if let Some(k) = KEYED.iter().find(|k| set(k.key_env).is_some()) {
        let model = ask.model.clone().unwrap_or_else(|| k.model.into());
        return Ok(Some(Choice::New(Provider {
            name: k.name,
            kind: k.kind,
            base_url: set(k.base_env).unwrap_or_else(|| k.base_url.into()),
            key_env: Some(k.key_env),
            price: known_price(&model),
            model,
            alias: "smart",
            found: format!("{} is set", k.key_env),
            hint: None,
        })));
    }
    if let Some(host) = set("OLLAMA_HOST") {
        let base = ollama_base(&host)?;
        let listed = || probe(&base);
        return Ok(Some(keyless(
            "ollama",
            &base,
            "OLLAMA_HOST is set".into(),
            ask,
            listed,
        )));
    }
    // The default address: configured only when something answers there.
    let Some(listed) = probe(OLLAMA_DEFAULT) else {
        return Ok(None);
    };
    let found = format!("an Ollama answers at {OLLAMA_DEFAULT}");
    Ok(Some(keyless("ollama", OLLAMA_DEFAULT, found, ask, || {
        Some(listed)
    })))
}

/// A provider found by its API key, with its default address and model.
struct Keyed {
    name: &'static str,
    kind: &'static str,
    key_env: &'static str,
    /// The variable that moves its address (as the official SDKs read it).
    base_env: &'static str,
    base_url: &'static str,
    model: &'static str,
}

/// In the order they are looked for.
const KEYED: [Keyed; 2] = [
    Keyed {
        name: "anthropic",
        kind: "anthropic",
        key_env: "ANTHROPIC_API_KEY",
        base_env: "ANTHROPIC_BASE_URL",
        base_url: "https://api.anthropic.com/v1",
        model: "claude-sonnet-4-5",
    },
    Keyed {
        name: "openai",
        kind: "openai",
        key_env: "OPENAI_API_KEY",
        base_env: "OPENAI_BASE_URL",
        base_url: "https://api.openai.com/v1",
        model: "gpt-4.1",
    },
];

/// A keyless OpenAI-compatible server at `base` (no `/v1`): its model the
/// one asked for, else one it lists (`listed`, asked only then; a coder
/// model first), else the suggested one with how to get it.
fn keyless(
    name: &'static str,
    base: &str,
    found: String,
    ask: &Ask,
    listed: impl FnOnce() -> Option<Vec<String>>,
) -> Choice {
    let suggested = |why: String| (OLLAMA_SUGGESTED.to_string(), Some(why));
    let (model, hint) = match &ask.model {
        Some(m) => (m.clone(), None),
        None => match listed() {
            Some(names) if !names.is_empty() => {
                let pick = names
                    .iter()
                    .find(|n| n.contains("coder"))
                    .unwrap_or(&names[0]);
                (pick.clone(), None)
            }
            Some(_) => suggested(format!(
                "the server at {base} lists no model: `ollama pull {OLLAMA_SUGGESTED}` (or pass --model)"
            )),
            None => suggested(format!(
                "nothing answered at {base}: start it, and `ollama pull {OLLAMA_SUGGESTED}` (or pass --model)"
            )),
        },
    };
    Choice::New(Provider {
        name,
        kind: "openai",
        base_url: format!("{base}/v1"),
        key_env: None,
        model,
        alias: "local",
        price: None,
        found,
        hint,
    })
}

/// `OLLAMA_HOST` as a base URL: `host`, `host:port` or a URL; no port is
/// 11434, and `0.0.0.0` (listen everywhere) is reached at 127.0.0.1.
fn ollama_base(host: &str) -> Result<String, String> {
    let host = host.trim().trim_end_matches('/');
    let with_scheme = if host.contains("://") {
        host.to_string()
    } else {
        format!("http://{host}")
    };
    let mut url = url::Url::parse(&with_scheme)
        .map_err(|e| format!("OLLAMA_HOST `{host}` is not a host or URL: {e}"))?;
    if url.host_str() == Some("0.0.0.0") {
        let _ = url.set_host(Some("127.0.0.1"));
    }
    if url.port().is_none() && !host.contains("://") {
        let _ = url.set_port(Some(11434));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// A server's base URL without a trailing `/v1` (added back where needed).
fn openai_base(url: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url.trim())
        .map_err(|e| format!("--model-url `{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("--model-url `{url}`: only http and https"));
    }
    let s = parsed.as_str().trim_end_matches('/');
    Ok(s.strip_suffix("/v1").unwrap_or(s).to_string())
}

/// List prices (dollars per million tokens in, out) of the default models.
fn known_price(model: &str) -> Option<(f64, f64)> {
    match model {
        "claude-sonnet-4-5" => Some((3.0, 15.0)),
        "gpt-4.1" => Some((2.0, 8.0)),
        _ => None,
    }
}

/// The model aliases of `repo`'s sidecar.toml: Ok(empty) when there is no
/// file or it defines none; Err when it does not parse (init then leaves it
/// and the coder alone).
pub fn existing_models(repo: &Path) -> Result<Vec<String>, String> {
    let path = repo.join(".cairn/sidecar.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    Ok(table
        .get("models")
        .and_then(toml::Value::as_table)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default())
}

/// Whether `repo`'s sidecar.toml defines nothing (absent, or only
/// comments, as `cairn init` writes it without a model): init may replace it.
pub fn sidecar_is_blank(repo: &Path) -> bool {
    match std::fs::read_to_string(repo.join(".cairn/sidecar.toml")) {
        Err(_) => true,
        Ok(text) => toml::from_str::<toml::Table>(&text).is_ok_and(|t| t.is_empty()),
    }
}

/// The `sidecar.toml` declaring `p`, followed by `reference` (the commented
/// examples of every other setting).
pub fn sidecar_toml(p: &Provider, reference: &str) -> String {
    let mut s = format!(
        "# Written by `cairn init`, which found that {}. The coder agent uses\n\
         # the model `{}`; the commented examples below show every other setting.\n\n",
        p.found, p.alias
    );
    s.push_str(&declaration(p));
    s.push_str("\n# ---- Reference: every setting, as commented examples ----\n\n");
    s.push_str(reference);
    s
}

/// The TOML declaring `p`'s provider, model alias and price.
pub fn declaration(p: &Provider) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "[providers.{}]\nkind = \"{}\"\nbase_url = \"{}\"\n",
        p.name, p.kind, p.base_url
    ));
    if let Some(key) = p.key_env {
        s.push_str(&format!("api_key_env = \"{key}\"\n"));
    }
    s.push_str(&format!(
        "\n[models.{}]\nprovider = \"{}\"\nmodel = \"{}\"\n",
        p.alias, p.name, p.model
    ));
    if let Some((input, output)) = p.price {
        s.push_str(&format!(
            "\n# Dollars per million tokens, for dollar budgets.\n[prices.\"{}\"]\ninput = {input:?}\noutput = {output:?}\n",
            p.model
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn nothing(_: &str) -> Option<Vec<String>> {
        None
    }

    /// The new provider found with only these variables set (no flags, no
    /// sidecar.toml), `probe` answering for servers.
    fn found(vars: &'static [(&'static str, &'static str)], probe: Probe) -> Provider {
        new(choose(&Ask::default(), &[], &env(vars), probe).unwrap())
    }

    fn new(c: Option<Choice>) -> Provider {
        match c {
            Some(Choice::New(p)) => p,
            other => panic!("expected a new provider, got {other:?}"),
        }
    }

    #[test]
    fn nothing_found_is_no_model() {
        let c = choose(&Ask::default(), &[], &env(&[]), &nothing).unwrap();
        assert_eq!(c, None);
        // An empty key is no key.
        let c = choose(
            &Ask::default(),
            &[],
            &env(&[("OPENAI_API_KEY", " ")]),
            &nothing,
        )
        .unwrap();
        assert_eq!(c, None);
    }

    #[test]
    fn keys_in_the_environment_pick_their_provider_anthropic_first() {
        let both = env(&[("OPENAI_API_KEY", "sk-o"), ("ANTHROPIC_API_KEY", "sk-a")]);
        let p = new(choose(&Ask::default(), &[], &both, &nothing).unwrap());
        assert_eq!(
            (p.name, p.kind, p.alias),
            ("anthropic", "anthropic", "smart")
        );
        assert_eq!(p.base_url, "https://api.anthropic.com/v1");
        assert_eq!(p.key_env, Some("ANTHROPIC_API_KEY"));
        assert_eq!(p.price, Some((3.0, 15.0)));
        assert!(p.paid());

        let openai = env(&[
            ("OPENAI_API_KEY", "sk-o"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1"),
        ]);
        let ask = Ask {
            model: Some("gpt-x".into()),
            ..Ask::default()
        };
        let p = new(choose(&ask, &[], &openai, &nothing).unwrap());
        assert_eq!((p.name, p.model.as_str()), ("openai", "gpt-x"));
        assert_eq!(p.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(p.price, None);
    }

    #[test]
    fn an_existing_sidecar_wins_over_the_environment() {
        let keyed = env(&[("OPENAI_API_KEY", "sk")]);
        let models = vec!["fast".to_string(), "smart".to_string()];
        let c = choose(&Ask::default(), &models, &keyed, &nothing).unwrap();
        assert_eq!(
            c,
            Some(Choice::Existing {
                alias: "smart".into()
            })
        );
        let ask = Ask {
            model: Some("fast".into()),
            ..Ask::default()
        };
        let c = choose(&ask, &models, &keyed, &nothing).unwrap();
        assert_eq!(c.unwrap().alias(), "fast");
        let ask = Ask {
            model: Some("nope".into()),
            ..Ask::default()
        };
        let e = choose(&ask, &models, &keyed, &nothing).unwrap_err();
        assert!(
            e.contains("defines no such model (it has fast, smart)"),
            "{e}"
        );
        let c = choose(&Ask::default(), &["x".into()], &keyed, &nothing).unwrap();
        assert_eq!(c.unwrap().alias(), "x");
    }

    #[test]
    fn ollama_is_found_by_its_host_or_its_answer_and_a_coder_model_preferred() {
        let pulled = |base: &str| {
            (base == "http://10.0.0.5:11434")
                .then(|| vec!["llama3:8b".to_string(), "qwen2.5-coder:14b".to_string()])
        };
        let p = found(&[("OLLAMA_HOST", "10.0.0.5")], &pulled);
        assert_eq!((p.name, p.alias), ("ollama", "local"));
        assert_eq!(p.base_url, "http://10.0.0.5:11434/v1");
        assert_eq!(p.model, "qwen2.5-coder:14b");
        assert!(!p.paid());
        assert_eq!(p.hint, None);

        // The default address, when something answers there.
        let local = |base: &str| (base == OLLAMA_DEFAULT).then(|| vec!["llama3:8b".to_string()]);
        let asked = std::cell::Cell::new(0);
        let counted = |base: &str| {
            asked.set(asked.get() + 1);
            local(base)
        };
        let p = found(&[], &counted);
        assert_eq!(p.model, "llama3:8b");
        assert_eq!(asked.get(), 1, "the server is asked once");
        assert!(p.found.contains("answers at http://127.0.0.1:11434"));

        // Set but silent: configured anyway, with what to do.
        let p = found(&[("OLLAMA_HOST", "0.0.0.0:8080")], &nothing);
        assert_eq!(p.base_url, "http://127.0.0.1:8080/v1");
        assert_eq!(p.model, OLLAMA_SUGGESTED);
        assert!(p.hint.unwrap().contains("nothing answered"));

        // Nothing pulled.
        let empty = |_: &str| Some(Vec::new());
        let p = found(&[("OLLAMA_HOST", "http://box:1234/")], &empty);
        assert_eq!(p.base_url, "http://box:1234/v1");
        assert!(p.hint.unwrap().contains("lists no model"));
    }

    #[test]
    fn a_model_url_is_a_keyless_openai_server() {
        let ask = Ask {
            model_url: Some("http://127.0.0.1:8081/v1/".into()),
            model: Some("m".into()),
        };
        let p = new(choose(&ask, &["smart".into()], &env(&[]), &nothing).unwrap());
        assert_eq!(p.base_url, "http://127.0.0.1:8081/v1");
        assert_eq!((p.model.as_str(), p.key_env), ("m", None));
        let bad = Ask {
            model_url: Some("ftp://x".into()),
            model: None,
        };
        assert!(
            choose(&bad, &[], &env(&[]), &nothing)
                .unwrap_err()
                .contains("only http and https")
        );
        assert!(ollama_base("http://[::1").is_err());
    }

    #[test]
    fn the_generated_sidecar_parses_and_declares_the_provider() {
        let p = found(&[("ANTHROPIC_API_KEY", "k")], &nothing);
        let text = sidecar_toml(&p, super::super::scaffold::SIDECAR_TOML);
        let config =
            crate::sidecar::config::Config::parse(&text, "sidecar.toml", &|_| Some("k".into()))
                .unwrap();
        assert_eq!(config.models["smart"].model, "claude-sonnet-4-5");
        assert_eq!(config.providers["anthropic"].name, "anthropic");
        assert_eq!(config.price("claude-sonnet-4-5").output, 15.0);
    }
}
