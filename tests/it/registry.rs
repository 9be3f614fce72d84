//! A real OCI registry for the image tests: the CNCF distribution registry
//! (`docker-registry`, installed by `tests/deps.sh`), started on a free
//! loopback port with its own config and storage, killed when dropped. Also
//! a raw HTTP/1.0 client to put hand-made manifests into it, and a proxy
//! in front of it that cuts a blob short or demands bearer tokens.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// `secret`, bcrypt at cost 4 (the registry checks it on every request).
const HTPASSWD: &str = "alice:$2b$04$X6sIKL5MpWZcRAq2GF6zW.gvwu7DoX28rKy/lYPbrbnSrMcldKR72";
pub const USER: &str = "alice";
pub const PASSWORD: &str = "secret";

pub struct Registry {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_with(false)
    }

    /// With `auth.htpasswd`: user `alice`, password `secret`.
    pub fn start_with_password() -> Registry {
        Self::start_with(true)
    }

    fn start_with(password: bool) -> Registry {
        let bin = which("docker-registry").unwrap_or_else(|| {
            panic!("docker-registry is not installed: run tests/deps.sh (Debian package docker-registry)")
        });
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let auth = if password {
                std::fs::write(dir.path().join("htpasswd"), format!("{HTPASSWD}\n")).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: cairn-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                )
            } else {
                String::new()
            };
            let config = format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: cairn-test\n{auth}",
                dir.path().join("data").display()
            );
            std::fs::write(dir.path().join("config.yml"), config).unwrap();
            let log = std::fs::File::create(dir.path().join("log")).unwrap();
            let mut child = Command::new(&bin)
                .arg("serve")
                .arg(dir.path().join("config.yml"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(15) {
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken: try another
                }
                if let Ok((status, _, _)) = http(port, "GET", "/v2/", &[], b"")
                    && (status == 200 || status == 401)
                {
                    return Registry { child, dir, port };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("the registry did not start");
    }

    pub fn host(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Uploads a blob (monolithic POST then PUT). Returns its digest.
    pub fn put_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let (status, headers, body) = http(
            self.port,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            b"",
        )
        .unwrap();
        assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
        let location = header(&headers, "location").expect("upload location");
        let path = location
            .strip_prefix(&format!("http://127.0.0.1:{}", self.port))
            .or_else(|| location.strip_prefix(&format!("http://localhost:{}", self.port)))
            .unwrap_or(&location)
            .to_string();
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, _, body) = http(
            self.port,
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            bytes,
        )
        .unwrap();
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        digest
    }

    /// Puts a manifest under `reference` (a tag or a digest). Returns its digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        json: &str,
    ) -> String {
        let (status, _, body) = http(
            self.port,
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            json.as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        sha256(json.as_bytes())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// A descriptor as JSON.
pub fn descriptor(media_type: &str, digest: &str, size: usize) -> String {
    format!(r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{size}}}"#)
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

type Headers = Vec<(String, String)>;

fn header(headers: &Headers, name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

/// One HTTP/1.0 request (no chunking, the server closes): status, headers, body.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Headers, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok((status, headers, raw[split + 4..].to_vec()))
}

/// A proxy in front of a registry, one request per connection, that
/// changes one thing about it.
pub struct Front {
    pub port: u16,
}

enum Mode {
    /// Answers a GET of the blob whose path ends in `target` with its full
    /// length announced and only the first half sent, then hangs up.
    CutBlob { bytes: Vec<u8>, target: String },
    /// Demands `Authorization: Bearer TOKEN`, answering 401 with a
    /// `WWW-Authenticate: Bearer realm=…` challenge; the realm (`/token`)
    /// trades alice's basic credentials for the token.
    Token,
    /// Changes nothing: the registry under another address.
    Pass,
}

pub const TOKEN: &str = "cairn-test-token";

impl Front {
    pub fn cutting(upstream: u16, blob: &Path, digest: &str) -> Front {
        let bytes = std::fs::read(blob).unwrap();
        Self::start(
            upstream,
            Mode::CutBlob {
                bytes,
                target: format!("/blobs/{digest}"),
            },
        )
    }

    pub fn token(upstream: u16) -> Front {
        Self::start(upstream, Mode::Token)
    }

    /// The registry, unchanged, at `ip` (say `127.0.0.2`: loopback, but
    /// not a name cairn speaks plain HTTP to by default).
    pub fn passthrough(upstream: u16, ip: &str) -> Front {
        Self::start_on(upstream, Mode::Pass, ip)
    }

    fn start(upstream: u16, mode: Mode) -> Front {
        Self::start_on(upstream, mode, "127.0.0.1")
    }

    fn start_on(upstream: u16, mode: Mode, ip: &str) -> Front {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = std::sync::Arc::new(mode);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mode = mode.clone();
                std::thread::spawn(move || {
                    let _ = serve_one(&mut conn, upstream, port, &mode);
                });
            }
        });
        Front { port }
    }
}

