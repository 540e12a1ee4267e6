//! Wires the stages together for `oomsnap run`, `watch` and `capture`.
//!
//! The watcher thread sends [`WatchEvent`]s; this module admits decisions
//! through the quota, runs one capture at a time (a decision arriving while
//! one runs waits in a one-slot queue, newest wins, so the capture closest
//! to the OOM is never lost to an older one), hands finished bundles to the
//! shipper, and writes `oom.json` when the kernel confirms a kill. The
//! [`Shared`] state is what the admin server reads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, Notify};

use crate::capture::{CaptureSettings, Capturer};
use crate::config::Config;
use crate::keys;
use crate::limit::{Admission, Verdict};
use crate::manifest::{self, Manifest, OomRecord, SourceInfo, TriggerSample, SCHEMA};
use crate::memory::watch::{self, Wake, WatchConfig, WatchEvent, WatchState};
use crate::memory::{MemorySource, Sample};
use crate::ship::Shipper;
use crate::spool::Spool;
use crate::store::Store;
use crate::trigger::{Decision, Reason};

/// Whether captures are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The whole pipeline.
    Run,
    /// Watch and log decisions; capture nothing.
    Watch,
}

/// One capture, as remembered for `/status` and `oom.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaptureEntry {
    pub id: String,
    pub key: String,
    pub reason: String,
    pub outcome: String,
    pub percent: f64,
    #[serde(skip)]
    pub durable_at: Option<SystemTime>,
    pub durable_after_decision_ms: Option<f64>,
    pub profiles_ok: usize,
    pub profiles_failed: usize,
    pub verdict: Option<String>,
}

/// A manual capture request; the reply is the capture's key or why not.
pub struct ManualRequest {
    pub reply: Reply,
}

/// Where a manual capture's outcome goes.
/// The key of the capture, or an HTTP status and why not.
pub type Reply = oneshot::Sender<Result<String, (u16, String)>>;

/// State shared with the admin server.
pub struct Shared {
    pub config: Config,
    pub watch: Arc<WatchState>,
    pub shipper: Option<Shipper>,
    pub admission: Mutex<Admission>,
    pub enabled: AtomicBool,
    pub captures: Mutex<VecDeque<CaptureEntry>>,
    pub problems: Mutex<Vec<String>>,
    pub manual: mpsc::Sender<ManualRequest>,
    pub oom_kills: std::sync::atomic::AtomicU64,
    pub capture_settings: Arc<std::sync::RwLock<CaptureSettings>>,
    pub metrics: crate::admin::Metrics,
    /// The tunables as annotations last set them.
    pub tunables: Mutex<Option<crate::annotations::Tunables>>,
    pub annotation_problems: Mutex<Vec<String>>,
}

const RECENT: usize = 32;

/// Without a kernel OOM counter, a restart this soon after a near-OOM
/// capture is recorded as the kill it most likely was.
const RESTART_EVIDENCE_WINDOW: Duration = Duration::from_secs(120);

struct InFlight {
    id: String,
    key: String,
    reason: Reason,
    percent: f64,
    reply: Option<Reply>,
}

/// The running pipeline.
struct Pipeline {
    shared: Arc<Shared>,
    mode: Mode,
    spool: Option<Spool>,
    capturer: Capturer,
    source: Option<MemorySource>,
    restarts: u32,
    in_flight: Option<InFlight>,
    pending: Option<(Decision, Wake, Option<Reply>)>,
    done_tx: mpsc::UnboundedSender<(Manifest, Result<(), String>)>,
    oom_recorded_for: Option<String>,
    /// Set when the watcher cannot go on; stops the run.
    fatal: Option<String>,
    /// An OOM kill seen while a capture was in flight.
    pending_oom: Option<(SystemTime, String, Option<u64>, Option<Sample>)>,
}

/// Errors that stop the sidecar at start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
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
    /// The configuration cannot work; exit code 2.
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Other(String),
}

impl Pipeline {
    fn draft(&self, id: &str, d: &Decision, wake: Option<Wake>) -> Manifest {
        let target = self
            .shared
            .capture_settings
            .read()
            .map(|s| s.target.clone())
            .unwrap_or_default();
        draft(
            &self.shared.config,
            target,
            self.source.as_ref(),
            self.restarts,
            id,
            d,
            wake,
        )
    }

