//! Fetches the configured profiles from the target into a spool bundle.
//!
//! - [`cost`]  — pure: what each profile costs the app, and whether it can
//!   afford it now
//! - [`index`] — pure: the counts on the pprof index page
//!
//! A permitted decision enters [`Capturer::fetch_all`]; profile files in the
//! spool bundle and their records in the [`Manifest`] leave. Heap is fetched
//! at once; meanwhile the index page gives the counts (goroutines, heap
//! records), and every other profile is fetched concurrently only if its
//! estimated cost to the app fits in the headroom the newest sample leaves
//! — otherwise it is skipped, and its record says why. Each body is streamed chunk by chunk
//! into its spool file — never held whole — under a per-profile timeout and
//! size cap, and binary profiles are checked as they stream: the gzip magic
//! on the first bytes and the gzip trailer at the end, so an HTML error page
//! or a truncated body is recorded as a failed profile while the rest of the
//! capture still ships.
//!
//! The HTTP client keeps connections to the target alive and is warmed
//! ahead of need ([`Capturer::warm`]), so the first request of a capture
//! does not pay for a TCP handshake. It follows no redirect: the target is
//! the app's own port, and a `302` to another host must not become a
//! request there. For an `http://` target it loads no CA bundle at all, so a
//! machine without one (a `scratch` image without certificates) still
//! captures.

pub mod cost;
pub mod index;

use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use crate::manifest::{ms, timestamp, Manifest, ProfileRecord};
use crate::memory::Sample;
use crate::profiles::ProfileKind;
use crate::spool::{BundleWriter, SpoolError, SpoolFile};

/// What to fetch and how.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureSettings {
    /// The pprof base URL, without a trailing slash.
    pub target: String,
    pub profiles: Vec<ProfileKind>,
    pub cpu_duration: Duration,
    pub fetch_timeout: Duration,
    pub max_bytes: u64,
}

impl CaptureSettings {
    pub fn from_config(c: &crate::config::Config) -> CaptureSettings {
        CaptureSettings {
            target: c.target.clone(),
            profiles: c.profiles.clone(),
            cpu_duration: c.cpu_profile_duration,
            fetch_timeout: c.fetch_timeout,
            max_bytes: c.max_profile_bytes,
        }
    }

    pub fn url(&self, kind: ProfileKind) -> String {
        format!("{}{}", self.target, kind.url_suffix(self.cpu_duration))
    }
}

/// A capture that could not even start.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("the task writing the manifest failed: {0}")]
    Task(String),
}

/// The HTTP side of captures.
#[derive(Clone)]
pub struct Capturer {
    client: reqwest::Client,
}

/// The longest wait for the runtime's numbers after the profiles.
pub const MEMSTATS_TIMEOUT: Duration = Duration::from_secs(2);

/// How many bytes of a bad body are quoted in the manifest.
const QUOTE: usize = 48;

impl Capturer {
    /// A client for `target`. For `http://` it needs no CA bundle. For
    /// `https://`, a machine without one gets a client that fails each
    /// request with a clear error instead of no client at all; the second
    /// value then says why, for the caller to report.
    pub fn new(target: &str) -> (Capturer, Option<String>) {
        let https = target.starts_with("https://");
        match Self::builder(https).build() {
            Ok(client) => (Capturer { client }, None),
            Err(e) => {
                let why = format!(
                    "cannot load the system CA certificates for the https target {target}: {}; https requests to it will fail",
                    error_chain(&e)
                );
                let client = Self::builder(false)
                    .build()
                    .expect("a client with no TLS roots always builds");
                (Capturer { client }, Some(why))
            }
        }
    }

    fn builder(system_roots: bool) -> reqwest::ClientBuilder {
        let b = reqwest::Client::builder()
            .pool_idle_timeout(None)
            .pool_max_idle_per_host(8)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            // A 302 to another host must not become a request there.
            .redirect(reqwest::redirect::Policy::none())
            // The target is on loopback; a proxy from the environment would
            // only add a hop (or leak the request).
            .no_proxy()
            .user_agent(concat!("oomsnap/", env!("CARGO_PKG_VERSION")));
        if system_roots {
            b
        } else {
            b.tls_certs_only(Vec::new())
        }
    }

