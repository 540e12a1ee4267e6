//! Keeps the docs and the code in step.
//!
//! - Every variable and annotation the code knows has a row in
//!   `docs/configuration.md`, and every `OOMSNAP_*` variable or
//!   `oomsnap.dev/*` annotation the page mentions is known to the code, so
//!   adding *or* removing one without the docs fails here.
//! - Every `"OOMSNAP_…"` / `"oomsnap.dev/…"` string literal under `src/` is
//!   documented too, so a variable read somewhere outside the lists of known
//!   names cannot hide.
//! - Every metric named in `docs/operations.md` is exposed by `/metrics`
//!   under exactly that name (with `_total` on counters and
//!   `_bucket`/`_sum`/`_count` on histograms), and every exposed series is
//!   documented.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// Every maximal run of `allowed` characters that starts with `prefix`.
fn words_with_prefix(text: &str, prefix: &str, allowed: impl Fn(char) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find(prefix) {
        let start = from + i;
        // Only at the start of a word: `XOOMSNAP_` is not a mention.
        let boundary = text[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !allowed(c));
        let end = text[start + prefix.len()..]
            .char_indices()
            .find(|(_, c)| !allowed(*c))
            .map_or(text.len(), |(j, _)| start + prefix.len() + j);
        if boundary {
            out.push(text[start..end].to_string());
        }
        from = end.max(start + prefix.len());
    }
    out
}

fn env_names(text: &str) -> Vec<String> {
    words_with_prefix(text, "OOMSNAP_", |c| {
        c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'
    })
}

fn annotation_names(text: &str) -> Vec<String> {
    words_with_prefix(text, "oomsnap.dev/", |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
    })
    .into_iter()
    .map(|s| s.trim_end_matches('-').to_string())
    .collect()
}

/// Wrong names the configuration page shows on purpose, in its example of
/// a typo warning.
const EXAMPLE_TYPOS: &[&str] = &["OOMSNAP_THRESHOLD"];

fn known_vars() -> BTreeSet<&'static str> {
    oomsnap::config::KNOWN
        .iter()
        .chain(oomsnap::inject::KNOWN_VARS)
        .copied()
        .collect()
}

/// Tunables the sidecar follows live, plus the ones only the injector reads.
fn known_annotations() -> BTreeSet<&'static str> {
    use oomsnap::inject::patch;
    oomsnap::annotations::KNOWN
        .iter()
        .copied()
        .chain([
            patch::ANNOTATION_INJECT,
            patch::ANNOTATION_STATUS,
            patch::ANNOTATION_CONTAINER,
            patch::ANNOTATION_PORT,
            patch::ANNOTATION_PATH,
            patch::ANNOTATION_MEMORY_LIMIT,
        ])
        .collect()
}

/// A name "has a row" when a table row starts with it in backticks.
fn has_row(doc: &str, name: &str) -> bool {
    let cell = format!("| `{name}`");
    doc.lines().any(|l| l.trim_start().starts_with(&cell))
}

/// A mention ending in `_` or `/` is a prefix (`OOMSNAP_INJECT_*`); it must
/// be the prefix of a known name.
fn is_known_or_prefix(name: &str, known: &BTreeSet<&str>) -> bool {
    if name.ends_with('_') || name.ends_with('/') {
        known.iter().any(|k| k.starts_with(name))
    } else {
        known.contains(name)
    }
}

#[test]
fn every_known_variable_has_a_row_in_the_configuration_page() {
    let doc = read("docs/configuration.md");
    let missing: Vec<_> = known_vars()
        .into_iter()
        .chain([
            oomsnap::config::POD_NAME,
            oomsnap::config::POD_NAMESPACE,
            oomsnap::config::POD_UID,
            oomsnap::config::NODE_NAME,
        ])
        .filter(|n| !has_row(&doc, n))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md has no table row (| `NAME` | …) for {missing:?}"
    );
}

