//! Guest images against a real registry: push → pull → run, digests,
//! credentials, the layouts other tools publish, and every way a registry
//! or an image can be wrong, each leaving nothing half-written in the cache.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::registry::{Front, PASSWORD, Registry, TOKEN, USER, base64, descriptor, sha256, which};
use crate::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn echo_wasm() -> Vec<u8> {
    wat::parse_file(wat("echo.wat")).unwrap()
}

/// `cairn <args…>` in `env`, its output.
fn cairn(env: &Env, args: &[&str]) -> Output {
    env.cairn().args(args).output().unwrap()
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        stderr(out)
    );
    stdout(out)
}

/// `cairn push <file> <r>` in `env`, which must succeed: the digest it printed.
fn push(env: &Env, file: &std::path::Path, r: &str) -> String {
    ok(&cairn(env, &["push", file.to_str().unwrap(), r]))
        .trim()
        .to_string()
}

/// Every file in the image cache's blob and temporary directories.
fn cached_files(env: &Env) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["images/blobs/sha256", "images/tmp"] {
        if let Ok(entries) = std::fs::read_dir(env.data.path().join(dir)) {
            files.extend(entries.map(|e| e.unwrap().path()));
        }
    }
    files
}

/// After a failed pull: the error, and an empty cache.
#[track_caller]
fn assert_refused_and_clean(env: &Env, out: &Output, parts: &[&str]) {
    assert_one_line_error(out, 3, parts);
    assert_eq!(
        cached_files(env),
        Vec::<PathBuf>::new(),
        "nothing may stay in the cache"
    );
    assert_eq!(stdout(&cairn(env, &["images"])).trim(), "no cached images");
}

