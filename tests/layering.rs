//! The crate's top-level modules form no cycle.
//!
//! Reads `src/lib.rs` for the module names, then every file under `src/`
//! for `crate::<module>` paths outside comments (including `use crate::{a,
//! b::c}` groups), and fails with the loop and the lines that make it when
//! one module reaches back to itself. Issue 17 broke `run ↔ admin ↔
//! annotations` and `config ↔ inject`; this keeps new ones from creeping
//! in. A plain line scan, not a compiler pass: it may see an edge through
//! a string that mentions `crate::x` (then reword the string), and it does
//! not read what follows a `//` on a line, even inside a string.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → (module it uses → first place it does).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn modules(src: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("pub(crate) mod "))
                .or_else(|| l.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').to_string())
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a line, without a trailing `//` comment.
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// Module names a line refers to as `crate::name` or inside `use crate::{…}`.
fn used_modules(text: &str, known: &BTreeSet<String>) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut in_group = false;
    for (n, line) in text.lines().enumerate() {
        let c = code(line);
        let mut rest = c;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            if after.starts_with('{') {
                in_group = true;
            }
            let name: String = after
                .chars()
                .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '_')
                .collect();
            if known.contains(&name) {
                found.push((n + 1, name));
            }
            rest = after;
        }
        if in_group {
            // The first path segment of each item in the group.
            let body = c.split_once("crate::{").map_or(c, |(_, b)| b);
            for item in body.split(',') {
                let name: String = item
                    .trim()
                    .trim_start_matches('{')
                    .chars()
                    .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '_')
                    .collect();
                if known.contains(&name) {
                    found.push((n + 1, name));
                }
            }
            if c.contains("};") {
                in_group = false;
            }
        }
    }
    found
}

fn graph(src: &Path) -> Graph {
    let known: BTreeSet<String> = modules(src).into_iter().collect();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut g = Graph::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        let first = rel.components().next().unwrap().as_os_str();
        let owner = first.to_string_lossy().trim_end_matches(".rs").to_string();
        if !known.contains(&owner) {
            continue; // lib.rs, main.rs
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (line, used) in used_modules(&text, &known) {
            if used != owner {
                g.entry(owner.clone())
                    .or_default()
                    .entry(used)
                    .or_insert_with(|| format!("src/{}:{line}", rel.display()));
            }
        }
    }
    g
}

/// A loop through `from`, if there is one: the modules in order.
fn cycle_through(g: &Graph, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_string(), vec![from.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in g.get(&at).into_iter().flat_map(|m| m.keys()) {
            if next == from {
                let mut p = path.clone();
                p.push(next.clone());
                return Some(p);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

#[test]
fn no_module_depends_on_itself_around_a_loop() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    assert!(
        g.len() > 10,
        "the scan found too few modules to mean anything: {g:?}"
    );
    let mut loops = Vec::new();
    for m in g.keys() {
        if let Some(c) = cycle_through(&g, m) {
            let why: Vec<String> = c
                .windows(2)
                .map(|w| format!("  {} → {} at {}", w[0], w[1], g[&w[0]][&w[1]]))
                .collect();
            loops.push(format!("{}\n{}", c.join(" → "), why.join("\n")));
        }
    }
    assert!(loops.is_empty(), "module cycles:\n{}", loops.join("\n\n"));
}

#[test]
fn the_scan_sees_plain_and_grouped_imports() {
    let known: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let text = "use crate::a::X;\n// crate::c in a comment\nuse crate::{\n    b::Y,\n    c,\n};\nlet x = crate::b::f(); // crate::c\n";
    let found: Vec<String> = used_modules(text, &known)
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_eq!(found, ["a", "b", "c", "b"]);
}
