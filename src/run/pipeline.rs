//! The capture pipeline of `oomsnap run`: watcher events in, captures out.
//!
//! [`WatchEvent`]s and manual requests enter [`Pipeline::event`] and
//! [`Pipeline::decide`]. The pure [`Scheduler`] says which capture runs;
//! this module admits it through the quota, begins its spool bundle, and
//! spawns the capture task (fetch, summarise, finish). A finished capture
//! comes back through [`Pipeline::finished`], which records it, answers a
//! manual request, wakes the shipper, and writes `oom.json` when the kernel
//! reports a kill ([`crate::oom`] picks the capture). A capture decided by
//! `imminent` below the first rung is provisional ([`crate::speculative`]):
//! spooled like any other but held back until a rung, a kill, a restart or
//! a manual capture confirms it, and discarded when nothing does within
//! `OOMSNAP_CONFIRM_WINDOW`. File work (the spool
//! bound, `oom.json`) runs on blocking threads: the runtime thread only
//! waits on sockets and channels.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use crate::capture::{CaptureSettings, Capturer};
use crate::keys;
use crate::limit::Verdict;
use crate::manifest::Manifest;
use crate::memory::{MemorySource, Sample};
use crate::metrics::{CaptureLabels, ProfileLabels, SkipLabels};
use crate::oom::{CaptureEntry, Evidence, Outcome};
use crate::problems::ProblemKind;
use crate::scheduler::{Job, Offer, Scheduler};
use crate::speculative::Provisional;
use crate::state::{ManualOutcome, Shared};
use crate::trigger::{Decision, Reason};
use crate::watch::{Wake, WatchEvent};

use super::Mode;

mod kill;
mod provisional;

/// Where a manual request's outcome goes.
pub(crate) type Reply = oneshot::Sender<ManualOutcome>;

/// A capture task's result.
pub(crate) struct Finished {
    pub manifest: Manifest,
    pub result: Result<(), String>,
}

struct Running {
    provisional: bool,
    id: String,
    key: String,
    reason: Reason,
    percent: f64,
    decided_at: SystemTime,
    reply: Option<Reply>,
}

pub(crate) struct Pipeline {
    shared: Arc<Shared>,
    mode: Mode,
    capturer: Capturer,
    source: Option<MemorySource>,
    restarts: u32,
    sched: Scheduler<Reply>,
    running: Option<Running>,
    done_tx: mpsc::UnboundedSender<Finished>,
    /// When the last kill was attributed; captures before it are its own.
    last_kill: Option<SystemTime>,
    /// Kills seen while a capture was running: they may be that capture's.
    /// A crash-looping app can be killed twice during one slow capture.
    pending_oom: Vec<(SystemTime, Evidence, Option<Sample>)>,
    /// How many `oom.json` records this process has spooled.
    oom_seq: u64,
    provisional: Provisional,
    /// False when the watcher thread could not start: its problem then
    /// stands as `run` set it instead of being mirrored every second.
    watching: bool,
}

/// How the problem of a capture that could not be spooled begins; only a
/// capture that spools clears it.
const SPOOL_WRITE: &str = "cannot spool a capture";

fn reply(r: Option<Reply>, outcome: ManualOutcome) {
    if let Some(r) = r {
        let _ = r.send(outcome);
    }
}

