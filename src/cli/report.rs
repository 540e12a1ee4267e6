//! `oomsnap report`: what grew in one capture, and the commands to dig
//! further.
//!
//! A capture enters as a local directory or a store argument; its manifest,
//! its `oom.json` and where its files and its baseline's files are
//! ([`Files`]) are loaded, then rendered by pure functions ([`render`],
//! [`dig_commands`]) as text or JSON on stdout. Every printed command works
//! when pasted: local paths for a directory or a `file://` store, and for a
//! remote store `oomsnap get` into a directory, then `go tool pprof` on it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;

use super::address;
use super::catalog::read_json;
use super::display::{lead_sentence, shell_quote, short_function};
use super::{failed, CliError, FormatArgs, StoreArg};
use crate::config::Vars;
use crate::keys;
use crate::manifest::{Manifest, OomRecord, MANIFEST_FILE, OOM_FILE};
use crate::pprof::{human_bytes, human_bytes_signed};
use crate::store::Store;
use crate::summary::TOP_FUNCTIONS;

#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// The capture: a local directory, its full URL, its key, or its id within --store.
    pub capture: String,
    #[command(flatten)]
    pub store: StoreArg,
    /// Rows in each table.
    #[arg(long, value_name = "N", default_value_t = TOP_FUNCTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub top: usize,
    #[command(flatten)]
    pub format: FormatArgs,
}

/// Function names in the report's tables keep their end within this width.
const FUNCTION_WIDTH: usize = 72;
/// Frames shown per goroutine stack.
const STACK_FRAMES: usize = 6;

/// Where a capture's files, and its baseline's, can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Files {
    /// On this machine: a capture directory, or a folder of a `file://` store.
    Local {
        dir: PathBuf,
        baseline: Option<PathBuf>,
    },
    /// In an object store: `url` and the baseline's URL go to `oomsnap get`,
    /// each into a directory named after its id.
    Remote {
        url: String,
        id: String,
        baseline: Option<(String, String)>,
    },
}

/// A capture as `report` shows it.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Loaded {
    pub location: String,
    pub manifest: Manifest,
    pub oom: Option<OomRecord>,
    #[serde(skip)]
    pub files: Files,
    pub notes: Vec<String>,
}

/// `oomsnap report`.
pub async fn report(a: ReportArgs, env: &dyn Vars) -> Result<(), CliError> {
    let local = Path::new(&a.capture);
    let loaded = if local.join(MANIFEST_FILE).is_file() {
        load_dir(local)?
    } else if local.is_dir() && !a.capture.contains("://") {
        return Err(failed(format!(
            "{} has no {MANIFEST_FILE}, so it is not a capture directory",
            local.display()
        )));
    } else {
        let (store, key) = address::resolve(&a.capture, a.store.store.as_deref(), env).await?;
        load_store(&store, &key).await?
    };
    let mut notes = loaded.notes.clone();
    if a.top > TOP_FUNCTIONS {
        notes.push(format!(
            "the manifest keeps the top {TOP_FUNCTIONS} functions; go tool pprof shows the rest"
        ));
    }
    let commands = dig_commands(&loaded.files, &loaded.manifest);
    if a.format.json() {
        let mut v = serde_json::to_value(&loaded).map_err(failed)?;
        v["capture"] = loaded.manifest.capture_id.clone().into();
        v["dig_further"] = commands.into();
        v["notes"] = notes.into();
        println!("{}", serde_json::to_string_pretty(&v).map_err(failed)?);
    } else {
        print!("{}", render(&loaded, a.top, &commands, &notes));
    }
    Ok(())
}

fn read_local<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T, String> {
    let bytes = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{} is not valid: {e}", p.display()))
}