    /// Opens `n` keep-alive connections to the target with a tiny request,
    /// so a capture starts on a warm connection. Failures are ignored: the
    /// target may not be up yet.
    pub async fn warm(&self, settings: &CaptureSettings, n: usize) {
        let url = format!("{}/cmdline", settings.target);
        let reqs = (0..n).map(|_| {
            let c = self.client.clone();
            let url = url.clone();
            async move {
                if let Ok(r) = c.get(&url).timeout(Duration::from_secs(2)).send().await {
                    let _ = r.bytes().await;
                }
            }
        });
        futures_util::future::join_all(reqs).await;
    }

    /// The counts of the pprof index page, or `None` when the target does
    /// not serve one (a custom mux) or answers badly.
    pub async fn index(&self, settings: &CaptureSettings) -> Option<cost::Counts> {
        let url = format!("{}/", settings.target);
        let fetch = async {
            let mut resp = self.client.get(&url).send().await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            let mut body = Vec::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                let take = chunk.len().min(index::MAX_INDEX_BYTES - body.len());
                body.extend_from_slice(&chunk[..take]);
                if body.len() >= index::MAX_INDEX_BYTES {
                    break;
                }
            }
            Some(index::parse(&body))
        };
        tokio::time::timeout(settings.fetch_timeout.min(Duration::from_secs(2)), fetch)
            .await
            .ok()
            .flatten()
            .filter(|c| !c.is_empty())
    }

    /// Fetches the configured profiles into `writer` and records each in
    /// `draft`: heap at once; the others concurrently once the index page
    /// says what they cost, each only if the app can afford it given
    /// `latest()` (the newest memory sample). `t0` is the moment of the
    /// deciding sample. The bundle is finished by the caller, after it has
    /// summarised the profiles.
    pub async fn fetch_all(
        &self,
        settings: &CaptureSettings,
        writer: &BundleWriter,
        draft: &mut Manifest,
        t0: Instant,
        latest: &(dyn Fn() -> Option<Sample> + Sync),
    ) {
        let mut kinds = settings.profiles.clone();
        kinds.sort_by_key(|k| k.priority());
        let heap = kinds.contains(&ProfileKind::Heap);
        let rest: Vec<ProfileKind> = kinds
            .into_iter()
            .filter(|k| *k != ProfileKind::Heap)
            .collect();
        let slope = draft.trigger.slope_bytes_per_second;
        let heap_fetch = async {
            match heap {
                true => Some(self.fetch(settings, ProfileKind::Heap, writer, t0).await),
                false => None,
            }
        };
        let rest_fetch = async {
            if rest.is_empty() {
                return (None, Vec::new());
            }
            let counts = self.index(settings).await;
            let (working_set, limit) = latest()
                .map(|s| (s.working_set, s.limit))
                .unwrap_or((0, None));
            let reserved = match (heap, &counts) {
                (true, Some(c)) => cost::estimate(ProfileKind::Heap, c).unwrap_or(0),
                _ => 0,
            };
            let growth = cost::Growth::at(slope, cost::serve_seconds(counts.as_ref()));
            let plan = cost::plan(&rest, counts.as_ref(), working_set, limit, reserved, growth);
            let fetches = plan.into_iter().map(|(kind, est, verdict)| async move {
                let mut rec = match verdict {
                    cost::Verdict::Take => self.fetch(settings, kind, writer, t0).await,
                    cost::Verdict::Skip(why) => ProfileRecord {
                        name: kind.name().to_string(),
                        url: settings.url(kind),
                        requested_after_decision_ms: ms(t0.elapsed()),
                        skipped: Some(why),
                        ..Default::default()
                    },
                };
                rec.estimated_app_cost_bytes = est;
                rec
            });
            (counts, futures_util::future::join_all(fetches).await)
        };
        let (heap_rec, (counts, rest_recs)) = futures_util::join!(heap_fetch, rest_fetch);
        let mut records: Vec<ProfileRecord> = heap_rec.into_iter().collect();
        if let (Some(h), Some(c)) = (records.first_mut(), &counts) {
            h.estimated_app_cost_bytes = cost::estimate(ProfileKind::Heap, c);
        }
        records.extend(rest_recs);
        draft.first_request_after_decision_ms = records
            .iter()
            .filter(|r| r.skipped.is_none())
            .map(|r| r.requested_after_decision_ms)
            .reduce(f64::min);
        // The runtime's numbers last: the profiles' race is not slowed, and
        // they are then as close as they can be to the cgroup reading that
        // follows. They are the trailer of `heap?debug=1`, read as it
        // streams past; serving that text heap profile costs the app what a
        // heap profile does, so the same headroom gate applies: never the
        // profile that kills it.
        let (working_set, limit) = latest()
            .map(|s| (s.working_set, s.limit))
            .unwrap_or((0, None));
        let growth = cost::Growth::at(slope, cost::SERVE_SECONDS_MIN);
        let gate = cost::plan(
            &[ProfileKind::Heap],
            counts.as_ref(),
            working_set,
            limit,
            0,
            growth,
        );
        match gate.into_iter().next().map(|(_, _, v)| v) {
            Some(cost::Verdict::Skip(why)) => {
                draft.go_memstats_error = Some(format!(
                    "not read ({}/heap?debug=1): {why}",
                    settings.target
                ));
            }
            _ => match self.memstats(settings).await {
                Ok(m) => draft.go_memstats = Some(m),
                Err(e) => draft.go_memstats_error = Some(e),
            },
        }
        draft.target_counts = counts;
        draft.profiles = records;
        draft.spooled_at = timestamp(SystemTime::now());
    }

    /// The Go runtime's `MemStats`, read from the trailer of
    /// `heap?debug=1` as the body streams past (never held), within
    /// [`MEMSTATS_TIMEOUT`] (or the fetch timeout, if shorter) and the
    /// profile size cap. They are context for the breakdown, not evidence,
    /// so a slow target does not hold the capture back for long.
    pub async fn memstats(
        &self,
        settings: &CaptureSettings,
    ) -> Result<crate::pprof::memstats::MemStats, String> {
        let url = format!("{}/heap?debug=1", settings.target);
        let read = async {
            let mut resp = self
                .client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("the request failed: {}", error_chain(&e)))?;
            if !resp.status().is_success() {
                return Err(format!("the target answered HTTP {}", resp.status()));
            }
            let mut parser = crate::pprof::memstats::MemStatsParser::new();
            let mut total = 0u64;
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| format!("the body broke off: {}", error_chain(&e)))?
            {
                total += chunk.len() as u64;
                if total > settings.max_bytes {
                    return Err("the body is larger than OOMSNAP_MAX_PROFILE_BYTES".into());
                }
                parser.feed(&chunk);
            }
            parser.finish().map_err(|e| e.to_string())
        };
        let timeout = settings.fetch_timeout.min(MEMSTATS_TIMEOUT);
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| {
                format!(
                    "{url}: the target did not answer within {} (the shorter of OOMSNAP_FETCH_TIMEOUT and the runtime numbers' own bound)",
                    humantime::format_duration(timeout)
                )
            })?
            .map_err(|e| format!("{url}: {e}"))
    }

    /// The whole capture after its bundle is begun: fetch every profile,
    /// read the cgroup and summarise off the runtime, then write the
    /// manifest and complete the bundle. `run` and `oomsnap capture` both
    /// take this path, so a capture means the same thing in both. The
    /// manifest comes back even when finishing failed, for the caller to
    /// report; a manifest whose profiles all failed is still shipped, as
    /// evidence that the target could not answer while memory was high.
    #[allow(clippy::too_many_arguments)]
    pub async fn complete(
        &self,
        settings: &CaptureSettings,
        writer: BundleWriter,
        mut draft: Manifest,
        t0: Instant,
        latest: &(dyn Fn() -> Option<Sample> + Sync),
        source: Option<crate::memory::MemorySource>,
        spool_dir: std::path::PathBuf,
        is_baseline: bool,
    ) -> (Manifest, Result<(), CaptureError>) {
        self.fetch_all(settings, &writer, &mut draft, t0, latest)
            .await;
        let dir = writer.dir().to_path_buf();
        let plain = draft.clone();
        // A summary is a convenience: if it fails, the profiles ship
        // without one.
        let manifest = tokio::task::spawn_blocking(move || {
            // Read right after the runtime's numbers, so the two sides of
            // the breakdown are a few milliseconds apart at most.
            let cgroup = source.as_ref().and_then(|s| cgroup_now(s, &mut draft));
            crate::summary::summarise(&dir, &spool_dir, &mut draft, is_baseline, cgroup);
            draft
        })
        .await
        .unwrap_or(plain);
        let m = manifest.clone();
        let result = match tokio::task::spawn_blocking(move || writer.finish(&m)).await {
            Ok(r) => r.map(|_| ()).map_err(CaptureError::from),
            Err(e) => Err(CaptureError::Task(e.to_string())),
        };
        (manifest, result)
    }

    async fn fetch(
        &self,
        settings: &CaptureSettings,
        kind: ProfileKind,
        writer: &BundleWriter,
        t0: Instant,
    ) -> ProfileRecord {
        let url = settings.url(kind);
        let mut rec = ProfileRecord {
            name: kind.name().to_string(),
            url: url.clone(),
            requested_after_decision_ms: ms(t0.elapsed()),
            ..Default::default()
        };
        let started = Instant::now();
        // A cpu profile takes its duration by design; the timeout is on top.
        let timeout = if kind == ProfileKind::Cpu {
            settings.fetch_timeout + settings.cpu_duration
        } else {
            settings.fetch_timeout
        };
        let mut file: Option<SpoolFile> = None;
        let result = tokio::time::timeout(
            timeout,
            self.stream(settings, kind, &url, writer, t0, &mut rec, &mut file),
        )
        .await;
        rec.fetch_ms = ms(started.elapsed());
        let err = match result {
            Err(_) => Some(format!(
                "the target did not finish sending within {} (OOMSNAP_FETCH_TIMEOUT)",
                humantime::format_duration(timeout)
            )),
            Ok(Err(e)) => Some(e),
            Ok(Ok(())) => None,
        };
        match (err, file) {
            (Some(e), f) => {
                if let Some(f) = f {
                    rec.bytes = f.bytes;
                    f.discard();
                }
                rec.error = Some(e);
            }
            (None, Some(f)) => {
                rec.bytes = f.bytes;
                match tokio::task::spawn_blocking(move || f.commit()).await {
                    Ok(Ok(sha)) => {
                        rec.sha256 = Some(sha);
                        rec.file = Some(kind.file_name());
                        rec.durable_after_decision_ms = Some(ms(t0.elapsed()));
                        rec.durable_at = Some(timestamp(SystemTime::now()));
                    }
                    Ok(Err(e)) => rec.error = Some(e.to_string()),
                    Err(e) => rec.error = Some(e.to_string()),
                }
            }
            (None, None) => rec.error = Some("no body was received".into()),
        }
        rec
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream(
        &self,
        settings: &CaptureSettings,
        kind: ProfileKind,
        url: &str,
        writer: &BundleWriter,
        t0: Instant,
        rec: &mut ProfileRecord,
        out: &mut Option<SpoolFile>,
    ) -> Result<(), String> {
        let mut resp = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("the request failed: {}", error_chain(&e)))?;
        rec.http_status = Some(resp.status().as_u16());
        rec.content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(len) = resp.content_length() {
            if len > settings.max_bytes {
                return Err(format!(
                    "the target announced {len} bytes, more than the cap of {} (OOMSNAP_MAX_PROFILE_BYTES)",
                    settings.max_bytes
                ));
            }
        }
        if resp.status().is_redirection() {
            let to = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|l| quote(l.as_bytes()))
                .unwrap_or_default();
            return Err(format!(
                "the target answered HTTP {} to {to}; redirects are not followed (point OOMSNAP_TARGET at the pprof index itself)",
                resp.status()
            ));
        }
        if !resp.status().is_success() {
            let status = resp.status();
            let head = resp
                .chunk()
                .await
                .ok()
                .flatten()
                .map(|b| quote(&b))
                .unwrap_or_default();
            return Err(format!("the target answered HTTP {status}: {head}"));
        }
        let file = out.insert(
            writer
                .create(&kind.file_name())
                .map_err(|e| e.to_string())?,
        );
        let mut gz = kind
            .is_binary()
            .then(|| flate2::write::GzDecoder::new(std::io::sink()));
        let mut head = [0u8; 2];
        let mut head_len = 0;
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    return Err(format!(
                        "the body broke off after {} bytes: {}",
                        file.bytes,
                        error_chain(&e)
                    ))
                }
            };
            if rec.first_byte_after_decision_ms.is_none() {
                rec.first_byte_after_decision_ms = Some(ms(t0.elapsed()));
            }
            if file.bytes + chunk.len() as u64 > settings.max_bytes {
                return Err(format!(
                    "the body is larger than the cap of {} bytes (OOMSNAP_MAX_PROFILE_BYTES)",
                    settings.max_bytes
                ));
            }
            if let Some(gz) = gz.as_mut() {
                if head_len < 2 {
                    let take = (2 - head_len).min(chunk.len());
                    head[head_len..head_len + take].copy_from_slice(&chunk[..take]);
                    head_len += take;
                    if head_len == 2 && head != [0x1f, 0x8b] {
                        return Err(format!(
                            "the body is not a gzip'd pprof profile (it starts with {}; content-type {})",
                            quote(&chunk),
                            rec.content_type.as_deref().unwrap_or("none")
                        ));
                    }
                }
                gz.write_all(&chunk)
                    .map_err(|e| format!("the body is not valid gzip: {e}"))?;
            }
            file.write(&chunk).map_err(|e| e.to_string())?;
        }
        if let Some(gz) = gz {
            if head_len < 2 {
                return Err(format!(
                    "the body is too short to be a profile ({} bytes)",
                    file.bytes
                ));
            }
            gz.finish()
                .map_err(|e| format!("the gzip stream is truncated or corrupt: {e}"))?;
        }
        Ok(())
    }
}