#[test]
fn every_known_annotation_has_a_row_in_the_configuration_page() {
    let doc = read("docs/configuration.md");
    let missing: Vec<_> = known_annotations()
        .into_iter()
        .filter(|n| !has_row(&doc, n))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md has no table row (| `NAME` | …) for {missing:?}"
    );
}

#[test]
fn every_variable_the_configuration_page_names_is_read_by_the_code() {
    let doc = read("docs/configuration.md");
    let known = known_vars();
    let unknown: BTreeSet<_> = env_names(&doc)
        .into_iter()
        .filter(|n| !is_known_or_prefix(n, &known) && !EXAMPLE_TYPOS.contains(&n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/configuration.md documents variables the code does not read \
         (removed or misspelt?): {unknown:?}"
    );
}

#[test]
fn every_annotation_the_configuration_page_names_is_read_by_the_code() {
    let doc = read("docs/configuration.md");
    let known = known_annotations();
    let unknown: BTreeSet<_> = annotation_names(&doc)
        .into_iter()
        .filter(|n| !is_known_or_prefix(n, &known))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/configuration.md documents annotations the code does not read \
         (removed or misspelt?): {unknown:?}"
    );
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `(file, name)` for every string literal in `src/` that starts with
/// `"<prefix>`.
fn literals(prefix: &str, names: impl Fn(&str) -> Vec<String>) -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut out = Vec::new();
    // Unit tests name wrong variables on purpose (typo warnings), in a
    // `tests` module file or after `#[cfg(test)]`.
    files.retain(|f| {
        f.file_name().is_none_or(|n| n != "tests.rs")
            && !f.components().any(|c| c.as_os_str() == "tests")
    });
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let text = match text.find("#[cfg(test)]") {
            Some(i) => text[..i].to_string(),
            None => text,
        };
        let rel = f.strip_prefix(root()).unwrap().display().to_string();
        let quoted = format!("\"{prefix}");
        let mut from = 0;
        while let Some(i) = text[from..].find(&quoted) {
            let at = from + i + 1;
            if let Some(n) = names(&text[at..]).into_iter().next() {
                out.push((rel.clone(), n));
            }
            from = at;
        }
    }
    out
}

