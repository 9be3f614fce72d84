//! In process, warm code cache: one `echo` dispatch (instantiate, run,
//! collect and parse the reply) against two baselines measured in the same
//! run: a bare wasmtime instantiate-and-call of a module with no imports
//! (the floor any host sits on), and `cat` as a subprocess fed the same
//! dispatch (what a shell-spawning agent pays per step).
//!
//! `cargo bench --bench dispatch`

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use cairn::dispatch::{Dispatch, Kind};
use cairn::guest_ref::GuestRef;
use cairn::invoke;
use cairn::sandbox::{Limits, Sandbox, SandboxConfig};
use criterion::{Criterion, criterion_group, criterion_main};

fn echo(c: &mut Criterion) {
    let data = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(&SandboxConfig {
        code_dir: data.path().join("code"),
        slots: 64,
    })
    .unwrap();
    let guest = sandbox
        .load(&GuestRef::parse("echo").unwrap().source().unwrap())
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dispatch = Dispatch::new("bench", Kind::a2a(), "hello".into(), None);
    let stdin = dispatch.to_stdin();

    let mut group = c.benchmark_group("echo");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("cairn dispatch (in process)", |b| {
        b.iter(|| {
            let outcome = rt
                .block_on(invoke::dispatch(
                    &sandbox,
                    &guest,
                    dispatch.clone(),
                    ws.path(),
                    Limits::default(),
                ))
                .unwrap();
            assert_eq!(outcome.reply.text, "echo (a2a): hello");
        })
    });

    // The floor: wasmtime alone, pooled, instantiating a module that imports
    // nothing and calling its `_start`, no WASI context and no output.
    {
        use wasmtime::{
            Config, Engine, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig,
            Store,
        };
        let mut config = Config::new();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(
            PoolingAllocationConfig::new(),
        ));
        let engine = Engine::new(&config).unwrap();
        let wasm = wat::parse_str(
            r#"(module (memory (export "memory") 1) (func (export "_start") (i32.store (i32.const 0) (i32.const 42))))"#,
        )
        .unwrap();
        let module = Module::new(&engine, wasm).unwrap();
        let pre = Linker::<()>::new(&engine).instantiate_pre(&module).unwrap();
        group.bench_function("bare wasmtime instantiate+call (baseline)", |b| {
            b.iter(|| {
                let mut store = Store::new(&engine, ());
                let instance = pre.instantiate(&mut store).unwrap();
                let start = instance
                    .get_typed_func::<(), ()>(&mut store, "_start")
                    .unwrap();
                start.call(&mut store, ()).unwrap();
            })
        });
    }

    group.bench_function("cat subprocess (baseline)", |b| {
        b.iter(|| {
            let mut child = Command::new("cat")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&stdin).unwrap();
            let mut out = Vec::new();
            child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
            child.wait().unwrap();
            assert_eq!(out.len(), stdin.len());
        })
    });
    group.finish();
}

criterion_group!(benches, echo);
criterion_main!(benches);
