//! "Bounded queues everywhere": every channel the code under `src/` creates has a
//! capacity, so a slow consumer costs a drop or a wait, never unbounded memory.
//!
//! Owns: a textual scan of `src/**/*.rs` for the constructors of unbounded
//! channels (tokio's `unbounded_channel`, std's `mpsc::channel()`, crossbeam's,
//! flume's, futures' and async-channel's `unbounded`), failing with the file:line
//! of each. A site that must stay is allowed only by a marker comment
//! `// bounded-queue: <why it is bounded>` on the line above it.
//!
//! Test code is not scanned: files declared `#[cfg(test)] mod name;` and the
//! `#[cfg(test)] mod ... {` block at the end of a file (clippy's
//! `items_after_test_module` keeps it last). Must not: read anything outside
//! `src/`, or accept a marker without a reason.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The marker that allows one site; a reason must follow it.
const MARKER: &str = "// bounded-queue:";

/// Unbounded constructors, matched on code with comments and strings removed, as
/// a call (`name(`) or with a turbofish (`name::<`).
const UNBOUNDED_CALLS: &[&str] = &[
    "unbounded_channel",
    "mpsc::unbounded",
    "crossbeam_channel::unbounded",
    "crossbeam::channel::unbounded",
    "flume::unbounded",
    "async_channel::unbounded",
    "kanal::unbounded",
];

/// Unbounded channel types (any mention is a use).
const UNBOUNDED_TYPES: &[&str] = &["UnboundedSender", "UnboundedReceiver"];

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The line without its `//` comment and with string literal contents blanked
/// (good enough for this code base: no raw strings hold channel calls).
fn code_of(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_str = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_str {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    in_str = false;
                    out.push('"');
                }
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push('"');
            }
            '/' if chars.peek() == Some(&'/') => break,
            _ => out.push(c),
        }
    }
    out
}

/// Whether `code` calls std's `channel()` (no capacity argument: unbounded),
/// as `mpsc::channel()`, `mpsc::channel::<T>()` or an imported bare `channel()`.
/// `oneshot::channel()` and method calls (`ev.channel()`) are not queues.
fn std_channel_call(code: &str) -> bool {
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(i) = code[from..].find("channel") {
        let at = from + i;
        from = at + "channel".len();
        let before = code[..at].trim_end();
        let word_start =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        if !word_start || before.ends_with('.') {
            continue;
        }
        if before.ends_with("::") && !before.ends_with("mpsc::") {
            continue;
        }
        let mut rest = &code[from..];
        if let Some(turbofish) = rest.strip_prefix("::<") {
            // Skip the type (no nested `>>` in a channel item type here is fine:
            // find the `>(` that closes it).
            match turbofish.find(">(") {
                Some(j) => rest = &turbofish[j + 1..],
                None => continue,
            }
        }
        if let Some(args) = rest.strip_prefix('(') {
            if args.trim_start().starts_with(')') {
                return true;
            }
        }
    }
    false
}

/// The offending constructor in `code`, if any.
fn unbounded_in(code: &str) -> Option<&'static str> {
    let called = |name: &str| {
        code.match_indices(name).any(|(i, _)| {
            let rest = &code[i + name.len()..];
            rest.starts_with('(') || rest.starts_with("::<")
        })
    };
    if let Some(c) = UNBOUNDED_CALLS.iter().find(|c| called(c)) {
        return Some(c);
    }
    if let Some(t) = UNBOUNDED_TYPES.iter().find(|t| code.contains(*t)) {
        return Some(t);
    }
    std_channel_call(code).then_some("std::sync::mpsc::channel()")
}