    fn decide(&mut self, d: Decision, wake: Wake, reply: Option<Reply>) {
        let label = d.reason.label();
        if self.mode == Mode::Watch {
            tracing::info!(
                reason = %label,
                percent = format!("{:.1}", d.sample.percent()),
                working_set_bytes = d.sample.working_set,
                predicted_oom_in = ?d.predicted_oom_in,
                wake = ?wake,
                "would capture (watch mode)"
            );
            return;
        }
        if !self.shared.enabled.load(Ordering::Relaxed) && d.reason != Reason::Manual {
            if let Ok(mut a) = self.shared.admission.lock() {
                a.count_drop(&label, "paused");
            }
            tracing::info!(reason = %label, "capture skipped: oomsnap.dev/enabled is false");
            return;
        }
        if self.in_flight.is_some() {
            if let Some((old, _, old_reply)) = self.pending.take() {
                if let Ok(mut a) = self.shared.admission.lock() {
                    a.count_drop(&old.reason.label(), "superseded");
                }
                if let Some(r) = old_reply {
                    let _ = r.send(Err((
                        409,
                        format!("superseded by a newer {} capture", d.reason.label()),
                    )));
                }
                tracing::debug!(old = %old.reason.label(), new = %label, "a newer decision replaced the queued one");
            }
            self.pending = Some((d, wake, reply));
            return;
        }
        self.start(d, wake, reply);
    }

