//! Shared harness for the integration tests and benches: the Go `leaky`
//! target, memory cgroups, SeaweedFS (S3) and Azurite (Azure Blob) on
//! loopback, and the oomsnap binary itself.
//!
//! Every guard cleans up in `Drop`, so a panicking test leaves no process,
//! cgroup or server behind. Every server binds 127.0.0.1 and is stopped by
//! its PID (or its own process group).
//!
//! A missing component (no `go`, no writable v1 memory controller, no
//! `weed`, no Azurite) is reported with [`require_live`]: the test fails,
//! naming it, unless `OOMSNAP_ALLOW_SKIPS=1`; then the skip is printed and
//! noted for `scripts/test.sh`'s summary, so nothing passes silently.
//!
//! Modules, one concern each (everything public is re-exported here, so
//! tests write `common::Leaker`, `common::SeaweedFs`, …):
//!
//! - `skip`: [`require_live`], failing or (when allowed) skipping;
//! - `report`: notes for `scripts/test.sh` (skips, lost races);
//! - `timing`: [`wait_until`], [`retry_race`], [`block_on_thread`];
//! - `files`: crate/target paths, temp dirs, file walks, [`FileLock`];
//! - `tools`: [`which`], `kubernetes-validate`'s newest version;
//! - `process`: signals and bounded waits on our own children;
//! - `http`: free ports, a tiny HTTP/1.0 client, Prometheus values;
//! - `leaky`: the Go target, built once, and [`Leaker`];
//! - `cgroup`: [`MemCgroup`] (real v1) and [`FakeCgroup`] (v2 files);
//! - `objects`: the harness's own object-store calls;
//! - `seaweed`: [`SeaweedFs`]; `azurite`: [`Azurite`];
//! - `proxy`: [`StoreProxy`], a store that misbehaves on demand;
//! - `oomsnap`: [`OomsnapEnv`] and the running binary, [`Oomsnap`].
// Each test binary uses a part of the harness: the rest is dead code there,
// and a re-export it never names is an unused import.
#![allow(dead_code, unused_imports)]

mod azurite;
mod cgroup;
mod files;
mod http;
mod leaky;
mod objects;
mod oomsnap;
mod process;
mod proxy;
mod report;
mod seaweed;
mod skip;
mod timing;
mod tools;

pub use azurite::*;
pub use cgroup::*;
pub use files::*;
pub use http::*;
pub use leaky::*;
pub use oomsnap::*;
pub use proxy::*;
pub use report::*;
pub use seaweed::*;
pub use skip::*;
pub use timing::*;
pub use tools::*;