/// A capture directory, as `oomsnap get` or a `file://` store leaves it.
fn load_dir(dir: &Path) -> Result<Loaded, CliError> {
    // Absolute paths work wherever the printed commands are pasted.
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let manifest: Manifest = read_local(&dir.join(MANIFEST_FILE)).map_err(failed)?;
    let oom = read_local(&dir.join(OOM_FILE)).ok();
    let mut notes = Vec::new();
    let baseline = manifest.baseline.as_deref().and_then(|b| {
        let sibling = dir.parent()?.join(keys::sanitize(b));
        if sibling.join(heap_file()).is_file() {
            Some(sibling)
        } else {
            notes.push(format!(
                "the baseline {b} is not beside this directory; download it next to it \
                 (oomsnap get {b} --store <the store> --dir {}) to diff against it in pprof",
                shell_quote(&sibling.display().to_string())
            ));
            None
        }
    });
    Ok(Loaded {
        location: dir.display().to_string(),
        manifest,
        oom,
        files: Files::Local { dir, baseline },
        notes,
    })
}

/// A capture in a store; its baseline is looked up beside it.
async fn load_store(store: &Store, key: &ObjectPath) -> Result<Loaded, CliError> {
    let manifest: Manifest = read_json(store, &key.clone().join(MANIFEST_FILE))
        .await
        .map_err(failed)?;
    let oom = read_json(store, &key.clone().join(OOM_FILE)).await.ok();
    let mut notes = Vec::new();
    let mut baseline = None;
    if let Some(b) = manifest.baseline.as_deref() {
        let sibling = keys::sibling(key, b);
        match store.inner.head(&sibling.clone().join(heap_file())).await {
            Ok(_) => baseline = Some(sibling),
            Err(object_store::Error::NotFound { .. }) => notes.push(format!(
                "the baseline {b} is no longer in the store, so pprof cannot diff against it"
            )),
            Err(e) => notes.push(format!("cannot look for the baseline {b}: {e}")),
        }
    }
    let files = match address::local_path(store, key) {
        Some(dir) => Files::Local {
            dir,
            baseline: baseline.and_then(|b| address::local_path(store, &b)),
        },
        None => Files::Remote {
            url: address::object_url(store, key),
            id: key.filename().unwrap_or("capture").to_string(),
            baseline: baseline.map(|b| {
                let id = b.filename().unwrap_or("baseline").to_string();
                (address::object_url(store, &b), id)
            }),
        },
    };
    Ok(Loaded {
        location: address::object_url(store, key),
        manifest,
        oom,
        files,
        notes,
    })
}

fn heap_file() -> String {
    crate::profiles::ProfileKind::Heap.file_name()
}

/// The profile to point pprof at: the heap when it was stored, else the
/// first binary profile that was.
fn dig_file(m: &Manifest) -> Option<(String, bool)> {
    let stored = |name: &str| {
        m.profiles
            .iter()
            .find(|p| p.ok() && p.name == name)
            .and_then(|p| p.file.clone())
    };
    if let Some(f) = stored("heap") {
        return Some((f, true));
    }
    m.profiles
        .iter()
        .filter(|p| p.ok())
        .filter_map(|p| p.file.clone())
        .find(|f| f.ends_with(".pb.gz"))
        .map(|f| (f, false))
}

/// The commands printed under "dig further", each one ready to paste.
pub(crate) fn dig_commands(files: &Files, m: &Manifest) -> Vec<String> {
    let Some((file, is_heap)) = dig_file(m) else {
        return Vec::new();
    };
    let file = keys::sanitize(&file);
    let q = |p: &str| shell_quote(p).into_owned();
    let mut out = Vec::new();
    let (current, base) = match files {
        Files::Local { dir, baseline } => (
            q(&dir.join(&file).display().to_string()),
            baseline
                .as_ref()
                .map(|b| q(&b.join(&file).display().to_string())),
        ),
        Files::Remote { url, id, baseline } => {
            out.push(format!("oomsnap get {} --dir {}", q(url), q(id)));
            let base = baseline.as_ref().filter(|_| is_heap).map(|(burl, bid)| {
                out.push(format!("oomsnap get {} --dir {}", q(burl), q(bid)));
                q(&format!("{bid}/{file}"))
            });
            (q(&format!("{id}/{file}")), base)
        }
    };
    match base.filter(|_| is_heap) {
        Some(b) => out.push(format!("go tool pprof -top -base {b} {current}")),
        None => out.push(format!("go tool pprof -top {current}")),
    }
    out.push(format!("go tool pprof -http=127.0.0.1:8080 {current}"));
    out
}

