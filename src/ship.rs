//! Drains the spool into object storage.
//!
//! Finished [`Bundle`]s enter; objects under `<key>/<file>` leave, the
//! manifest last so a reader never sees a manifest without its profiles.
//! A local bundle is deleted only after every object of it is stored.
//! Uploads stream from the spool file through `object_store`'s `BufWriter`,
//! which switches to multipart for large files, so a 256 MiB goroutine dump
//! never sits in memory. Failed uploads retry with exponential backoff and
//! full jitter until they succeed or shutdown; the bundle then stays in the
//! spool for the next run. Re-uploading after a crash writes the same keys,
//! so a capture appears in the store exactly once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Notify};

use crate::spool::{Bundle, Spool};
use crate::store::Store;

/// Backoff bounds for uploads.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The n-th retry's delay: exponential with full jitter (a uniform draw
/// below the exponential cap), so many sidecars do not retry in step.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let cap = BACKOFF_MIN
        .as_secs_f64()
        .mul_add(2f64.powi(attempt.min(16) as i32), 0.0)
        .min(BACKOFF_MAX.as_secs_f64());
    Duration::from_secs_f64((cap * jitter.clamp(0.0, 1.0)).max(BACKOFF_MIN.as_secs_f64() / 2.0))
}

/// Counters shared with the admin server.
#[derive(Debug, Default)]
pub struct ShipStats {
    pub objects_ok: AtomicU64,
    pub objects_failed: AtomicU64,
    pub bundles_shipped: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    /// The store has answered at least once (for /readyz).
    pub store_answered: AtomicBool,
    pub last_error: Mutex<Option<String>>,
    pub last_shipped: Mutex<Vec<String>>,
}

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot store {key}: {source}")]
    Store {
        key: String,
        source: object_store::Error,
    },
    #[error("shutting down")]
    Shutdown,
}

/// The ship stage.
#[derive(Clone)]
pub struct Shipper {
    pub store: Store,
    pub spool: Spool,
    pub wake: Arc<Notify>,
    pub stats: Arc<ShipStats>,
}

impl Shipper {
    pub fn new(store: Store, spool: Spool) -> Shipper {
        Shipper {
            store,
            spool,
            wake: Arc::new(Notify::new()),
            stats: Arc::new(ShipStats::default()),
        }
    }

