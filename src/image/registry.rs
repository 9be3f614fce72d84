//! Talking to a registry: the client, credentials, and registry errors
//! turned into one readable cause.
//!
//! Credentials, first found wins: `CAIRN_REGISTRY_TOKEN` (a bearer token),
//! `CAIRN_REGISTRY_USERNAME` with `CAIRN_REGISTRY_PASSWORD` (these two apply
//! to every registry the command talks to), then the Docker credentials file
//! (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`: `auths` with
//! `auth` in base64 or `username`/`password`, and credential helpers). A
//! registry that answers with `WWW-Authenticate: Bearer realm=…` gets the
//! token exchange, with the basic credentials if there are any.

use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};

use super::reference::ImageRef;

pub const MANIFEST_UNKNOWN: &str = "no such tag or digest in the repository";

pub struct Registry {
    pub client: Client,
    pub auth: RegistryAuth,
    /// Where the credentials came from, for error messages.
    pub credentials: Option<String>,
    host: String,
}

impl Registry {
    pub fn new(r: &ImageRef, insecure: bool) -> Registry {
        // reqwest's rustls needs a process-wide provider; installing twice
        // is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let plain = insecure || r.is_loopback();
        let config = ClientConfig {
            protocol: if plain {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            // A client that speaks plain HTTP to its registry trusts one
            // root whose private key was thrown away when it was made: it
            // can complete no TLS handshake at all (not even on a redirect),
            // and it skips loading the system's roots, which costs tens of
            // milliseconds per command.
            tls_certs_only: if plain {
                vec![Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: include_bytes!("no-tls-root.pem").to_vec(),
                }]
            } else {
                Vec::new()
            },
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: concat!("cairn/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let (auth, credentials) = credentials_for(&r.registry);
        Registry {
            client: Client::new(config),
            auth,
            credentials,
            host: r.registry.clone(),
        }
    }

    /// Asks the registry how to authenticate and does it: one round trip
    /// that also says early when the registry cannot be reached.
    pub async fn login(&self, r: &ImageRef, op: RegistryOperation) -> Result<(), String> {
        self.client
            .auth(&r.oci(), &self.auth, op)
            .await
            .map(|_| ())
            .map_err(|e| self.explain(e))
    }

    /// After a manifest was not found: whether the repository exists, and
    /// which tags it has.
    pub async fn tag_hint(&self, r: &ImageRef) -> String {
        let tag = r.tag.as_deref().unwrap_or("latest");
        match self
            .client
            .list_tags(&r.oci(), &self.auth, Some(50), None)
            .await
        {
            Ok(list) if list.tags.is_empty() => {
                format!("no tag `{tag}`: the repository has no tags")
            }
            Ok(list) => {
                let mut tags: Vec<&str> = list.tags.iter().map(String::as_str).take(10).collect();
                if list.tags.len() > 10 {
                    tags.push("…");
                }
                format!(
                    "no tag `{tag}` in the repository (it has {})",
                    tags.join(", ")
                )
            }
            Err(OciDistributionError::RegistryError { envelope, .. })
                if envelope
                    .errors
                    .iter()
                    .any(|e| e.code == OciErrorCode::NameUnknown) =>
            {
                "no such repository".into()
            }
            Err(_) => "no such tag or digest in the repository".into(),
        }
    }

    /// A registry error as the cause part of `<ref>: <cause>`.
    pub fn explain(&self, e: OciDistributionError) -> String {
        let host = &self.host;
        let denied = || match &self.credentials {
            None => format!(
                "{host} requires credentials and none are configured \
                 (docker login {host}, or CAIRN_REGISTRY_USERNAME/CAIRN_REGISTRY_PASSWORD)"
            ),
            Some(from) => format!("{host} rejected the credentials from {from}"),
        };
        match e {
            OciDistributionError::UnauthorizedError { .. } => format!("{} (HTTP 401)", denied()),
            OciDistributionError::AuthenticationFailure(reason) => {
                format!(
                    "{}: token exchange failed: {}",
                    denied(),
                    first_line(&reason)
                )
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let Some(err) = envelope.errors.first() else {
                    return "the registry reported an error with no detail".into();
                };
                match err.code {
                    OciErrorCode::ManifestUnknown => MANIFEST_UNKNOWN.into(),
                    OciErrorCode::NameUnknown => "no such repository".into(),
                    OciErrorCode::BlobUnknown => {
                        "the registry does not have a blob the manifest names".into()
                    }
                    OciErrorCode::Unauthorized | OciErrorCode::Denied => {
                        format!("{}: {}", denied(), err.message)
                    }
                    OciErrorCode::NameInvalid => {
                        format!("the registry refused the repository name: {}", err.message)
                    }
                    OciErrorCode::Toomanyrequests => {
                        "the registry is rate-limiting requests (HTTP 429); try later".into()
                    }
                    _ => format!("the registry said: {}", first_line(&err.message)),
                }
            }
            OciDistributionError::ServerError { code, message, .. } => match code {
                404 => "not found in the registry (HTTP 404)".into(),
                403 => format!("{} (HTTP 403)", denied()),
                _ => format!(
                    "the registry answered HTTP {code}: {}",
                    first_line(&message)
                ),
            },
            OciDistributionError::ImageManifestNotFoundError(_) => MANIFEST_UNKNOWN.into(),
            OciDistributionError::RequestError(e) => match e.status().map(|s| s.as_u16()) {
                Some(401) => format!("{} (HTTP 401)", denied()),
                Some(403) => format!("{} (HTTP 403)", denied()),
                Some(404) => "not found in the registry (HTTP 404)".into(),
                Some(code) => format!("the registry answered HTTP {code}"),
                None => transport(&e, host),
            },
            OciDistributionError::DigestError(e) => format!("digest mismatch: {e}"),
            other => first_line(&other.to_string()),
        }
    }
}

/// A transport failure, by its root cause: `cannot reach localhost:1 (connection refused)`.
pub fn transport(e: &reqwest::Error, host: &str) -> String {
    let mut cause = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    let cause = first_line(&cause);
    if e.is_connect() {
        if cause.contains("dns error")
            || cause.contains("failed to lookup")
            || cause.contains("Name or service not known")
        {
            return format!("unknown registry host {host} ({cause})");
        }
        format!("cannot reach registry {host} ({cause})")
    } else if e.is_timeout() {
        format!("registry {host} timed out")
    } else if e.is_body() || e.is_decode() {
        format!("the connection to {host} broke off ({cause})")
    } else {
        format!("request to {host} failed ({cause})")
    }
}

fn first_line(s: &str) -> String {
    let line = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    line.chars().take(300).collect()
}

/// The credentials for `registry` and where they came from.
fn credentials_for(registry: &str) -> (RegistryAuth, Option<String>) {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(token) = var("CAIRN_REGISTRY_TOKEN") {
        return (
            RegistryAuth::Bearer(token),
            Some("CAIRN_REGISTRY_TOKEN".into()),
        );
    }
    if let (Some(user), Some(pass)) = (
        var("CAIRN_REGISTRY_USERNAME"),
        var("CAIRN_REGISTRY_PASSWORD"),
    ) {
        return (
            RegistryAuth::Basic(user, pass),
            Some("CAIRN_REGISTRY_USERNAME/CAIRN_REGISTRY_PASSWORD".into()),
        );
    }
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".docker")));
    let Some(file) = dir.map(|d| d.join("config.json")).filter(|f| f.exists()) else {
        return (RegistryAuth::Anonymous, None);
    };
    let from = Some(file.display().to_string());
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    for key in [
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ] {
        match docker_credential::get_credential(&key) {
            Ok(DockerCredential::UsernamePassword(u, p)) => {
                return (RegistryAuth::Basic(u, p), from);
            }
            Ok(DockerCredential::IdentityToken(_)) => {
                tracing::warn!(
                    "{}: {registry} has an identity token, which cairn cannot use; pulling anonymously",
                    file.display()
                );
                return (RegistryAuth::Anonymous, None);
            }
            Err(E::NoCredentialConfigured) => continue,
            Err(e) => {
                tracing::warn!(
                    "{}: credentials for {registry} unreadable ({e:?}); pulling anonymously",
                    file.display()
                );
                return (RegistryAuth::Anonymous, None);
            }
        }
    }
    (RegistryAuth::Anonymous, None)
}
