// Many dispatches at once in one process, through the library.

use std::sync::Arc;

use cairn::dispatch::{Dispatch, Kind};
use cairn::guest_ref::GuestRef;
use cairn::invoke;
use cairn::sandbox::{Limits, Sandbox, SandboxConfig};

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
