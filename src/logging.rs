//! Logging to stderr with `tracing`: `-v` for info (guests' stderr), `-vv`
//! for debug, `-vvv` for trace; `RUST_LOG` overrides both. Default: warnings.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "warn,cairn=debug",
        _ => "debug,cairn=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .try_init();
}
