//! Summaries: a decoded profile in, small serde structs for the manifest
//! out.
//!
//! - [`HeapTotals::of`] reduces a heap profile to per-function flat and
//!   cumulative bytes by name: all a summary and a diff need, small enough
//!   to keep while the next profile is decoded (the profile itself is
//!   dropped). [`heap_summary`] → [`HeapSummary`]: the total and the top
//!   functions by flat and by cumulative `inuse_space`.
//! - [`heap_diff`] → [`HeapDiff`]: per-function growth of flat
//!   `inuse_space` against a baseline, like `go tool pprof -base`.
//! - [`goroutine_summary`] → [`GoroutineSummary`]: the goroutine count and
//!   the most common stacks.
//! - [`verdict`]: one line for the logs, e.g.
//!   `heap +182MiB since baseline, 71% in main.(*cache).put (230MiB in use)`;
//!   [`human_bytes`] formats sizes for it and for the CLI.
//!
//! Sums saturate instead of overflowing. [`working_set`] prices what these
//! functions allocate, so `decode.rs` can refuse a profile before decoding
//! it (see "Summarise" in docs/how-it-works.md).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::mem::size_of;

use serde::{Deserialize, Serialize};

use super::decode::{grown_vec, heap_block, Estimate, PprofError};
use super::symbols::{
    self, for_people, str_at, value_type_name, Symbols, MAX_NAME_BYTES, MAX_SAMPLE_FRAMES,
};
use super::wire::Repeated;
use super::{Profile, Sample, ValueType};

/// Stacks in a [`GoroutineSummary`] keep at most this many frames (leaf
/// first); the rest are counted in [`GoroutineStack::omitted_frames`].
pub const MAX_STACK_FRAMES: usize = 64;

/// Name given to samples that have no locations at all.
const NO_STACK: &str = "<no stack>";

/// The value at `index` of a sample as bytes or a count: 0 when the sample
/// is short or the value negative (Go never writes one).
fn value_at(s: &Sample, index: usize) -> u64 {
    u64::try_from(s.value.get(index).copied().unwrap_or(0)).unwrap_or(0)
}

/// `part` as a percentage of `whole`, rounded to 0.01; 0 when `whole` is 0.
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    (part as f64 * 100.0 / whole as f64 * 100.0).round() / 100.0
}

// ---------------------------------------------------------------------------
// Heap
// ---------------------------------------------------------------------------

/// Which sample type a heap summary reads, and whether it is the preferred
/// `inuse_space` or a fallback.
struct Choice {
    index: usize,
    name: String,
    fallback: bool,
}

