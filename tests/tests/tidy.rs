//! The tidy test: house rules every `.rs` file in the workspace follows (STYLE.md).

use std::fs;
use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .expect("tests/ lives inside the workspace")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with("target") {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// The line with its string literals blanked out, so quoted code is not mistaken for code.
fn without_strings(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut quoted = false;
    let mut escaped = false;
    for c in line.chars() {
        match (quoted, escaped, c) {
            (true, false, '\\') => escaped = true,
            (true, true, _) => escaped = false,
            (_, false, '"') => quoted = !quoted,
            (false, _, c) => out.push(c),
            (true, _, _) => {}
        }
    }
    out
}

/// Every way a file breaks the house rules, as `path:line: rule` strings.
fn violations(path: &Path, text: &str) -> Vec<String> {
    let shown = path.display();
    let mut found = Vec::new();
    if !text.starts_with("//!") {
        found.push(format!("{shown}:1: does not start with a `//!` line"));
    }
    // Built with concat! so this file does not trip its own rules.
    let banned = [
        concat!("#[", "ignore"),
        concat!("dbg", "!("),
        concat!("todo", "!("),
        concat!("unimplemented", "!("),
    ];
    let lines: Vec<&str> = text.lines().collect();
    for (n, line) in lines.iter().enumerate() {
        for pattern in banned {
            if line.contains(pattern) {
                found.push(format!("{shown}:{}: contains `{pattern}`", n + 1));
            }
        }
        let code = without_strings(line.split("//").next().unwrap_or(""));
        let opens_unsafe = code.contains("unsafe {") || code.trim_end().ends_with("unsafe");
        let unsafe_impl = code.contains("unsafe impl");
        if opens_unsafe || unsafe_impl {
            // The justification sits just above: a SAFETY comment for a block, a doc comment
            // (or SAFETY comment) for an impl.
            let window = &lines[n.saturating_sub(8)..=n];
            let justified = window.iter().any(|l| l.contains("SAFETY:"))
                || (unsafe_impl && window.iter().any(|l| l.trim_start().starts_with("///")));
            if !justified {
                found.push(format!(
                    "{shown}:{}: unsafe without a SAFETY comment",
                    n + 1
                ));
            }
        }
    }
    found
}

#[test]
fn every_rust_file_follows_the_house_rules() {
    let mut files = Vec::new();
    rust_files(&workspace_root(), &mut files);
    assert!(
        files.len() > 10,
        "found only {} .rs files: wrong root?",
        files.len()
    );
    let mut problems = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).expect("read a workspace source file");
        problems.extend(violations(file, &text));
    }
    assert!(problems.is_empty(), "tidy found:\n{}", problems.join("\n"));
}

#[test]
fn tidy_notices_what_it_forbids() {
    let bad = format!(
        "fn main() {{\n    let x = {}1);\n    {}\n    let y = {} *p }};\n}}\n",
        concat!("dbg", "!("),
        concat!("#[", "ignore]"),
        concat!("unsafe", " {"),
    );
    let found = violations(Path::new("bad.rs"), &bad);
    assert_eq!(found.len(), 4, "{found:?}");
    let good = format!(
        "//! A fine file.\nfn f(p: *const u8) -> u8 {{\n    // SAFETY: p is valid.\n    {} *p }}\n}}\n",
        concat!("unsafe", " {")
    );
    assert!(violations(Path::new("good.rs"), &good).is_empty());
}
