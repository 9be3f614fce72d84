//! The tool broker's own cost per `run`: the whole path a guest's call
//! takes (request parsing, policy, temp dir, the step boundary on a
//! 100,000-file workspace with its watcher, the confined command, the step's
//! detail, the answer) beside, in the same run and alternating, the same
//! confined command run directly. The difference is the host's overhead
//! per tool call, excluding the command itself.
//!
//! `cargo bench --bench broker` (the tree is generated once, shared with
//! the timeline bench).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn::agents::config::Tools;
use cairn::broker::{Broker, confine};
use cairn::data_dir::DataDir;
use cairn::invoke::Marks;
use cairn::sandbox::LocalHttp;
use cairn::timeline::Timeline;

mod common;

const CALLS: usize = 300;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let root = common::bench_root();
    let tree = root.join("tree");
    common::generate(&tree);
    let tree = tree.canonicalize().unwrap();
    let data_root = root.join("broker-data");
    let _ = std::fs::remove_dir_all(&data_root);
    let data = DataDir::resolve(Some(&data_root)).unwrap();
    let mut timeline = Timeline::open(&data, &tree, true).unwrap();
    let active = timeline.begin("bench", "bench", "job:bench").unwrap();
    let marks = Marks::new(timeline, active);
    let support = Arc::new(confine::Support::detect());
    let tools = Tools {
        policy: confine::Policy {
            mode: confine::Mode::WorkspaceWrite,
            allow: vec!["true".into()],
            timeout: Duration::from_secs(60),
            output_cap: 64 << 10,
            network: false,
            accept_unconfined: true,
            max_processes: 256,
            env_pass: Vec::new(),
        },
        validate: Vec::new(),
        retry_on_fail: 0,
    };
    let temp_root = data_root.join("tmp");
    std::fs::create_dir_all(&temp_root).unwrap();
    let broker = Arc::new(Broker {
        support: support.clone(),
        tools: Some(tools.clone()),
        agent: "bench".into(),
        workspace: tree.clone(),
        temp_root: temp_root.clone(),
        marks: marks.clone(),
        steps: Default::default(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let policy = tools.policy.clone();
    let direct = |support: Arc<confine::Support>| {
        let policy = policy.clone();
        let temp_root = temp_root.clone();
        let tree = tree.clone();
        async move {
            let temp = tempfile::tempdir_in(&temp_root).unwrap();
            let req = confine::Request {
                argv: vec!["true".into()],
                workspace: tree,
                temp: temp.path().to_path_buf(),
                timeout: None,
            };
            let out = confine::run(&support, &policy, &req).await.unwrap();
            assert_eq!(out.exit, Some(0));
        }
    };
    let call = |broker: Arc<Broker>| async move {
        let req = http::Request::post("http://broker.cairn.internal/v1/run")
            .body(Bytes::from_static(br#"{"argv":["true"]}"#))
            .unwrap();
        let resp = broker.call(req).await;
        assert_eq!(resp.status(), 200);
    };
    let (mut full, mut base, mut overhead) = (Vec::new(), Vec::new(), Vec::new());
    rt.block_on(async {
        for i in 0..CALLS + 20 {
            let t = Instant::now();
            call(broker.clone()).await;
            let f = t.elapsed();
            let t = Instant::now();
            direct(support.clone()).await;
            let b = t.elapsed();
            if i >= 20 {
                full.push(f);
                base.push(b);
                overhead.push(f.saturating_sub(b));
            }
        }
    });
    for v in [&mut full, &mut base, &mut overhead] {
        v.sort();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "tool broker, {CALLS} runs of `true` on a {}-file workspace ({}):",
        common::DIRS * common::PER_DIR,
        support
            .describe()
            .join("; ")
            .chars()
            .take(60)
            .collect::<String>()
    );
    println!(
        "  through the broker (step boundary included)  median {:>7.2} ms  p99 {:>7.2} ms",
        ms(percentile(&full, 0.5)),
        ms(percentile(&full, 0.99))
    );
    println!(
        "  the confined command alone (baseline)        median {:>7.2} ms  p99 {:>7.2} ms",
        ms(percentile(&base, 0.5)),
        ms(percentile(&base, 0.99))
    );
    println!(
        "  host overhead per tool call                  median {:>7.2} ms  p99 {:>7.2} ms",
        ms(percentile(&overhead, 0.5)),
        ms(percentile(&overhead, 0.99))
    );
}
