//! `oomsnap capture`: one manual capture, spooled and shipped at once.
//!
//! The configuration enters; the capture's key and manifest leave, or a
//! [`OneshotError`] naming what failed. It uses the same stages as `run`
//! (capture, summary, spool, ship) without the watcher, the quota or the
//! admin server. Unlike `run` it is for a person at a terminal, so it fails
//! loudly instead of degrading.

use std::time::{Instant, SystemTime};

use crate::capture::{CaptureSettings, Capturer};
use crate::config::Config;
use crate::keys;
use crate::manifest::Manifest;
use crate::memory::locate::{locate, LocateInput};
use crate::memory::Sample;
use crate::ship::Shipper;
use crate::spool::Spool;
use crate::store::Store;
use crate::trigger::{Decision, Reason};

/// Why a one-shot capture failed.
#[derive(Debug, thiserror::Error)]
pub enum OneshotError {
    #[error("cannot open the spool at {dir}: {source}")]
    Spool {
        dir: std::path::PathBuf,
        source: crate::spool::SpoolError,
    },
    #[error("cannot open the store {url}: {source}")]
    Store {
        url: String,
        source: crate::store::StoreError,
    },
    #[error("{0}")]
    Other(String),
}

/// Takes one capture now and ships it. Returns its key and manifest.
pub async fn capture(config: Config) -> Result<(String, Manifest), OneshotError> {
    let spool = Spool::attach(&config.spool_dir, config.spool_max_bytes).map_err(|source| {
        OneshotError::Spool {
            dir: config.spool_dir.clone(),
            source,
        }
    })?;
    let store = Store::open(&config.store).map_err(|source| OneshotError::Store {
        url: config.store.clone(),
        source,
    })?;
    let shipper = Shipper::new(store, spool.clone());
    // The memory at the moment of a manual capture is context, not a
    // precondition: capture even when nothing can be located.
    let source = locate(&LocateInput::from_config(&config)).ok();
    let sample = source
        .as_ref()
        .and_then(|src| src.open().ok())
        .and_then(|mut r| r.read().ok())
        .unwrap_or_else(|| Sample {
            limit: None,
            ..Sample::synthetic(Instant::now(), 0, 0)
        });
    let d = Decision {
        reason: Reason::Manual,
        sample,
        slope: None,
        predicted_oom_in: None,
    };
    let id = spool.unique_id(&keys::capture_id(SystemTime::now(), "manual"));
    let key = keys::capture_prefix(&shipper.store.prefix, &config.identity, &id).to_string();
    let settings = CaptureSettings::from_config(&config);
    let m = crate::capture::draft(
        &config,
        settings.target.clone(),
        source.as_ref(),
        0,
        &id,
        &d,
        None,
    );
    let writer = spool
        .begin(&id, &key, &m)
        .map_err(|source| OneshotError::Spool {
            dir: config.spool_dir.clone(),
            source,
        })?;
    let (capturer, _) = Capturer::new(&config.target);
    let (m, finished) = capturer
        .complete(
            &settings,
            writer,
            m,
            Instant::now(),
            &|| Some(sample),
            source,
            spool.dir().to_path_buf(),
            false,
        )
        .await;
    finished.map_err(|e| OneshotError::Other(e.to_string()))?;
    let bundle = spool
        .bundles()
        .map_err(|e| OneshotError::Other(e.to_string()))?
        .into_iter()
        .find(|b| b.id == id)
        .ok_or_else(|| OneshotError::Other(format!("capture {id} is not in the spool")))?;
    let deadline = Instant::now() + config.shutdown_grace;
    shipper
        .ship_bundle(&bundle, Some(deadline))
        .await
        .map_err(|e| {
            OneshotError::Other(format!(
                "the capture is spooled at {} but could not be shipped within {}: {e}",
                bundle.dir.display(),
                humantime::format_duration(config.shutdown_grace)
            ))
        })?;
    // Shipped first, so the evidence of a dead target is kept; then the
    // person at the terminal hears that nothing was captured.
    let errors: Vec<String> = m
        .profiles
        .iter()
        .filter_map(|p| p.error.as_ref().map(|e| format!("{}: {e}", p.name)))
        .collect();
    if !m.profiles.iter().any(|p| p.ok()) && !errors.is_empty() {
        return Err(OneshotError::Other(format!(
            "every profile of capture {id} failed (the manifest is shipped at {key}): {}",
            errors.join("; ")
        )));
    }
    Ok((key, m))
}
