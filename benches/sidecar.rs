//! The sidecar's cost, side by side with calling the upstream directly in
//! the same run. The upstream is the scripted fake (in this process, its own
//! runtime); the sidecar is a real `cairn sidecar` process with a budget and
//! a price on the model, so every call takes the whole path: key check,
//! budget reservation and settlement, metrics, a usage row in SQLite.
//!
//! - **Added latency** at 1,000 requests/s, open loop (a request is sent on
//!   schedule whether or not earlier ones finished), non-streaming and
//!   streaming: median and p99 of direct and through the sidecar; and, when
//!   `nginx` is installed (Debian's `nginx-light`), through nginx as a plain
//!   reverse proxy (one worker, upstream keep-alive, no buffering): the cost
//!   of the extra hop alone, with no work done on the calls.
//! - **Throughput** with 64 concurrent clients (closed loop).
//! - **Memory** of the sidecar process (RSS) over 100,000 requests.
//!
//! `cargo bench --bench sidecar` (about 1 minute)

mod common;
#[path = "../tests/it/upstream.rs"]
mod upstream;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use upstream::{Behavior, Upstream};

const KEY: &str = "sk-bench";
const RATE: u64 = 1000;
const SECONDS: u64 = 6;

struct Target {
    url: String,
    key: Option<&'static str>,
}

fn body(stream: bool) -> String {
    serde_json::json!({
        "model": "small",
        "stream": stream,
        "max_tokens": 64,
        "messages": [
            { "role": "system", "content": "You are a careful assistant." },
            { "role": "user", "content": "Say hello to the benchmark in one short sentence." }
        ]
    })
    .to_string()
}

async fn call(client: &reqwest::Client, t: &Target, body: &str) -> Duration {
    let started = Instant::now();
    let mut req = client
        .post(&t.url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = t.key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.expect("request");
    assert!(resp.status().is_success(), "status {}", resp.status());
    let bytes = resp.bytes().await.expect("body");
    assert!(!bytes.is_empty());
    started.elapsed()
}

/// Open loop at `RATE` per second for `SECONDS`: latencies, sorted.
fn open_loop(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    t: Arc<Target>,
    stream: bool,
) -> Vec<Duration> {
    let body = Arc::new(body(stream));
    rt.block_on(async {
        // Warm the connection pool.
        for _ in 0..200 {
            call(client, &t, &body).await;
        }
        let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::new();
        for _ in 0..RATE * SECONDS {
            ticker.tick().await;
            let (client, t, body) = (client.clone(), t.clone(), body.clone());
            tasks.push(tokio::spawn(async move { call(&client, &t, &body).await }));
        }
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            out.push(task.await.expect("task"));
        }
        out.sort();
        out
    })
}

