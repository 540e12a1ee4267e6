//! What the running sidecar knows, shared by the pipeline (`run`), the admin
//! server and the annotation follower (`run::follow`).
//!
//! [`Shared`] is built once by `run` and handed out as an `Arc`. The
//! pipeline writes it (captures, OOM kills, problems, the storage once it
//! opens); the annotation follower writes the tunables; the admin server
//! only reads it, and sends manual capture requests over [`Shared::manual`].
//! This module depends on no stage that reads it, so the arrows point one
//! way: `run` and `admin` → `state` (the pure [`Tunables`] type it holds
//! comes from `annotations`, which knows nothing of the state).
//!
//! Everything the admin server reads here is cheap to read: the spool's size
//! and waiting bundles are a [`SpoolView`] refreshed off the runtime thread,
//! so a scrape of `/metrics` or `/status` never walks the disk.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};

use crate::annotations::Tunables;
use crate::capture::CaptureSettings;
use crate::config::Config;
use crate::limit::Admission;
use crate::metrics::Metrics;
use crate::oom::CaptureEntry;
use crate::problems::{ProblemKind, Problems};
use crate::ship::Shipper;
use crate::spool::{Spool, SpoolError};
use crate::watch::WatchState;

/// Captures remembered for `/status` and OOM attribution.
pub const RECENT: usize = 32;
/// Bundles listed on `/status`; the rest are counted.
pub const WAITING_LISTED: usize = 20;

/// A manual capture request; the reply is its outcome.
#[derive(Debug)]
pub struct ManualRequest {
    pub reply: oneshot::Sender<ManualOutcome>,
}

/// How a manual capture ended. The admin server turns it into an HTTP
/// status; the core knows nothing of HTTP.
#[derive(Debug, Clone, PartialEq)]
pub enum ManualOutcome {
    /// Spooled; ships under `key`. Some profiles may have failed or been
    /// skipped (`failed`, `skipped`).
    Captured {
        key: String,
        failed: usize,
        skipped: usize,
    },
    /// The manual quota is spent until `retry_in` passes.
    QuotaSpent {
        retry_in: Duration,
    },
    /// A newer capture took its place in the queue.
    Superseded {
        by: String,
    },
    /// An automatic capture is queued, and a manual request never takes its
    /// place.
    Busy {
        queued: String,
    },
    /// Every profile failed: the target did not answer properly.
    TargetFailed {
        why: String,
    },
    /// The spool could not take the capture.
    SpoolFailed {
        why: String,
    },
    /// The spool is not open yet (or cannot be); see `problems`.
    NoSpool {
        why: String,
    },
    ShuttingDown,
    /// `oomsnap watch` takes no captures.
    WatchMode,
}

/// One bundle waiting in the spool, as `/status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WaitingBundle {
    pub id: String,
    pub key: String,
    pub bytes: u64,
}

/// The spool as last seen by the background refresh.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SpoolView {
    pub bytes: u64,
    pub bundles: usize,
    /// The newest [`WAITING_LISTED`] bundles.
    pub waiting: Vec<WaitingBundle>,
}

/// The spool and the shipper, once they open. Either may never open (a
/// read-only disk, a bad store URL); the sidecar then runs degraded.
#[derive(Default)]
pub struct Storage {
    pub spool: OnceLock<Spool>,
    pub shipper: OnceLock<Shipper>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("spool", &self.spool.get().map(|s| s.dir().to_path_buf()))
            .field("shipper", &self.shipper.get().is_some())
            .finish()
    }
}

/// A capture quota, shared by the pipeline, the admin server and the
/// annotation follower.
pub struct Quota(Mutex<Admission>);

impl Quota {
    pub fn new(a: Admission) -> Quota {
        Quota(Mutex::new(a))
    }