/// Picks `inuse_space`; else the default sample type if it is in bytes; else
/// the last sample type in bytes (legacy heap profiles call it `space`).
fn choose_heap_sample_type(p: &Profile) -> Result<Choice, PprofError> {
    let named = |vt: &ValueType| str_at(p, vt.r#type);
    let in_bytes = |vt: &ValueType| str_at(p, vt.unit) == Some("bytes");
    let pick = |index: usize, fallback: bool| Choice {
        index,
        name: value_type_name(p, &p.sample_type[index]),
        fallback,
    };
    if let Some(i) = p
        .sample_type
        .iter()
        .position(|vt| named(vt) == Some("inuse_space"))
    {
        return Ok(pick(i, false));
    }
    if p.default_sample_type != 0 {
        let default = str_at(p, p.default_sample_type);
        if let Some(i) = p
            .sample_type
            .iter()
            .position(|vt| default.is_some() && named(vt) == default && in_bytes(vt))
        {
            return Ok(pick(i, true));
        }
    }
    if let Some(i) = p.sample_type.iter().rposition(in_bytes) {
        return Ok(pick(i, true));
    }
    const LISTED: usize = 8;
    let found = if p.sample_type.is_empty() {
        "no sample types at all".to_string()
    } else {
        let mut names: Vec<String> = p
            .sample_type
            .iter()
            .take(LISTED)
            .map(|vt| value_type_name(p, vt))
            .collect();
        if p.sample_type.len() > LISTED {
            names.push(format!("and {} more", p.sample_type.len() - LISTED));
        }
        names.join(", ")
    };
    Err(PprofError::NoBytesSampleType { found })
}

/// One function's bytes in a heap profile.
#[derive(Debug)]
struct Row {
    name: String,
    flat: u64,
    cum: u64,
}

/// A heap profile reduced to what its summary and a diff need.
#[derive(Debug)]
pub(crate) struct HeapTotals {
    sample_type: String,
    fallback: bool,
    total: u64,
    samples: usize,
    function_count: usize,
    /// Every function with bytes, sorted by name, names unique.
    rows: Vec<Row>,
}

impl HeapTotals {
    /// Sums the heap sample type (see [`HeapSummary::sample_type_fallback`])
    /// per function: flat bytes go to the leaf frame (for inlined code, the
    /// first line of the leaf location), cumulative bytes to every distinct
    /// function on the stack, once per sample.
    pub(crate) fn of(p: &Profile) -> Result<HeapTotals, PprofError> {
        let choice = choose_heap_sample_type(p)?;
        let sym = Symbols::new(p);
        let n = sym.name_count();
        let (mut flat, mut cum) = (vec![0u64; n], vec![0u64; n]);
        // seen[f] == sample number + 1 once f is counted in that sample.
        let mut seen = vec![0usize; n];
        let (mut total, mut no_stack) = (0u64, 0u64);
        for (i, s) in p.sample.iter().enumerate() {
            let v = value_at(s, choice.index);
            total = total.saturating_add(v);
            let mut frames = sym.frames(s).map(|f| f as usize);
            let Some(leaf) = frames.next() else {
                no_stack = no_stack.saturating_add(v);
                continue;
            };
            flat[leaf] = flat[leaf].saturating_add(v);
            for f in std::iter::once(leaf).chain(frames) {
                if seen[f] != i + 1 {
                    seen[f] = i + 1;
                    cum[f] = cum[f].saturating_add(v);
                }
            }
        }
        let function_count = seen.iter().filter(|&&s| s != 0).count();
        let kept = cum.iter().filter(|&&c| c > 0).count() + usize::from(no_stack > 0);
        let mut rows = Vec::with_capacity(kept);
        for f in (0..n).filter(|&f| cum[f] > 0) {
            let name = sym.name(f as u32).text().into_owned();
            rows.push(Row {
                name,
                flat: flat[f],
                cum: cum[f],
            });
        }
        drop((flat, cum, seen, sym));
        if no_stack > 0 {
            match rows.iter_mut().find(|r| r.name == NO_STACK) {
                Some(r) => {
                    r.flat = r.flat.saturating_add(no_stack);
                    r.cum = r.cum.saturating_add(no_stack);
                }
                None => rows.push(Row {
                    name: NO_STACK.to_string(),
                    flat: no_stack,
                    cum: no_stack,
                }),
            }
        }
        rows.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(HeapTotals {
            sample_type: choice.name,
            fallback: choice.fallback,
            total,
            samples: p.sample.len(),
            function_count,
            rows,
        })
    }

    /// What these totals hold on the heap.
    pub(crate) fn heap_bytes(&self) -> u64 {
        let names = self.rows.iter().fold(0u64, |n, r| {
            n.saturating_add(heap_block(r.name.capacity() as u64))
        });
        heap_block((self.rows.capacity() * size_of::<Row>()) as u64)
            .saturating_add(names)
            .saturating_add(heap_block(self.sample_type.capacity() as u64))
    }

    fn find(&self, name: &str) -> Option<&Row> {
        self.rows
            .binary_search_by(|r| r.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.rows[i])
    }

    /// Up to `top_n` rows with a positive `key`, largest first, then by name.
    fn top(&self, top_n: usize, key: impl Fn(&Row) -> (u64, u64)) -> Vec<FunctionBytes> {
        let mut order: Vec<&Row> = self.rows.iter().filter(|r| key(r).0 > 0).collect();
        order.sort_unstable_by(|a, b| key(b).cmp(&key(a)).then_with(|| a.name.cmp(&b.name)));
        order
            .into_iter()
            .take(top_n)
            .map(|r| FunctionBytes {
                function: for_people(&r.name),
                flat_bytes: r.flat,
                flat_percent: percent(r.flat, self.total),
                cum_bytes: r.cum,
                cum_percent: percent(r.cum, self.total),
            })
            .collect()
    }

    pub(crate) fn summary(&self, top_n: usize) -> HeapSummary {
        HeapSummary {
            sample_type: self.sample_type.clone(),
            sample_type_fallback: self.fallback,
            total_bytes: self.total,
            sample_count: self.samples,
            function_count: self.function_count,
            top_flat: self.top(top_n, |r| (r.flat, r.cum)),
            top_cum: self.top(top_n, |r| (r.cum, r.flat)),
        }
    }

    /// Per function (matched by name), flat bytes now minus in `base`.
    pub(crate) fn diff(
        base: &HeapTotals,
        current: &HeapTotals,
        top_n: usize,
    ) -> Result<HeapDiff, PprofError> {
        if base.sample_type != current.sample_type {
            return Err(PprofError::SampleTypeMismatch {
                base: base.sample_type.clone(),
                current: current.sample_type.clone(),
            });
        }
        let mut growth_bytes = 0u64;
        // (row of current, flat bytes in the baseline)
        let mut grew: Vec<(&Row, u64)> = Vec::new();
        for r in &current.rows {
            let was = base.find(&r.name).map_or(0, |b| b.flat);
            if r.flat > was {
                growth_bytes = growth_bytes.saturating_add(r.flat - was);
                grew.push((r, was));
            }
        }
        grew.sort_unstable_by(|(a, wa), (b, wb)| {
            (b.flat - wb)
                .cmp(&(a.flat - wa))
                .then_with(|| a.name.cmp(&b.name))
        });
        let top_growth = grew
            .into_iter()
            .take(top_n)
            .map(|(r, was)| {
                let delta = signed_delta(r.flat, was);
                FunctionDelta {
                    function: for_people(&r.name),
                    base_bytes: was,
                    current_bytes: r.flat,
                    delta_bytes: delta,
                    growth_percent: percent(delta.unsigned_abs(), growth_bytes),
                }
            })
            .collect();
        Ok(HeapDiff {
            sample_type: current.sample_type.clone(),
            base_total_bytes: base.total,
            current_total_bytes: current.total,
            total_delta_bytes: signed_delta(current.total, base.total),
            growth_bytes,
            top_growth,
        })
    }
}

/// The top of a heap profile, for the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeapSummary {
    /// The sample type summarised, `type/unit`: normally `inuse_space/bytes`.
    pub sample_type: String,
    /// True when the profile had no `inuse_space` and another sample type
    /// in bytes was used instead (see `sample_type`).
    pub sample_type_fallback: bool,
    /// Sum of the sample type over all samples: the bytes in use at the last
    /// GC (Go heap profiles are as of the most recent garbage collection).
    pub total_bytes: u64,
    /// Samples in the profile.
    pub sample_count: usize,
    /// Distinct functions (by name) seen on any stack.
    pub function_count: usize,
    /// Up to N functions with the most flat bytes, largest first.
    pub top_flat: Vec<FunctionBytes>,
    /// Up to N functions with the most cumulative bytes, largest first.
    pub top_cum: Vec<FunctionBytes>,
}

