//! `oomsnap check` and `oomsnap capture`: the commands that take the
//! sidecar's own configuration.
//!
//! A validated [`Config`] enters; `check` prints the configuration, the
//! located memory with one sample, whether the store and the target answer,
//! and fails listing every problem. `capture` takes one capture through the
//! sidecar's pipeline and prints where it went. Both print to stdout.

use std::io::Write;
use std::time::Duration;

use object_store::ObjectStoreExt;

use super::{failed, CliError};
use crate::config::{Config, ProcessEnv};
use crate::pprof::human_bytes;
use crate::store::{Store, StoreError};

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
    // Read-only: checking must not create the store it checks.
    match Store::open_read_only(&config.store, &ProcessEnv) {
        Ok(store) => {
            let key = store.prefix.clone().join(".oomsnap-probe");
            match store.inner.head(&key).await {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {
                    let _ = writeln!(out, "  {} answers", config.store);
                }
                Err(e) => problems.push(format!("the store {} does not answer: {e}", config.store)),
            }
        }
        Err(StoreError::Missing { path }) => {
            let _ = writeln!(
                out,
                "  {} does not exist yet; oomsnap run creates it",
                path.display()
            );
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
