//! `oomsnap run` and `oomsnap watch`: wires the stages together.
//!
//! - [`pipeline`] — watcher events and manual requests in, captures out
//! - [`follow`]   — the pod's annotations file in, tunables out
//! - [`contain`]  — a panic (a bug) in a capture or a pipeline step becomes
//!   a logged failure, not the end of the watch
//! - [`storage`]  — opens the spool and the store, retrying until they do
//!
//! Wiring only: the decisions live in `trigger`, `scheduler`, `oom` and
//! `capture::cost`, which are pure and tested on their own. Nothing here
//! exits over a fault: a bad variable falls back to its default, a spool or
//! store that will not open is retried, an admin port that is taken is
//! retried, and each is reported as a problem (log, `/status`,
//! `oomsnap_problems{kind}`). Only `OOMSNAP_STRICT=true` turns a bad
//! variable into exit code 2 (in `main`).
//!
//! Shutdown (SIGTERM) honours one deadline, `OOMSNAP_SHUTDOWN_GRACE`, for
//! everything: the capture under way (it is the evidence), then uploads;
//! whatever is not done by then stays in the spool for the next start.

mod contain;
mod follow;
mod pipeline;
mod storage;

use std::time::Instant;

use tokio::sync::{mpsc, watch};

use crate::capture::Capturer;
use crate::config::{Loaded, STORE};
use crate::problems::ProblemKind;
use crate::state::Shared;
use crate::watch::{self as watcher, WatchConfig};

/// How long shutdown waits for the watcher thread to stop.
const WATCHER_JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long start-up waits for the spool's first opening attempt.
const FIRST_SPOOL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs one step of the pipeline; a panic in it (a bug) is logged, the
/// pipeline lets go of a capture the step left half-started or
/// half-finished, and the loop goes on watching.
fn contained(p: &mut pipeline::Pipeline, what: &str, f: impl FnOnce(&mut pipeline::Pipeline)) {
    if let Err(bug) = contain::call(what, || f(p)) {
        tracing::error!(error = %bug, "a step of the pipeline failed; watching goes on");
        if let Err(bug) = contain::call("the pipeline's recovery", || p.recover()) {
            tracing::error!(error = %bug, "the pipeline could not recover; watching goes on");
        }
    }
}

/// Whether captures are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The whole pipeline.
    Run,
    /// Watch and log decisions; capture nothing.
    Watch,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Run => "run",
            Mode::Watch => "watch",
        }
    }
}

/// Runs until SIGTERM or SIGINT. Never returns early over a fault.
pub async fn run(loaded: Loaded, mode: Mode) {
    let Loaded {
        config,
        warnings,
        errors,
    } = loaded;
    let (manual_tx, mut manual_rx) = mpsc::channel(4);
    let shared = Shared::new(config.clone(), manual_tx, mode == Mode::Watch);
    let mut said: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
    if !said.is_empty() {
        said.push("each bad variable uses its default (see `oomsnap help config`)".into());
    }
    said.extend(warnings);
    shared.problems.report(
        ProblemKind::Config,
        (!said.is_empty()).then(|| said.join("; ")),
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    // The admin server first: /healthz must answer even while a spool on a
    // hung volume is still being opened.
    let admin = config
        .admin_addr
        .map(|addr| crate::admin::spawn(addr, shared.clone()));
    let storage = (mode == Mode::Run).then(|| {
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(storage::supervise(
            shared.clone(),
            !errors.names(STORE),
            stop_rx.clone(),
            first_tx,
        ));
        (task, first_rx)
    });
    let storage = match storage {
        Some((task, first)) => {
            // Wait briefly for the first attempt, so the start-up baseline
            // finds the spool open; a slow volume only delays the spool.
            if tokio::time::timeout(FIRST_SPOOL_WAIT, first).await.is_err() {
                tracing::warn!(
                    spool = %config.spool_dir.display(),
                    waited = %humantime::format_duration(FIRST_SPOOL_WAIT),
                    "the spool is still opening; watching starts without it"
                );
            }
            Some(task)
        }
        None => None,
    };

    let follower = follow::Follower::load(shared.clone()).await;
    let mut watch_config = WatchConfig::from_config(&config);
    watch_config.policy = follower.policy();
    let thresholds = watch_config.policy.thresholds.clone();
    let (watch_tx, mut watch_rx) = mpsc::unbounded_channel();
    let watcher = match watcher::spawn(watch_config, watch_tx, shared.watch.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            shared.problems.set(
                ProblemKind::Locate,
                format!("cannot start the watcher thread: {e}; nothing is watched"),
            );
            None
        }
    };
    let annotations = watcher
        .as_ref()
        .map(|(control, _)| follow::spawn(follower, control.clone()));

    let (capturer, tls) = Capturer::new(&config.target);
    if let Some(why) = tls {
        shared.problems.set(ProblemKind::Target, why);
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut p = pipeline::Pipeline::new(shared.clone(), mode, capturer, done_tx, watcher.is_some());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut second = tokio::time::interval(std::time::Duration::from_secs(1));
    second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(
        mode = mode.name(),
        thresholds = %thresholds.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(","),
        profiles = %config.profiles.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
        store = %config.store,
        spool = %config.spool_dir.display(),
        "oomsnap {} started", crate::VERSION
    );
    loop {
        tokio::select! {
            Some(ev) = watch_rx.recv() => contained(&mut p, "the pipeline's event handler", |p| p.event(ev)),
            Some(f) = done_rx.recv() => contained(&mut p, "the pipeline's capture handler", |p| p.finished(f, true)),
            Some(req) = manual_rx.recv() => contained(&mut p, "the pipeline's manual handler", |p| p.manual(req.reply)),
            _ = second.tick() => contained(&mut p, "the pipeline's tick", |p| p.tick()),
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {
                tracing::info!("SIGTERM: stopping captures, finishing uploads");
                break;
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted: stopping captures, finishing uploads");
                break;
            }
        }
    }

    // One grace for everything: the capture under way (it is the evidence),
    // then as many uploads as fit. At the deadline, whatever runs is
    // dropped; the spool keeps it for the next start.
    let deadline = Instant::now() + config.shutdown_grace;
    if let Some((control, _)) = &watcher {
        control.stop();
    }
    p.drop_pending();
    let finished = tokio::time::timeout_at(deadline.into(), async {
        if p.is_running() {
            if let Some(f) = done_rx.recv().await {
                p.finished(f, false);
            }
        }
        let _ = stop_tx.send(true);
        if let Some(t) = storage {
            let _ = t.await;
        }
        if let Some(s) = shared.storage.shipper.get() {
            s.finish(deadline.saturating_duration_since(Instant::now()))
                .await;
        }
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            grace = %humantime::format_duration(config.shutdown_grace),
            "shutdown: the grace (OOMSNAP_SHUTDOWN_GRACE) ran out; what was not shipped stays in the spool for the next start"
        );
    }
    if let Some(t) = admin {
        t.abort();
    }
    if let Some(t) = annotations {
        t.abort();
    }
    // The watcher wakes within its poll interval to see the stop; a thread
    // stuck in a read of a sick cgroup file is left behind, not waited for.
    if let Some((_, thread)) = watcher {
        let join = tokio::task::spawn_blocking(move || thread.join());
        if tokio::time::timeout(WATCHER_JOIN_WAIT, join).await.is_err() {
            tracing::warn!(
                waited = %humantime::format_duration(WATCHER_JOIN_WAIT),
                "shutdown: the watcher thread did not stop in time; exiting without it"
            );
        }
    }
}
