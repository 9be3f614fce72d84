//! Walking the workspace and matching paths against glob patterns (`**`,
//! `*`, `?`), for the `glob` and `grep` tools. Written here rather than taken
//! from a crate: it is small, and the guest should stay small.

use std::fs;
use std::path::Path;

/// Directories never walked into: version control data, build output and
/// installed packages are large and almost never what a search is after.
pub const SKIPPED_DIRS: [&str; 3] = [".git", "target", "node_modules"];

/// A walk stops after this many entries, so a huge tree cannot stall the
/// agent until its deadline.
pub const MAX_ENTRIES: usize = 100_000;

/// How deep a walk goes; deeper trees are almost always generated.
const MAX_DEPTH: usize = 64;

/// One entry found by [`walk`]: its path relative to the walk's base
/// (`/`-separated) and whether it is a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub is_dir: bool,
}

/// What a walk found, and whether it stopped early at [`MAX_ENTRIES`].
#[derive(Debug, Default)]
pub struct Walk {
    pub entries: Vec<Entry>,
    pub stopped: bool,
}

/// Every file and directory under `base` in sorted, depth-first order,
/// `prefix` prepended to each path, without following symlinks (a link is
/// listed, never entered) and leaving out [`SKIPPED_DIRS`]. Unreadable
/// directories are passed over.
pub fn walk(base: &Path, prefix: &str) -> Walk {
    let mut found = Walk::default();
    visit(base, prefix, 0, &mut found);
    found
}

fn visit(dir: &Path, prefix: &str, depth: usize, found: &mut Walk) {
    if depth > MAX_DEPTH || found.stopped {
        return;
    }
    for (name, is_dir) in sorted_entries(dir) {
        if found.entries.len() >= MAX_ENTRIES {
            found.stopped = true;
            return;
        }
        if is_dir && SKIPPED_DIRS.contains(&name.as_str()) {
            continue;
        }
        let path = join(prefix, &name);
        found.entries.push(Entry {
            path: path.clone(),
            is_dir,
        });
        if is_dir {
            visit(&dir.join(&name), &path, depth + 1, found);
        }
    }
}

/// A directory's entries as (name, is a real directory), sorted by name;
/// empty when the directory cannot be read.
pub fn sorted_entries(dir: &Path) -> Vec<(String, bool)> {
    let Ok(read) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut entries: Vec<(String, bool)> = read
        .flatten()
        .map(|entry| {
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            (entry.file_name().to_string_lossy().into_owned(), is_dir)
        })
        .collect();
    entries.sort();
    entries
}

/// `prefix/name`, or `name` alone for the walk's base.
fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() || prefix == "." {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

/// Whether `path` (relative, `/`-separated) matches `pattern`: `**` is any
/// number of whole segments (none included), `*` any run of characters
/// within a segment, `?` one character; everything else is literal.
pub fn matches(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = segments(pattern);
    let path: Vec<&str> = segments(path);
    // done[i][j]: pattern[i..] matches path[j..]. Filled from the end, so a
    // pattern with many `**` stays polynomial.
    let (p, s) = (pattern.len(), path.len());
    let mut done = vec![vec![false; s + 1]; p + 1];
    done[p][s] = true;
    for i in (0..p).rev() {
        for j in (0..=s).rev() {
            done[i][j] = if pattern[i] == "**" {
                done[i + 1][j] || (j < s && done[i][j + 1])
            } else {
                j < s && segment_matches(pattern[i], path[j]) && done[i + 1][j + 1]
            };
        }
    }
    done[0][0]
}

/// The non-empty, non-`.` segments of a path or pattern.
fn segments(path: &str) -> Vec<&str> {
    path.split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect()
}

/// Whether one segment matches a pattern segment with `*` and `?`: the
/// classic greedy match that backtracks to the last `*`.
pub fn segment_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        if i < p.len() && (p[i] == '?' || p[i] == t[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn segment_wildcards() {
        assert!(segment_matches("*.rs", "main.rs"));
        assert!(segment_matches("*", ""));
        assert!(segment_matches("m?in.rs", "main.rs"));
        assert!(segment_matches("*a*b*", "xxaxxbxx"));
        assert!(!segment_matches("*.rs", "main.rst"));
        assert!(!segment_matches("?", ""));
        assert!(segment_matches("é*", "été"));
    }

    #[test]
    fn double_star_spans_directories() {
        assert!(matches("**/*.rs", "main.rs"));
        assert!(matches("**/*.rs", "src/a/b/main.rs"));
        assert!(matches("src/**", "src/a/b"));
        assert!(matches("src/**/mod.rs", "src/mod.rs"));
        assert!(matches("src/**/mod.rs", "src/x/y/mod.rs"));
        assert!(!matches("*.rs", "src/main.rs"));
        assert!(!matches("src/*.rs", "src/a/main.rs"));
        assert!(matches("./src/*.rs", "src/main.rs"));
        assert!(matches("**/**/**/x", "a/b/c/d/e/f/g/h/x"));
        assert!(!matches("**/**/**/x", "a/b/c/d/e/f/g/h/y"));
    }

    #[test]
    fn walk_is_sorted_and_skips_build_dirs() {
        let dir = TempDir::new();
        dir.write("b.txt", "");
        dir.write("a/z.rs", "");
        dir.write("a/c/d.rs", "");
        dir.write(".git/config", "");
        dir.write("target/debug/x", "");
        dir.write("node_modules/m/index.js", "");
        let found = walk(dir.path(), "");
        let paths: Vec<&str> = found.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "a/c", "a/c/d.rs", "a/z.rs", "b.txt"]);
        assert!(found.entries[0].is_dir);
        assert!(!found.entries[4].is_dir);
        assert!(!found.stopped);
    }
}