/// The report as text: pure, so tests read it.
pub(crate) fn render(l: &Loaded, top: usize, commands: &[String], notes: &[String]) -> String {
    let m = &l.manifest;
    let mut s = String::new();
    let _ = writeln!(s, "capture   {}  ({})", m.capture_id, l.location);
    let _ = writeln!(
        s,
        "pod       {}/{} container {} on {}",
        m.namespace, m.pod, m.container, m.node
    );
    let t = &m.trigger;
    let _ = writeln!(
        s,
        "trigger   {} at {:.1}% of {} (working set {}){}",
        m.reason,
        t.percent,
        t.limit_bytes
            .map(human_bytes)
            .unwrap_or_else(|| "no limit".into()),
        human_bytes(t.working_set_bytes),
        t.predicted_seconds_to_oom
            .map(|p| format!(", OOM predicted in {p:.2} s"))
            .unwrap_or_default()
    );
    match &l.oom {
        Some(o) => {
            let _ = writeln!(
                s,
                "oom       killed at {}{}",
                o.detected_at,
                o.lead_seconds
                    .map(|l| format!("; {}", lead_sentence(l)))
                    .unwrap_or_default()
            );
        }
        None => {
            let _ = writeln!(s, "oom       no kill recorded after this capture");
        }
    }
    let _ = writeln!(s, "\nprofiles");
    for p in &m.profiles {
        if let Some(why) = &p.skipped {
            let _ = writeln!(s, "  {:<18} SKIPPED: {why}", p.name);
            continue;
        }
        match &p.error {
            None => {
                let _ = writeln!(
                    s,
                    "  {:<18} {:>10}  durable {:>8} after the decision",
                    p.file.as_deref().unwrap_or(&p.name),
                    human_bytes(p.bytes),
                    p.durable_after_decision_ms
                        .map(|d| format!("{d:.1} ms"))
                        .unwrap_or_else(|| "?".into())
                );
            }
            Some(e) => {
                let _ = writeln!(s, "  {:<18} FAILED: {e}", p.name);
            }
        }
    }
    render_summary(&mut s, m, top);
    render_memory(&mut s, m);
    let _ = writeln!(s, "\ndig further");
    if commands.is_empty() {
        let _ = writeln!(
            s,
            "  (no profile was stored, so there is nothing for pprof)"
        );
    }
    for c in commands {
        let _ = writeln!(s, "  {c}");
    }
    for n in notes {
        let _ = writeln!(s, "note      {n}");
    }
    s
}

/// Where the working set went, part by part (the manifest's `memory`).
fn render_memory(s: &mut String, m: &Manifest) {
    let Some(b) = &m.memory else {
        return;
    };
    let _ = writeln!(
        s,
        "\nworking set {}, where it went",
        human_bytes(b.working_set_bytes)
    );
    let ws = b.working_set_bytes.max(1) as f64;
    for p in &b.parts {
        let detail = match (p.name.as_str(), &b.go) {
            ("go_heap", Some(g)) => match (g.live_at_last_gc_bytes, g.allocated_since_gc_bytes) {
                (Some(live), Some(since)) => format!(
                    " (live at last GC {}, allocated since {})",
                    human_bytes(live),
                    human_bytes(since)
                ),
                _ => String::new(),
            },
            ("other", _) => " (not explained by the Go runtime or the cgroup)".into(),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "  {:>10} {:>5.1}%  {}{detail}",
            human_bytes(p.bytes),
            p.bytes as f64 * 100.0 / ws,
            part_name(&p.name)
        );
    }
    if b.overcounted_bytes > 0 {
        let _ = writeln!(
            s,
            "  (the parts add up to {} more than the working set: the sources were read a moment apart)",
            human_bytes(b.overcounted_bytes)
        );
    }
    if b.go_mapped_not_resident_bytes > 0 {
        let _ = writeln!(
            s,
            "  (the Go runtime holds {} more mapped than the kernel has backed: retained heap never touched, left out)",
            human_bytes(b.go_mapped_not_resident_bytes)
        );
    }
    if let Some(st) = b.staleness() {
        let _ = writeln!(s, "  {st}");
    }
}