    /// Never fails: a panic contained while the lock was held leaves counts
    /// that are still valid, and a quota that could no longer be read would
    /// either stop every capture or let every one through.
    pub fn lock(&self) -> MutexGuard<'_, Admission> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// State shared by the pipeline, the admin server and the annotations.
pub struct Shared {
    pub config: Config,
    pub started: SystemTime,
    pub watch: Arc<WatchState>,
    pub storage: Storage,
    /// The quota of automatic (near-OOM) captures.
    pub admission: Quota,
    /// The quota of manual captures: separate, so requests from the
    /// network can never spend the near-OOM budget.
    pub manual_admission: Quota,
    /// The quota of provisional captures, so a cache that fills and levels
    /// off again and again cannot capture without bound; a confirmed one
    /// then spends the near-OOM quota too.
    pub speculative_admission: Quota,
    /// Provisional captures waiting for confirmation, for `/status`.
    pub provisional: Mutex<Vec<String>>,
    pub enabled: AtomicBool,
    pub captures: Mutex<VecDeque<CaptureEntry>>,
    pub problems: Problems,
    pub manual: mpsc::Sender<ManualRequest>,
    pub oom_kills: AtomicU64,
    pub capture_settings: RwLock<CaptureSettings>,
    pub metrics: Metrics,
    /// The tunables as annotations last set them.
    pub tunables: Mutex<Option<Tunables>>,
    pub spool_view: Mutex<SpoolView>,
    /// The key prefix of `OOMSNAP_STORE`, parsed once. Taken from the
    /// configured URL, not the opened store: a capture taken before the
    /// store opens (or while it cannot) still ships under the right key.
    pub store_prefix: object_store::path::Path,
    /// `oomsnap watch`: nothing is captured or shipped, so readiness does
    /// not wait for a store.
    pub watch_only: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl Shared {
    pub fn new(
        config: Config,
        manual: mpsc::Sender<ManualRequest>,
        watch_only: bool,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            admission: Quota::new(Admission::new(config.rate_burst, config.rate_period)),
            manual_admission: Quota::new(Admission::new(
                config.manual_rate_burst,
                config.rate_period,
            )),
            speculative_admission: Quota::new(
                Admission::new(config.rate_burst, config.rate_period)
                    .counted_as("speculative_quota"),
            ),
            provisional: Mutex::new(Vec::new()),
            capture_settings: RwLock::new(CaptureSettings::from_config(&config)),
            store_prefix: crate::store::StoreUrl::parse(&config.store)
                .map(|u| u.prefix())
                .unwrap_or_default(),
            config,
            started: SystemTime::now(),
            watch: Arc::new(WatchState::default()),
            storage: Storage::default(),
            enabled: AtomicBool::new(true),
            captures: Mutex::new(VecDeque::new()),
            problems: Problems::default(),
            manual,
            oom_kills: AtomicU64::new(0),
            metrics: Metrics::default(),
            tunables: Mutex::new(None),
            watch_only,
            spool_view: Mutex::new(SpoolView::default()),
        })
    }

    /// Remembers a finished capture, keeping the newest [`RECENT`].
    pub fn remember(&self, entry: CaptureEntry) {
        if let Ok(mut c) = self.captures.lock() {
            c.push_back(entry);
            while c.len() > RECENT {
                c.pop_front();
            }
        }
    }

    /// Runs spool file work (fsyncs, deletes) on a blocking thread, so the
    /// runtime thread only waits on sockets. A failure becomes the `spool`
    /// problem, "cannot {doing}: {error}" (the error names the path), which
    /// the same kind of work succeeding later clears; when `ships`, success wakes the shipper for what the
    /// work made shippable. Either way the spool view is refreshed. Without
    /// a spool (still opening) there is nothing to do. The handle is for
    /// tests; callers go on without waiting.
    pub fn spool_work(
        self: &Arc<Self>,
        doing: &'static str,
        ships: bool,
        work: impl FnOnce(&Spool) -> Result<(), SpoolError> + Send + 'static,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let spool = self.storage.spool.get().cloned()?;
        let shared = self.clone();
        Some(tokio::task::spawn_blocking(move || {
            let fault = format!("cannot {doing}:");
            match work(&spool) {
                Ok(()) => {
                    shared
                        .problems
                        .clear_if(ProblemKind::Spool, |m| m.starts_with(&fault));
                    if let Some(s) = shared.storage.shipper.get().filter(|_| ships) {
                        s.wake.notify_one();
                    }
                }
                Err(e) => shared
                    .problems
                    .set(ProblemKind::Spool, format!("{fault} {e}")),
            }
            shared.refresh_spool_view();
        }))
    }