    /// Asks the store something cheap; true when it answers at all.
    pub async fn probe(&self) -> Result<(), String> {
        let key = self.store.prefix.clone().join(".oomsnap-probe");
        match self.store.inner.head(&key).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {
                self.stats.store_answered.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    async fn upload(&self, b: &Bundle, file: &str) -> Result<u64, ShipError> {
        let key = ObjectPath::from(b.key.as_str()).join(file);
        let path = b.dir.join(file);
        let mut src = tokio::fs::File::open(&path)
            .await
            .map_err(|source| ShipError::Read {
                path: path.clone(),
                source,
            })?;
        // One part in flight at a time, each the smallest the store
        // accepts: a 256 MiB dump must not cost the sidecar 8 parts of RAM.
        let mut w = object_store::buffered::BufWriter::with_capacity(
            self.store.inner.clone(),
            key.clone(),
            self.store.part_size,
        )
        .with_max_concurrency(1);
        let store_err = |e: std::io::Error| ShipError::Store {
            key: key.to_string(),
            source: object_store::Error::Generic {
                store: "upload",
                source: Box::new(e),
            },
        };
        let n = match tokio::io::copy(&mut src, &mut w).await {
            Ok(n) => n,
            Err(e) => {
                let _ = w.abort().await;
                return Err(store_err(e));
            }
        };
        w.shutdown().await.map_err(store_err)?;
        Ok(n)
    }

    /// Uploads one bundle, manifest last, then removes it from the spool.
    /// Each object gets a few attempts with backoff; if they all fail the
    /// bundle stays in the spool for the next pass, so one bundle the store
    /// keeps refusing never blocks newer captures.
    pub async fn ship_bundle(
        &self,
        b: &Bundle,
        deadline: Option<Instant>,
    ) -> Result<(), ShipError> {
        for (file, _) in &b.files {
            let mut attempt = 0;
            loop {
                match self.upload(b, file).await {
                    Ok(n) => {
                        self.stats.objects_ok.fetch_add(1, Ordering::Relaxed);
                        self.stats.bytes_uploaded.fetch_add(n, Ordering::Relaxed);
                        self.stats.store_answered.store(true, Ordering::Relaxed);
                        break;
                    }
                    // Dropped by the spool bound while we worked.
                    Err(e @ ShipError::Read { .. }) => return Err(e),
                    Err(e) => {
                        self.stats.objects_failed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut l) = self.stats.last_error.lock() {
                            *l = Some(e.to_string());
                        }
                        attempt += 1;
                        if attempt >= ATTEMPTS_PER_PASS {
                            return Err(e);
                        }
                        let delay = backoff(attempt - 1, fastrand::f64());
                        if deadline.is_some_and(|d| Instant::now() + delay > d) {
                            return Err(ShipError::Shutdown);
                        }
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        let (spool, bundle) = (self.spool.clone(), b.clone());
        let removed = tokio::task::spawn_blocking(move || spool.remove(&bundle))
            .await
            .unwrap_or_else(|e| Err(crate::spool::SpoolError::Task(e.to_string())));
        if let Err(e) = removed {
            // Stored, but the local copy lingers: it will be uploaded again
            // under the same keys, which is harmless.
            tracing::error!(bundle = %b.id, error = %e, "shipped, but cannot remove the local copy");
        }
        self.stats.bundles_shipped.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.stats.last_shipped.lock() {
            l.push(b.key.clone());
            let excess = l.len().saturating_sub(20);
            l.drain(..excess);
        }
        tracing::info!(bundle = %b.id, key = %b.key, bytes = b.bytes, "capture shipped");
        Ok(())
    }

    /// One pass over the spool, newest first: the capture closest to the
    /// OOM matters most when the store is slow. Returns how many bundles
    /// shipped, or the last error when any failed.
    pub async fn drain(&self, deadline: Option<Instant>) -> Result<usize, ShipError> {
        let spool = self.spool.clone();
        let listed = tokio::task::spawn_blocking(move || spool.bundles())
            .await
            .unwrap_or_else(|e| Err(crate::spool::SpoolError::Task(e.to_string())));
        let bundles = match listed {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the spool");
                return Ok(0);
            }
        };
        let mut shipped = 0;
        let mut failed = None;
        for b in bundles.iter().rev() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ShipError::Shutdown);
            }
            match self.ship_bundle(b, deadline).await {
                Ok(()) => shipped += 1,
                Err(ShipError::Read { .. }) => {}
                Err(ShipError::Shutdown) => return Err(ShipError::Shutdown),
                Err(e) => {
                    tracing::warn!(
                        bundle = %b.id,
                        error = %e,
                        "upload failed; the capture stays in the spool and will be retried"
                    );
                    failed = Some(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(shipped),
        }
    }

    /// Ships until `stop` turns true; the caller then runs
    /// [`Shipper::finish`] with what is left of the shutdown grace.
    /// `report` hears the store's state after every pass: `Some(sentence)`
    /// while uploads fail, `None` once they work.
    pub async fn run(self, mut stop: watch::Receiver<bool>, report: impl Fn(Option<String>)) {
        if let Err(e) = self.probe().await {
            report(Some(format!(
                "the store {} does not answer: {e}; captures wait in the spool and are retried",
                self.store.url
            )));
        }
        let mut failures: u32 = 0;
        while !*stop.borrow() {
            let pass = tokio::select! {
                r = self.drain(None) => r,
                _ = stop.changed() => break,
            };
            let wait = match pass {
                Ok(_) => {
                    failures = 0;
                    if self.stats.store_answered.load(Ordering::Relaxed) {
                        report(None);
                    }
                    Duration::from_secs(5)
                }
                Err(e) => {
                    failures += 1;
                    report(Some(format!(
                        "uploads to {} fail: {e}; captures wait in the spool and are retried with backoff",
                        self.store.url
                    )));
                    backoff(failures, fastrand::f64())
                }
            };
            // A new capture wakes us at once; otherwise retry after `wait`.
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => break,
            }
        }
    }

    /// The shutdown pass: ship what fits in `grace`, leave the rest.
    pub async fn finish(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        match tokio::time::timeout(grace, self.drain(Some(deadline))).await {
            Ok(Ok(_)) => tracing::info!("shutdown: the spool is drained"),
            _ => tracing::warn!(
                "shutdown: captures not yet shipped stay in the spool for the next start"
            ),
        }
    }
}

/// Attempts per object in one pass before moving on to other bundles.
pub const ATTEMPTS_PER_PASS: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        assert!(backoff(0, 1.0) <= Duration::from_millis(250));
        assert_eq!(backoff(3, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(30, 1.0), BACKOFF_MAX);
        assert!(backoff(10, 0.0) >= Duration::from_millis(125));
        assert!(backoff(10, 0.5) < backoff(10, 1.0));
    }

    #[tokio::test]
    async fn ships_to_memory_and_removes_the_bundle() {
        let d = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(d.path(), 1 << 20).unwrap();
        let m = crate::spool::tests::manifest("id1");
        let w = spool.begin("id1", "ns/pod/app/id1", &m).unwrap();
        let mut f = w.create("heap.pb.gz").unwrap();
        f.write(b"\x1f\x8bxx").unwrap();
        f.commit().unwrap();
        w.finish(&m).unwrap();
        let store = Store::open("memory://").unwrap();
        let s = Shipper::new(store.clone(), spool.clone());
        assert_eq!(s.drain(None).await.unwrap(), 1);
        assert!(spool.bundles().unwrap().is_empty());
        let got = store
            .inner
            .get(&ObjectPath::from("ns/pod/app/id1/heap.pb.gz"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&got[..], b"\x1f\x8bxx");
        assert!(store
            .inner
            .head(&ObjectPath::from("ns/pod/app/id1/manifest.json"))
            .await
            .is_ok());
    }
}