fn part_name(key: &str) -> &str {
    match key {
        "go_heap" => "Go heap",
        "go_heap_retained" => "Go heap retained, unused",
        "go_stacks" => "goroutine stacks",
        "go_runtime" => "Go runtime metadata",
        "anon" => "anonymous memory",
        "page_cache" => "page cache (active)",
        "kernel" => "kernel",
        other => other,
    }
}

fn render_summary(s: &mut String, m: &Manifest, top: usize) {
    let Some(sum) = crate::summary::of(m) else {
        let _ = writeln!(
            s,
            "\n(no summary: the heap profile is missing or could not be decoded)"
        );
        return;
    };
    let name = |f: &str| short_function(f, FUNCTION_WIDTH);
    if let Some(v) = &sum.verdict {
        let _ = writeln!(s, "\nverdict   {v}");
    }
    if let Some(h) = &sum.heap {
        let _ = writeln!(s, "\nin use ({} total)", human_bytes(h.total_bytes));
        let _ = writeln!(
            s,
            "  {:>10} {:>7} {:>10} {:>7}  function",
            "flat", "flat%", "cum", "cum%"
        );
        for f in h.top_flat.iter().take(top) {
            let _ = writeln!(
                s,
                "  {:>10} {:>6.1}% {:>10} {:>6.1}%  {}",
                human_bytes(f.flat_bytes),
                f.flat_percent,
                human_bytes(f.cum_bytes),
                f.cum_percent,
                name(&f.function)
            );
        }
    }
    if let Some(d) = &sum.diff {
        let _ = writeln!(
            s,
            "\ngrowth since baseline {} ({} → {})",
            m.baseline.as_deref().unwrap_or("?"),
            human_bytes(d.base_total_bytes),
            human_bytes(d.current_total_bytes)
        );
        let _ = writeln!(
            s,
            "  {:>10} {:>10} {:>10}  function",
            "delta", "base", "now"
        );
        for f in d.top_growth.iter().take(top) {
            let _ = writeln!(
                s,
                "  {:>10} {:>10} {:>10}  {}",
                human_bytes_signed(f.delta_bytes),
                human_bytes(f.base_bytes),
                human_bytes(f.current_bytes),
                name(&f.function)
            );
        }
    }
    if let Some(g) = &sum.goroutines {
        let _ = writeln!(
            s,
            "\ngoroutines {} ({} distinct stacks)",
            g.total_goroutines, g.distinct_stacks
        );
        for st in g.top_stacks.iter().take(top) {
            for (i, f) in st.functions.iter().take(STACK_FRAMES).enumerate() {
                if i == 0 {
                    let _ = writeln!(s, "  {:>7}  {}", st.goroutines, name(f));
                } else {
                    let _ = writeln!(s, "           ← {}", name(f));
                }
            }
            let more =
                st.functions.len().saturating_sub(STACK_FRAMES) as u64 + st.omitted_frames as u64;
            if more > 0 {
                let _ = writeln!(s, "           ← … {more} more frames");
            }
        }
    }
    for n in &sum.notes {
        let _ = writeln!(s, "note      {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ProfileRecord;

    fn manifest(with_heap: bool) -> Manifest {
        let mut m = crate::spool::tests::manifest("20261122T033456.123Z_threshold-95");
        m.baseline = Some("20261122T020000.004Z_baseline".into());
        let profile = |name: &str, file: &str| ProfileRecord {
            name: name.into(),
            file: Some(file.into()),
            ..ProfileRecord::default()
        };
        if with_heap {
            m.profiles.push(profile("heap", "heap.pb.gz"));
        }
        m.profiles.push(profile("goroutine", "goroutine.pb.gz"));
        m
    }

    #[test]
    fn a_remote_capture_is_downloaded_first_with_its_real_baseline() {
        let files = Files::Remote {
            url: "s3://b/p/shop/cart/app/20261122T033456.123Z_threshold-95".into(),
            id: "20261122T033456.123Z_threshold-95".into(),
            baseline: Some((
                "s3://b/p/shop/cart/app/20261122T020000.004Z_baseline".into(),
                "20261122T020000.004Z_baseline".into(),
            )),
        };
        assert_eq!(
            dig_commands(&files, &manifest(true)),
            [
                "oomsnap get s3://b/p/shop/cart/app/20261122T033456.123Z_threshold-95 --dir 20261122T033456.123Z_threshold-95",
                "oomsnap get s3://b/p/shop/cart/app/20261122T020000.004Z_baseline --dir 20261122T020000.004Z_baseline",
                "go tool pprof -top -base 20261122T020000.004Z_baseline/heap.pb.gz 20261122T033456.123Z_threshold-95/heap.pb.gz",
                "go tool pprof -http=127.0.0.1:8080 20261122T033456.123Z_threshold-95/heap.pb.gz",
            ]
        );
    }

    #[test]
    fn a_local_capture_gets_quoted_local_paths() {
        let files = Files::Local {
            dir: "/tmp/my store/shop/cart/app/ID".into(),
            baseline: Some("/tmp/my store/shop/cart/app/BASE".into()),
        };
        let c = dig_commands(&files, &manifest(true));
        assert_eq!(
            c[0],
            "go tool pprof -top -base '/tmp/my store/shop/cart/app/BASE/heap.pb.gz' '/tmp/my store/shop/cart/app/ID/heap.pb.gz'"
        );
        assert!(
            c.iter().all(|l| !l.contains("file:") && !l.contains("<")),
            "{c:?}"
        );
    }

    #[test]
    fn without_a_heap_pprof_gets_the_goroutines_and_no_baseline() {
        let files = Files::Remote {
            url: "s3://b/k/ID".into(),
            id: "ID".into(),
            baseline: Some(("s3://b/k/BASE".into(), "BASE".into())),
        };
        let c = dig_commands(&files, &manifest(false));
        assert_eq!(
            c,
            [
                "oomsnap get s3://b/k/ID --dir ID",
                "go tool pprof -top ID/goroutine.pb.gz",
                "go tool pprof -http=127.0.0.1:8080 ID/goroutine.pb.gz",
            ]
        );
        let mut none = manifest(false);
        none.profiles.clear();
        assert!(dig_commands(&files, &none).is_empty());
    }

    #[test]
    fn a_negative_lead_is_said_in_words() {
        let loaded = Loaded {
            location: "/x".into(),
            manifest: manifest(true),
            oom: Some(OomRecord {
                schema: 1,
                capture_id: "x".into(),
                detected_at: "2026-11-22T03:34:57Z".into(),
                evidence: "oom_kill".into(),
                oom_kills: Some(1),
                lead_seconds: Some(-0.12),
                chosen: None,
                last_sample: None,
            }),
            files: Files::Local {
                dir: "/x".into(),
                baseline: None,
            },
            notes: vec![],
        };
        let text = render(&loaded, 10, &[], &[]);
        assert!(
            text.contains("the capture became durable only 0.120 s after the kill"),
            "{text}"
        );
        assert!(!text.contains("-0.12"), "{text}");
    }
}
