//! Decoding within a memory budget: bytes (or a file) in, a [`Profile`] out,
//! or an error saying what would not fit.
//!
//! The body comes from the app, so it is hostile until proven otherwise.
//! Three steps, each bounded before the next one allocates:
//!
//! 1. **Inflate.** A gzip body (magic `1f 8b`, as Go serves it) is inflated
//!    once into a sink, only counting, and refused past
//!    [`Budget::raw_bytes`]; then once more into a buffer of exactly that
//!    size. Raw protobuf is taken as is, under the same cap.
//! 2. **Price.** [`wire::walk`](super::wire) counts every `Vec` and string
//!    the decoder would create, at every depth, and [`Estimate`] turns the
//!    counts into bytes: each `Vec`'s real capacity (prost pushes one
//!    element at a time, so capacities are powers of two) times the real
//!    `size_of` of its element, string payloads, the allocator's rounding,
//!    and the tables the summaries build on top (`symbols.rs`,
//!    `summary.rs`). Over [`Budget::decoded_bytes`] is an
//!    [`PprofError::OverBudget`] naming the field that blew it.
//! 3. **Decode** with `prost`, now known to fit.
//!
//! See "Summarise" in docs/how-it-works.md for where this runs.

use std::io::{self, Read};
use std::mem::size_of;
use std::path::{Path, PathBuf};

use prost::Message;

use super::summary::{human_bytes, working_set};
use super::wire::{self, Repeated, Tally};
use super::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};

/// Inflated protobuf the sidecar holds for one summary: 4 MiB.
///
/// The sidecar runs in a 32 MiB limit (`deploy/examples`); a release build
/// of `oomsnap run` idles at about 9 MiB resident. Real heap profiles inflate to tens of KiB (Prometheus 2.42
/// twenty seconds after start: 14 KiB; `tests/leaky` with a 100 MiB leak:
/// 9 KiB), so 4 MiB leaves room for services with many thousands of
/// allocation sites; past it, `go tool pprof` is the better reader anyway.
/// The same number caps the compressed bytes read.
pub const SIDECAR_RAW_BUDGET: u64 = 4 << 20;

/// What the decoded structs of one profile and the summary tables built
/// from them may take, as [`Estimate`] prices them: 8 MiB.
///
/// The real profiles above price at about 0.5 MiB, most of it fixed (the
/// placeholder and output tables). With [`SIDECAR_RAW_BUDGET`] held at the
/// same time, one summary adds at most 12 MiB to the idle ~9 MiB, which
/// leaves room in the 32 MiB limit for a concurrent upload (one 5 MiB
/// multipart part) and allocator slack. Profiles are decoded one at a
/// time, so this is the whole bill (`tests/pprof_budget.rs` measures it:
/// a release capture of hostile bodies peaks at about 13 MiB).
pub const SIDECAR_DECODE_BUDGET: u64 = 8 << 20;

/// What decoding and summarising one profile may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The most bytes of protobuf held: the inflated body. Also the most
    /// compressed bytes read.
    pub raw_bytes: u64,
    /// The most bytes the decoded structs plus the summaries' own tables
    /// may take, as [`Estimate::total_bytes`] prices them.
    pub decoded_bytes: u64,
}

impl Budget {
    /// The sidecar's budget: [`SIDECAR_RAW_BUDGET`] and
    /// [`SIDECAR_DECODE_BUDGET`].
    pub const SIDECAR: Budget = Budget {
        raw_bytes: SIDECAR_RAW_BUDGET,
        decoded_bytes: SIDECAR_DECODE_BUDGET,
    };

    /// This budget less `held` bytes still in use, e.g. the reduced heap
    /// kept while the baseline is decoded.
    pub fn less(self, held: u64) -> Budget {
        Budget {
            decoded_bytes: self.decoded_bytes.saturating_sub(held),
            ..self
        }
    }
}