/// Files that are test modules (`#[cfg(test)] mod name;` in their parent).
fn test_only_files(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(f).expect("read source");
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let dir = match f.file_name().and_then(|n| n.to_str()) {
            Some("mod.rs" | "lib.rs" | "main.rs") => f.parent().unwrap().to_path_buf(),
            _ => f.with_extension(""),
        };
        for w in lines.windows(2) {
            if w[0] != "#[cfg(test)]" {
                continue;
            }
            let decl = w[1]
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub(super) ")
                .trim_start_matches("pub ");
            if let Some(name) = decl.strip_prefix("mod ").and_then(|d| d.strip_suffix(';')) {
                out.insert(dir.join(format!("{name}.rs")));
                out.insert(dir.join(name).join("mod.rs"));
            }
        }
    }
    out
}

/// `file:line: constructor` for every unmarked unbounded channel in `text`.
fn offenders(name: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim();
        if t == "#[cfg(test)]" && lines.get(i + 1).is_some_and(|n| is_inline_test_mod(n)) {
            break;
        }
        let Some(what) = unbounded_in(&code_of(line)) else {
            continue;
        };
        let marked = i > 0
            && lines[i - 1]
                .trim()
                .strip_prefix(MARKER)
                .is_some_and(|why| why.trim().len() >= 10);
        if !marked {
            found.push(format!("{name}:{}: {what}", i + 1));
        }
    }
    found
}

fn is_inline_test_mod(line: &str) -> bool {
    let t = line.trim();
    t.starts_with("mod ") && t.ends_with('{')
}

#[test]
fn every_channel_in_src_is_bounded() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rs_files(&root.join("src"), &mut files);
    assert!(
        files.len() > 50,
        "found only {} files under src/",
        files.len()
    );
    let tests = test_only_files(&files);
    let mut bad = Vec::new();
    for f in files.iter().filter(|f| !tests.contains(*f)) {
        let text = std::fs::read_to_string(f).expect("read source");
        let name = f.strip_prefix(root).unwrap_or(f).display().to_string();
        bad.extend(offenders(&name, &text));
    }
    assert!(
        bad.is_empty(),
        "unbounded channels (use a bounded one, or put `{MARKER} <why>` on the line above):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_scan_catches_each_form_and_honours_only_a_reasoned_marker() {
    let flagged = |src: &str| offenders("x.rs", src);
    for src in [
        "let (tx, rx) = tokio::sync::mpsc::unbounded_channel();",
        "let (tx, rx) = mpsc::channel::<CallStats>();",
        "let (s, r): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::channel()).unzip();",
        "let (tx, rx) = channel();",
        "let (tx, rx) = crossbeam_channel::unbounded();",
        "let (tx, rx) = flume::unbounded::<u8>();",
        "let (tx, rx) = futures::channel::mpsc::unbounded();",
        "tx: UnboundedSender<Msg>,",
    ] {
        assert_eq!(flagged(src).len(), 1, "not flagged: {src}");
    }
    for src in [
        "let (tx, rx) = mpsc::channel(1024);",
        "let (tx, rx) = tokio::sync::mpsc::channel::<u8>(4);",
        "let (tx, rx) = std::sync::mpsc::sync_channel(64);",
        "let (tx, rx) = oneshot::channel();",
        "let (tx, rx) = tokio::sync::oneshot::channel::<()>();",
        "assert!(ev.channel().is_some());",
        "let (tx, rx) = watch::channel(false);",
        "// no mpsc::channel() in a comment",
        r#"let s = "unbounded_channel() in a string";"#,
        "// bounded-queue: one message per call, at most `calls`\nlet (tx, rx) = mpsc::channel();",
        "fn f() {}\n#[cfg(test)]\nmod tests {\n    let (a, b) = std::sync::mpsc::channel::<()>();\n}",
    ] {
        assert!(flagged(src).is_empty(), "flagged: {src}");
    }
    // A marker without a reason does not count, and it covers one line only.
    assert_eq!(
        flagged("// bounded-queue:\nlet (tx, rx) = channel();").len(),
        1
    );
    assert_eq!(
        flagged("// bounded-queue: one per call, at most `calls`\nlet a = 1;\nlet (tx, rx) = channel();"),
        ["x.rs:3: std::sync::mpsc::channel()"]
    );
}
