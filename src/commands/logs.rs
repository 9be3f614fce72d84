//! `cairn logs [-f]`: recent dispatches, then (with `-f`) every dispatch
//! and step event as it happens, from the daemon's `/events` stream.

use futures_util::StreamExt;
use serde_json::Value;

use crate::commands::status::{Daemon, dispatch_line};
use crate::commands::{Global, block_on, utc};
use crate::daemon::tokens::Scope;
use crate::error::Failure;

#[derive(clap::Args)]
pub struct LogsCommand {
    /// Follow: print events as they happen, until Ctrl-C
    #[arg(long, short)]
    pub follow: bool,
    /// How many recent dispatches to show first
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: u32,
}

fn event_line(e: &Value) -> String {
    let text = |k: &str| e[k].as_str().map(str::to_string);
    let mut line = format!(
        "{}  {:<16}",
        e["at"].as_i64().map(utc).unwrap_or_default(),
        text("type").unwrap_or_default()
    );
    for (k, v) in [
        ("agent", text("agent")),
        ("dispatch", text("dispatch")),
        ("state", text("state")),
        ("step", e["step"].as_i64().map(|s| s.to_string())),
        ("detail", text("detail")),
    ] {
        if let Some(v) = v {
            line.push_str(&format!(" {k}={v}"));
        }
    }
    line
}

impl LogsCommand {
    pub fn execute(self, global: &Global) -> Result<(), Failure> {
        let daemon = Daemon::find(global, Scope::Observe)?;
        block_on(async {
            let list = daemon
                .json(&format!("/dispatches?limit={}", self.limit))
                .await?;
            for d in list["dispatches"].as_array().into_iter().flatten().rev() {
                println!("{}", dispatch_line(d));
            }
            if !self.follow {
                return Ok(());
            }
            let r = daemon
                .get("/events")
                .send()
                .await
                .map_err(|e| Failure::Usage(format!("{}/events: {e}", daemon.running.url)))?;
            if !r.status().is_success() {
                return Err(Failure::Usage(format!(
                    "{}/events: {}",
                    daemon.running.url,
                    r.status()
                )));
            }
            let mut body = r.bytes_stream();
            let mut buf = Vec::new();
            while let Some(chunk) = body.next().await {
                let chunk =
                    chunk.map_err(|e| Failure::Usage(format!("the event stream broke: {e}")))?;
                buf.extend_from_slice(&chunk);
                while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                    let frame: Vec<u8> = buf.drain(..end + 2).collect();
                    for line in String::from_utf8_lossy(&frame).lines() {
                        if let Some(data) = line.strip_prefix("data: ")
                            && let Ok(e) = serde_json::from_str::<Value>(data)
                        {
                            println!("{}", event_line(&e));
                        }
                    }
                }
            }
            Err(Failure::Usage("the daemon closed the event stream".into()))
        })?
    }
}