    fn start(&mut self, d: Decision, wake: Wake, reply: Option<Reply>) {
        let label = d.reason.label();
        let (verdict, log, left) = match self.shared.admission.lock() {
            Ok(mut a) => {
                let v = a.admit(&d);
                let log = matches!(v, Verdict::Dropped { .. }) && a.should_log_drop();
                (v, log, a.remaining())
            }
            Err(_) => (Verdict::Permitted, false, 0),
        };
        if let Verdict::Dropped { retry_in } = verdict {
            let retry = humantime::format_duration(Duration::from_secs(retry_in.as_secs().max(1)));
            if log {
                tracing::warn!(
                    reason = %label,
                    retry_in = %retry,
                    "capture dropped: the quota (OOMSNAP_RATE_BURST per OOMSNAP_RATE_PERIOD) is spent; further drops are counted, not logged, until the period passes"
                );
            }
            if let Some(r) = reply {
                let _ = r.send(Err((
                    429,
                    format!("the capture quota is spent; it returns in {retry}"),
                )));
            }
            return;
        }
        let (Some(spool), Some(shipper)) = (self.spool.clone(), self.shared.shipper.clone()) else {
            return;
        };
        let id = unique_id(&spool, &keys::capture_id(d.sample.wall, &label));
        let key = keys::capture_prefix(&shipper.store.prefix, &self.shared.config.identity, &id)
            .to_string();
        let mut draft = self.draft(&id, &d, Some(wake));
        let writer = match spool.begin(&id, &key, &draft) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot spool a capture; is the spool directory writable and not full?");
                if let Ok(mut p) = self.shared.problems.lock() {
                    p.push(format!("spool: {e}"));
                }
                if let Some(r) = reply {
                    let _ = r.send(Err((507, e.to_string())));
                }
                return;
            }
        };
        tracing::info!(
            capture = %id,
            reason = %label,
            percent = format!("{:.1}", d.sample.percent()),
            working_set_bytes = d.sample.working_set,
            limit_bytes = ?d.sample.limit,
            predicted_oom_in = ?d.predicted_oom_in,
            wake = ?wake,
            quota_left = left,
            "capturing"
        );
        self.in_flight = Some(InFlight {
            id: id.clone(),
            reason: d.reason,
            reply,
            key: key.clone(),
            percent: d.sample.percent(),
        });
        let settings = self
            .shared
            .capture_settings
            .read()
            .map(|s| s.clone())
            .expect("capture settings lock");
        let capturer = self.capturer.clone();
        let done = self.done_tx.clone();
        let t0 = d.sample.at;
        let is_baseline = d.reason == Reason::Baseline;
        let spool_dir = spool.dir().to_path_buf();
        tokio::spawn(async move {
            capturer.fetch_all(&settings, &writer, &mut draft, t0).await;
            let dir = writer.dir().to_path_buf();
            let m = draft;
            let m = tokio::task::spawn_blocking(move || {
                let mut m = m;
                crate::summary::summarise(&dir, &spool_dir, &mut m, is_baseline);
                m
            })
            .await
            .unwrap_or_else(|e| panic!("summary task failed: {e}"));
            let result = Capturer::finish(writer, &m)
                .await
                .map_err(|e| e.to_string());
            let _ = done.send((m, result));
        });
    }

    fn finished(&mut self, m: Manifest, result: Result<(), String>) {
        let Some(f) = self.in_flight.take() else {
            return;
        };
        let ok = m.profiles.iter().filter(|p| p.ok()).count();
        let failed = m.profiles.len() - ok;
        let durable_at = m.durable_at();
        let durable_ms = m
            .profiles
            .iter()
            .filter(|p| p.ok())
            .filter_map(|p| p.durable_after_decision_ms)
            .reduce(f64::max);
        let verdict = crate::summary::verdict_of(&m);
        for p in &m.profiles {
            self.shared
                .metrics
                .fetch_seconds
                .get_or_create(&crate::admin::ProfileLabels {
                    profile: p.name.clone(),
                })
                .observe(p.fetch_ms / 1e3);
        }
        match &result {
            Ok(()) => {
                for p in m.profiles.iter().filter(|p| !p.ok()) {
                    tracing::warn!(capture = %f.id, profile = %p.name, error = p.error.as_deref().unwrap_or(""), "a profile failed; the rest of the capture ships");
                }
                tracing::info!(
                    capture = %f.id,
                    key = %f.key,
                    profiles_ok = ok,
                    profiles_failed = failed,
                    durable_after_decision_ms = ?durable_ms,
                    verdict = verdict.as_deref().unwrap_or(""),
                    "capture spooled{}",
                    verdict.as_deref().map(|v| format!(": {v}")).unwrap_or_default()
                );
            }
            Err(e) => tracing::error!(capture = %f.id, error = %e, "capture failed"),
        }
        let entry = CaptureEntry {
            id: f.id.clone(),
            key: f.key.clone(),
            reason: f.reason.label(),
            outcome: match (&result, failed) {
                (Err(_), _) => "failed".into(),
                (Ok(()), 0) => "complete".into(),
                (Ok(()), _) => "partial".into(),
            },
            percent: (f.percent * 10.0).round() / 10.0,
            durable_at,
            durable_after_decision_ms: durable_ms,
            profiles_ok: ok,
            profiles_failed: failed,
            verdict,
        };
        self.shared
            .metrics
            .captures
            .get_or_create(&crate::admin::CaptureLabels {
                reason: entry.reason.clone(),
                outcome: entry.outcome.clone(),
            })
            .inc();
        if let Ok(mut c) = self.shared.captures.lock() {
            c.push_back(entry);
            while c.len() > RECENT {
                c.pop_front();
            }
        }
        if let Some(r) = f.reply {
            let _ = r.send(match &result {
                Ok(()) => Ok(f.key.clone()),
                Err(e) => Err((502, e.clone())),
            });
        }
        if let Some(spool) = &self.spool {
            if let Err(e) = spool.enforce_bound(&f.id) {
                tracing::error!(error = %e, "cannot keep the spool bounded");
            }
        }
        if let Some(s) = &self.shared.shipper {
            s.wake.notify_one();
        }
        if let Some((at, evidence, kills, last)) = self.pending_oom.take() {
            self.write_oom(at, &evidence, kills, last);
        }
        if let Some((d, wake, reply)) = self.pending.take() {
            self.start(d, wake, reply);
        }
    }

    /// Writes `oom.json` beside the last capture, once per capture.
    fn record_oom(
        &mut self,
        at: SystemTime,
        evidence: &str,
        kills: Option<u64>,
        last: Option<Sample>,
    ) {
        if evidence == "oom_kill" {
            self.shared.oom_kills.fetch_add(1, Ordering::Relaxed);
        }
        // A kill while a capture is still being finished belongs to that
        // capture: its profiles may well be on disk already.
        if self.in_flight.is_some() {
            self.pending_oom = Some((at, evidence.to_string(), kills, last));
            return;
        }
        self.write_oom(at, evidence, kills, last);
    }

    fn write_oom(
        &mut self,
        at: SystemTime,
        evidence: &str,
        kills: Option<u64>,
        last: Option<Sample>,
    ) {
        // The newest near-OOM capture that was on disk before the kill is
        // the evidence; one that finished after it (fetched from the dying
        // app) only counts when there is nothing better.
        let last_capture = self.shared.captures.lock().ok().and_then(|c| {
            let near: Vec<&CaptureEntry> = c
                .iter()
                .filter(|e| e.reason != "baseline" && e.profiles_ok > 0)
                .collect();
            near.iter()
                .rev()
                .find(|e| e.durable_at.is_some_and(|d| d <= at))
                .or(near.last())
                .map(|e| (*e).clone())
        });
        let Some(cap) = last_capture else {
            tracing::warn!(
                evidence,
                "the app was OOM-killed, but no capture preceded the kill"
            );
            return;
        };
        let recent = cap
            .durable_at
            .and_then(|d| at.duration_since(d).ok())
            .is_some_and(|age| age <= RESTART_EVIDENCE_WINDOW);
        if evidence == "restart" && !recent {
            return;
        }
        if self.oom_recorded_for.as_deref() == Some(cap.id.as_str()) {
            return;
        }
        self.oom_recorded_for = Some(cap.id.clone());
        // Negative when the capture became durable only after the kill.
        let lead = cap.durable_at.map(|d| match at.duration_since(d) {
            Ok(ahead) => ahead.as_secs_f64(),
            Err(behind) => -behind.duration().as_secs_f64(),
        });
        if let Some(l) = lead.filter(|l| *l >= 0.0) {
            self.shared.metrics.lead_seconds.observe(l);
        }
        let rec = OomRecord {
            schema: SCHEMA,
            capture_id: cap.id.clone(),
            detected_at: manifest::timestamp(at),
            evidence: evidence.into(),
            oom_kills: kills,
            lead_seconds: lead.map(|l| (l * 1e6).round() / 1e6),
            last_sample: last.as_ref().map(TriggerSample::from_sample),
        };
        tracing::warn!(
            capture = %cap.id,
            key = %cap.key,
            evidence,
            lead_seconds = ?rec.lead_seconds,
            "the app was OOM-killed; {}",
            match lead {
                Some(l) if l >= 0.0 => format!("the capture was durable {l:.3}s before the kill"),
                Some(l) => format!("the last capture became durable only {:.3}s after the kill", -l),
                None => "the capture's timing is unknown".into(),
            }
        );
        if let Some(spool) = &self.spool {
            let id = format!("{}_oom", keys::compact_time(SystemTime::now()));
            let bytes = serde_json::to_vec_pretty(&rec).expect("oom record serialises");
            match spool.add_single(&id, &cap.key, manifest::OOM_FILE, &bytes) {
                Ok(()) => {
                    if let Some(s) = &self.shared.shipper {
                        s.wake.notify_one();
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot spool oom.json"),
            }
        }
    }

    fn event(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::Located(src) => {
                self.source = Some(src);
                if self.mode == Mode::Run {
                    let c = self.capturer.clone();
                    let settings = self.shared.capture_settings.read().map(|s| s.clone());
                    if let Ok(settings) = settings {
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
                    self.record_oom(SystemTime::now(), "restart", None, last);
                }
            }
            WatchEvent::Decision { decision, wake } => {
                self.decide(decision, wake, None);
            }
            WatchEvent::OomKill { at, kills, last } => {
                self.record_oom(at, "oom_kill", Some(kills), Some(last));
            }
        }
    }
}

/// A capture's manifest before its profiles: who, why, and the sample.
fn draft(
    c: &Config,
    target: String,
    source: Option<&MemorySource>,
    restarts: u32,
    id: &str,
    d: &Decision,
    wake: Option<Wake>,
) -> Manifest {
    Manifest {
        schema: SCHEMA,
        oomsnap_version: crate::VERSION.into(),
        capture_id: id.into(),
        reason: d.reason.label(),
        namespace: c.identity.namespace.clone(),
        pod: c.identity.pod.clone(),
        container: c.identity.container.clone(),
        node: c.identity.node.clone(),
        pod_uid: c.identity.pod_uid.clone(),
        target,
        target_pid: source.and_then(|s| s.pid),
        target_restarts: restarts,
        source: source.map(|s| SourceInfo {
            strategy: s.strategy.name().into(),
            description: s.describe(),
        }),
        trigger: TriggerSample::from_decision(d, wake.map(Wake::name)),
        decided_at: manifest::timestamp(d.sample.wall),
        first_request_after_decision_ms: None,
        spooled_at: String::new(),
        profiles: Vec::new(),
        summary: None,
        baseline: None,
    }
}

/// Two decisions in the same millisecond get distinct ids.
fn unique_id(spool: &Spool, id: &str) -> String {
    let mut candidate = id.to_string();
    let mut n = 1;
    while spool.dir().join(&candidate).exists()
        || spool.dir().join(format!("{candidate}.partial")).exists()
    {
        n += 1;
        candidate = format!("{id}-{n}");
    }
    candidate
}

/// Opens the spool and the store, logging what a previous run left.
pub fn open_storage(config: &Config) -> Result<(Spool, Store), RunError> {
    let (spool, rec) =
        Spool::open(&config.spool_dir, config.spool_max_bytes).map_err(|source| {
            RunError::Spool {
                dir: config.spool_dir.clone(),
                source,
            }
        })?;
    if rec.complete + rec.completed_from_draft + rec.removed_partial > 0 {
        tracing::info!(
            waiting = rec.complete,
            completed_after_crash = rec.completed_from_draft,
            removed_half_written = rec.removed_partial,
            "spool recovered from an earlier run"
        );
    }
    let store = Store::open(&config.store).map_err(|source| RunError::Store {
        url: config.store.clone(),
        source,
    })?;
    Ok((spool, store))
}

/// Builds the shared state (the admin server reads it).
pub fn shared(
    config: Config,
    shipper: Option<Shipper>,
    manual: mpsc::Sender<ManualRequest>,
) -> Arc<Shared> {
    Arc::new(Shared {
        admission: Mutex::new(Admission::new(config.rate_burst, config.rate_period)),
        capture_settings: Arc::new(std::sync::RwLock::new(CaptureSettings::from_config(
            &config,
        ))),
        config,
        watch: Arc::new(WatchState::default()),
        shipper,
        enabled: AtomicBool::new(true),
        captures: Mutex::new(VecDeque::new()),
        problems: Mutex::new(Vec::new()),
        manual,
        oom_kills: std::sync::atomic::AtomicU64::new(0),
        metrics: crate::admin::Metrics::default(),
        tunables: Mutex::new(None),
        annotation_problems: Mutex::new(Vec::new()),
    })
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(config: Config, mode: Mode, warnings: Vec<String>) -> Result<(), RunError> {
    let (manual_tx, mut manual_rx) = mpsc::channel::<ManualRequest>(4);
    let (spool, shipper) = if mode == Mode::Run {
        let (spool, store) = open_storage(&config)?;
        (Some(spool.clone()), Some(Shipper::new(store, spool)))
    } else {
        (None, None)
    };
    let shared = shared(config.clone(), shipper.clone(), manual_tx);
    if let Ok(mut p) = shared.problems.lock() {
        p.extend(warnings);
    }

    let stop_ship = Arc::new(Notify::new());
    let ship_task = shipper
        .clone()
        .map(|s| tokio::spawn(s.run(stop_ship.clone())));

    let admin_task = match config.admin_addr {
        Some(addr) => Some(
            crate::admin::spawn(addr, shared.clone())
                .await
                .map_err(|e| {
                    RunError::Other(format!(
                        "cannot serve the admin port {addr} (OOMSNAP_ADMIN_ADDR): {e}"
                    ))
                })?,
        ),
        None => None,
    };
    let follower = crate::annotations::Follower::load(shared.clone());
    let mut watch_config = WatchConfig::from_config(&config);
    watch_config.policy = follower.policy();
    let watch_config_thresholds = watch_config.policy.thresholds.clone();

    let (watch_tx, mut watch_rx) = mpsc::unbounded_channel();
    let (control, watch_thread) = watch::spawn(watch_config, watch_tx, shared.watch.clone())
        .map_err(|e| RunError::Other(format!("cannot start the watcher: {e}")))?;
    let annotations_task = crate::annotations::spawn(follower, control.clone());

    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut p = Pipeline {
        shared: shared.clone(),
        mode,
        spool,
        capturer: Capturer::new().map_err(|e| RunError::Other(e.to_string()))?,
        source: None,
        restarts: 0,
        in_flight: None,
        pending: None,
        done_tx,
        oom_recorded_for: None,
        fatal: None,
        pending_oom: None,
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| RunError::Other(format!("cannot install the SIGTERM handler: {e}")))?;
    tracing::info!(
        mode = ?mode,
        thresholds = ?watch_config_thresholds,
        profiles = ?config.profiles.iter().map(|k| k.name()).collect::<Vec<_>>(),
        store = %config.store,
        spool = %config.spool_dir.display(),
        "oomsnap {} started", crate::VERSION
    );
    loop {
        tokio::select! {
            Some(ev) = watch_rx.recv() => {
                p.event(ev);
                if p.fatal.is_some() {
                    break;
                }
            }
            Some((m, r)) = done_rx.recv() => p.finished(m, r),
            Some(req) = manual_rx.recv() => {
                let sample = shared.watch.last.lock().ok().and_then(|s| *s)
                    .unwrap_or_else(|| Sample { limit: None, ..Sample::synthetic(Instant::now(), 0, 0) });
                let d = Decision { reason: Reason::Manual, sample: Sample { at: Instant::now(), wall: SystemTime::now(), ..sample }, slope: None, predicted_oom_in: None };
                if mode == Mode::Watch {
                    let _ = req.reply.send(Err((409, "oomsnap runs in watch mode and takes no captures".into())));
                } else {
                    p.decide(d, Wake::Manual, Some(req.reply));
                }
            }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping captures, finishing uploads"); break; }
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted: stopping captures, finishing uploads"); break; }
        }
    }

    // One grace for everything: the capture under way (it is the evidence),
    // then as many uploads as fit.
    let deadline = Instant::now() + config.shutdown_grace;
    control.stop();
    if let Some((d, _, reply)) = p.pending.take() {
        if let Ok(mut a) = shared.admission.lock() {
            a.count_drop(&d.reason.label(), "shutdown");
        }
        if let Some(r) = reply {
            let _ = r.send(Err((503, "oomsnap is shutting down".into())));
        }
    }
    if p.in_flight.is_some() {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Some((m, r))) = tokio::time::timeout(left, done_rx.recv()).await {
            p.pending = None;
            p.finished(m, r);
        }
    }
    stop_ship.notify_waiters();
    stop_ship.notify_one();
    if let Some(t) = ship_task {
        let _ = t.await;
    }
    if let Some(s) = &shared.shipper {
        s.finish(deadline.saturating_duration_since(Instant::now()))
            .await;
    }
    if let Some(t) = admin_task {
        t.abort();
    }
    annotations_task.abort();
    let _ = tokio::task::spawn_blocking(move || watch_thread.join()).await;
    match p.fatal {
        Some(why) => Err(RunError::Config(why)),
        None => Ok(()),
    }
}

/// `oomsnap capture`: one manual capture, shipped at once. Returns the key.
pub async fn capture_once(config: Config) -> Result<(String, Manifest), RunError> {
    let spool = Spool::attach(&config.spool_dir, config.spool_max_bytes).map_err(|source| {
        RunError::Spool {
            dir: config.spool_dir.clone(),
            source,
        }
    })?;
    let store = Store::open(&config.store).map_err(|source| RunError::Store {
        url: config.store.clone(),
        source,
    })?;
    let shipper = Shipper::new(store, spool.clone());
    // The memory at the moment of a manual capture is context, not a
    // precondition: capture even when nothing can be located.
    let source =
        crate::memory::locate::locate(&crate::memory::locate::LocateInput::from_config(&config))
            .ok();
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
    let id = unique_id(&spool, &keys::capture_id(SystemTime::now(), "manual"));
    let key = keys::capture_prefix(&shipper.store.prefix, &config.identity, &id).to_string();
    let settings = CaptureSettings::from_config(&config);
    let mut m = draft(
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
        .map_err(|source| RunError::Spool {
            dir: config.spool_dir.clone(),
            source,
        })?;
    Capturer::new()
        .map_err(|e| RunError::Other(e.to_string()))?
        .fetch_all(&settings, &writer, &mut m, Instant::now())
        .await;
    crate::summary::summarise(writer.dir(), spool.dir(), &mut m, false);
    let finished = Capturer::finish(writer, &m).await;
    let bundle = spool
        .bundles()
        .map_err(|e| RunError::Other(e.to_string()))?
        .into_iter()
        .find(|b| b.id == id)
        .ok_or_else(|| RunError::Other(format!("capture {id} is not in the spool")))?;
    let deadline = Instant::now() + config.shutdown_grace;
    shipper
        .ship_bundle(&bundle, Some(deadline))
        .await
        .map_err(|e| {
            RunError::Other(format!(
                "the capture is spooled at {} but could not be shipped within {}: {e}",
                bundle.dir.display(),
                humantime::format_duration(config.shutdown_grace)
            ))
        })?;
    finished.map_err(|e| RunError::Other(e.to_string()))?;
    Ok((key, m))
}
