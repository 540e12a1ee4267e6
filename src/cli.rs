//! The commands for people: `check`, `capture`, `ls`, `get` and `report`.
//!
//! Arguments enter as clap structs; text tables leave on stdout, progress
//! and logs on stderr. Errors are sentences ([`CliError`]) and map to exit
//! codes: 1 for a failure, 2 for bad configuration or arguments.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::config::Config;
use crate::manifest::{Manifest, OomRecord, MANIFEST_FILE, OOM_FILE};
use crate::pprof::{human_bytes, human_bytes_signed};
use crate::store::Store;

/// A command that failed, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Usage(String),
}

/// Maps a command's result to an exit code, printing the error.
pub fn exit(r: Result<(), CliError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Failed(e)) => {
            eprintln!("oomsnap: {e}");
            ExitCode::FAILURE
        }
        Err(CliError::Usage(e)) => {
            eprintln!("oomsnap: {e}");
            ExitCode::from(2)
        }
    }
}

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}

/// `oomsnap check`.
pub async fn check(config: Config) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    let mut problems = Vec::new();
    let _ = writeln!(out, "configuration:");
    let cfg = serde_json::to_value(&config).unwrap_or_default();
    if let Some(map) = cfg.as_object() {
        for (k, v) in map {
            let _ = writeln!(out, "  {k:<22} {}", compact_json(v));
        }
    }
    let _ = writeln!(out, "\nmemory:");
    match crate::memory::locate(&crate::memory::locate::LocateInput::from_config(&config)) {
        Ok(src) => {
            let _ = writeln!(out, "  source    {}", src.describe());
            let _ = writeln!(out, "  strategy  {}", src.strategy.name());
            for line in src.how.lines() {
                let _ = writeln!(out, "  | {line}");
            }
            match src.open().and_then(|mut r| r.read()) {
                Ok(s) => {
                    let _ = writeln!(
                        out,
                        "  sample    working set {} of {} ({:.1}%), usage {}, anon {}, file {}, oom kills {}",
                        human_bytes(s.working_set),
                        s.limit.map(human_bytes).unwrap_or_else(|| "no limit".into()),
                        s.percent(),
                        human_bytes(s.usage),
                        s.anon.map(human_bytes).unwrap_or_else(|| "?".into()),
                        s.file.map(human_bytes).unwrap_or_else(|| "?".into()),
                        s.oom_kills.map(|k| k.to_string()).unwrap_or_else(|| "?".into()),
                    );
                    if s.limit.is_none() {
                        problems
                            .push("no memory limit is known: set OOMSNAP_MEMORY_LIMIT".to_string());
                    }
                }
                Err(e) => problems.push(format!("cannot read a sample: {e}")),
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    let _ = writeln!(out, "\nstore:");
    match Store::open(&config.store) {
        Ok(store) => {
            let key = store.prefix.clone().join(".oomsnap-probe");
            match store.inner.head(&key).await {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {
                    let _ = writeln!(out, "  {} answers", config.store);
                }
                Err(e) => problems.push(format!("the store {} does not answer: {e}", config.store)),
            }
        }
        Err(e) => problems.push(format!("OOMSNAP_STORE={}: {e}", config.store)),
    }
    let _ = writeln!(out, "\ntarget:");
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(failed)?;
    match client.get(format!("{}/", config.target)).send().await {
        Ok(r) => {
            let _ = writeln!(out, "  {} answers HTTP {}", config.target, r.status());
        }
        // The app may simply not be up yet; that is not a configuration
        // problem, so it is reported without failing the check.
        Err(e) => {
            let _ = writeln!(out, "  {} does not answer yet ({e})", config.target);
        }
    }
    if problems.is_empty() {
        let _ = writeln!(out, "\nok");
        Ok(())
    } else {
        Err(failed(format!(
            "check found {} problem(s):\n  - {}",
            problems.len(),
            problems.join("\n  - ")
        )))
    }
}

fn compact_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `oomsnap capture`.
pub async fn capture(config: Config) -> Result<(), CliError> {
    let store = config.store.clone();
    let (key, m) = crate::oneshot::capture(config).await.map_err(failed)?;
    println!("captured {} into {store}", m.capture_id);
    println!("  key  {key}");
    for p in &m.profiles {
        match &p.error {
            None => println!(
                "  {:<18} {:>10}  {:>8.1} ms",
                p.name,
                human_bytes(p.bytes),
                p.fetch_ms
            ),
            Some(e) => println!("  {:<18} failed: {e}", p.name),
        }
    }
    if let Some(v) = crate::summary::verdict_of(&m) {
        println!("  {v}");
    }
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
pub struct LsArgs {
    /// The store URL (defaults to OOMSNAP_STORE).
    pub store: Option<String>,
    /// Only this namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Only this pod.
    #[arg(long, short = 'p')]
    pub pod: Option<String>,
    /// Only captures newer than this, e.g. 2h.
    #[arg(long)]
    pub since: Option<String>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct GetArgs {
    /// A capture: its full URL (s3://bucket/prefix/ns/pod/app/ID), or its id
    /// or key within --store.
    pub capture: String,
    /// The store URL (defaults to OOMSNAP_STORE).
    #[arg(long)]
    pub store: Option<String>,
    /// Where to put the files (default: ./<capture id>).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// A local capture directory, a capture URL, or an id within --store.
    pub capture: String,
    /// The store URL (defaults to OOMSNAP_STORE).
    #[arg(long)]
    pub store: Option<String>,
}

fn store_url(arg: Option<&str>) -> String {
    arg.map(str::to_string)
        .or_else(|| {
            std::env::var(crate::config::STORE)
                .ok()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| crate::config::DEFAULT_STORE.to_string())
}

fn open_store(url: &str) -> Result<Store, CliError> {
    Store::open(url).map_err(|e| CliError::Usage(format!("cannot open the store {url}: {e}")))
}

/// One capture as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    pub key: String,
    pub manifest: Manifest,
    pub oom: Option<OomRecord>,
}

async fn read_json<T: serde::de::DeserializeOwned>(
    store: &dyn ObjectStore,
    key: &ObjectPath,
) -> Result<T, String> {
    let bytes = store
        .get(key)
        .await
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{key} is not valid: {e}"))
}

/// Every capture under `prefix`, newest first.
pub async fn list(store: &Store, prefix: &ObjectPath) -> Result<Vec<Listed>, CliError> {
    let mut manifests = Vec::new();
    let mut ooms = std::collections::BTreeSet::new();
    let mut stream = store.inner.list(Some(prefix));
    while let Some(meta) = stream.next().await {
        let meta = meta.map_err(|e| failed(format!("cannot list {}: {e}", store.url)))?;
        let loc = meta.location.to_string();
        if let Some(dir) = loc.strip_suffix(&format!("/{MANIFEST_FILE}")) {
            manifests.push(dir.to_string());
        } else if let Some(dir) = loc.strip_suffix(&format!("/{OOM_FILE}")) {
            ooms.insert(dir.to_string());
        }
    }
    let mut out = Vec::new();
    for dir in manifests {
        let key = ObjectPath::from(dir.as_str());
        let manifest: Manifest =
            match read_json(store.inner.as_ref(), &key.clone().join(MANIFEST_FILE)).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("skipping {dir}: {e}");
                    continue;
                }
            };
        let oom = if ooms.contains(&dir) {
            read_json(store.inner.as_ref(), &key.clone().join(OOM_FILE))
                .await
                .ok()
        } else {
            None
        };
        out.push(Listed {
            key: dir,
            manifest,
            oom,
        });
    }
    out.sort_by(|a, b| b.manifest.capture_id.cmp(&a.manifest.capture_id));
    Ok(out)
}

/// `oomsnap ls`.
pub async fn ls(a: LsArgs) -> Result<(), CliError> {
    let url = store_url(a.store.as_deref());
    let store = open_store(&url)?;
    let mut prefix: Vec<String> = store
        .prefix
        .parts()
        .map(|p| p.as_ref().to_string())
        .collect();
    if let Some(ns) = &a.namespace {
        prefix.push(crate::keys::sanitize(ns));
        if let Some(pod) = &a.pod {
            prefix.push(crate::keys::sanitize(pod));
        }
    }
    let since = match &a.since {
        Some(s) => Some(
            SystemTime::now()
                - crate::config::parse_duration(s).map_err(|e| {
                    CliError::Usage(format!("--since {s:?} is not a duration such as 2h: {e}"))
                })?,
        ),
        None => None,
    };
    let all = list(&store, &ObjectPath::from_iter(prefix)).await?;
    let shown: Vec<&Listed> = all
        .iter()
        .filter(|l| a.pod.as_ref().is_none_or(|p| l.manifest.pod == *p))
        .filter(|l| {
            since.is_none_or(|t| {
                l.manifest
                    .capture_id
                    .split('_')
                    .next()
                    .and_then(crate::keys::parse_compact_time)
                    .is_some_and(|c| c >= t)
            })
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if a.json {
        for l in shown {
            let _ = writeln!(out, "{}", serde_json::to_string(l).unwrap_or_default());
        }
        return Ok(());
    }
    if shown.is_empty() {
        eprintln!("no captures in {url}");
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:<20} {:<32} {:<14} {:>6}  {:<9} {:<36} KEY",
        "TIME (UTC)", "NAMESPACE/POD", "REASON", "%LIMIT", "OOM", "TOP FUNCTION"
    );
    for l in shown {
        let m = &l.manifest;
        let time = m
            .decided_at
            .get(..19)
            .unwrap_or(&m.decided_at)
            .replace('T', " ");
        let top = crate::summary::of(m)
            .and_then(|s| s.heap)
            .and_then(|h| h.top_flat.first().map(|f| f.function.clone()))
            .unwrap_or_else(|| "-".into());
        let oom = match &l.oom {
            Some(o) => o
                .lead_seconds
                .map(|s| format!("+{s:.2}s"))
                .unwrap_or_else(|| "yes".into()),
            None => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<20} {:<32} {:<14} {:>5.1}%  {:<9} {:<36} {}",
            time,
            truncate(&format!("{}/{}", m.namespace, m.pod), 32),
            truncate(&m.reason, 14),
            m.trigger.percent,
            oom,
            truncate(&top, 36),
            l.key
        );
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n - 1).collect();
        format!("{t}…")
    }
}

/// Resolves a capture argument to a store and the capture's key.
async fn resolve(capture: &str, store_arg: Option<&str>) -> Result<(Store, ObjectPath), CliError> {
    if capture.contains("://") {
        let (base, key) = split_url(capture)?;
        let store = open_store(&base)?;
        return Ok((store, key));
    }
    let url = store_url(store_arg);
    let store = open_store(&url)?;
    let direct = ObjectPath::from(capture.trim_matches('/'));
    if store
        .inner
        .head(&direct.clone().join(MANIFEST_FILE))
        .await
        .is_ok()
    {
        return Ok((store, direct));
    }
    let withprefix = ObjectPath::from_iter(store.prefix.parts().chain(direct.parts()));
    if store
        .inner
        .head(&withprefix.clone().join(MANIFEST_FILE))
        .await
        .is_ok()
    {
        return Ok((store, withprefix));
    }
    let all = list(&store, &store.prefix).await?;
    let hits: Vec<&Listed> = all
        .iter()
        .filter(|l| l.manifest.capture_id == capture || l.key.ends_with(&format!("/{capture}")))
        .collect();
    match hits.as_slice() {
        [one] => Ok((store.clone(), ObjectPath::from(one.key.as_str()))),
        [] => Err(failed(format!(
            "no capture {capture:?} in {url}; `oomsnap ls {url}` lists them"
        ))),
        many => Err(failed(format!(
            "{capture:?} matches {} captures in {url}; give the full key: {}",
            many.len(),
            many.iter()
                .map(|l| l.key.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// `s3://bucket/a/b` → (`s3://bucket`, `a/b`); `file:///x/y` → (`file:///`, `x/y`).
fn split_url(url: &str) -> Result<(String, ObjectPath), CliError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| CliError::Usage(format!("{url:?} is not a URL: {e}")))?;
    let key = ObjectPath::from(parsed.path().trim_matches('/'));
    let base = match parsed.scheme() {
        "file" => "file:///".to_string(),
        s => format!("{s}://{}", parsed.host_str().unwrap_or("")),
    };
    Ok((base, key))
}

/// The URL of a key: the store's bucket (its prefix is part of the key).
fn object_url(store: &Store, key: &ObjectPath) -> String {
    match reqwest::Url::parse(&store.url) {
        Ok(u) if u.scheme() == "file" => format!("{}/{key}", store.url.trim_end_matches('/')),
        Ok(u) => format!("{}://{}/{key}", u.scheme(), u.host_str().unwrap_or("")),
        Err(_) => key.to_string(),
    }
}

/// Prints a one-line progress on a terminal.
struct Progress {
    on: bool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            on: std::io::stderr().is_terminal(),
        }
    }
    fn show(&self, name: &str, done: u64, total: u64) {
        if self.on {
            let pct = (done * 100).checked_div(total).unwrap_or(100);
            eprint!(
                "\r  {name:<24} {:>10} / {:<10} {pct:>3}%",
                human_bytes(done),
                human_bytes(total)
            );
        }
    }
    fn done(&self) {
        if self.on {
            eprintln!();
        }
    }
}

/// `oomsnap get`.
pub async fn get(a: GetArgs) -> Result<(), CliError> {
    let (store, key) = resolve(&a.capture, a.store.as_deref()).await?;
    let id = key.filename().unwrap_or("capture").to_string();
    let out = a.output.clone().unwrap_or_else(|| PathBuf::from(&id));
    std::fs::create_dir_all(&out)
        .map_err(|e| failed(format!("cannot create {}: {e}", out.display())))?;
    let mut objects = Vec::new();
    let mut stream = store.inner.list(Some(&key));
    while let Some(meta) = stream.next().await {
        objects.push(meta.map_err(failed)?);
    }
    if objects.is_empty() {
        return Err(failed(format!("{key} holds no objects")));
    }
    let progress = Progress::new();
    for meta in &objects {
        let name = meta.location.filename().unwrap_or("object").to_string();
        let name = crate::keys::sanitize(&name);
        let dst = out.join(&name);
        let mut file = std::fs::File::create(&dst)
            .map_err(|e| failed(format!("cannot create {}: {e}", dst.display())))?;
        let mut body = store
            .inner
            .get(&meta.location)
            .await
            .map_err(|e| failed(format!("cannot download {}: {e}", meta.location)))?
            .into_stream();
        let mut done = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|e| failed(format!("download of {} broke off: {e}", meta.location)))?;
            file.write_all(&chunk)
                .map_err(|e| failed(format!("cannot write {}: {e}", dst.display())))?;
            done += chunk.len() as u64;
            progress.show(&name, done, meta.size);
        }
        progress.done();
        println!("{:>10}  {}", human_bytes(done), dst.display());
    }
    Ok(())
}

/// `oomsnap report`.
pub async fn report(a: ReportArgs) -> Result<(), CliError> {
    let local = Path::new(&a.capture);
    let (m, oom, location, baseline_heap) = if local.join(MANIFEST_FILE).is_file() {
        let m: Manifest =
            serde_json::from_slice(&std::fs::read(local.join(MANIFEST_FILE)).map_err(failed)?)
                .map_err(|e| {
                    failed(format!(
                        "{} is not a manifest: {e}",
                        local.join(MANIFEST_FILE).display()
                    ))
                })?;
        let oom = std::fs::read(local.join(OOM_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let base = m.baseline.as_ref().map(|b| {
            let sibling = local.join("..").join(b).join("heap.pb.gz");
            sibling.display().to_string()
        });
        (m, oom, local.display().to_string(), base)
    } else {
        let (store, key) = resolve(&a.capture, a.store.as_deref()).await?;
        let m: Manifest = read_json(store.inner.as_ref(), &key.clone().join(MANIFEST_FILE))
            .await
            .map_err(failed)?;
        let oom = read_json(store.inner.as_ref(), &key.clone().join(OOM_FILE))
            .await
            .ok();
        let base = m.baseline.as_ref().map(|b| {
            let parent: Vec<_> = key.parts().collect();
            let parent =
                ObjectPath::from_iter(parent[..parent.len().saturating_sub(1)].iter().cloned());
            format!("<download of {}>/heap.pb.gz", parent.join(b.as_str()))
        });
        (m, oom, object_url(&store, &key), base)
    };
    print!(
        "{}",
        render_report(&m, oom.as_ref(), &location, baseline_heap.as_deref())
    );
    Ok(())
}

/// The report as text: pure, so tests check it.
pub fn render_report(
    m: &Manifest,
    oom: Option<&OomRecord>,
    location: &str,
    baseline_heap: Option<&str>,
) -> String {
    let mut s = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(s, "capture   {}  ({})", m.capture_id, location);
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
            .map(|p| format!(", OOM predicted in {p:.2}s"))
            .unwrap_or_default()
    );
    match oom {
        Some(o) => {
            let _ = writeln!(
                s,
                "oom       killed at {}{}",
                o.detected_at,
                o.lead_seconds
                    .map(|l| format!("; the capture was durable {l:.3}s before"))
                    .unwrap_or_default()
            );
        }
        None => {
            let _ = writeln!(s, "oom       no kill recorded after this capture");
        }
    }
    let _ = writeln!(s, "\nprofiles");
    for p in &m.profiles {
        match &p.error {
            None => {
                let _ = writeln!(
                    s,
                    "  {:<18} {:>10}  durable {:>8} after the decision",
                    p.file.as_deref().unwrap_or(&p.name),
                    human_bytes(p.bytes),
                    p.durable_after_decision_ms
                        .map(|d| format!("{d:.1}ms"))
                        .unwrap_or_else(|| "?".into())
                );
            }
            Some(e) => {
                let _ = writeln!(s, "  {:<18} FAILED: {e}", p.name);
            }
        }
    }
    let summary = crate::summary::of(m);
    match &summary {
        None => {
            let _ = writeln!(
                s,
                "\n(no summary: the heap profile is missing or could not be decoded)"
            );
        }
        Some(sum) => {
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
                for f in &h.top_flat {
                    let _ = writeln!(
                        s,
                        "  {:>10} {:>6.1}% {:>10} {:>6.1}%  {}",
                        human_bytes(f.flat_bytes),
                        f.flat_percent,
                        human_bytes(f.cum_bytes),
                        f.cum_percent,
                        f.function
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
                for f in &d.top_growth {
                    let _ = writeln!(
                        s,
                        "  {:>10} {:>10} {:>10}  {}",
                        human_bytes_signed(f.delta_bytes),
                        human_bytes(f.base_bytes),
                        human_bytes(f.current_bytes),
                        f.function
                    );
                }
            }
            if let Some(g) = &sum.goroutines {
                let _ = writeln!(
                    s,
                    "\ngoroutines {} ({} distinct stacks)",
                    g.total_goroutines, g.distinct_stacks
                );
                for st in &g.top_stacks {
                    let _ = writeln!(s, "  {:>7}  {}", st.goroutines, st.functions.join(" ← "));
                }
            }
            for n in &sum.notes {
                let _ = writeln!(s, "note      {n}");
            }
        }
    }
    let _ = writeln!(s, "\ndig further");
    match baseline_heap {
        Some(b) => {
            let _ = writeln!(s, "  go tool pprof -top -base {b} {location}/heap.pb.gz");
        }
        None => {
            let _ = writeln!(s, "  go tool pprof -top {location}/heap.pb.gz");
        }
    }
    let _ = writeln!(
        s,
        "  go tool pprof -http=127.0.0.1:8080 {location}/heap.pb.gz"
    );
    s
}
