// Test and build code: a failed step panics with its message, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Embeds the example domain (`examples/domain1`) in the `steward` binary, so `steward up` and
//! `steward init` work wherever the binary is installed (`cargo install --path .`), not only from
//! the top of the source tree. Each file becomes an `include_bytes!` entry of
//! `$OUT_DIR/example_domain.rs`, with its executable bit; no dependency is needed for it.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("examples/domain1");
    // A directory here makes cargo rerun the script when anything under it changes.
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    walk(&root, "", &mut files);
    files.sort();
    let mut out = String::from("pub static FILES: &[(&str, &[u8], bool)] = &[\n");
    for (rel, path, exec) in files {
        writeln!(out, "    ({rel:?}, include_bytes!({path:?}), {exec}),").expect("string");
    }
    out.push_str("];\n");
    let dest =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("example_domain.rs");
    std::fs::write(dest, out).expect("cannot write the embedded example domain");
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, String, bool)>) {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: cannot list the example domain: {e}", dir.display()));
    for entry in entries {
        let entry = entry.expect("a directory entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let meta = std::fs::metadata(&path).expect("metadata");
        if meta.is_dir() {
            walk(&path, &child, out);
        } else if meta.is_file() {
            let exec = meta.permissions().mode() & 0o111 != 0;
            out.push((child, path.display().to_string(), exec));
        }
    }
}