#[test]
fn every_variable_literal_in_the_source_is_known_and_documented() {
    let doc = read("docs/configuration.md");
    let known = known_vars();
    let mut problems = Vec::new();
    for (file, name) in literals("OOMSNAP_", env_names) {
        if name.ends_with('_') {
            // A prefix test such as `starts_with("OOMSNAP_INJECT_")`.
            if !known.iter().any(|k| k.starts_with(&name)) {
                problems.push(format!("{file}: prefix {name} matches no known variable"));
            }
            continue;
        }
        if !known.contains(name.as_str()) {
            problems.push(format!(
                "{file}: {name} is not in config::KNOWN or inject::KNOWN_VARS, \
                 so setting it draws a typo warning"
            ));
        }
        if !has_row(&doc, &name) {
            problems.push(format!(
                "{file}: {name} has no row in docs/configuration.md"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_annotation_literal_in_the_source_is_documented() {
    let doc = read("docs/configuration.md");
    let mut problems = Vec::new();
    for (file, name) in literals("oomsnap.dev/", annotation_names) {
        if name.ends_with('/') {
            continue;
        }
        if !has_row(&doc, &name) {
            problems.push(format!(
                "{file}: {name} has no row in docs/configuration.md"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// `text` without the section that starts at the heading `heading` (up to
/// the next heading of the same level).
fn without_section(text: &str, heading: &str) -> String {
    let Some(start) = text.find(heading) else {
        return text.to_string();
    };
    let rest = &text[start + heading.len()..];
    let end = rest
        .find("\n## ")
        .map_or(text.len(), |i| start + heading.len() + i);
    format!("{}{}", &text[..start], &text[end..])
}

/// Every `oomsnap_*` name on the operations page, except in the
/// `manifest.json` section, whose `oomsnap_version` is a field, not a metric.
fn metric_names(text: &str) -> BTreeSet<String> {
    let text = without_section(text, "## `manifest.json`");
    words_with_prefix(&text, "oomsnap_", |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
    })
    .into_iter()
    .collect()
}

/// The family a series belongs to, as registered in `src/admin/metrics.rs`.
fn family(series: &str) -> &str {
    ["_total", "_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| series.strip_suffix(s))
        .unwrap_or(series)
}

#[test]
fn every_documented_metric_family_is_named_in_the_admin_module() {
    let doc = read("docs/operations.md");
    let admin = read("src/admin/metrics.rs");
    let documented = metric_names(&doc);
    assert!(
        documented.len() >= 10,
        "docs/operations.md names only {documented:?}"
    );
    let missing: Vec<_> = documented
        .iter()
        .filter(|s| !admin.contains(&format!("\"{}\"", family(s))))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md names metrics that src/admin/metrics.rs does not register: {missing:?}"
    );
}

/// Scrapes a real admin server whose state has something in every metric,
/// and compares the series it exposes with the ones the page documents.
#[tokio::test]
async fn documented_metrics_are_exactly_the_exposed_series() {
    use oomsnap::metrics::{CaptureLabels, ProfileLabels, SkipLabels};
    use std::collections::BTreeMap;
    use std::time::Instant;

    let dir = tempfile::tempdir().unwrap();
    let vars: BTreeMap<String, String> = [
        (
            "OOMSNAP_SPOOL_DIR",
            dir.path().join("spool").display().to_string(),
        ),
        ("OOMSNAP_STORE", "memory://".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (config, _) = oomsnap::config::Config::from_vars(&vars).unwrap();
    let (spool, _) =
        oomsnap::spool::Spool::open(&config.spool_dir, config.spool_max_bytes).unwrap();
    let store = oomsnap::store::Store::open(&config.store).unwrap();
    let shipper = oomsnap::ship::Shipper::new(store, spool.clone());
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let shared = oomsnap::state::Shared::new(config, tx, false);
    shared.storage.spool.set(spool).unwrap();
    assert!(shared.storage.shipper.set(shipper).is_ok());
    *shared.watch.last.lock().unwrap() = Some(oomsnap::memory::Sample::synthetic(
        Instant::now(),
        100 << 20,
        256 << 20,
    ));
    shared.admission.lock().count_drop("threshold-80", "paused");
    shared
        .metrics
        .captures
        .get_or_create(&CaptureLabels {
            reason: "manual".into(),
            outcome: "complete".into(),
        })
        .inc();
    shared
        .metrics
        .fetch_seconds
        .get_or_create(&ProfileLabels {
            profile: "heap".into(),
        })
        .observe(0.01);
    shared.metrics.lead_seconds.observe(1.0);
    shared
        .metrics
        .captures_discarded
        .get_or_create(&oomsnap::metrics::ReasonLabel {
            reason: "imminent".into(),
        })
        .inc();
    shared
        .metrics
        .profiles_skipped
        .get_or_create(&SkipLabels {
            profile: "goroutine".into(),
            cause: "headroom".into(),
        })
        .inc();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let server = oomsnap::admin::spawn(addr, shared);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut body = String::new();
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("http://{addr}/metrics")).send().await {
            body = r.text().await.unwrap();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.abort();

    let exposed: BTreeSet<String> = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    let documented = metric_names(&read("docs/operations.md"));
    let undocumented: Vec<_> = exposed.difference(&documented).collect();
    let not_exposed: Vec<_> = documented.difference(&exposed).collect();
    assert!(
        undocumented.is_empty() && not_exposed.is_empty(),
        "exposed but not in docs/operations.md: {undocumented:?}\n\
         in docs/operations.md but not exposed: {not_exposed:?}\n--- /metrics ---\n{body}"
    );
}
