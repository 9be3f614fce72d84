// Rules of the codebase a test can check: every source file says what it owns.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_source_file_opens_with_a_module_doc() {
    let mut files = Vec::new();
    rust_files(&crate::repo().join("src"), &mut files);
    assert!(files.len() > 5);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} must start with a `//!` doc saying what it owns",
            file.display()
        );
    }
}

#[test]
fn only_the_sandbox_touches_wasmtime() {
    let mut files = Vec::new();
    rust_files(&crate::repo().join("src"), &mut files);
    for file in files {
        if file.components().any(|c| c.as_os_str() == "sandbox") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("wasmtime::") && !text.contains("wasmtime_wasi"),
            "{} uses wasmtime",
            file.display()
        );
    }
}