/// Why a profile could not be decoded or summarised.
#[derive(Debug, thiserror::Error)]
pub enum PprofError {
    #[error("the profile is empty (0 bytes)")]
    Empty,
    #[error("the profile is not gzip'd protobuf: {detail}")]
    NotProtobuf { detail: String },
    #[error("the profile's gzip stream is corrupt or truncated: {0}")]
    Gzip(#[source] std::io::Error),
    #[error(
        "the profile is over {}, the most the sidecar reads to summarise one \
         (a gzip bomb, or a profile to read with go tool pprof)",
        human_bytes(*limit)
    )]
    TooLarge { limit: u64 },
    #[error(
        "{} {what} ≈ {}, over the {} decode budget ({} to decode and summarise in all); \
         the profile ships as is, read it with go tool pprof",
        grouped(*count),
        human_bytes(*bytes),
        human_bytes(*budget),
        human_bytes(*total)
    )]
    OverBudget {
        /// The repeated field that costs the most, and how many it holds.
        what: &'static str,
        count: u64,
        bytes: u64,
        total: u64,
        budget: u64,
    },
    #[error("could not read the profile file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the profile has no sample type measured in bytes (it has: {found}), so it is not a heap profile"
    )]
    NoBytesSampleType { found: String },
    #[error(
        "the baseline profile measures {base} but the current one measures {current}; \
         they cannot be diffed"
    )]
    SampleTypeMismatch { base: String, current: String },
}

/// `4194304` as `4 194 304`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------
// The estimate
// ---------------------------------------------------------------------------

/// What decoding one profile and summarising it would hold, priced from its
/// wire format before anything is allocated.
///
/// An upper bound by construction (the `pprof` fuzz target checks it with a
/// counting allocator): capacities as `Vec` growth really leaves them, each
/// heap block rounded up as `malloc` does, one growth's old block counted
/// on top, and the summaries' tables at their worst case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Estimate {
    /// The inflated protobuf, held while it is decoded.
    pub raw_bytes: u64,
    counts: [u64; Repeated::ALL.len()],
    decoded: [u64; Repeated::ALL.len()],
    working: [u64; Repeated::ALL.len()],
    string_bytes: u64,
    longest_string: u64,
    lineless_locations: u64,
    /// The largest block a `Vec` left behind while it grew.
    transient: u64,
}

impl Estimate {
    /// Elements of `field` in the whole profile.
    pub(crate) fn count(&self, field: Repeated) -> u64 {
        self.counts[field.index()]
    }

    /// Bytes of string-table payload.
    pub(crate) fn string_bytes(&self) -> u64 {
        self.string_bytes
    }

    /// The longest string of the string table.
    pub(crate) fn longest_string(&self) -> u64 {
        self.longest_string
    }

    /// Locations that have no lines (unsymbolised addresses).
    pub(crate) fn lineless_locations(&self) -> u64 {
        self.lineless_locations
    }

    /// The decoded [`Profile`]'s heap blocks, at their peak.
    pub fn decoded_bytes(&self) -> u64 {
        sum(&self.decoded).saturating_add(self.transient)
    }

    /// What the summaries allocate on top of the decoded profile.
    pub fn working_bytes(&self) -> u64 {
        sum(&self.working)
    }

    /// What [`Budget::decoded_bytes`] is compared with.
    pub fn total_bytes(&self) -> u64 {
        self.decoded_bytes().saturating_add(self.working_bytes())
    }

    /// The field that costs the most, decoded and summarised.
    fn costliest(&self) -> (Repeated, u64) {
        Repeated::ALL
            .iter()
            .map(|&f| {
                let i = f.index();
                (f, self.decoded[i].saturating_add(self.working[i]))
            })
            .max_by_key(|&(_, bytes)| bytes)
            .unwrap_or((Repeated::Sample, 0))
    }

    /// Refuses the profile when it does not fit in `budget`.
    pub fn check(&self, budget: Budget) -> Result<(), PprofError> {
        let total = self.total_bytes();
        if total <= budget.decoded_bytes {
            return Ok(());
        }
        let (field, bytes) = self.costliest();
        Err(PprofError::OverBudget {
            what: field.noun(),
            count: self.count(field),
            bytes,
            total,
            budget: budget.decoded_bytes,
        })
    }
}

fn sum(a: &[u64]) -> u64 {
    a.iter().fold(0u64, |acc, &b| acc.saturating_add(b))
}