/// A capture's manifest before its profiles: who, why, and the sample.
pub fn draft(
    c: &crate::config::Config,
    target: String,
    source: Option<&crate::memory::MemorySource>,
    restarts: u32,
    id: &str,
    d: &crate::trigger::Decision,
    wake: Option<crate::watch::Wake>,
) -> Manifest {
    use crate::manifest::{SourceInfo, TriggerSample, SCHEMA};
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
        trigger: TriggerSample::from_decision(d, wake.map(|w| w.name())),
        decided_at: timestamp(d.sample.wall),
        ..Default::default()
    }
}

/// The cgroup's memory now, for the capture's breakdown; its `memory.stat`
/// in detail goes into the manifest. Blocking (a few file reads).
pub fn cgroup_now(
    source: &crate::memory::MemorySource,
    m: &mut Manifest,
) -> Option<crate::breakdown::CgroupMemory> {
    let stat = match source.stat_breakdown()? {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read memory.stat for the breakdown");
            return None;
        }
    };
    let now = source.open().ok()?.read().ok()?;
    m.cgroup_memory = serde_json::to_value(&stat).ok();
    let parts = [
        stat.kernel_stack,
        stat.pagetables,
        stat.percpu,
        stat.slab(),
        stat.vmalloc,
    ];
    Some(crate::breakdown::CgroupMemory {
        usage: now.usage,
        working_set: now.working_set,
        anon: stat.anon,
        active_file: stat.active_file,
        kernel: stat.kernel,
        kernel_parts: parts.iter().flatten().copied().reduce(u64::saturating_add),
        sock: stat.sock,
    })
}

/// The first bytes of a body, printable.
fn quote(b: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(&b[..b.len().min(QUOTE)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("{:?}", s.trim())
}

/// reqwest errors hide the useful part in their sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_printable() {
        assert_eq!(quote(b"<html>\n<body>404"), "\"<html> <body>404\"");
    }
}
