// Dispatches through the library: many at once, and limits finer than the CLI's.

use std::sync::Arc;

use cairn::dispatch::{Dispatch, Kind};
use cairn::guest_ref::GuestRef;
use cairn::invoke;
use cairn::sandbox::{GuestFailure, GuestSource, Limits, Sandbox, SandboxConfig};

#[test]
fn a_thousand_echo_dispatches_at_once_all_succeed() {
    let data = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let sandbox = Arc::new(
        Sandbox::new(&SandboxConfig {
            code_dir: data.path().join("code"),
            slots: 1000,
        })
        .unwrap(),
    );
    assert!(sandbox.pooled(), "the pool for 1000 guests is reserved");
    let guest_ref = GuestRef::parse("echo").unwrap();
    let guest = sandbox.load(&guest_ref.source().unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let replies = rt.block_on(async {
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let (sandbox, guest, ws) =
                    (sandbox.clone(), guest.clone(), ws.path().to_path_buf());
                tokio::spawn(async move {
                    let d = Dispatch::new("load", Kind::a2a(), format!("n{i}"), None);
                    invoke::dispatch(&sandbox, &guest, d, &ws, Limits::default()).await
                })
            })
            .collect();
        let mut replies = Vec::new();
        for t in tasks {
            let outcome = t.await.unwrap().unwrap();
            assert_eq!(outcome.result, Ok(()));
            replies.push(outcome.reply.text);
        }
        replies
    });
    assert_eq!(replies.len(), 1000);
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r, &format!("echo (a2a): n{i}"));
    }
}

#[test]
fn a_guest_blocked_in_a_host_call_is_stopped_at_its_deadline() {
    let data = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(&SandboxConfig {
        code_dir: data.path().join("code"),
        slots: 1,
    })
    .unwrap();
    let wat = std::fs::read(crate::wat("block.wat")).unwrap();
    let guest = sandbox
        .load(&GuestSource {
            name: "block".into(),
            origin: "wat/block.wat".into(),
            bytes: wat.into(),
            path: None,
            sha256: None,
        })
        .unwrap();
    let deadline = std::time::Duration::from_millis(300);
    let limits = Limits {
        deadline,
        ..Limits::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = rt.block_on(async {
        let d = Dispatch::new("test", Kind::a2a(), String::new(), None);
        let run = invoke::dispatch(&sandbox, &guest, d, ws.path(), limits);
        // The guest waits an hour; a minute means the deadline did not fire.
        tokio::time::timeout(std::time::Duration::from_secs(60), run)
            .await
            .expect("the blocked guest was not stopped")
            .unwrap()
    });
    assert_eq!(outcome.result, Err(GuestFailure::Deadline(deadline)));
}