#[test]
fn push_pull_and_run_by_reference() {
    let reg = Registry::start();
    let r = format!("{}/guests/echo:1", reg.host());
    let pusher = Env::new();
    let digest = push(&pusher, &wat("echo.wat"), &r);
    let digest = digest.as_str();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );

    let env = Env::new();
    assert_eq!(ok(&cairn(&env, &["pull", &r])).trim(), digest);
    let listed = ok(&cairn(&env, &["images"]));
    assert!(
        listed.contains(&r) && listed.contains(&digest[..19]) && listed.contains("wasip1"),
        "{listed}"
    );

    // Run by tag: from the cache, saying so; the dispatch records the digest.
    let out = env.run(&r, &["hello", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(v["reply"]["text"], "echo (a2a): hello");
    assert_eq!(v["image"]["digest"], digest);
    assert_eq!(v["image"]["from_cache"], true);
    assert!(
        stderr(&out).contains(&format!("{r} is {digest} (from the cache)")),
        "{}",
        stderr(&out)
    );
    let log = ok(&cairn(&env, &["log"]));
    assert!(
        log.contains(&format!("{r}@{digest}")),
        "the run records the digest: {log}"
    );

    // A fresh data directory pulls on first use.
    let fresh = Env::new();
    let out = fresh.run(&r, &["hi"]);
    assert_eq!(ok(&out), "echo (a2a): hi\n");
    assert!(
        stderr(&out).contains(&format!("pulled {r} ({digest})")),
        "{}",
        stderr(&out)
    );
}

/// The coder bundled in the binary is published by its name, and the
/// image runs as the coder (which, run outside a daemon, says it has no
/// model sidecar).
#[test]
fn the_bundled_coder_is_published_as_an_image() {
    let reg = Registry::start();
    let r = format!("{}/cairn/coder:1", reg.host());
    let env = Env::new();
    let digest = ok(&cairn(&env, &["push", "coder", &r])).trim().to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");
    let config = pushed_config(&reg, "cairn/coder", "1");
    assert_eq!(config["os"], "wasip2");
    let out = Env::new().run(&r, &["fix it", "-v"]);
    assert!(
        stderr(&out).contains("OPENAI_BASE_URL is not set"),
        "{}",
        stderr(&out)
    );
    // Neither a file that is not wasm nor an image reference is pushed.
    let junk = env.ws("junk.wasm");
    std::fs::write(&junk, "not wasm").unwrap();
    let out = cairn(&env, &["push", junk.to_str().unwrap(), &r]);
    crate::assert_one_line_error(&out, 2, &["junk.wasm", "not a wasm module"]);
    let out = cairn(&env, &["push", &r, &r]);
    crate::assert_one_line_error(
        &out,
        2,
        &["push takes a .wasm/.wat file or a bundled guest"],
    );
}

#[test]
fn a_component_is_pushed_with_its_world() {
    let reg = Registry::start();
    let r = format!("{}/guests/echo-rs:1", reg.host());
    let env = Env::new();
    let component = crate::component::echo_rs();
    push(&env, &component, &r);
    let v: serde_json::Value =
        serde_json::from_str(&ok(&env.run(&r, &["hello", "--json"]))).unwrap();
    assert_eq!(v["guest"]["shape"], "component");
    let config = pushed_config(&reg, "guests/echo-rs", "1");
    assert_eq!(config["os"], "wasip2");
    let exports: Vec<&str> = config["component"]["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        exports.iter().any(|e| e.starts_with("wasi:cli/run@")),
        "{config}"
    );
    assert!(
        config["component"]["imports"].as_array().unwrap().len() > 1,
        "{config}"
    );
}

/// The manifest and config cairn pushed, read back raw from the registry.
fn pushed_config(reg: &Registry, repo: &str, tag: &str) -> serde_json::Value {
    let (status, _, body) = crate::registry::http(
        reg.port,
        "GET",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Accept", OCI_MANIFEST)],
        b"",
    )
    .unwrap();
    assert_eq!(status, 200);
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let digest = manifest["config"]["digest"].as_str().unwrap();
    let (_, _, body) = crate::registry::http(
        reg.port,
        "GET",
        &format!("/v2/{repo}/blobs/{digest}"),
        &[],
        b"",
    )
    .unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn pinned_digests_are_honoured() {
    let reg = Registry::start();
    let r = format!("{}/guests/pinned:1", reg.host());
    let env = Env::new();
    let first = push(&env, &wat("echo.wat"), &r);
    // The tag moves to another guest; the digest still names the first.
    push(&env, &wat("exit7.wat"), &r);
    let pinned = format!("{}/guests/pinned@{first}", reg.host());
    assert_eq!(
        ok(&env.run(&pinned, &["still echo"])),
        "echo (a2a): still echo\n"
    );
    // Tag and digest together: the digest wins.
    let both = format!("{r}@{first}");
    assert_eq!(ok(&env.run(&both, &["both"])), "echo (a2a): both\n");
    // The tag itself now names exit7.
    assert_eq!(env.run(&r, &["x"]).status.code(), Some(5));
    // A digest the registry does not have.
    let absent = format!("{}/guests/pinned@sha256:{}", reg.host(), "0".repeat(64));
    let out = Env::new().run(&absent, &["x"]);
    assert_one_line_error(&out, 3, &[&absent, "no such tag or digest"]);
}

#[test]
fn the_cache_serves_runs_offline() {
    let mut reg = Registry::start();
    let r = format!("{}/guests/offline:1", reg.host());
    let env = Env::new();
    push(&env, &wat("echo.wat"), &r);
    ok(&env.run(&r, &["first"]));
    let compiled = compiled_files(&env);
    assert_eq!(compiled.len(), 1, "one compiled guest: {compiled:?}");
    reg.stop();

    let out = env.run(&r, &["offline"]);
    assert_eq!(ok(&out), "echo (a2a): offline\n");
    assert!(
        stderr(&out).contains("(from the cache)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(compiled_files(&env), compiled, "no second compilation");

    let out = env.run(&r, &["always", "--pull", "always"]);
    assert_eq!(ok(&out), "echo (a2a): always\n");
    assert!(
        stderr(&out).contains("cannot reach registry") && stderr(&out).contains("using the cached"),
        "{}",
        stderr(&out)
    );

    let other = format!("{}/guests/never-pulled:1", reg.host());
    assert_one_line_error(
        &env.run(&other, &["x"]),
        3,
        &[&other, "cannot reach registry"],
    );
    assert_one_line_error(
        &env.run(&other, &["x", "--pull", "never"]),
        3,
        &["not in the image cache"],
    );
}

/// The compiled-code cache's entries and their modification times.
fn compiled_files(env: &Env) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut out = Vec::new();
    for engine in std::fs::read_dir(env.data.path().join("code")).unwrap() {
        for f in std::fs::read_dir(engine.unwrap().path()).unwrap() {
            let f = f.unwrap();
            out.push((f.path(), f.metadata().unwrap().modified().unwrap()));
        }
    }
    out
}

#[test]
fn credentials_come_from_the_environment_or_the_docker_config() {
    let reg = Registry::start_with_password();
    let r = format!("{}/private/echo:1", reg.host());
    let file = wat("echo.wat");
    let env = Env::new();

    let out = cairn(&env, &["push", file.to_str().unwrap(), &r]);
    assert_one_line_error(
        &out,
        3,
        &[&r, "requires credentials and none are configured", "401"],
    );

    let out = env
        .cairn()
        .args(["push", file.to_str().unwrap(), &r])
        .env("CAIRN_REGISTRY_USERNAME", USER)
        .env("CAIRN_REGISTRY_PASSWORD", "wrong")
        .output()
        .unwrap();
    assert_one_line_error(
        &out,
        3,
        &[
            &r,
            "rejected the credentials from CAIRN_REGISTRY_USERNAME",
            "401",
        ],
    );

    let out = env
        .cairn()
        .args(["push", file.to_str().unwrap(), &r])
        .env("CAIRN_REGISTRY_USERNAME", USER)
        .env("CAIRN_REGISTRY_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let digest = ok(&out);

    // Anonymous pull of a private repository.
    let out = cairn(&env, &["pull", &r]);
    assert_refused_and_clean(&env, &out, &[&r, "requires credentials"]);

    // ~/.docker/config.json with a base64 `auth`.
    let docker = tempfile::tempdir().unwrap();
    let auth = base64(&format!("{USER}:{PASSWORD}"));
    std::fs::write(
        docker.path().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host()),
    )
    .unwrap();
    let out = env
        .cairn()
        .args(["pull", &r])
        .env("DOCKER_CONFIG", docker.path())
        .output()
        .unwrap();
    assert_eq!(ok(&out), digest);

    // Wrong credentials in the file are named as such.
    std::fs::write(
        docker.path().join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            reg.host(),
            base64("alice:nope")
        ),
    )
    .unwrap();
    let other = Env::new();
    let out = other
        .cairn()
        .args(["pull", &r])
        .env("DOCKER_CONFIG", docker.path())
        .output()
        .unwrap();
    assert_refused_and_clean(
        &other,
        &out,
        &["rejected the credentials from", "config.json"],
    );
}

#[test]
fn plain_http_only_for_loopback_names_or_with_insecure() {
    let reg = Registry::start();
    let env = Env::new();
    let digest = push(
        &env,
        &wat("echo.wat"),
        &format!("{}/guests/echo:1", reg.host()),
    );
    // The same registry at an address that is not `localhost`, `127.0.0.1`
    // or `[::1]`: cairn speaks TLS to it, which a plain server refuses.
    let front = Front::passthrough(reg.port, "127.0.0.2");
    let r = format!("127.0.0.2:{}/guests/echo:1", front.port);
    let out = cairn(&env, &["pull", &r]);
    assert_refused_and_clean(&env, &out, &[&r, "cannot reach registry 127.0.0.2"]);
    assert_eq!(ok(&cairn(&env, &["pull", &r, "--insecure"])).trim(), digest);
    assert_eq!(
        ok(&env.run(&r, &["insecure", "--pull", "always", "--insecure"])),
        "echo (a2a): insecure\n"
    );
}

#[test]
fn bearer_token_exchange() {
    let reg = Registry::start();
    let env = Env::new();
    push(
        &env,
        &wat("echo.wat"),
        &format!("{}/guests/echo:1", reg.host()),
    );
    let front = Front::token(reg.port);
    let r = format!("localhost:{}/guests/echo:1", front.port);

    let out = cairn(&env, &["pull", &r]);
    assert_refused_and_clean(
        &env,
        &out,
        &[
            &r,
            "requires credentials and none are configured",
            "token exchange failed",
        ],
    );
    let out = env
        .cairn()
        .args(["pull", &r])
        .env("CAIRN_REGISTRY_USERNAME", USER)
        .env("CAIRN_REGISTRY_PASSWORD", "wrong")
        .output()
        .unwrap();
    assert_refused_and_clean(
        &env,
        &out,
        &[
            &r,
            "rejected the credentials from CAIRN_REGISTRY_USERNAME",
            "token exchange failed",
        ],
    );

    // Basic credentials traded for a token at the realm.
    let out = env.run(&r, &["traded"]).status;
    assert!(!out.success());
    let out = env
        .cairn()
        .args(["run", &r, "traded"])
        .env("CAIRN_REGISTRY_USERNAME", USER)
        .env("CAIRN_REGISTRY_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert_eq!(ok(&out), "echo (a2a): traded\n");
    // A bearer token given outright.
    let other = Env::new();
    let out = other
        .cairn()
        .args(["pull", &r])
        .env("CAIRN_REGISTRY_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(ok(&out).starts_with("sha256:"));
}

/// Pushes a hand-made image: a config of `config_type` and one layer per
/// (media type, bytes). Returns the reference.
fn push_raw(
    reg: &Registry,
    repo: &str,
    config_type: &str,
    config: &[u8],
    layers: &[(&str, &[u8])],
) -> String {
    let config_digest = reg.put_blob(repo, config);
    let layers: Vec<String> = layers
        .iter()
        .map(|(t, bytes)| descriptor(t, &reg.put_blob(repo, bytes), bytes.len()))
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
        descriptor(config_type, &config_digest, config.len()),
        layers.join(",")
    );
    reg.put_manifest(repo, "1", OCI_MANIFEST, &manifest);
    format!("{}/{repo}:1", reg.host())
}

#[test]
fn the_layouts_other_tools_publish_are_read() {
    let reg = Registry::start();
    let wasm = echo_wasm();
    for (repo, config_type, layer_type) in [
        (
            "spin",
            "application/vnd.fermyon.spin.application.v1+config",
            "application/vnd.wasm.content.layer.v1+wasm",
        ),
        (
            "bca",
            "application/vnd.wasm.config.v0+json",
            "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
        ),
        (
            "single",
            "application/vnd.unknown.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar",
        ),
    ] {
        let r = push_raw(&reg, repo, config_type, b"{}", &[(layer_type, &wasm)]);
        let env = Env::new();
        assert_eq!(
            ok(&env.run(&r, &[repo])),
            format!("echo (a2a): {repo}\n"),
            "{repo}"
        );
    }

    // An index with a linux entry and a wasm one picks the wasm one.
    push_raw(
        &reg,
        "multi",
        "application/vnd.oci.image.config.v1+json",
        b"{}",
        &[("application/vnd.oci.image.layer.v1.tar+gzip", b"not a tar")],
    );
    push_raw(
        &reg,
        "multi-wasm",
        "application/vnd.wasm.config.v0+json",
        b"{}",
        &[("application/wasm", &wasm)],
    );
    let linux = manifest_of(&reg, "multi", "1");
    let wasm_manifest = manifest_of(&reg, "multi-wasm", "1");
    // Both manifests must live in the index's repository.
    let linux_digest = reg.put_manifest("multi", &sha256(linux.as_bytes()), OCI_MANIFEST, &linux);
    copy_blobs(&reg, "multi-wasm", "multi", &wasm_manifest);
    let wasm_digest = reg.put_manifest(
        "multi",
        &sha256(wasm_manifest.as_bytes()),
        OCI_MANIFEST,
        &wasm_manifest,
    );
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
          {{"mediaType":"{OCI_MANIFEST}","digest":"{linux_digest}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}},
          {{"mediaType":"{OCI_MANIFEST}","digest":"{wasm_digest}","size":{},"platform":{{"architecture":"wasm","os":"wasip1"}}}}]}}"#,
        linux.len(),
        wasm_manifest.len()
    );
    reg.put_manifest("multi", "index", OCI_INDEX, &index);
    let r = format!("{}/multi:index", reg.host());
    let env = Env::new();
    assert_eq!(ok(&env.run(&r, &["index"])), "echo (a2a): index\n");

    // An index with no wasm entry is refused, saying what it holds.
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{linux_digest}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        linux.len()
    );
    reg.put_manifest("multi", "linux-only", OCI_INDEX, &index);
    let r = format!("{}/multi:linux-only", reg.host());
    let env = Env::new();
    assert_refused_and_clean(
        &env,
        &cairn(&env, &["pull", &r]),
        &[&r, "image index for linux/amd64", "no wasm entry"],
    );
}