impl Pipeline {
    pub fn new(
        shared: Arc<Shared>,
        mode: Mode,
        capturer: Capturer,
        done_tx: mpsc::UnboundedSender<Finished>,
        watching: bool,
    ) -> Pipeline {
        Pipeline {
            shared,
            mode,
            capturer,
            source: None,
            restarts: 0,
            sched: Scheduler::default(),
            running: None,
            done_tx,
            last_kill: None,
            pending_oom: Vec::new(),
            oom_seq: 0,
            provisional: Provisional::default(),
            watching,
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    fn count_drop(&self, reason: &Reason, cause: &str) {
        let admission = match reason {
            Reason::Manual => &self.shared.manual_admission,
            _ => &self.shared.admission,
        };
        admission.lock().count_drop(&reason.label(), cause);
    }

    /// A decision (from the watcher or a person) wants a capture.
    pub fn decide(&mut self, job: Job<Reply>) {
        let d = &job.decision;
        if self.mode == Mode::Watch {
            tracing::info!(
                reason = %d.reason.label(),
                percent = (d.sample.percent() * 10.0).round() / 10.0,
                working_set_bytes = d.sample.working_set,
                predicted_oom_in_seconds = d.predicted_oom_in.map(|p| p.as_secs_f64()),
                wake = job.wake.name(),
                "would capture (watch mode)"
            );
            reply(job.reply, ManualOutcome::WatchMode);
            return;
        }
        // A rung or a person confirms what imminent began, even when this
        // decision itself goes on to be dropped.
        if matches!(d.reason, Reason::Threshold(_) | Reason::Manual) {
            self.confirm(&d.reason.label());
        }
        if !self.shared.enabled.load(Ordering::Relaxed) && d.reason != Reason::Manual {
            self.count_drop(&d.reason, "paused");
            tracing::info!(reason = %d.reason.label(), "capture skipped: oomsnap.dev/enabled is false");
            return;
        }
        let label = d.reason.label();
        match self.sched.offer(job) {
            Offer::Start(job) => self.launch(job),
            Offer::Queued { replaced: None } => {}
            Offer::Queued {
                replaced: Some(old),
            } => {
                self.count_drop(&old.decision.reason, "superseded");
                tracing::debug!(old = %old.decision.reason.label(), new = %label, "a newer decision replaced the queued one");
                reply(old.reply, ManualOutcome::Superseded { by: label });
            }
            Offer::Refused { job, queued } => {
                self.count_drop(&job.decision.reason, "outranked");
                reply(
                    job.reply,
                    ManualOutcome::Busy {
                        queued: queued.label(),
                    },
                );
            }
        }
    }

    /// Starts `job`, or the next queued one when it cannot start.
    fn launch(&mut self, mut job: Job<Reply>) {
        loop {
            match self.try_start(job) {
                Ok(()) => return,
                Err(()) => match self.sched.done() {
                    Some(next) => job = next,
                    None => return,
                },
            }
        }
    }

    fn try_start(&mut self, job: Job<Reply>) -> Result<(), ()> {
        let Job {
            decision: d,
            wake,
            reply: r,
        } = job;
        let label = d.reason.label();
        let provisional = self.is_speculative(&d);
        // A provisional capture ships only by taking a unit of the near-OOM
        // quota when confirmed: with that spent, it would cost the app a
        // capture for nothing.
        if provisional && self.shared.admission.lock().likely_spent() {
            self.shared
                .speculative_admission
                .lock()
                .count_drop(&label, "speculative_quota");
            tracing::debug!(
                reason = %label,
                percent = d.sample.percent(),
                "provisional capture not started: the near-OOM quota (OOMSNAP_RATE_BURST per OOMSNAP_RATE_PERIOD) is spent, so it could not ship"
            );
            return Err(());
        }
        let admission = match d.reason {
            Reason::Manual => &self.shared.manual_admission,
            _ if provisional => &self.shared.speculative_admission,
            _ => &self.shared.admission,
        };
        let (verdict, log, left) = {
            let mut a = admission.lock();
            let v = a.admit(&d);
            let log = matches!(v, Verdict::Dropped { .. }) && a.should_log_drop();
            (v, log, a.remaining())
        };
        if let Verdict::Dropped { retry_in } = verdict {
            if log {
                tracing::warn!(
                    reason = %label,
                    retry_in_seconds = retry_in.as_secs(),
                    "capture dropped: the quota is spent ({}); further drops are counted, not logged, until the period passes",
                    match (d.reason == Reason::Manual, provisional) {
                        (true, _) => "OOMSNAP_MANUAL_RATE_BURST per OOMSNAP_RATE_PERIOD",
                        (false, true) => "the speculative quota: OOMSNAP_RATE_BURST provisional captures per OOMSNAP_RATE_PERIOD",
                        (false, false) => "OOMSNAP_RATE_BURST per OOMSNAP_RATE_PERIOD",
                    }
                );
            }
            reply(r, ManualOutcome::QuotaSpent { retry_in });
            return Err(());
        }
        let Some(spool) = self.shared.storage.spool.get().cloned() else {
            self.count_drop(&d.reason, "no_spool");
            reply(
                r,
                ManualOutcome::NoSpool {
                    why: "the spool is not open; see problems on /status".into(),
                },
            );
            return Err(());
        };
        let id = spool.unique_id(&keys::capture_id(d.sample.wall, &label));
        let key =
            keys::capture_prefix(&self.shared.store_prefix, &self.shared.config.identity, &id)
                .to_string();
        let settings = self
            .shared
            .capture_settings
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|_| CaptureSettings::from_config(&self.shared.config));
        let draft = crate::capture::draft(
            &self.shared.config,
            settings.target.clone(),
            self.source.as_ref(),
            self.restarts,
            &id,
            &d,
            Some(wake),
        );
        let writer = match spool.begin(&id, &key, &draft) {
            Ok(w) => w.provisional(provisional),
            Err(e) => {
                self.shared.problems.set(
                    ProblemKind::Spool,
                    format!("{SPOOL_WRITE}: {e}; is the spool directory writable and not full?"),
                );
                self.count_drop(&d.reason, "spool");
                reply(r, ManualOutcome::SpoolFailed { why: e.to_string() });
                return Err(());
            }
        };
        tracing::info!(
            capture = %id,
            reason = %label,
            percent = (d.sample.percent() * 10.0).round() / 10.0,
            working_set_bytes = d.sample.working_set,
            limit_bytes = d.sample.limit,
            predicted_oom_in_seconds = d.predicted_oom_in.map(|p| (p.as_secs_f64() * 1e3).round() / 1e3),
            wake = wake.name(),
            quota_left = left,
            provisional,
            "capturing"
        );
        if provisional {
            self.provisional.add(&id, d.sample.at);
            self.publish_provisional();
        }
        self.running = Some(Running {
            provisional,
            id,
            key,
            reason: d.reason,
            percent: d.sample.percent(),
            decided_at: d.sample.wall,
            reply: r,
        });
        let capturer = self.capturer.clone();
        let done = self.done_tx.clone();
        let watch = self.shared.watch.clone();
        let is_baseline = d.reason == Reason::Baseline;
        let source = self.source.clone();
        let spool_dir = spool.dir().to_path_buf();
        let t0 = d.sample.at;
        // Kept for the report should the task panic: the pipeline must hear
        // back from every capture, or the queue waits for it forever.
        let fallback = draft.clone();
        tokio::spawn(async move {
            let latest = || watch.last.lock().ok().and_then(|l| *l);
            let completed = capturer.complete(
                &settings,
                writer,
                draft,
                t0,
                &latest,
                source,
                spool_dir,
                is_baseline,
            );
            let finished = match super::contain::future("the capture task", completed).await {
                Ok((manifest, result)) => Finished {
                    manifest,
                    result: result.map_err(|e| e.to_string()),
                },
                Err(bug) => Finished {
                    manifest: fallback,
                    result: Err(bug),
                },
            };
            let _ = done.send(finished);
        });
        Ok(())
    }

    /// A capture task ended. With `next` false (shutdown) nothing queued
    /// starts.
    pub fn finished(&mut self, f: Finished, next: bool) {
        let Some(run) = self.running.take() else {
            return;
        };
        let m = &f.manifest;
        let ok = m.profiles.iter().filter(|p| p.ok()).count();
        let skipped = m.profiles.iter().filter(|p| p.skipped.is_some()).count();
        let failed = m.profiles.len() - ok - skipped;
        let durable_ms = m
            .profiles
            .iter()
            .filter(|p| p.ok())
            .filter_map(|p| p.durable_after_decision_ms)
            .reduce(f64::max);
        let verdict = crate::summary::verdict_of(m);
        let metrics = &self.shared.metrics;
        for p in &m.profiles {
            if p.skipped.is_some() {
                metrics
                    .profiles_skipped
                    .get_or_create(&SkipLabels {
                        profile: p.name.clone(),
                        cause: "headroom".into(),
                    })
                    .inc();
                tracing::warn!(capture = %run.id, profile = %p.name, why = p.skipped.as_deref().unwrap_or(""), "a profile was skipped to spare the app");
                continue;
            }
            metrics
                .fetch_seconds
                .get_or_create(&ProfileLabels {
                    profile: p.name.clone(),
                })
                .observe(p.fetch_ms / 1e3);
            if let Some(e) = &p.error {
                tracing::warn!(capture = %run.id, profile = %p.name, error = %e, "a profile failed; the rest of the capture ships");
            }
        }
        let outcome = match (&f.result, failed + skipped) {
            (Err(_), _) => Outcome::Failed,
            (Ok(()), 0) if ok > 0 => Outcome::Complete,
            (Ok(()), _) if ok > 0 => Outcome::Partial,
            (Ok(()), _) => Outcome::Failed,
        };
        match &f.result {
            Ok(()) => {
                self.shared
                    .problems
                    .clear_if(ProblemKind::Spool, |m| m.starts_with(SPOOL_WRITE));
                tracing::info!(
                    capture = %run.id,
                    key = %run.key,
                    profiles_ok = ok,
                    profiles_failed = failed,
                    profiles_skipped = skipped,
                    durable_after_decision_ms = durable_ms,
                    verdict = verdict.as_deref().unwrap_or(""),
                    "capture spooled{}",
                    verdict.as_deref().map(|v| format!(": {v}")).unwrap_or_default()
                );
            }
            Err(e) => tracing::error!(capture = %run.id, error = %e, "capture failed"),
        }
        // The target's answers, not the spool, decide the target problem.
        let errors: Vec<&str> = m
            .profiles
            .iter()
            .filter_map(|p| p.error.as_deref())
            .collect();
        self.shared.problems.report(
            ProblemKind::Target,
            (ok == 0 && !errors.is_empty()).then(|| {
                format!(
                    "the target {} answered no profile of capture {}: {}",
                    m.target,
                    run.id,
                    errors.join("; ")
                )
            }),
        );
        metrics
            .captures
            .get_or_create(&CaptureLabels {
                reason: run.reason.label(),
                outcome: outcome.name().into(),
            })
            .inc();
        self.shared.remember(CaptureEntry {
            id: run.id.clone(),
            key: run.key.clone(),
            reason: run.reason,
            outcome,
            percent: (run.percent * 10.0).round() / 10.0,
            decided_at: run.decided_at,
            durable_at: m.durable_at(),
            durable_after_decision_ms: durable_ms,
            profiles_ok: ok,
            profiles_failed: failed,
            profiles_skipped: skipped,
            verdict,
            provisional: run.provisional.then_some(crate::oom::Fate::Waiting),
        });
        if run.provisional {
            if let Some(a) = self.provisional.finished(&run.id) {
                self.apply(a);
            }
        }
        reply(
            run.reply,
            match (&f.result, ok) {
                (Err(e), _) => ManualOutcome::SpoolFailed { why: e.clone() },
                (Ok(()), 0) if failed > 0 => ManualOutcome::TargetFailed {
                    why: errors.join("; "),
                },
                (Ok(()), _) => ManualOutcome::Captured {
                    key: run.key.clone(),
                    failed,
                    skipped,
                },
            },
        );
        let keep = run.id.clone();
        self.shared
            .spool_work("keep the spool bounded", false, move |spool| {
                spool.enforce_bound(&keep).map(drop)
            });
        if let Some(s) = self.shared.storage.shipper.get() {
            s.wake.notify_one();
        }
        for (at, evidence, last) in std::mem::take(&mut self.pending_oom) {
            self.write_oom(at, evidence, last);
        }
        if next {
            if let Some(job) = self.sched.done() {
                self.launch(job);
            }
        }
    }

    /// After a step of the loop panicked (a bug, contained by `run`): a
    /// capture the scheduler counts as running while no task runs it would
    /// hold the queue for good, so it is let go and the queued one starts.
    pub fn recover(&mut self) {
        if self.running.is_none() && self.sched.is_running() {
            let next = self.sched.done();
            tracing::warn!(
                queued = next.as_ref().map(|j| j.decision.reason.label()),
                "a panic left the scheduler waiting for a capture no task runs; the queued capture, if any, starts now"
            );
            if let Some(job) = next {
                self.launch(job);
            }
        }
    }

    pub fn event(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::Located(src) => {
                self.source = Some(src);
                if self.mode == Mode::Run {
                    let c = self.capturer.clone();
                    if let Ok(settings) = self.shared.capture_settings.read().map(|s| s.clone()) {
                        tokio::spawn(
                            async move { c.warm(&settings, settings.profiles.len()).await },
                        );
                    }
                }
            }
            WatchEvent::Lost { why } => {
                tracing::warn!(%why, "memory source lost");
            }
            WatchEvent::Restarted {
                old_pid, restarts, ..
            } => {
                self.restarts = restarts;
                tracing::warn!(old_pid, restarts, "the target restarted");
                // With a cgroup, the kernel's counter says whether the
                // restart was an OOM kill; only without one is a restart
                // soon after a near-OOM capture taken as the kill.
                let last = self.shared.watch.last.lock().ok().and_then(|l| *l);
                if last.is_some_and(|s| s.oom_kills.is_none()) {
                    self.record_oom(SystemTime::now(), Evidence::Restart, last);
                }
            }
            WatchEvent::Decision { decision, wake } => self.decide(Job {
                decision,
                wake,
                reply: None,
            }),
            WatchEvent::OomKill { at, kills, last } => {
                self.record_oom(at, Evidence::OomKill { kills }, Some(last));
            }
        }
    }

