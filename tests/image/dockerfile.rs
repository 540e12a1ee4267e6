//! Just enough of Dockerfile and `.dockerignore` syntax to reproduce a
//! build stage: instructions with continuation lines joined, stages, and
//! Docker's ignore rules (Go's `filepath.Match` per segment, `**`, `!`
//! exceptions, the last matching rule deciding for a path or any of its
//! parents). Text in, plain values out; no I/O.

use std::path::Path;

/// One instruction: its keyword in upper case and the rest, with
/// continuation lines joined and comment lines dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    pub keyword: String,
    pub args: String,
}

pub fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head.trim_end());
                pending.push(' ');
            }
            None => {
                pending.push_str(trimmed);
                let (keyword, args) = pending.split_once(' ').unwrap_or((&pending, ""));
                out.push(Instruction {
                    keyword: keyword.to_ascii_uppercase(),
                    args: args.split_whitespace().collect::<Vec<_>>().join(" "),
                });
                pending.clear();
            }
        }
    }
    out
}

/// The instructions of each stage, `FROM` first.
pub fn stages(text: &str) -> Vec<Vec<Instruction>> {
    let mut out: Vec<Vec<Instruction>> = Vec::new();
    for i in instructions(text) {
        if i.keyword == "FROM" {
            out.push(Vec::new());
        }
        out.last_mut()
            .expect("a Dockerfile starts with FROM (after ARG, which these do not use)")
            .push(i);
    }
    out
}

/// The stage `FROM … AS <name>`.
pub fn stage<'a>(stages: &'a [Vec<Instruction>], name: &str) -> &'a [Instruction] {
    stages
        .iter()
        .find(|s| {
            let words: Vec<_> = s[0].args.split_whitespace().collect();
            words.len() >= 3
                && words[words.len() - 2].eq_ignore_ascii_case("as")
                && words[words.len() - 1] == name
        })
        .unwrap_or_else(|| panic!("no stage `AS {name}`"))
}

/// One `.dockerignore` rule: a pattern, and whether it is an exception (`!`).
pub struct IgnoreRule {
    segments: Vec<String>,
    exception: bool,
}

pub fn dockerignore(text: &str) -> Vec<IgnoreRule> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (exception, pattern) = match l.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, l),
            };
            assert!(
                !pattern.contains('[') && !pattern.contains('\\'),
                ".dockerignore pattern {l:?}: character classes and escapes are not reproduced by this test"
            );
            IgnoreRule {
                segments: pattern
                    .trim_matches('/')
                    .split('/')
                    .filter(|s| !s.is_empty() && *s != ".")
                    .map(String::from)
                    .collect(),
                exception,
            }
        })
        .collect()
}

/// Go's `filepath.Match` for one path segment, without character classes.
fn segment_matches(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            segment_matches(&pattern[1..], name)
                || (!name.is_empty() && segment_matches(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => segment_matches(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => segment_matches(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Whole-path match, where a `**` segment stands for any number of segments.
fn path_matches(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => {
            (0..=path.len()).any(|skip| path_matches(rest, &path[skip..]))
        }
        Some((p, rest)) => {
            !path.is_empty()
                && segment_matches(p.as_bytes(), path[0].as_bytes())
                && path_matches(rest, &path[1..])
        }
    }
}

/// Whether Docker leaves `rel` (a path relative to the context) out of the
/// context: the last rule that matches the path or one of its parent
/// directories decides, and an exception re-includes.
pub fn ignored(rules: &[IgnoreRule], rel: &Path) -> bool {
    let parts: Vec<&str> = rel.iter().map(|s| s.to_str().unwrap()).collect();
    let mut excluded = false;
    for rule in rules {
        if (1..=parts.len()).any(|n| path_matches(&rule.segments, &parts[..n])) {
            excluded = !rule.exception;
        }
    }
    excluded
}
