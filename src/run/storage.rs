//! Opens the spool and the store, and keeps trying until they open.
//!
//! A spool that cannot be created (a read-only or full disk) or a store that
//! cannot be opened is a fault of oomsnap's, never a reason to exit: this
//! task retries with backoff, reports the fault as a problem while it lasts,
//! and publishes the spool and then the shipper into [`Shared::storage`] as
//! soon as each opens. The pipeline takes captures once the spool is open;
//! they wait there until the store opens. The spool is recovered (what a
//! crash left behind) before the pipeline may write to it. A view of the
//! spool for `/status` and `/metrics` is refreshed off the runtime thread.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::problems::ProblemKind;
use crate::ship::Shipper;
use crate::spool::Spool;
use crate::state::Shared;
use crate::store::Store;

/// Retry bounds for opening the spool and the store.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often the spool view is refreshed.
const VIEW_EVERY: Duration = Duration::from_secs(2);

/// Sleeps `d`, or returns true when `stop` turns true first.
async fn stopped_within(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.changed() => true,
    }
}

/// One attempt to open (and recover) the spool; on success it is published
/// in [`Shared::storage`].
async fn open_spool(shared: &Arc<Shared>, retry_in: Duration) -> Option<Spool> {
    let c = &shared.config;
    let (dir, max) = (c.spool_dir.clone(), c.spool_max_bytes);
    let opened = tokio::task::spawn_blocking(move || Spool::open(&dir, max)).await;
    let spool = match opened {
        Ok(Ok((spool, rec))) => {
            if rec.complete + rec.completed_from_draft + rec.removed_partial + rec.finished_removal
                > 0
            {
                tracing::info!(
                    waiting = rec.complete,
                    completed_after_crash = rec.completed_from_draft,
                    removed_half_written = rec.removed_partial,
                    finished_removing_shipped = rec.finished_removal,
                    "spool recovered from an earlier run"
                );
            }
            if rec.errors.is_empty() {
                shared.problems.clear(ProblemKind::Spool);
            } else {
                shared.problems.set(
                    ProblemKind::Spool,
                    format!(
                        "the spool {} holds bundles a crash left that cannot be completed now: {}; the rest ships",
                        c.spool_dir.display(),
                        rec.errors.join("; ")
                    ),
                );
            }
            spool
        }
        Ok(Err(e)) => {
            shared.problems.set(
                ProblemKind::Spool,
                format!(
                    "cannot open the spool {} (OOMSNAP_SPOOL_DIR): {e}; no capture can be taken until it opens, retrying every {}",
                    c.spool_dir.display(),
                    humantime::format_duration(retry_in)
                ),
            );
            return None;
        }
        Err(e) => {
            shared.problems.set(
                ProblemKind::Spool,
                format!(
                    "the task opening the spool {} (OOMSNAP_SPOOL_DIR) failed: {e}; retrying",
                    c.spool_dir.display()
                ),
            );
            return None;
        }
    };
    // Provisional captures a restart of oomsnap left: their window was not
    // watched, so nothing can confirm or refute them now. A spooled capture
    // is never lost: they ship, saying why.
    let left = spool.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for id in left.provisional() {
            let by = "oomsnap restarted within its confirmation window";
            if let Err(e) = left.confirm(&id, by) {
                tracing::error!(capture = %id, error = %e, "cannot release a provisional capture");
            }
        }
    })
    .await;
    let _ = shared.storage.spool.set(spool.clone());
    Some(spool)
}

/// Runs until `stop` turns true. `store_valid` is false when
/// `OOMSNAP_STORE` was refused at start: captures then stay in the spool.
/// `first` is told when the first attempt to open the spool has ended,
/// whichever way, so `run` can wait for it without waiting on a hung disk.
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    store_valid: bool,
    mut stop: watch::Receiver<bool>,
    first: tokio::sync::oneshot::Sender<()>,
) {
    let c = &shared.config;
    let mut wait = RETRY_MIN;
    let opened = open_spool(&shared, wait).await;
    let _ = first.send(());
    let spool = match opened {
        Some(s) => s,
        None => loop {
            if stopped_within(&mut stop, wait).await {
                return;
            }
            wait = (wait * 2).min(RETRY_MAX);
            if let Some(s) = open_spool(&shared, wait).await {
                break s;
            }
        },
    };
    let view = tokio::spawn(refresh_view(shared.clone(), stop.clone()));

    if !store_valid {
        shared.problems.set(
            ProblemKind::Store,
            format!(
                "OOMSNAP_STORE is not valid (see the config problem), so captures stay in the spool {} until it is fixed",
                c.spool_dir.display()
            ),
        );
        let _ = stop.wait_for(|s| *s).await;
        view.abort();
        return;
    }
    let mut wait = RETRY_MIN;
    let store = loop {
        let url = c.store.clone();
        match tokio::task::spawn_blocking(move || Store::open(&url)).await {
            Ok(Ok(store)) => break store,
            Ok(Err(e)) => shared.problems.set(
                ProblemKind::Store,
                format!(
                    "cannot open the store {} (OOMSNAP_STORE): {e}; captures wait in the spool, retrying every {}",
                    c.store,
                    humantime::format_duration(wait)
                ),
            ),
            Err(e) => shared
                .problems
                .set(
                    ProblemKind::Store,
                    format!(
                        "the task opening the store {} (OOMSNAP_STORE) failed: {e}; retrying",
                        c.store
                    ),
                ),
        }
        if stopped_within(&mut stop, wait).await {
            view.abort();
            return;
        }
        wait = (wait * 2).min(RETRY_MAX);
    };
    let shipper = Shipper::new(store, spool);
    let _ = shared.storage.shipper.set(shipper.clone());
    let problems = shared.clone();
    shipper
        .run(stop, move |p| {
            problems.problems.report(ProblemKind::Store, p)
        })
        .await;
    view.abort();
}

async fn refresh_view(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || s.refresh_spool_view()).await;
        if stopped_within(&mut stop, VIEW_EVERY).await {
            return;
        }
    }
}