/// Closed loop: `clients` callers, each sending its next request when the
/// last one finished, `total` requests in all. Requests per second.
fn closed_loop(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    t: Arc<Target>,
    clients: usize,
    total: usize,
    mut every: impl FnMut(usize),
) -> f64 {
    let body = Arc::new(body(false));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    rt.block_on(async {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                let (client, t, body, done) =
                    (client.clone(), t.clone(), body.clone(), done.clone());
                tokio::spawn(async move {
                    while done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                        call(&client, &t, &body).await;
                    }
                })
            })
            .collect();
        let mut reported = 0;
        while !workers.iter().all(|w| w.is_finished()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let n = done.load(std::sync::atomic::Ordering::Relaxed).min(total);
            if n / 10_000 > reported {
                reported = n / 10_000;
                every(n);
            }
        }
    });
    total as f64 / started.elapsed().as_secs_f64()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Sidecar {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sidecar(up: &Upstream) -> Sidecar {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "[providers.up]\nkind = \"openai\"\nbase_url = \"{}/v1\"\n\
             [models.small]\nprovider = \"up\"\nmodel = \"fake-small\"\n\
             [prices.fake-small]\ninput = 0.15\noutput = 0.60\n\
             [budgets.global]\nusd_per_month = 1000000\ntokens_per_day = 1000000000000\n\
             [agents.bench]\nkey_env = \"CAIRN_BENCH_KEY\"\n",
            up.url
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["sidecar", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("CAIRN_DATA_DIR", dir.path().join("data"))
        .env("CAIRN_BENCH_KEY", KEY)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line.trim().rsplit(' ').next().unwrap().to_string();
    Sidecar {
        child,
        base,
        _dir: dir,
    }
}

/// nginx as a plain reverse proxy to the fake upstream, when installed.
struct Nginx {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nginx(up: &Upstream) -> Option<Nginx> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let upstream = up.url.trim_start_matches("http://");
    let d = dir.path().display();
    let config = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;\n\
         error_log {d}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
           access_log off;\n\
           client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
           upstream up {{ server {upstream}; keepalive 512; }}\n\
           server {{\n\
             listen 127.0.0.1:{port};\n\
             location / {{\n\
               proxy_pass http://up;\n\
               proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n\
               proxy_buffering off;\n\
             }}\n\
           }}\n\
         }}\n"
    );
    let file = dir.path().join("nginx.conf");
    std::fs::write(&file, config).unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&file)
        .arg("-p")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // Ready when it accepts.
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(5) {
            eprintln!("nginx did not start; see {d}/error.log");
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Nginx {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    })
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let up = Upstream::start();
    up.record(false);
    up.set_default(Behavior::reply(
        "Hello, benchmark: this is a short streamed sentence of twelve words.",
    ));
    let sidecar = start_sidecar(&up);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let direct = Arc::new(Target {
        url: format!("{}/v1/chat/completions", up.url),
        key: None,
    });
    let via = Arc::new(Target {
        url: format!("{}/chat/completions", sidecar.base),
        key: Some(KEY),
    });

    let nginx = start_nginx(&up);
    let floor = nginx.as_ref().map(|n| {
        Arc::new(Target {
            url: format!("{}/v1/chat/completions", n.base),
            key: None,
        })
    });
    if nginx.is_none() {
        println!("(nginx is not installed: no reverse-proxy floor; apt-get install nginx-light)");
    }

    println!("added latency at {RATE} requests/s, {SECONDS} s each, open loop:");
    for stream in [false, true] {
        let d = open_loop(&rt, &client, direct.clone(), stream);
        let s = open_loop(&rt, &client, via.clone(), stream);
        let name = if stream { "streaming" } else { "non-streaming" };
        println!(
            "  {name:14} direct p50 {:7.0} µs p99 {:7.0} µs | sidecar p50 {:7.0} µs p99 {:7.0} µs | added p50 {:6.0} µs p99 {:6.0} µs",
            us(pct(&d, 0.5)),
            us(pct(&d, 0.99)),
            us(pct(&s, 0.5)),
            us(pct(&s, 0.99)),
            us(pct(&s, 0.5)) - us(pct(&d, 0.5)),
            us(pct(&s, 0.99)) - us(pct(&d, 0.99)),
        );
        if let Some(f) = &floor {
            let n = open_loop(&rt, &client, f.clone(), stream);
            println!(
                "  {:14} nginx  p50 {:7.0} µs p99 {:7.0} µs | added by nginx p50 {:6.0} µs p99 {:6.0} µs",
                "",
                us(pct(&n, 0.5)),
                us(pct(&n, 0.99)),
                us(pct(&n, 0.5)) - us(pct(&d, 0.5)),
                us(pct(&n, 0.99)) - us(pct(&d, 0.99)),
            );
        }
    }
    drop(nginx);

    println!("throughput, 64 concurrent clients, 20,000 requests:");
    let d = closed_loop(&rt, &client, direct.clone(), 64, 20_000, |_| {});
    let s = closed_loop(&rt, &client, via.clone(), 64, 20_000, |_| {});
    println!("  direct {d:8.0} requests/s | sidecar {s:8.0} requests/s");

    println!("sidecar memory over 100,000 requests (64 clients):");
    let pid = sidecar.child.id();
    let mut samples = vec![(0usize, common::rss_kib(pid))];
    closed_loop(&rt, &client, via, 64, 100_000, |n| {
        samples.push((n, common::rss_kib(pid)))
    });
    samples.push((100_000, common::rss_kib(pid)));
    let line: Vec<String> = samples
        .iter()
        .map(|(n, kib)| format!("{}k: {:.1} MiB", n / 1000, *kib as f64 / 1024.0))
        .collect();
    println!("  RSS {}", line.join(", "));
}