fn manifest_of(reg: &Registry, repo: &str, tag: &str) -> String {
    let (_, _, body) = crate::registry::http(
        reg.port,
        "GET",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Accept", OCI_MANIFEST)],
        b"",
    )
    .unwrap();
    String::from_utf8(body).unwrap()
}

fn copy_blobs(reg: &Registry, from: &str, to: &str, manifest: &str) {
    let m: serde_json::Value = serde_json::from_str(manifest).unwrap();
    let mut descs = vec![m["config"].clone()];
    descs.extend(m["layers"].as_array().unwrap().iter().cloned());
    for d in descs {
        let digest = d["digest"].as_str().unwrap();
        let (_, _, bytes) = crate::registry::http(
            reg.port,
            "GET",
            &format!("/v2/{from}/blobs/{digest}"),
            &[],
            b"",
        )
        .unwrap();
        reg.put_blob(to, &bytes);
    }
}

#[test]
fn images_that_are_not_one_wasm_guest_are_refused() {
    let reg = Registry::start();
    let wasm = echo_wasm();

    let r = push_raw(
        &reg,
        "library/alpine",
        "application/vnd.oci.image.config.v1+json",
        br#"{"architecture":"amd64","os":"linux"}"#,
        &[
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                b"\x1f\x8b not really",
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                b"\x1f\x8b again",
            ),
        ],
    );
    let env = Env::new();
    assert_refused_and_clean(
        &env,
        &cairn(&env, &["pull", &r]),
        &[
            &r,
            "a container image",
            "application/vnd.oci.image.config.v1+json",
            "2 layers of application/vnd.oci.image.layer.v1.tar+gzip",
            "not a wasm guest",
        ],
    );

    let r = push_raw(
        &reg,
        "two",
        "application/vnd.wasm.config.v0+json",
        b"{}",
        &[
            ("application/wasm", &wasm),
            ("application/wasm", b"\0asm\x01\0\0\0"),
        ],
    );
    let env = Env::new();
    assert_refused_and_clean(&env, &env.run(&r, &["x"]), &[&r, "2 wasm layers"]);

    // One layer of an unknown type whose bytes are not wasm.
    let r = push_raw(
        &reg,
        "notwasm",
        "application/vnd.unknown.config.v1+json",
        b"{}",
        &[(
            "application/vnd.oci.image.layer.v1.tar",
            b"#!/bin/sh\necho hi\n",
        )],
    );
    let env = Env::new();
    assert_refused_and_clean(
        &env,
        &cairn(&env, &["pull", &r]),
        &[&r, "is not WebAssembly"],
    );
}

