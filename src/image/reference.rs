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
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{s}: not an image reference: {why}");
        let (host, rest) = s
            .split_once('/')
            .ok_or_else(|| bad("no registry host (`registry.example/repo:tag`)"))?;
        let repo = rest.split(['@', ':']).next().unwrap_or_default();
        if repo.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("repository names are lowercase"));
        }
        // The reference grammar has no IPv6 literals: parse the rest under a
        // stand-in host, then put the literal back.
        let ipv6 = host.starts_with('[');
        if ipv6 && !is_ipv6_host(host) {
            return Err(bad(
                "a bracketed host must be an IPv6 address, `[::1]:5000`",
            ));
        }
        let parsed = if ipv6 {
            format!("ipv6.invalid/{rest}")
        } else {
            s.to_string()
        };
        let r: Reference = parsed
            .parse()
            .map_err(|e: oci_client::ParseError| bad(&e.to_string()))?;
        // The grammar would read `repo:tag` with no host as Docker Hub's; a
        // guest image must name its registry.
        if !ipv6 && r.registry() != host {
            return Err(bad("the first part must be a registry host \
                 (`registry.example/repo:tag`, `localhost:5000/repo:tag`)"));
        }
        let registry = if ipv6 { host } else { r.registry() };
        if let Some(d) = r.digest() {
            let hex = d
                .strip_prefix("sha256:")
                .ok_or_else(|| format!("{s}: only sha256 digests are supported, not `{d}`"))?;
            if !is_sha256_hex(hex) {
                return Err(format!(
                    "{s}: `{d}` is not a sha256 digest (64 lowercase hex digits)"
                ));
            }
        }
        let tag = match (r.tag(), r.digest()) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t.map(str::to_string),
        };
        Ok(ImageRef {
            registry: registry.to_string(),
            repository: r.repository().to_string(),
            tag,
            digest: r.digest().map(str::to_string),
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

/// `[addr]` or `[addr]:port` with an IPv6 address inside.
fn is_ipv6_host(host: &str) -> bool {
    let Some((addr, port)) = host.strip_prefix('[').and_then(|h| h.split_once(']')) else {
        return false;
    };
    addr.parse::<std::net::Ipv6Addr>().is_ok()
        && (port.is_empty()
            || port
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok()))
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
        let e = ImageRef::parse("localhost:5000/echo:a tag").unwrap_err();
        assert!(e.contains("not an image reference"), "{e}");
        let e = ImageRef::parse("[zz]:5000/echo").unwrap_err();
        assert!(e.contains("IPv6"), "{e}");
    }
}