fn serve_one(conn: &mut TcpStream, upstream: u16, port: u16, mode: &Mode) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
        if head == [0x16] {
            // A TLS handshake: answer in plain HTTP, as a plain server does.
            return respond(conn, "400 Bad Request", &[], b"plain HTTP here");
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut first = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, path) = (
        first.next().unwrap_or_default().to_string(),
        first.next().unwrap_or_default().to_string(),
    );
    let headers: Vec<(&str, &str)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let authorization = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| *v)
        .unwrap_or_default();
    match mode {
        Mode::CutBlob { bytes, target } if method == "GET" && path.ends_with(target.as_str()) => {
            let octets = [("Content-Type", "application/octet-stream")];
            write_head(conn, "200 OK", &octets, &bytes.len().to_string())?;
            conn.write_all(&bytes[..bytes.len() / 2])?;
            conn.flush()?;
            return conn.shutdown(std::net::Shutdown::Both);
        }
        Mode::Token if path.starts_with("/token") => {
            let (status, body) =
                if authorization == format!("Basic {}", base64(&format!("{USER}:{PASSWORD}"))) {
                    (
                        "200 OK",
                        format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#),
                    )
                } else {
                    (
                        "401 Unauthorized",
                        r#"{"details":"bad credentials"}"#.to_string(),
                    )
                };
            return respond(
                conn,
                status,
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            );
        }
        Mode::Token if authorization != format!("Bearer {TOKEN}") => {
            let challenge =
                format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="cairn-test""#);
            return respond(
                conn,
                "401 Unauthorized",
                &[
                    ("WWW-Authenticate", &challenge),
                    ("Content-Type", "application/json"),
                ],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            );
        }
        _ => {}
    }
    let forwarded: Vec<(&str, &str)> = headers
        .into_iter()
        .filter(|(k, _)| {
            !["host", "connection", "content-length", "authorization"]
                .iter()
                .any(|h| k.eq_ignore_ascii_case(h))
        })
        .collect();
    let (status, resp_headers, body) = http(upstream, &method, &path, &forwarded, b"")?;
    let kept: Vec<(&str, &str)> = resp_headers
        .iter()
        .filter(|(k, _)| {
            !["connection", "content-length", "transfer-encoding"]
                .iter()
                .any(|h| k.eq_ignore_ascii_case(h))
        })
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let status = format!("{status} X");
    if method == "HEAD" {
        // The upstream's length, with no body.
        let len = header(&resp_headers, "content-length").unwrap_or_default();
        return write_head(conn, &status, &kept, &len);
    }
    respond(conn, &status, &kept, &body)
}

fn respond(
    conn: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    write_head(conn, status, headers, &body.len().to_string())?;
    conn.write_all(body)?;
    conn.flush()
}

/// A response's status line and headers, closing the connection after it.
fn write_head(
    conn: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
    content_length: &str,
) -> std::io::Result<()> {
    let mut out =
        format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {content_length}\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    conn.write_all(out.as_bytes())
}

pub fn base64(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in s.as_bytes().chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
