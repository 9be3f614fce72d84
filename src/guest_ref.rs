//! What `<guest>` names on the command line (and later in an agent's
//! config): a `.wasm`/`.wat` file, a guest bundled into the binary, or an OCI
//! image reference. Turns a reference into bytes; must not know how guests
//! are compiled or run.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use crate::image::ImageRef;
use crate::sandbox::GuestSource;

/// A guest compiled into the cairn binary: WAT text or a `.wasm` binary.
pub struct Bundled {
    pub name: &'static str,
    pub bytes: &'static [u8],
}

/// The guests every cairn has, needing nothing else. `echo` replies with the
/// prompt and the dispatch kind: the default when no model is configured.
/// `coder` is the coding agent (`guests/coder`), built by `build.rs` when the
/// `wasm32-wasip2` target is installed.
pub const BUNDLED: &[Bundled] = &[
    Bundled {
        name: "echo",
        bytes: include_bytes!("../wat/echo.wat"),
    },
    #[cfg(cairn_coder)]
    Bundled {
        name: CODER,
        bytes: include_bytes!(concat!(env!("OUT_DIR"), "/coder.wasm")),
    },
];

/// The bundled coding agent's name.
pub const CODER: &str = "coder";

/// Whether this build bundles the coder guest.
pub fn has_coder() -> bool {
    BUNDLED.iter().any(|b| b.name == CODER)
}

#[derive(Debug, PartialEq, Eq)]
pub enum GuestRef {
    File(PathBuf),
    Bundled(&'static str),
    /// `registry/repo:tag` or `registry/repo@sha256:…`, resolved through
    /// the image cache ([`crate::image`]).
    Image(ImageRef),
}

impl GuestRef {
    /// Bare names (no `/`, no `.wasm`/`.wat`) are bundled guests first, so
    /// `cairn run echo` means the bundled one even next to a file `echo`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty guest reference".into());
        }
        let path = Path::new(s);
        let has_wasm_ext = path.extension().is_some_and(|e| e == "wasm" || e == "wat");
        let bare = !s.contains('/') && !has_wasm_ext;
        if bare && let Some(b) = BUNDLED.iter().find(|b| b.name == s) {
            return Ok(GuestRef::Bundled(b.name));
        }
        if has_wasm_ext || path.exists() || s.starts_with('.') || s.starts_with('/') {
            return Ok(GuestRef::File(path.to_path_buf()));
        }
        if looks_like_image(s) {
            return ImageRef::parse(s).map(GuestRef::Image);
        }
        let names: Vec<&str> = BUNDLED.iter().map(|b| b.name).collect();
        Err(format!(
            "no guest `{s}`: not a file, not a bundled guest ({}), not an image reference",
            names.join(", ")
        ))
    }

    /// The guest's bytes and how to name it, for a file or a bundled guest
    /// (an image is resolved through [`crate::image::Images`]).
    pub fn source(&self) -> Result<GuestSource<'_>, String> {
        match self {
            GuestRef::Bundled(name) => {
                let b = BUNDLED
                    .iter()
                    .find(|b| b.name == *name)
                    .ok_or("unknown bundled guest")?;
                Ok(GuestSource {
                    name: b.name.to_string(),
                    origin: format!("bundled guest {}", b.name),
                    bytes: Cow::Borrowed(b.bytes),
                    path: None,
                    sha256: None,
                })
            }
            GuestRef::File(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| format!("{}: {}", path.display(), io_reason(&e)))?;
                let name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
                Ok(GuestSource {
                    name: name.unwrap_or_else(|| "guest".into()),
                    origin: path.display().to_string(),
                    bytes: Cow::Owned(bytes),
                    path: Some(path),
                    sha256: None,
                })
            }
            GuestRef::Image(reference) => Err(format!("{reference}: an image, not a file")),
        }
    }
}

/// `host[:port]/repo[:tag|@digest]`: a first component that names a host.
fn looks_like_image(s: &str) -> bool {
    match s.split_once('/') {
        Some((host, rest)) => {
            !rest.is_empty() && (host.contains('.') || host.contains(':') || host == "localhost")
        }
        None => false,
    }
}

pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::IsADirectory => "is a directory, not a file".into(),
        _ => e.to_string().to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_by_their_shape() {
        assert_eq!(GuestRef::parse("echo"), Ok(GuestRef::Bundled("echo")));
        assert_eq!(
            GuestRef::parse("x/y.wat"),
            Ok(GuestRef::File("x/y.wat".into()))
        );
        assert_eq!(
            GuestRef::parse("./echo"),
            Ok(GuestRef::File("./echo".into()))
        );
        assert_eq!(
            GuestRef::parse("ghcr.io/acme/coder:1"),
            Ok(GuestRef::Image(
                ImageRef::parse("ghcr.io/acme/coder:1").unwrap()
            ))
        );
        assert!(
            GuestRef::parse("nosuchguest")
                .unwrap_err()
                .contains("bundled guest (echo")
        );
        assert!(GuestRef::parse("").is_err());
    }
}