/// One function's share of a heap profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionBytes {
    /// Function name, e.g. `main.(*cache).put`.
    pub function: String,
    /// Bytes allocated by this function itself (it is the leaf frame).
    pub flat_bytes: u64,
    /// `flat_bytes` as a percentage of the total, rounded to 0.01.
    pub flat_percent: f64,
    /// Bytes allocated by this function or anything it called.
    pub cum_bytes: u64,
    /// `cum_bytes` as a percentage of the total, rounded to 0.01.
    pub cum_percent: f64,
}

/// Summarises a heap profile by `inuse_space` (or a fallback in bytes, see
/// [`HeapSummary::sample_type_fallback`]): flat bytes go to the leaf frame
/// (for inlined code, the first line of the leaf location), cumulative
/// bytes to every distinct function on the stack, once per sample.
pub fn heap_summary(p: &Profile, top_n: usize) -> Result<HeapSummary, PprofError> {
    Ok(HeapTotals::of(p)?.summary(top_n))
}

/// What grew between a baseline heap profile and the current one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeapDiff {
    /// The sample type compared, `type/unit`: normally `inuse_space/bytes`.
    pub sample_type: String,
    /// Total bytes in the baseline.
    pub base_total_bytes: u64,
    /// Total bytes now.
    pub current_total_bytes: u64,
    /// `current_total_bytes - base_total_bytes` (negative: the heap shrank).
    ///
    /// Not the "total" `go tool pprof -base` prints: that one sums the
    /// absolute differences stack by stack.
    pub total_delta_bytes: i64,
    /// Sum of the positive per-function deltas: all the growth, before
    /// shrinking elsewhere is subtracted.
    pub growth_bytes: u64,
    /// Up to N functions whose flat bytes grew, largest growth first.
    pub top_growth: Vec<FunctionDelta>,
}