#[test]
fn a_tampered_blob_is_caught_and_not_cached() {
    let reg = Registry::start();
    let r = format!("{}/guests/tampered:1", reg.host());
    let env = Env::new();
    push(&env, &wat("echo.wat"), &r);
    let layer = sha256(&echo_wasm());
    let file = reg.blob_file(&layer);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();

    let out = cairn(&env, &["pull", &r]);
    assert_refused_and_clean(
        &env,
        &out,
        &[&r, &format!("blob {layer} does not match its digest")],
    );
    let out = env.run(&r, &["x"]);
    assert_refused_and_clean(&env, &out, &["does not match its digest"]);
}

#[test]
fn a_connection_dropped_mid_blob_leaves_nothing() {
    let reg = Registry::start();
    // Large enough that half of it is many packets.
    let big = big_module(4 << 20);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.wasm");
    std::fs::write(&file, &big).unwrap();
    let env = Env::new();
    push(&env, &file, &format!("{}/guests/big:1", reg.host()));
    let layer = sha256(&big);
    let proxy = Front::cutting(reg.port, &reg.blob_file(&layer), &layer);
    let r = format!("localhost:{}/guests/big:1", proxy.port);
    let out = cairn(&env, &["pull", &r]);
    assert_refused_and_clean(
        &env,
        &out,
        &[&r, "broke off after", &format!("of {} bytes", big.len())],
    );
}

