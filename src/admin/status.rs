//! The `/status` document: what the sidecar knows, as JSON.
//!
//! Built from the [`Shared`] state on each request, from values that are
//! cheap to read (the spool's size and waiting bundles come from the view
//! the storage task refreshes off the runtime thread). Everything in it is
//! bounded: at most `RECENT` captures, `WAITING_LISTED` bundles, and problem
//! sentences cut to a fixed length.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::state::Shared;

fn quota(q: &crate::state::Quota) -> Value {
    let a = q.lock();
    json!({
        "burst": a.burst(),
        "period": humantime::format_duration(a.period()).to_string(),
        "remaining": a.remaining(),
        "dropped": a.dropped_by_cause(),
    })
}

/// The `/status` document.
pub fn document(s: &Shared) -> Value {
    let last = s.watch.last.lock().ok().and_then(|l| *l);
    let source = s.watch.source.lock().ok().and_then(|g| g.clone());
    let view = s.spool_view.lock().map(|v| v.clone()).unwrap_or_default();
    let spool = json!({
        "dir": s.config.spool_dir,
        "open": s.storage.spool.get().is_some(),
        "bytes": view.bytes,
        "max_bytes": s.config.spool_max_bytes,
        "bundles": view.bundles,
        "dropped": s.storage.spool.get().map(|sp| sp.dropped()).unwrap_or(0),
        "waiting": view.waiting,
    });
    let store = match s.storage.shipper.get() {
        Some(ship) => {
            let st = &ship.stats;
            json!({
                "url": ship.store.url,
                "open": true,
                "answered": st.store_answered.load(Ordering::Relaxed),
                "objects_ok": st.objects_ok.load(Ordering::Relaxed),
                "objects_failed": st.objects_failed.load(Ordering::Relaxed),
                "bundles_shipped": st.bundles_shipped.load(Ordering::Relaxed),
                "last_error": st.last_error.lock().ok().and_then(|e| e.clone()),
                "last_shipped": st.last_shipped.lock().map(|l| l.clone()).unwrap_or_default(),
            })
        }
        None => json!({ "url": s.config.store, "open": false }),
    };
    let captures: Vec<_> = s
        .captures
        .lock()
        .map(|c| c.iter().rev().cloned().collect())
        .unwrap_or_default();
    let armed: Vec<_> = s
        .watch
        .armed
        .lock()
        .map(|a| {
            a.iter()
                .map(|(t, on)| json!({"percent": t, "armed": on}))
                .collect()
        })
        .unwrap_or_default();
    let tunables = s.tunables.lock().ok().and_then(|t| t.clone());
    let settings = s.capture_settings.read().map(|c| c.clone()).ok();
    json!({
        "version": crate::VERSION,
        "started": crate::manifest::timestamp(s.started),
        "enabled": s.enabled.load(Ordering::Relaxed),
        "problems": s.problems.snapshot(),
        "source": source,
        "source_error": s.watch.last_error.lock().ok().and_then(|e| e.clone()),
        "last_sample": last.map(|l| json!({
            "usage_bytes": l.usage,
            "working_set_bytes": l.working_set,
            "limit_bytes": l.limit,
            "percent": (l.percent() * 100.0).round() / 100.0,
            "anon_bytes": l.anon,
            "file_bytes": l.file,
            "oom_kills": l.oom_kills,
            "age_ms": l.at.elapsed().as_millis() as u64,
        })),
        "poll_interval_ms": s.watch.interval_ms.load(Ordering::Relaxed),
        "samples": s.watch.samples.load(Ordering::Relaxed),
        "kernel_wakeups": s.watch.kernel_wakes.load(Ordering::Relaxed),
        "thresholds": armed,
        "target": settings.as_ref().map(|c| c.target.clone()),
        "profiles": settings.map(|c| c.profiles.iter().map(|p| p.name()).collect::<Vec<_>>()),
        "annotations": tunables.map(|t| json!({
            "enabled": t.enabled,
            "thresholds": t.thresholds,
            "target": t.target,
            "rate_burst": t.rate_burst,
            "rate_period": humantime::format_duration(t.rate_period).to_string(),
        })),
        "quota": quota(&s.admission),
        "manual_quota": quota(&s.manual_admission),
        "admin_capture": s.config.admin_capture,
        "oom_kills": s.oom_kills.load(Ordering::Relaxed),
        "captures": captures,
        "provisional": s.provisional.lock().map(|p| p.clone()).unwrap_or_default(),
        "imminent": s.config.imminent,
        "speculative_quota": quota(&s.speculative_admission),
        "spool": spool,
        "store": store,
    })
}