impl Tally for Estimate {
    fn vec(&mut self, field: Repeated, len: u64) {
        let i = field.index();
        self.counts[i] = self.counts[i].saturating_add(len);
        if field == Repeated::Line && len == 0 {
            self.lineless_locations += 1;
        }
        let (block, old) = grown_vec(len, element_size(field));
        self.decoded[i] = self.decoded[i].saturating_add(block);
        self.transient = self.transient.max(old);
    }

    fn string(&mut self, len: u64) {
        self.string_bytes = self.string_bytes.saturating_add(len);
        self.longest_string = self.longest_string.max(len);
        // prost reserves a string's exact length, at least 8 (Vec<u8>'s
        // smallest capacity); an empty one allocates nothing.
        let block = if len == 0 { 0 } else { heap_block(len.max(8)) };
        let i = Repeated::String.index();
        self.decoded[i] = self.decoded[i].saturating_add(block);
    }
}

/// `size_of` the element of each repeated field's `Vec`.
fn element_size(field: Repeated) -> u64 {
    (match field {
        Repeated::SampleType => size_of::<ValueType>(),
        Repeated::Sample => size_of::<Sample>(),
        Repeated::Mapping => size_of::<Mapping>(),
        Repeated::Location => size_of::<Location>(),
        Repeated::Function => size_of::<Function>(),
        Repeated::String => size_of::<String>(),
        Repeated::Comment | Repeated::Value => size_of::<i64>(),
        Repeated::LocationId => size_of::<u64>(),
        Repeated::Label => size_of::<Label>(),
        Repeated::Line => size_of::<Line>(),
    }) as u64
}

/// What `malloc` really takes for a block of `n` bytes: small blocks carry
/// a header and round up to 16, at least 32 bytes (glibc; musl's size
/// classes are no larger); big ones are mapped whole pages.
pub(crate) fn heap_block(n: u64) -> u64 {
    match n {
        0 => 0,
        n if n >= 128 << 10 => n.saturating_add(16 + 4095) & !4095,
        n => ((n + 8 + 15) & !15).max(32),
    }
}

/// A `Vec` of `len` elements of `size` bytes filled by pushes, as prost
/// fills them: (its final block, the block it left behind on its last
/// growth). Capacity starts at 4 (8 for bytes) and doubles.
pub(crate) fn grown_vec(len: u64, size: u64) -> (u64, u64) {
    if len == 0 || size == 0 {
        return (0, 0);
    }
    let first = if size == 1 { 8 } else { 4 };
    let cap = len
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX)
        .max(first);
    let block = heap_block(cap.saturating_mul(size));
    let old = if cap > first {
        heap_block((cap / 2).saturating_mul(size))
    } else {
        0
    };
    (block, old)
}

/// Prices inflated protobuf bytes.
fn price(raw: &[u8]) -> Result<Estimate, wire::WireError> {
    let mut e = Estimate {
        raw_bytes: raw.len() as u64,
        ..Estimate::default()
    };
    wire::walk(raw, &mut e)?;
    e.working = working_set(&e);
    Ok(e)
}

// ---------------------------------------------------------------------------
// Inflating and decoding
// ---------------------------------------------------------------------------

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Where the body is read from: bytes in memory or a file, opened afresh
/// for each pass.
trait Source {
    type R: Read;
    fn len(&self) -> u64;
    fn open(&self) -> Result<Self::R, PprofError>;
}

impl<'a> Source for &'a [u8] {
    type R = &'a [u8];
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn open(&self) -> Result<&'a [u8], PprofError> {
        Ok(self)
    }
}

struct FileSource<'a> {
    path: &'a Path,
    len: u64,
}

impl FileSource<'_> {
    fn io_err(&self, source: io::Error) -> PprofError {
        PprofError::Io {
            path: self.path.to_path_buf(),
            source,
        }
    }
}

impl Source for FileSource<'_> {
    type R = std::fs::File;
    fn len(&self) -> u64 {
        self.len
    }
    fn open(&self) -> Result<std::fs::File, PprofError> {
        std::fs::File::open(self.path).map_err(|e| self.io_err(e))
    }
}