/// A valid module of about `size` bytes: one passive data segment.
pub fn big_module(size: usize) -> Vec<u8> {
    let data: String = (0..size)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let wat = format!(
        r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
             (memory (export "memory") 1) (data "{data}")
             (func (export "_start")))"#
    );
    wat::parse_str(wat).unwrap()
}

#[test]
fn unknown_registries_repositories_and_tags_and_bad_references() {
    let reg = Registry::start();
    let env = Env::new();
    push(
        &env,
        &wat("echo.wat"),
        &format!("{}/guests/echo:1", reg.host()),
    );

    let r = format!("{}/guests/nope:1", reg.host());
    assert_refused_and_clean(
        &env,
        &cairn(&env, &["pull", &r]),
        &[&r, "no such repository"],
    );
    let r = format!("{}/guests/echo:2", reg.host());
    assert_refused_and_clean(
        &env,
        &cairn(&env, &["pull", &r]),
        &[&r, "no tag `2`", "it has 1"],
    );

    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = format!("localhost:{closed}/guests/echo:1");
    assert_refused_and_clean(
        &env,
        &cairn(&env, &["pull", &r]),
        &[&r, "cannot reach registry"],
    );

    // A host name that does not resolve, looked up in a network namespace
    // of its own so that no query leaves the machine.
    let unshare = which("unshare").expect("unshare (util-linux)");
    let r = "registry.invalid/guests/echo:1";
    let out = Command::new(unshare)
        .args(["--net", "--"])
        .arg(env!("CARGO_BIN_EXE_cairn"))
        .args(["pull", r])
        .env("CAIRN_DATA_DIR", env.data.path())
        .output()
        .unwrap();
    assert_refused_and_clean(&env, &out, &[r, "unknown registry host registry.invalid"]);

    for (bad, why) in [
        ("localhost:5000/Guests/echo:1", "not an image reference"),
        (
            "localhost:5000/guests/echo@sha256:abc",
            "not an image reference",
        ),
        (
            "localhost:5000/guests/echo@md5:0123",
            "not an image reference",
        ),
    ] {
        assert_one_line_error(&cairn(&env, &["pull", bad]), 2, &[bad, why]);
        assert_one_line_error(&env.run(bad, &["x"]), 2, &[bad, why]);
    }
}

