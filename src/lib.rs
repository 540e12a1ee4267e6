//! oomsnap: capture Go pprof profiles before the kernel OOM-kills the app.
//!
//! The pipeline runs in one direction (see `docs/how-it-works.md`):
//!
//! - [`vars`]     — where settings come from: the environment, or a map
//! - [`config`]   — environment → one `Config`; bad values fall back and are
//!   reported, every one at once
//! - [`memory`]   — locate the app's cgroup, read samples
//! - [`trigger`]  — pure state machine: samples → capture decisions
//! - [`watch`]    — the watcher thread: wakes on the kernel's events and
//!   its own timer, reads samples, feeds the trigger
//! - `scheduler`  — pure: one capture at a time, the one nearest the OOM next
//! - [`limit`]    — the capture quotas (governor), count what they drop
//! - [`profiles`] — the pprof kinds and their URLs
//! - [`capture`]  — streams profiles into a spool bundle, skipping any the
//!   app cannot afford
//! - `speculative` — pure: provisional captures, shipped once confirmed
//! - [`spool`]    — the durable local queue of bundles
//! - [`ship`]     — drains the spool into object storage, manifest last
//! - [`store`]    — opens the object store named by a URL
//! - [`keys`]     — object keys and sanitised path parts
//! - [`manifest`] — the `manifest.json` of a capture, and `oom.json`
//! - [`pprof`]    — decodes profile.proto within a memory budget; summaries
//! - [`breakdown`] — pure: where the working set went, and what grew
//! - [`summary`]  — puts the summaries and the breakdown into a manifest
//! - [`oom`]      — pure: which capture a kill belongs to
//! - [`problems`] — what is wrong right now, said loudly and kept short
//! - [`annotations`] — pod annotations: their rules, and reading the
//!   Downward API file
//! - [`state`]    — what the running sidecar knows, shared by `admin` and
//!   `run`
//! - [`metrics`]  — the metrics observed as events happen
//! - [`admin`]    — /healthz, /readyz, /metrics, /status, POST /capture
//! - [`run`]      — wires the stages together for `oomsnap run` and follows
//!   the annotations file; nothing depends on it
//! - `oneshot`    — `oomsnap capture`: one capture, shipped at once
//! - [`cli`]      — check, capture, ls, get, report and help for people
//! - [`inject`]   — the mutating admission webhook (depends on config,
//!   never the reverse)
//!
//! No two modules depend on each other, directly or around a loop;
//! `tests/layering.rs` keeps it so.

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
pub(crate) mod oneshot;
pub mod oom;
pub mod pprof;
pub mod problems;
pub mod profiles;
pub mod run;
pub(crate) mod scheduler;
pub mod ship;
pub(crate) mod speculative;
pub mod spool;
pub mod state;
pub mod store;
pub mod summary;
pub mod trigger;
pub mod vars;
pub mod watch;

/// The version written into every manifest.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