/// Reads the whole body as protobuf: inflated when gzip'd, never more than
/// `limit` bytes held, and a buffer of exactly the right size.
fn read_raw(src: &impl Source, limit: u64) -> Result<(Vec<u8>, bool), PprofError> {
    let len = src.len();
    if len == 0 {
        return Err(PprofError::Empty);
    }
    if len > limit {
        return Err(PprofError::TooLarge { limit });
    }
    let mut magic = [0u8; 2];
    let got = read_up_to(&mut src.open()?, &mut magic).map_err(PprofError::Gzip)?;
    let gz = |r: Result<usize, io::Error>| r.map_err(PprofError::Gzip);
    if got == 2 && magic == GZIP_MAGIC {
        // First pass: count only. `take` stops a bomb at limit + 1. The
        // decoder (its window, buffer and header fields, each capped at
        // 64 KiB by flate2) is gone before the buffer is allocated.
        let counting = flate2::read::GzDecoder::new(src.open()?).take(limit + 1);
        let n = gz(io::copy(&mut { counting }, &mut io::sink()).map(|n| n as usize))?;
        if n as u64 > limit {
            return Err(PprofError::TooLarge { limit });
        }
        let mut raw = Vec::with_capacity(n);
        gz(flate2::read::GzDecoder::new(src.open()?).read_to_end(&mut raw))?;
        Ok((raw, true))
    } else {
        let mut raw = Vec::with_capacity(len as usize);
        src.open()?
            .take(len)
            .read_to_end(&mut raw)
            .map_err(PprofError::Gzip)?;
        Ok((raw, false))
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Explains why inflated (`gzipped`) or raw bytes are not a profile.
fn not_protobuf(raw: &[u8], gzipped: bool, why: impl std::fmt::Display) -> PprofError {
    let detail = if gzipped {
        format!(
            "the gzip stream holds {} bytes that are not a profile: {why}",
            raw.len()
        )
    } else {
        format!(
            "no gzip magic, and not raw protobuf either: {why}{}",
            text_hint(raw)
        )
    };
    PprofError::NotProtobuf { detail }
}

/// A hint for the common case of a text body (an HTML 404 page, a
/// `?debug=1` text profile) where a binary profile was expected.
fn text_hint(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(40)];
    let printable = head
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    if printable {
        format!(
            " (the data looks like text: {:?})",
            String::from_utf8_lossy(head)
        )
    } else {
        String::new()
    }
}

fn decode_source(src: &impl Source, budget: Budget) -> Result<Profile, PprofError> {
    let (raw, gzipped) = read_raw(src, budget.raw_bytes)?;
    let estimate = price(&raw).map_err(|e| not_protobuf(&raw, gzipped, e))?;
    estimate.check(budget)?;
    Profile::decode(raw.as_slice()).map_err(|e| not_protobuf(&raw, gzipped, e))
}

/// Decodes a profile from gzip'd (magic `1f 8b`) or raw protobuf bytes,
/// within the sidecar's [`Budget::SIDECAR`].
pub fn decode(bytes: &[u8]) -> Result<Profile, PprofError> {
    decode_with_budget(bytes, Budget::SIDECAR)
}

/// Like [`decode`], within `budget`.
pub fn decode_with_budget(bytes: &[u8], budget: Budget) -> Result<Profile, PprofError> {
    decode_source(&bytes, budget)
}

/// Reads and decodes a profile file (gzip'd or raw) within
/// [`Budget::SIDECAR`], never holding the compressed file.
pub fn decode_file(path: impl AsRef<Path>) -> Result<Profile, PprofError> {
    decode_file_with_budget(path.as_ref(), Budget::SIDECAR)
}

/// Like [`decode_file`], within `budget`.
pub(crate) fn decode_file_with_budget(path: &Path, budget: Budget) -> Result<Profile, PprofError> {
    let src = FileSource { path, len: 0 };
    let len = std::fs::metadata(path).map_err(|e| src.io_err(e))?.len();
    decode_source(&FileSource { path, len }, budget)
}

/// Prices a body (gzip'd or raw, inflated within `budget.raw_bytes`)
/// without decoding it; [`Estimate::check`] says whether it fits.
pub fn estimate(bytes: &[u8], budget: Budget) -> Result<Estimate, PprofError> {
    let (raw, gzipped) = read_raw(&bytes, budget.raw_bytes)?;
    price(&raw).map_err(|e| not_protobuf(&raw, gzipped, e))
}

#[cfg(test)]
mod tests;