#[test]
fn gc_prunes_the_image_cache() {
    let reg = Registry::start();
    let env = Env::new();
    let r = format!("{}/guests/echo:1", reg.host());
    push(&env, &wat("echo.wat"), &r);
    ok(&env.run(&r, &["x"]));
    assert_eq!(cached_files(&env).len(), 3, "manifest, config, layer");
    // A stray download and an orphan blob go on any gc.
    std::fs::write(env.data.path().join("images/tmp/blob-stray"), b"half").unwrap();
    let orphan = env
        .data
        .path()
        .join(format!("images/blobs/sha256/{}", "e".repeat(64)));
    std::fs::write(&orphan, b"orphan").unwrap();
    let out = ok(&cairn(&env, &["gc"]));
    assert!(
        out.contains("forgot 0 image(s), deleted 2 image blob(s)"),
        "{out}"
    );
    assert_eq!(cached_files(&env).len(), 3);
    // Recently used images stay with --older-than.
    let out = ok(&cairn(&env, &["gc", "--images", "--older-than", "1h"]));
    assert!(out.contains("forgot 0 image(s)"), "{out}");
    let out = ok(&cairn(&env, &["gc", "--images"]));
    assert!(
        out.contains("forgot 1 image(s), deleted 3 image blob(s)"),
        "{out}"
    );
    assert_eq!(cached_files(&env), Vec::<PathBuf>::new());
    assert_eq!(stdout(&cairn(&env, &["images"])).trim(), "no cached images");
    assert!(
        compiled_files(&env).is_empty(),
        "the compiled code goes with the image"
    );
}

