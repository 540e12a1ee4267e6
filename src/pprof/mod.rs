//! Go pprof profiles: decoded within a memory budget, summarised for the
//! capture manifest.
//!
//! This is the *summarise* stage (see "Summarise" in docs/how-it-works.md):
//! after a capture has spooled a profile, oomsnap reads it back, and what
//! it says ends up in `manifest.json` beside it, so a reader sees at a
//! glance *what grew* without running `go tool pprof`. The bytes come from
//! the app, so every layer is bounded and nothing panics on them.
//!
//! Layers, each feeding the next:
//!
//! - `wire`: `profile.proto` as `prost` messages ([`Profile`], [`Sample`],
//!   …), and an allocation-free walk that counts every `Vec` and string the
//!   decoder would fill, at every depth.
//! - `decode`: gzip or raw bytes (or a file) in, a [`Profile`] out, within a
//!   [`Budget`]: inflation is capped, the walk's counts are priced into an
//!   [`Estimate`], and a profile over budget is refused before anything is
//!   decoded ([`PprofError::OverBudget`]).
//! - `symbols`: a profile's samples as stacks of function names, with
//!   placeholders for references that point nowhere.
//! - `summary`: the heap summary, the goroutine summary, the diff against a
//!   baseline and the one-line verdict, as serde structs.
//! - [`memstats`]: Go's own memory numbers, from the `# runtime.MemStats`
//!   trailer of `heap?debug=1` text, read as a stream without holding it.

mod decode;
pub mod memstats;
mod summary;
mod symbols;
mod wire;

#[cfg(test)]
mod test_profiles;

pub use decode::{
    decode, decode_file, decode_with_budget, estimate, Budget, Estimate, PprofError,
    SIDECAR_DECODE_BUDGET, SIDECAR_RAW_BUDGET,
};
pub use summary::{
    goroutine_summary, heap_diff, heap_summary, human_bytes, human_bytes_signed, verdict,
    FunctionBytes, FunctionDelta, GoroutineStack, GoroutineSummary, HeapDiff, HeapSummary,
    MAX_STACK_FRAMES,
};
pub use wire::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};

pub(crate) use decode::decode_file_with_budget;
pub(crate) use summary::HeapTotals;
