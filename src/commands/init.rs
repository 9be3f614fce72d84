//! `cairn init [DIR]`: scaffolds `.cairn/` with an `echo` agent that works
//! with no API key, commented examples of everything else, and, when a
//! model is configured (an API key in the environment, a local Ollama, or
//! models in an existing sidecar.toml; see [`crate::agents::setup`]), the
//! `coder` agent.

use std::path::PathBuf;
use std::time::Duration;

use crate::agents::setup::{self, Ask, Choice};
use crate::error::Failure;

#[derive(clap::Args, Default)]
pub struct InitCommand {
    /// The repository [default: the current directory]
    pub dir: Option<PathBuf>,
    /// The coder's model: an alias of an existing .cairn/sidecar.toml, or
    /// the provider's model name
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// An OpenAI-compatible server for the coder (an Ollama, llama.cpp or
    /// vLLM), keyless, e.g. http://127.0.0.1:11434
    #[arg(long, value_name = "URL")]
    pub model_url: Option<String>,
}

impl InitCommand {
    pub fn execute(self) -> Result<(), Failure> {
        let dir = match self.dir {
            Some(d) => d,
            None => std::env::current_dir()
                .map_err(|e| Failure::Usage(format!("the current directory: {e}")))?,
        };
        if !dir.is_dir() {
            return Err(Failure::Usage(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        let ask = Ask {
            model: self.model,
            model_url: self.model_url,
        };
        let model = find_model(&dir, &ask)?;
        let bundled = crate::guest_ref::has_coder();
        let coder = model.as_ref().filter(|_| bundled);
        let written = crate::agents::scaffold::scaffold(&dir, coder)
            .map_err(|e| Failure::Usage(format!("{e:#}")))?;
        for p in &written {
            println!("created {}", p.strip_prefix(&dir).unwrap_or(p).display());
        }
        let wrote_coder = written
            .iter()
            .any(|p| p.ends_with(".cairn/agents/coder/agent.toml"));
        match (&model, bundled) {
            (None, _) => println!(
                "no model found (ANTHROPIC_API_KEY, OPENAI_API_KEY, OLLAMA_HOST or an Ollama on \
                 127.0.0.1:11434; or --model-url): only the echo agent, which needs none"
            ),
            (Some(_), false) => println!(
                "this cairn was built without the coder guest (rustup target add wasm32-wasip2, \
                 then build cairn again): only the echo agent"
            ),
            (Some(m), true) if wrote_coder => {
                println!("the coder agent uses the model {}", m.describe());
                if let Choice::New(p) = m {
                    let declared = written.iter().any(|w| w.ends_with(".cairn/sidecar.toml"));
                    if !declared {
                        println!(
                            "before it can work: .cairn/sidecar.toml is yours and was left as it \
                             is; add the coder's model to it:\n\n{}",
                            setup::declaration(p)
                        );
                    }
                    if let Some(hint) = &p.hint {
                        println!("before it can work: {hint}");
                    }
                }
            }
            (Some(_), true) => println!(".cairn/agents/coder exists: left as it is"),
        }
        println!("next: cairn up --repo {}", dir.display());
        Ok(())
    }
}

/// The coder's model, from the repository's sidecar.toml, the flags and the
/// environment. A sidecar.toml that does not parse is reported and leaves
/// the coder out (its models cannot be known).
fn find_model(dir: &std::path::Path, ask: &Ask) -> Result<Option<Choice>, Failure> {
    let models = match setup::existing_models(dir) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("warning: {e}: the coder agent needs a model from it; not written");
            return Ok(None);
        }
    };
    let env = |name: &str| std::env::var(name).ok();
    setup::choose(ask, &models, &env, &served_models).map_err(Failure::Usage)
}

/// The models an OpenAI-compatible server at `base` lists (`GET
/// /v1/models`: Ollama's pulled models, llama.cpp's and vLLM's loaded
/// one), or None when nothing answers within a second.
fn served_models(base: &str) -> Option<Vec<String>> {
    let url = format!("{base}/v1/models");
    let ask = async move {
        let client = crate::web::client_builder()
            .timeout(Duration::from_secs(1))
            .build()
            .ok()?;
        let answer = client.get(&url).send().await.ok()?;
        if !answer.status().is_success() {
            return None;
        }
        let body = answer.bytes().await.ok()?;
        let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let names = v["data"]
            .as_array()?
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_string))
            .collect();
        Some(names)
    };
    crate::commands::block_on(ask).ok().flatten()
}
