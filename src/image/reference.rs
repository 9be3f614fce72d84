//! An image reference as cairn accepts it: `host[:port]/repo[:tag][@sha256:…]`,
//! always with an explicit registry host (no implied Docker Hub), and only
//! sha256 digests.

use std::fmt;

use oci_client::Reference;

/// A parsed, validated image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    /// The tag; `latest` when the reference names neither tag nor digest.
    pub tag: Option<String>,
    /// A pinned manifest digest (`sha256:<64 hex>`).
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses by the distribution reference grammar (written out here:
    /// the client library's parser compiles a regex costing ~60 ms per
    /// process).
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{s}: not an image reference: {why}");
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        let (host, rest) = name_tag
            .split_once('/')
            .ok_or_else(|| bad("no registry host (`registry.example/repo:tag`)"))?;
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t)),
            _ => (rest, None),
        };
        if !is_host(host) {
            return Err(bad("the first part must be a registry host \
                 (`registry.example/repo:tag`, `localhost:5000/repo:tag`, `[::1]:5000/repo`)"));
        }
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("repository names are lowercase"));
        }
        if repository.is_empty() || !repository.split('/').all(is_path_component) {
            return Err(bad(
                "a repository is lowercase letters and digits, in parts joined by `/`, \
                 separated within a part by `.`, `_`, `__` or dashes",
            ));
        }
        if host.len() + 1 + repository.len() > 255 {
            return Err(bad("the name is longer than 255 characters"));
        }
        if let Some(t) = tag
            && !is_tag(t)
        {
            return Err(bad(&format!(
                "tag `{t}` is not 1-128 letters, digits, `_`, `.` or `-` (not starting with `.` or `-`)"
            )));
        }
        if let Some(d) = digest {
            let hex = d
                .strip_prefix("sha256:")
                .ok_or_else(|| bad(&format!("only sha256 digests are supported, not `{d}`")))?;
            if !is_sha256_hex(hex) {
                return Err(bad(&format!(
                    "`{d}` is not a sha256 digest (64 lowercase hex digits)"
                )));
            }
        }
        let tag = match (tag, digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t.map(str::to_string),
        };
        Ok(ImageRef {
            registry: host.to_string(),
            repository: repository.to_string(),
            tag,
            digest: digest.map(str::to_string),
        })
    }

    /// The host without its port.
    pub fn host(&self) -> &str {
        let r = self.registry.as_str();
        if let Some(rest) = r.strip_prefix('[') {
            // `[::1]:5000`
            return rest.split(']').next().map_or(r, |h| &r[..h.len() + 2]);
        }
        r.rsplit_once(':').map_or(r, |(h, _)| h)
    }

    /// Whether plain HTTP is allowed without `--insecure`: loopback names only.
    pub fn is_loopback(&self) -> bool {
        matches!(self.host(), "localhost" | "127.0.0.1" | "[::1]")
    }

    /// The name a pull records in the cache: the tag, else the digest.
    pub fn name(&self) -> &str {
        self.tag
            .as_deref()
            .or(self.digest.as_deref())
            .unwrap_or("latest")
    }

    /// The same repository, pinned to `digest`.
    pub fn at(&self, digest: &str) -> ImageRef {
        ImageRef {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// The client library's form.
    pub(crate) fn oci(&self) -> Reference {
        let (reg, repo) = (self.registry.clone(), self.repository.clone());
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => Reference::with_tag_and_digest(reg, repo, t.clone(), d.clone()),
            (None, Some(d)) => Reference::with_digest(reg, repo, d.clone()),
            (Some(t), None) => Reference::with_tag(reg, repo, t.clone()),
            (None, None) => Reference::with_tag(reg, repo, "latest".into()),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// A registry host: one that names a host (a dot, a port, or `localhost`;
/// otherwise it would be the first part of a Docker Hub path), as domain
/// components, an IPv4 address, or a bracketed IPv6 address, with an
/// optional port.
fn is_host(host: &str) -> bool {
    if let Some(rest) = host.strip_prefix('[') {
        let Some((addr, port)) = rest.split_once(']') else {
            return false;
        };
        return addr.parse::<std::net::Ipv6Addr>().is_ok()
            && (port.is_empty() || port.strip_prefix(':').is_some_and(is_port));
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    if port.is_some_and(|p| !is_port(p)) {
        return false;
    }
    let component = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !c.starts_with('-')
            && !c.ends_with('-')
    };
    name.split('.').all(component) && (name.contains('.') || port.is_some() || name == "localhost")
}

fn is_port(p: &str) -> bool {
    p.parse::<u16>().is_ok_and(|p| p > 0)
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn is_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep.is_empty()
            || sep == "."
            || sep == "_"
            || sep == "__"
            || sep.bytes().all(|x| x == b'-'))
        {
            return false;
        }
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`.
fn is_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_with_their_registry() {
        let r = ImageRef::parse("localhost:5000/team/echo:1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("localhost:5000", "team/echo", Some("1"))
        );
        assert!(r.is_loopback());
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("ghcr.io/acme/coder@{d}")).unwrap();
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(d.as_str())));
        let r = ImageRef::parse("[::1]:5000/x").unwrap();
        assert_eq!((r.host(), r.tag.as_deref()), ("[::1]", Some("latest")));
        assert!(r.is_loopback());
        assert!(!ImageRef::parse("ghcr.io/a/b:1").unwrap().is_loopback());
    }

    #[test]
    fn malformed_references_say_why() {
        let e = ImageRef::parse("localhost:5000/Echo:1").unwrap_err();
        assert!(e.contains("lowercase"), "{e}");
        let e = ImageRef::parse("localhost:5000/echo@sha256:abc").unwrap_err();
        assert!(e.starts_with("localhost:5000/echo@sha256:abc: "), "{e}");
        assert!(e.contains("64 lowercase hex"), "{e}");
        let e = ImageRef::parse("localhost:5000/echo:a tag").unwrap_err();
        assert!(e.contains("not an image reference"), "{e}");
        for bad in [
            "[zz]:5000/echo",
            "localhost:5000/echo:-tag",
            "localhost:5000/ec..ho",
            "localhost:5000/echo/",
            "localhost:99999/echo",
            "library/echo:1",
            "-bad.example/echo",
        ] {
            let e = ImageRef::parse(bad).unwrap_err();
            assert!(
                e.starts_with(&format!("{bad}: not an image reference: ")),
                "{e}"
            );
        }
        for good in [
            "registry.example/a/b-c/d__e.f:v1.2-rc_3",
            "127.0.0.1:5000/x",
            "localhost/x@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(ImageRef::parse(good).is_ok(), "{good}");
        }
    }
}