/// ORAS, another OCI tool (its Python client), on both sides.
fn oras(script: &str, args: &[&str]) -> Output {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "oras (pip install oras; run tests/deps.sh): {}",
        stderr(&out)
    );
    out
}

#[test]
fn artifacts_interoperate_with_oras_and_skopeo() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let wasm_path = dir.path().join("echo.wasm");
    std::fs::write(&wasm_path, echo_wasm()).unwrap();

    // ORAS pushes a single wasm file with its defaults; cairn runs it.
    let r = format!("{}/oras/echo:1", reg.host());
    oras(
        "import os, sys, oras.client\nos.chdir(sys.argv[2])\noras.client.OrasClient(insecure=True).push(target=sys.argv[1], files=['echo.wasm'])",
        &[&r, dir.path().to_str().unwrap()],
    );
    let env = Env::new();
    assert_eq!(ok(&env.run(&r, &["from oras"])), "echo (a2a): from oras\n");

    // cairn pushes; ORAS pulls the file by its title; skopeo reads the manifest.
    let r = format!("{}/cairn/echo:1", reg.host());
    push(&env, &wat("echo.wat"), &r);
    let out_dir = dir.path().join("pulled");
    oras(
        "import sys, oras.client\noras.client.OrasClient(insecure=True).pull(target=sys.argv[1], outdir=sys.argv[2])",
        &[&r, out_dir.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read(out_dir.join("echo.wasm")).unwrap(),
        echo_wasm()
    );

    let skopeo = which("skopeo").expect("skopeo (Debian package skopeo): run tests/deps.sh");
    let out = Command::new(&skopeo)
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{r}"))
        .output()
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&ok_bytes(&out)).unwrap();
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["mediaType"], "application/wasm");
    let out = Command::new(&skopeo)
        .args(["inspect", "--tls-verify=false", "--config", "--raw"])
        .arg(format!("docker://{r}"))
        .output()
        .unwrap();
    let config: serde_json::Value = serde_json::from_slice(&ok_bytes(&out)).unwrap();
    check_cncf_config(&config, &manifest);
}

fn ok_bytes(out: &Output) -> Vec<u8> {
    assert!(out.status.success(), "{}", stderr(out));
    out.stdout.clone()
}

/// The CNCF TAG-Runtime wasm config: `created` (RFC 3339), `architecture`
/// `wasm`, `os` `wasip1`/`wasip2`, `layerDigests` equal to the manifest's
/// layers in order, and `component` present exactly for `wasip2`.
fn check_cncf_config(config: &serde_json::Value, manifest: &serde_json::Value) {
    let created = config["created"].as_str().expect("created");
    assert!(
        created.len() == 20 && created.as_bytes()[10] == b'T' && created.ends_with('Z'),
        "{created}"
    );
    assert_eq!(config["architecture"], "wasm");
    let os = config["os"].as_str().unwrap();
    assert!(os == "wasip1" || os == "wasip2", "{os}");
    let layers: Vec<&serde_json::Value> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["digest"])
        .collect();
    let listed: Vec<&serde_json::Value> =
        config["layerDigests"].as_array().unwrap().iter().collect();
    assert_eq!(listed, layers);
    assert_eq!(config.get("component").is_some(), os == "wasip2");
    let allowed = [
        "created",
        "author",
        "architecture",
        "os",
        "layerDigests",
        "component",
    ];
    for key in config.as_object().unwrap().keys() {
        assert!(
            allowed.contains(&key.as_str()),
            "unexpected config field {key}"
        );
    }
}
