//! oomsnap: capture Go pprof profiles before the kernel OOM-kills the app.
//!
//! The pipeline runs in one direction (see `docs/how-it-works.md`):
//!
//! - [`config`]   — environment → one validated `Config`, every error at once
//! - [`memory`]   — locate the app's cgroup, read samples, wake on kernel events
//! - [`trigger`]  — pure state machine: samples → capture decisions
//! - [`limit`]    — the capture quota (governor), counts what it drops
//! - [`profiles`] — the pprof kinds and their URLs
//! - [`capture`]  — streams profiles from the target into a spool bundle
//! - [`spool`]    — the durable local queue of bundles
//! - [`ship`]     — drains the spool into object storage, manifest last
//! - [`store`]    — opens the object store named by a URL
//! - [`keys`]     — object keys and sanitised path parts
//! - [`manifest`] — the `manifest.json` of a capture
//! - [`pprof`]    — decodes profile.proto within a memory budget; summaries
//! - [`summary`]  — puts those summaries into a capture's manifest
//! - [`admin`]    — /healthz, /readyz, /metrics, /status, POST /capture
//! - [`annotations`] — live pod annotations from the Downward API file
//! - [`inject`]   — the mutating admission webhook
//! - [`run`]      — wires the stages together for `oomsnap run`
//! - [`cli`]      — check, capture, ls, get and report for people

pub mod admin;
pub mod annotations;
pub mod breakdown;
pub mod capture;
pub mod cli;
pub mod config;
pub mod inject;
pub mod keys;
pub mod limit;
pub mod manifest;
pub mod memory;
pub mod metrics;
pub mod oneshot;
pub mod oom;
pub mod pprof;
pub mod problems;
pub mod profiles;
pub mod run;
pub mod scheduler;
pub mod ship;
pub mod speculative;
pub mod spool;
pub mod state;
pub mod store;
pub mod summary;
pub mod trigger;

/// The version written into every manifest.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