/// One function's flat bytes in the baseline and now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDelta {
    /// Function name, e.g. `main.(*cache).put`.
    pub function: String,
    /// Flat bytes in the baseline (0 if the function was not in it).
    pub base_bytes: u64,
    /// Flat bytes now.
    pub current_bytes: u64,
    /// `current_bytes - base_bytes`; always positive in `top_growth`.
    pub delta_bytes: i64,
    /// `delta_bytes` as a percentage of `growth_bytes`, rounded to 0.01.
    pub growth_percent: f64,
}

fn signed_delta(current: u64, base: u64) -> i64 {
    let d = i128::from(current) - i128::from(base);
    i64::try_from(d).unwrap_or(if d < 0 { i64::MIN } else { i64::MAX })
}

/// Diffs two heap profiles like `go tool pprof -base base current`: per
/// function (matched by name), flat `inuse_space` now minus in the baseline.
pub fn heap_diff(base: &Profile, current: &Profile, top_n: usize) -> Result<HeapDiff, PprofError> {
    let base = HeapTotals::of(base)?;
    HeapTotals::diff(&base, &HeapTotals::of(current)?, top_n)
}

// ---------------------------------------------------------------------------
// Goroutines
// ---------------------------------------------------------------------------

/// The goroutines of a goroutine profile, for the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoroutineSummary {
    /// Goroutines in the profile: the sum of the sample values.
    pub total_goroutines: u64,
    /// Distinct stacks (by function names).
    pub distinct_stacks: usize,
    /// Up to N stacks with the most goroutines, most first.
    pub top_stacks: Vec<GoroutineStack>,
}

/// One distinct stack and the goroutines parked on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoroutineStack {
    /// Goroutines with this stack.
    pub goroutines: u64,
    /// Function names, leaf first, at most [`MAX_STACK_FRAMES`]; just
    /// `<no stack>` for goroutines whose stack the runtime did not record
    /// (Go's goroutine profiles do have such samples).
    pub functions: Vec<String>,
    /// Frames past [`MAX_STACK_FRAMES`] left out of `functions`.
    pub omitted_frames: usize,
}

/// A distinct stack, known by the first sample that had it.
struct Stack {
    sample: u32,
    /// The next stack whose frames hash the same, or `u32::MAX`.
    next: u32,
    goroutines: u64,
}