    /// Re-reads the spool's size and bundles. Blocking: call it from a
    /// blocking task.
    pub fn refresh_spool_view(&self) {
        let Some(spool) = self.storage.spool.get() else {
            return;
        };
        let bundles = spool.bundles().unwrap_or_default();
        let view = SpoolView {
            bytes: spool.usage_bytes(),
            bundles: bundles.len(),
            waiting: bundles
                .iter()
                .rev()
                .take(WAITING_LISTED)
                .map(|b| WaitingBundle {
                    id: b.id.clone(),
                    key: b.key.clone(),
                    bytes: b.bytes,
                })
                .collect(),
        };
        if let Ok(mut v) = self.spool_view.lock() {
            *v = view;
        }
    }
}

/// How long a manual request may wait for its capture: long enough for a
/// cpu profile, a full fetch and the spool.
pub fn manual_wait(c: &Config) -> Duration {
    c.fetch_timeout
        .saturating_mul(2)
        .saturating_add(c.cpu_profile_duration)
        .saturating_add(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(dir: &std::path::Path) -> Arc<Shared> {
        let vars: std::collections::BTreeMap<String, String> = [
            ("OOMSNAP_SPOOL_DIR", dir.display().to_string()),
            ("OOMSNAP_STORE", "memory://".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let (config, _) = Config::from_vars(&vars).unwrap();
        let (spool, _) = Spool::open(dir, config.spool_max_bytes).unwrap();
        let shared = Shared::new(config, mpsc::channel(1).0, false);
        shared.storage.spool.set(spool).unwrap();
        shared
    }

    fn refused(spool: &Spool) -> Result<(), SpoolError> {
        Err(SpoolError::Io {
            op: "remove",
            path: spool.dir().join("x"),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        })
    }

    #[test]
    fn a_quota_a_panic_poisoned_still_counts() {
        let q = Arc::new(Quota::new(Admission::new(2, Duration::from_secs(600))));
        assert!(q.lock().charge());
        let held = q.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.lock();
            panic!("a contained panic while the quota is held");
        })
        .join();
        assert!(q.0.is_poisoned());
        // One unit left, then none: not "every capture through".
        assert!(q.lock().charge());
        assert!(!q.lock().charge());
        assert_eq!(q.lock().remaining(), 0);
    }

    #[tokio::test]
    async fn a_spool_fault_is_reported_and_cleared_only_by_the_same_work_succeeding() {
        let d = tempfile::tempdir().unwrap();
        let s = shared(d.path());
        let run = |doing, ok: bool| {
            s.spool_work(
                doing,
                false,
                move |spool| {
                    if ok {
                        Ok(())
                    } else {
                        refused(spool)
                    }
                },
            )
            .unwrap()
        };
        run("keep the spool bounded", false).await.unwrap();
        let problems = s.problems.snapshot();
        assert_eq!(problems.len(), 1);
        let message = &problems[0].message;
        assert!(
            message.starts_with("cannot keep the spool bounded: ") && message.contains("/x"),
            "{message}"
        );
        // Other spool work succeeding says nothing about the bound.
        run("spool oom.json", true).await.unwrap();
        assert!(s.problems.is_active(ProblemKind::Spool));
        run("keep the spool bounded", true).await.unwrap();
        assert!(!s.problems.is_active(ProblemKind::Spool));
    }
}
