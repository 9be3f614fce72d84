//! The scheduler with 10,000 registered jobs, beside a daemon with none
//! run side by side: idle CPU (over a quiet 40 s, between minute
//! boundaries), resident memory per registered job, and fire lateness
//! (dispatch accepted minus its scheduled instant) of 8 jobs firing every
//! minute among the 10,000, over 3 minutes.
//!
//! `cargo bench --bench schedule` (about 4 minutes)

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod common;
use common::{Up, rss_kib, up};

const JOBS: usize = 10_000;
const EVERY_MINUTE: usize = 8;

/// CPU time (user + system) of a process, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn up_with(jobs: usize) -> Up {
    up(
        |repo| {
            let dir = repo.join(".cairn/agents/echo/jobs");
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..jobs {
                // A few fire every minute; the rest once a year (1 January).
                let schedule = if i < EVERY_MINUTE {
                    "* * * * *".to_string()
                } else {
                    format!("{} {} 1 1 *", i % 60, (i / 60) % 24)
                };
                std::fs::write(
                    dir.join(format!("job-{i:05}.md")),
                    format!(
                        "---\nschedule: \"{schedule}\"\n---\nJob {i}: look at the repository.\n"
                    ),
                )
                .unwrap();
            }
        },
        &["--max-jobs", "64"],
    )
}

fn wait_ready(url: &str) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let _ = s.write_all(
                b"GET /health/ready HTTP/1.1\r\nHost: cairn\r\nConnection: close\r\n\r\n",
            );
            let mut head = [0u8; 12];
            if s.read_exact(&mut head).is_ok() && head.ends_with(b"200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sleeps until `second` past the next minute boundary.
fn until_second(second: i64) {
    let now = now_ms();
    let mut target = now - now.rem_euclid(60_000) + second * 1000;
    if target <= now {
        target += 60_000;
    }
    std::thread::sleep(Duration::from_millis((target - now) as u64));
}

fn lateness(data: &Path) -> Vec<i64> {
    let db = rusqlite::Connection::open(data.join("cairn.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT created_at - json_extract(dispatch, '$.metadata.\"cairn.scheduled\"') FROM tasks WHERE kind LIKE 'job:%'")
        .unwrap();
    let mut v: Vec<i64> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    v.sort();
    v
}

fn main() {
    let started = std::time::Instant::now();
    let base = up_with(0);
    let many = up_with(JOBS);
    wait_ready(&base.url);
    wait_ready(&many.url);
    let load = started.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let (rss_base, rss_many) = (rss_kib(base.child.id()), rss_kib(many.child.id()));

    // Idle: from :10 to :50, away from the every-minute fires.
    until_second(10);
    let (b0, m0) = (cpu_ticks(base.child.id()), cpu_ticks(many.child.id()));
    std::thread::sleep(Duration::from_secs(40));
    let (b1, m1) = (cpu_ticks(base.child.id()), cpu_ticks(many.child.id()));

    // Lateness over the next three minute boundaries.
    until_second(5);
    until_second(5);
    until_second(5);
    let late = lateness(many.data.path());
    let median = late[late.len() / 2];
    let p99 = late[((late.len() as f64 - 1.0) * 0.99).round() as usize];

    println!("scheduler with {JOBS} registered jobs, beside a daemon with none (same run):");
    println!(
        "  start to ready (both)                   {:>8.2} s",
        load.as_secs_f64()
    );
    println!(
        "  idle CPU over 40 s                      {:>8.2} % (none: {:.2} %)",
        (m1 - m0) as f64 / 40.0,
        (b1 - b0) as f64 / 40.0
    );
    println!(
        "  resident memory                         {:>8.1} MiB (none: {:.1} MiB)",
        rss_many as f64 / 1024.0,
        rss_base as f64 / 1024.0
    );
    println!(
        "  memory per registered job               {:>8.2} KiB",
        (rss_many.saturating_sub(rss_base)) as f64 / JOBS as f64
    );
    println!(
        "  fire lateness ({} fires)                {:>8} ms median, {} ms p99",
        late.len(),
        median,
        p99
    );
}
