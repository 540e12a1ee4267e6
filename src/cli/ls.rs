//! `oomsnap ls`: the captures in a store, newest first.
//!
//! Flags and the environment enter; the store is listed once, filtered on
//! the keys ([`catalog::Filter`]), and only the remaining manifests are read,
//! concurrently. A table (or one JSON object per line) leaves on stdout.

use std::io::Write;
use std::time::SystemTime;

use super::address;
use super::catalog::{self, Filter, Listed};
use super::display::{cut_end, cut_middle, kill_cell, short_function, time_cell};
use super::{CliError, FormatArgs, StoreArg};
use crate::config::Vars;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct LsArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Only captures of this namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Only captures of this pod (its exact name).
    #[arg(long, short = 'p')]
    pub pod: Option<String>,
    /// Only captures taken within this long, such as 2h or 30m.
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    #[command(flatten)]
    pub format: FormatArgs,
    /// The store used to be given here; it now goes with --store.
    #[arg(hide = true)]
    pub old_store: Option<String>,
}

/// Column widths of the table.
const POD_WIDTH: usize = 32;
const REASON_WIDTH: usize = 14;
const FUNCTION_WIDTH: usize = 36;

/// `oomsnap ls`.
pub async fn ls(a: LsArgs, env: &dyn Vars) -> Result<(), CliError> {
    if let Some(old) = &a.old_store {
        return Err(CliError::Usage(format!(
            "the store is given with --store: oomsnap ls --store {old}"
        )));
    }
    let url = address::store_url(a.store.store.as_deref(), env);
    let store = address::open(&url, env)?;
    let since = match &a.since {
        Some(s) => {
            let d = crate::config::parse_duration(s).map_err(|e| {
                CliError::Usage(format!(
                    "--since {s:?} is not a duration such as 2h or 30m: {e}"
                ))
            })?;
            Some(
                SystemTime::now()
                    .checked_sub(d)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            )
        }
        None => None,
    };
    let filter = Filter {
        namespace: a.namespace.clone(),
        pod: a.pod.clone(),
        since,
    };
    let found = catalog::find(&store, &filter.listing_prefix(&store.prefix)).await?;
    let kept = found
        .into_iter()
        .filter(|f| filter.keeps(&f.parts))
        .collect();
    let listed = catalog::read(&store, kept).await;
    let mut out = std::io::stdout().lock();
    if a.format.json() {
        for l in &listed {
            let _ = writeln!(out, "{}", serde_json::to_string(l).unwrap_or_default());
        }
        return Ok(());
    }
    if listed.is_empty() {
        eprintln!("no captures in {url} match");
        return Ok(());
    }
    let _ = write!(out, "{}", table(&listed));
    Ok(())
}

/// The table: pure, so tests read it.
pub(crate) fn table(listed: &[Listed]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<19}  {:<POD_WIDTH$} {:<REASON_WIDTH$} {:>6}  {:<11} {:<FUNCTION_WIDTH$} KEY",
        "TIME (UTC)", "NAMESPACE/POD", "REASON", "%LIMIT", "OOM", "TOP FUNCTION"
    );
    for l in listed {
        let m = &l.manifest;
        let top = crate::summary::of(m)
            .and_then(|s| s.heap)
            .and_then(|h| h.top_flat.first().map(|f| f.function.clone()))
            .map(|f| short_function(&f, FUNCTION_WIDTH))
            .unwrap_or_else(|| "-".into());
        let oom = kill_cell(l.oom.is_some(), l.oom.as_ref().and_then(|o| o.lead_seconds));
        let _ = writeln!(
            s,
            "{:<19}  {:<POD_WIDTH$} {:<REASON_WIDTH$} {:>5.1}%  {:<11} {:<FUNCTION_WIDTH$} {}",
            time_cell(&m.decided_at),
            cut_middle(&format!("{}/{}", m.namespace, m.pod), POD_WIDTH),
            cut_end(&m.reason, REASON_WIDTH),
            m.trigger.percent,
            oom,
            top,
            l.key
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::OomRecord;

    fn listed(lead: Option<f64>) -> Listed {
        let mut m = crate::spool::tests::manifest("20261122T033456.123Z_threshold-95");
        m.namespace = "shop".into();
        m.pod = "checkout-7d9f-x2x-with-a-long-replica-name".into();
        m.decided_at = "2026-11-22T03:34:56.123456Z".into();
        m.summary = Some(summary_with_top(
            "github.com/prometheus/prometheus/model/labels.(*Builder).Set",
        ));
        Listed {
            key: "p/shop/checkout/app/20261122T033456.123Z_threshold-95".into(),
            manifest: m,
            oom: lead.map(|l| OomRecord {
                schema: 1,
                capture_id: "x".into(),
                detected_at: "2026-11-22T03:34:57Z".into(),
                evidence: "oom_kill".into(),
                oom_kills: Some(1),
                lead_seconds: Some(l),
                chosen: None,
                last_sample: None,
            }),
        }
    }

    pub(crate) fn summary_with_top(function: &str) -> serde_json::Value {
        let f = crate::pprof::FunctionBytes {
            function: function.into(),
            flat_bytes: 100,
            flat_percent: 100.0,
            cum_bytes: 100,
            cum_percent: 100.0,
        };
        let sum = crate::summary::Summary {
            verdict: None,
            heap: Some(crate::pprof::HeapSummary {
                sample_type: "inuse_space/bytes".into(),
                sample_type_fallback: false,
                total_bytes: 100,
                sample_count: 1,
                function_count: 1,
                top_flat: vec![f.clone()],
                top_cum: vec![f],
            }),
            goroutines: None,
            diff: None,
            notes: vec![],
        };
        serde_json::to_value(sum).unwrap()
    }

    #[test]
    fn the_table_keeps_the_method_and_says_late_for_a_negative_lead() {
        let t = table(&[listed(Some(-0.12)), listed(Some(0.84)), listed(None)]);
        let rows: Vec<&str> = t.lines().collect();
        assert!(rows[0].starts_with("TIME (UTC)"), "{t}");
        assert!(
            rows[1].contains("0.12s late") && !rows[1].contains("+-"),
            "{t}"
        );
        assert!(rows[2].contains("0.84s lead"), "{t}");
        assert!(rows[3].contains(" - "), "{t}");
        assert!(
            rows[1].contains("g.c/p/p/model/labels.(*Builder).Set"),
            "{t}"
        );
        assert!(rows[1].contains("2026-11-22 03:34:56"), "{t}");
        // The pod's end (its replica) survives the cut.
        assert!(rows[1].contains("…"), "{t}");
        assert!(rows[1].contains("replica-name"), "{t}");
        assert!(
            rows[1].ends_with("20261122T033456.123Z_threshold-95"),
            "{t}"
        );
    }
}