    /// Once a second: the watcher's problem (the watcher logs it itself) is
    /// mirrored into the registry, and provisional captures past their
    /// window are discarded.
    pub fn tick(&mut self) {
        if !self.watching {
            // The thread never started; its problem stands as `run` set it.
            self.expire();
            return;
        }
        let problem = self
            .shared
            .watch
            .problem
            .lock()
            .ok()
            .and_then(|p| p.clone());
        let (locate, no_limit) = match &problem {
            Some(p) if p.kind() == "no_limit" => (None, Some(p.to_string())),
            Some(p) => (Some(p.to_string()), None),
            None => (None, None),
        };
        for (kind, message) in [
            (ProblemKind::Locate, locate),
            (ProblemKind::NoLimit, no_limit),
        ] {
            match message {
                Some(m) => self.shared.problems.mirror(kind, m),
                None => self.shared.problems.clear(kind),
            }
        }
        self.expire();
    }

    /// A manual request: a decision on the newest sample.
    pub fn manual(&mut self, r: Reply) {
        let sample = self
            .shared
            .watch
            .last
            .lock()
            .ok()
            .and_then(|s| *s)
            .unwrap_or_else(|| Sample {
                limit: None,
                ..Sample::synthetic(Instant::now(), 0, 0)
            });
        let decision = Decision {
            reason: Reason::Manual,
            sample: Sample {
                at: Instant::now(),
                wall: SystemTime::now(),
                ..sample
            },
            slope: None,
            predicted_oom_in: None,
        };
        self.decide(Job {
            decision,
            wake: Wake::Manual,
            reply: Some(r),
        });
    }

    /// Shutdown: the queued capture will not run.
    pub fn drop_pending(&mut self) {
        if let Some(job) = self.sched.take_pending() {
            self.count_drop(&job.decision.reason, "shutdown");
            reply(job.reply, ManualOutcome::ShuttingDown);
        }
    }
}
