//! The daemon as a user runs it: `cairn up` on a scaffolded repository,
//! spoken to over A2A on loopback with a bearer token. Measures idle
//! resident memory, the `SendMessage` round trip to `echo` (median, p99)
//! and throughput at 32 concurrent clients, beside the baseline measured in
//! the same run: the same `echo` dispatch in process (sandbox only, no
//! HTTP, queue, store or timeline). The difference is the share of a round
//! trip spent outside the guest.
//!
//! `cargo bench --bench daemon`

use std::time::{Duration, Instant};

use cairn::dispatch::{Dispatch, Kind};
use cairn::guest_ref::GuestRef;
use cairn::invoke;
use cairn::sandbox::{Limits, Sandbox, SandboxConfig};
use serde_json::{Value, json};

mod common;
use common::rss_kib;

const ROUND_TRIPS: usize = 1000;
const CLIENTS: usize = 32;
const PER_CLIENT: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn send(text: &str) -> String {
    json!({
        "jsonrpc": "2.0", "id": 1, "method": "SendMessage",
        "params": { "message": { "messageId": text, "role": "ROLE_USER", "parts": [{ "text": text }] } }
    })
    .to_string()
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let up = common::up(|_| {}, &[]);
    let (data, url) = (&up.data, up.url.clone());
    let tokens: Value =
        serde_json::from_str(&std::fs::read_to_string(data.path().join("tokens.json")).unwrap())
            .unwrap();
    let token = tokens["invoke"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let endpoint = format!("{url}/a2a/echo");
    let call = |client: reqwest::Client, endpoint: String, token: String, text: String| async move {
        let r = client
            .post(&endpoint)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(send(&text))
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["result"]["task"]["status"]["state"], "TASK_STATE_COMPLETED",
            "{v}"
        );
    };

    // Ready, then idle for a moment.
    rt.block_on(async {
        loop {
            if let Ok(r) = client.get(format!("{url}/health/ready")).send().await
                && r.status() == 200
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(up.child.id());

    // Round trips, one client.
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    rt.block_on(async {
        for i in 0..50 {
            call(
                client.clone(),
                endpoint.clone(),
                token.clone(),
                format!("warm {i}"),
            )
            .await;
        }
        for i in 0..ROUND_TRIPS {
            let t = Instant::now();
            call(
                client.clone(),
                endpoint.clone(),
                token.clone(),
                format!("hello {i}"),
            )
            .await;
            times.push(t.elapsed());
        }
    });
    times.sort();
    let (median, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));

    // Throughput, 32 clients at once.
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let (client, endpoint, token) = (client.clone(), endpoint.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..PER_CLIENT {
                    call(
                        client.clone(),
                        endpoint.clone(),
                        token.clone(),
                        format!("c{c} {i}"),
                    )
                    .await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let elapsed = start.elapsed();
    let throughput = (CLIENTS * PER_CLIENT) as f64 / elapsed.as_secs_f64();
    let loaded = rss_kib(up.child.id());
    drop(up);

    // Baseline: the same guest and dispatch in process.
    let code = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(&SandboxConfig {
        code_dir: code.path().to_path_buf(),
        slots: 4,
    })
    .unwrap();
    let guest = sandbox
        .load(&GuestRef::parse("echo").unwrap().source().unwrap())
        .unwrap();
    let local = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut guest_times = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS + 50 {
        let d = Dispatch::new("echo", Kind::a2a(), format!("hello {i}"), None);
        let t = Instant::now();
        local
            .block_on(invoke::dispatch(
                &sandbox,
                &guest,
                d,
                ws.path(),
                Limits::default(),
            ))
            .unwrap();
        if i >= 50 {
            guest_times.push(t.elapsed());
        }
    }
    guest_times.sort();
    let guest_median = percentile(&guest_times, 0.5);

    println!("daemon (cairn up, echo agent, A2A SendMessage over loopback with a token):");
    println!(
        "  idle resident memory            {:>8.1} MiB",
        idle as f64 / 1024.0
    );
    println!(
        "  resident after the load below   {:>8.1} MiB",
        loaded as f64 / 1024.0
    );
    println!(
        "  round trip, 1 client            median {:>7.0} us   p99 {:>7.0} us   ({ROUND_TRIPS} calls)",
        median.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
    println!(
        "  throughput, {CLIENTS} clients           {throughput:>8.0} dispatches/s ({} calls in {:.2} s)",
        CLIENTS * PER_CLIENT,
        elapsed.as_secs_f64()
    );
    println!(
        "  baseline: echo dispatch in process   median {:>7.0} us",
        guest_median.as_secs_f64() * 1e6
    );
    println!(
        "  share of a round trip outside the guest: {:.0}%",
        100.0 * (1.0 - guest_median.as_secs_f64() / median.as_secs_f64())
    );
}
