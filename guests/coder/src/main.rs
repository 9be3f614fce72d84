//! The `coder` guest's entry point: reads the dispatch on stdin, runs the
//! agent with the `wasi:http` client, and writes the events on stdout.
//!
//! Build: `cargo build --release --target wasm32-wasip2`.

#[cfg(target_os = "wasi")]
fn main() {
    use std::io::{self, Read, Write};

    use coder::agent::{self, Config, Dispatch, Ended};
    use coder::http::WasiHttp;
    use coder::model::Usage;
    use serde_json::Value;

    /// Write one event as one line of stdout, flushed; a guest that cannot
    /// write its events cannot do anything useful, so it stops.
    fn emit(event: Value) {
        let mut out = io::stdout().lock();
        if writeln!(out, "{event}").and_then(|()| out.flush()).is_err() {
            eprintln!("coder: cannot write to stdout");
            std::process::exit(1);
        }
    }

    /// The dispatch and the configuration, or why there is none.
    fn setup() -> Result<Config, String> {
        let mut input = String::new();
        io::stdin()
            .read_to_string(&mut input)
            .map_err(|e| format!("cannot read the dispatch: {e}"))?;
        let dispatch: Dispatch =
            serde_json::from_str(input.trim()).map_err(|e| format!("bad dispatch: {e}"))?;
        Config::new(&dispatch, &|name| std::env::var(name).ok())
    }

    let ended = match setup() {
        Ok(config) => {
            eprintln!(
                "coder: model {}, up to {} turns, broker {}",
                config.model,
                config.max_turns,
                config.broker.as_deref().unwrap_or("none")
            );
            agent::run(&config, &WasiHttp, &mut emit)
        }
        Err(message) => {
            eprintln!("coder: {message}");
            Ended {
                result: Err(message),
                turns: 0,
                tool_calls: 0,
                usage: Usage::default(),
            }
        }
    };
    for event in ended.final_events() {
        emit(event);
    }
    if ended.result.is_err() {
        std::process::exit(1);
    }
}

/// Natively there is no `wasi:http` to reach the model with: the loop and
/// tools are exercised by `cargo test` instead.
#[cfg(not(target_os = "wasi"))]
fn main() {
    eprintln!("coder: a WASI guest; build it with `cargo build --release --target wasm32-wasip2`");
    std::process::exit(2);
}