/// Summarises a goroutine profile: the count (the `goroutine` sample type,
/// else the first), and the top N distinct stacks by count.
///
/// Stacks are told apart by their frames' hash, and on a hash match by
/// comparing the frames: a distinct stack costs one small entry instead of
/// a copy of its frames (up to 1024 of them).
pub fn goroutine_summary(p: &Profile, top_n: usize) -> GoroutineSummary {
    let index = p
        .sample_type
        .iter()
        .position(|vt| str_at(p, vt.r#type) == Some("goroutine"))
        .unwrap_or(0);
    let sym = Symbols::new(p);
    let hasher = RandomState::new();
    let mut first_of: HashMap<u64, u32> = HashMap::new();
    let mut stacks: Vec<Stack> = Vec::new();
    let (mut frames, mut other) = (Vec::new(), Vec::new());
    let mut total = 0u64;
    for (i, s) in p.sample.iter().enumerate() {
        let v = value_at(s, index);
        total = total.saturating_add(v);
        sym.frames_into(s, &mut frames);
        let h = hasher.hash_one(&frames);
        let new = Stack {
            sample: i as u32,
            next: u32::MAX,
            goroutines: v,
        };
        let Some(&first) = first_of.get(&h) else {
            first_of.insert(h, stacks.len() as u32);
            stacks.push(new);
            continue;
        };
        let mut k = first as usize;
        loop {
            sym.frames_into(&p.sample[stacks[k].sample as usize], &mut other);
            if other == frames {
                stacks[k].goroutines = stacks[k].goroutines.saturating_add(v);
                break;
            }
            if stacks[k].next == u32::MAX {
                stacks[k].next = stacks.len() as u32;
                stacks.push(new);
                break;
            }
            k = stacks[k].next as usize;
        }
    }
    drop(first_of);
    let distinct_stacks = stacks.len();
    let names = |st: &Stack| {
        let s = &p.sample[st.sample as usize];
        let mut names = sym.frames(s).map(|f| sym.name(f).text()).peekable();
        let empty = names.peek().is_none();
        std::iter::once(std::borrow::Cow::Borrowed(NO_STACK))
            .filter(move |_| empty)
            .chain(names)
    };
    let order = |a: &Stack, b: &Stack| {
        b.goroutines
            .cmp(&a.goroutines)
            .then_with(|| names(a).cmp(names(b)))
    };
    if top_n > 0 && stacks.len() > top_n {
        stacks.select_nth_unstable_by(top_n - 1, order);
    }
    stacks.truncate(top_n);
    stacks.sort_unstable_by(order);
    let top_stacks = stacks
        .iter()
        .map(|st| {
            let s = &p.sample[st.sample as usize];
            let frames = sym.frames(s).count();
            GoroutineStack {
                goroutines: st.goroutines,
                functions: names(st)
                    .take(MAX_STACK_FRAMES)
                    .map(|n| for_people(&n))
                    .collect(),
                omitted_frames: frames.saturating_sub(MAX_STACK_FRAMES),
            }
        })
        .collect();
    GoroutineSummary {
        total_goroutines: total,
        distinct_stacks,
        top_stacks,
    }
}

// ---------------------------------------------------------------------------
// Pricing
// ---------------------------------------------------------------------------

/// The rows and stacks the summaries return are priced for tables of at
/// most this many (the manifest keeps 10 functions and 5 stacks).
const PRICED_TOP_N: u64 = 10;

/// What the summaries can allocate for a profile priced as `e`, beyond the
/// decoded profile, indexed by the field that causes it: the symbol tables
/// plus the costlier of the heap reduction and the goroutine one.
pub(crate) fn working_set(e: &Estimate) -> [u64; Repeated::ALL.len()] {
    let mut w = [0u64; Repeated::ALL.len()];
    symbols::working_set(e, &mut w);
    let names = symbols::max_names(e);
    let strings = e.string_bytes();
    // A name shown to people: a cut copy of a string, or a placeholder.
    let shown = heap_block(e.longest_string().min(MAX_NAME_BYTES as u64 + 3).max(64));
    // Frame buffers, sample type names, an error listing sample types.
    let scratch = 2 * heap_block(4 * MAX_SAMPLE_FRAMES as u64)
        + 2 * heap_block(2 * MAX_SAMPLE_FRAMES as u64)
        + heap_block(24 << 10);

    // Heap: flat, cum and seen per name; a row per name with its name
    // copied (at most the string payload plus malloc's rounding, or a
    // placeholder); the sort order, or a diff's growth list; the rows
    // returned.
    let (order, order_old) = grown_vec(names, 16);
    let heap = 3 * heap_block(names.saturating_mul(8))
        + heap_block(names.saturating_mul(size_of::<Row>() as u64))
        + strings.saturating_add(strings / 16)
        + names.saturating_mul(64)
        + order
        + order_old
        + 3 * PRICED_TOP_N * (size_of::<FunctionBytes>() as u64 + shown);

    // Goroutines: one hash entry and one stack per sample at worst, two
    // frame buffers, the stacks returned.
    let samples = e.count(Repeated::Sample);
    let (list, old) = grown_vec(samples, size_of::<Stack>() as u64);
    let goroutine = symbols::map_bytes(samples, 16, true)
        + list
        + old
        + PRICED_TOP_N
            * (size_of::<GoroutineStack>() as u64 + MAX_STACK_FRAMES as u64 * (24 + shown));

    if heap >= goroutine {
        w[Repeated::Function.index()] += heap + scratch;
    } else {
        w[Repeated::Sample.index()] += goroutine + scratch;
    }
    w
}

// ---------------------------------------------------------------------------
// Verdict and byte formatting
// ---------------------------------------------------------------------------

/// One line for the logs.
///
/// With a diff that grew: `heap +100MiB since baseline, 99% in
/// main.(*leakyCache).put (120MiB in use)`, the percentage being that
/// function's share of the growth. Without a baseline: `heap 230MiB in use,
/// 91% in main.(*cache).put`, the percentage being its flat share.
pub fn verdict(summary: &HeapSummary, diff: Option<&HeapDiff>) -> String {
    let in_use = human_bytes(summary.total_bytes);
    if let Some(d) = diff {
        let delta = human_bytes_signed(d.total_delta_bytes);
        return match d.top_growth.first() {
            Some(top) => format!(
                "heap {delta} since baseline, {}% in {} ({in_use} in use)",
                top.growth_percent.round(),
                top.function
            ),
            None => format!("heap {delta} since baseline, no function grew ({in_use} in use)"),
        };
    }
    match summary.top_flat.first() {
        Some(top) => format!(
            "heap {in_use} in use, {}% in {}",
            top.flat_percent.round(),
            top.function
        ),
        None => format!("heap {in_use} in use, no samples"),
    }
}

/// Bytes in binary units: `512B`, `182MiB`, `1.5GiB` (one decimal at most,
/// dropped when it is `.0`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    loop {
        // Round first, so 1023.96KiB shows as 1MiB, not 1024KiB.
        let rounded = (value * 10.0).round() / 10.0;
        if rounded < 1024.0 || unit == UNITS.len() - 1 {
            return format!("{}{}", Trimmed(rounded), UNITS[unit]);
        }
        value /= 1024.0;
        unit += 1;
    }
}

/// Like [`human_bytes`] with a sign: `+182MiB`, `-5MiB`, `0B`.
pub fn human_bytes_signed(n: i64) -> String {
    match n.signum() {
        1 => format!("+{}", human_bytes(n.unsigned_abs())),
        -1 => format!("-{}", human_bytes(n.unsigned_abs())),
        _ => "0B".to_string(),
    }
}

/// A number with one decimal, without a trailing `.0`.
struct Trimmed(f64);

impl fmt::Display for Trimmed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.fract() == 0.0 {
            write!(f, "{:.0}", self.0)
        } else {
            write!(f, "{:.1}", self.0)
        }
    }
}

#[cfg(test)]
mod tests;
