//! echo-rs: cairn's Rust test guest, a `wasm32-wasip2` component.
//!
//! It follows the guest contract (docs/guest-contract.md):
//!
//! 1. parses the dispatch (one JSON object on stdin) with serde_json;
//! 2. logs `echo-rs: dispatch <id>` on stderr;
//! 3. writes the event `{"type":"progress","message":"read dispatch <id>"}`;
//! 4. if the prompt is exactly `fail`, exits right there with
//!    `std::process::exit(3)`. Note: WASI 0.2's `wasi:cli/exit` only tells
//!    success from failure, so the host sees exit code **1**, not 3;
//! 5. if the prompt starts with `write `, writes the rest of it to
//!    `/workspace/echo-rs.txt`;
//! 6. counts the entries of `/workspace`;
//! 7. writes the final event
//!    `{"type":"final","text":"echo-rs (<kind>): <prompt>","data":{"workspace_entries":N}}`.
//!
//! A dispatch it cannot read or parse, or an I/O error: a line on stderr and
//! a failing exit.
//!
//! Build: `cargo build --release --target wasm32-wasip2`.

use std::io::{self, Read, Write};
use std::process::ExitCode;

use serde::{Deserialize, Serialize};

const WORKSPACE: &str = "/workspace";

/// The fields of the dispatch this guest uses; the others are ignored.
#[derive(Debug, Deserialize)]
struct Dispatch {
    id: String,
    kind: String,
    prompt: String,
}

/// An event on stdout; serialized with `type` first, then the fields in order.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Event {
    Progress { message: String },
    Final { text: String, data: FinalData },
}

#[derive(Debug, Serialize)]
struct FinalData {
    workspace_entries: usize,
}

/// Write one event as one line of stdout, flushed.
fn emit(out: &mut impl Write, event: &Event) -> Result<(), String> {
    let mut line = serde_json::to_vec(event).map_err(|e| format!("cannot encode an event: {e}"))?;
    line.push(b'\n');
    out.write_all(&line)
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))
}

fn run() -> Result<(), String> {
    let mut input = String::new();
    io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("cannot read the dispatch: {e}"))?;
    let dispatch: Dispatch =
        serde_json::from_str(input.trim_end()).map_err(|e| format!("bad dispatch: {e}"))?;

    eprintln!("echo-rs: dispatch {}", dispatch.id);

    let mut out = io::stdout().lock();
    emit(
        &mut out,
        &Event::Progress {
            message: format!("read dispatch {}", dispatch.id),
        },
    )?;

    if dispatch.prompt == "fail" {
        // The progress event is already flushed; exit without a final event.
        std::process::exit(3);
    }

    if let Some(text) = dispatch.prompt.strip_prefix("write ") {
        let path = format!("{WORKSPACE}/echo-rs.txt");
        std::fs::write(&path, text).map_err(|e| format!("cannot write {path}: {e}"))?;
    }

    let workspace_entries = std::fs::read_dir(WORKSPACE)
        .map_err(|e| format!("cannot list {WORKSPACE}: {e}"))?
        .count();

    emit(
        &mut out,
        &Event::Final {
            text: format!("echo-rs ({}): {}", dispatch.kind, dispatch.prompt),
            data: FinalData { workspace_entries },
        },
    )
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("echo-rs: {message}");
            ExitCode::from(2)
        }
    }
}
