//! Decoding Go pprof profiles and summarising them for the capture manifest.
//!
//! This is the *summarise* stage of the pipeline: after a capture has spooled
//! a profile, oomsnap reads it back, and what the profile says ends up in
//! `manifest.json` beside it, so a reader sees at a glance *what grew*
//! without running `go tool pprof`.
//!
//! Data enters as the bytes of a `profile.proto` message, gzip'd (as Go's
//! `net/http/pprof` serves it, magic `1f 8b`) or raw: [`decode`] /
//! [`decode_file`] turn them into a [`Profile`]. The messages are hand-written
//! `prost` derives of pprof's `profile.proto` (no `protoc`, no build script).
//! Decompression is capped ([`MAX_DECOMPRESSED_BYTES`], or a limit of your own
//! through [`decode_with_limit`]) so a gzip bomb cannot eat the sidecar's
//! memory.
//!
//! Data leaves as plain serde structs, meant to be serialised into the
//! manifest:
//!
//! - [`heap_summary`] → [`HeapSummary`]: total in-use bytes and the top
//!   functions by flat and by cumulative `inuse_space`;
//! - [`goroutine_summary`] → [`GoroutineSummary`]: the goroutine count and the
//!   most common stacks;
//! - [`heap_diff`] → [`HeapDiff`]: per-function growth of flat `inuse_space`
//!   against a baseline heap profile, like `go tool pprof -base`;
//! - [`verdict`]: one line for the logs, e.g.
//!   `heap +182MiB since baseline, 71% in main.(*cache).put (230MiB in use)`.
//!
//! Nothing here panics on malformed input: string-table indexes, location
//! ids and function ids that point nowhere are shown as placeholder names
//! (`<bad string index 7>`, `<missing location 12>`, …) instead of failing,
//! and sums saturate instead of overflowing.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use prost::Message;
use serde::{Deserialize, Serialize};

/// The default cap on the size of a decompressed profile: 512 MiB.
///
/// A real heap profile is a few KiB to a few MiB; anything past this is a
/// gzip bomb or garbage, and reading it would risk OOM-killing the sidecar.
pub const MAX_DECOMPRESSED_BYTES: u64 = 512 * 1024 * 1024;

/// Stacks in a [`GoroutineSummary`] keep at most this many frames (leaf
/// first); the rest are counted in [`GoroutineStack::omitted_frames`].
pub const MAX_STACK_FRAMES: usize = 64;

// ---------------------------------------------------------------------------
// profile.proto (package perftools.profiles), field numbers as upstream.
// ---------------------------------------------------------------------------

/// `perftools.profiles.Profile`: the whole profile.
#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    /// What each `Sample.value` entry measures, e.g. `inuse_space`/`bytes`.
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// All strings of the profile; other fields hold indexes into it.
    /// `string_table[0]` should be `""`.
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    /// Index into the string table.
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    /// Index into the string table.
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    /// Indexes into the string table.
    #[prost(int64, repeated, packed = "true", tag = "13")]
    pub comment: Vec<i64>,
    /// Index into the string table of the preferred sample type's name.
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

/// `perftools.profiles.ValueType`: the name and unit of a measure.
#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    /// Index into the string table, e.g. `inuse_space`.
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    /// Index into the string table, e.g. `bytes`.
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

/// `perftools.profiles.Sample`: one stack and its values.
#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    /// Location ids, leaf first.
    #[prost(uint64, repeated, packed = "true", tag = "1")]
    pub location_id: Vec<u64>,
    /// One value per `Profile.sample_type`.
    #[prost(int64, repeated, packed = "true", tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

/// `perftools.profiles.Label`: a key with a string or a number.
#[derive(Clone, PartialEq, Message)]
pub struct Label {
    /// Index into the string table.
    #[prost(int64, tag = "1")]
    pub key: i64,
    /// Index into the string table.
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    /// Index into the string table.
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

/// `perftools.profiles.Mapping`: a binary or library mapped into memory.
#[derive(Clone, PartialEq, Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    /// Index into the string table.
    #[prost(int64, tag = "5")]
    pub filename: i64,
    /// Index into the string table.
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

/// `perftools.profiles.Location`: a program counter and the source lines
/// (inlined callee first, caller last) it stands for.
#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

/// `perftools.profiles.Line`: one function and line of a location.
#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
    #[prost(int64, tag = "3")]
    pub column: i64,
}

/// `perftools.profiles.Function`.
#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Index into the string table, e.g. `main.(*cache).put`.
    #[prost(int64, tag = "2")]
    pub name: i64,
    /// Index into the string table.
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    /// Index into the string table.
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

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
        "the profile decompresses to more than {limit} bytes, the cap; refusing to read further \
         (a gzip bomb, or not a pprof profile)"
    )]
    TooLarge { limit: u64 },
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

/// The most frames gathered for one sample (Go records at most 128 per
/// stack; summaries show [`MAX_STACK_FRAMES`]).
pub const MAX_SAMPLE_FRAMES: usize = 1024;

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// Decodes a profile from gzip'd (magic `1f 8b`) or raw protobuf bytes,
/// decompressing at most [`MAX_DECOMPRESSED_BYTES`].
pub fn decode(bytes: &[u8]) -> Result<Profile, PprofError> {
    decode_with_limit(bytes, MAX_DECOMPRESSED_BYTES)
}

/// Like [`decode`], with a cap of `max_decompressed_bytes` on the gzip
/// stream's decompressed size.
pub fn decode_with_limit(bytes: &[u8], max_decompressed_bytes: u64) -> Result<Profile, PprofError> {
    if bytes.is_empty() {
        return Err(PprofError::Empty);
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .take(max_decompressed_bytes.saturating_add(1))
            .read_to_end(&mut raw)
            .map_err(PprofError::Gzip)?;
        if raw.len() as u64 > max_decompressed_bytes {
            return Err(PprofError::TooLarge {
                limit: max_decompressed_bytes,
            });
        }
        check_shape(&raw)?;
        Profile::decode(raw.as_slice()).map_err(|e| PprofError::NotProtobuf {
            detail: format!(
                "the gzip stream holds {} bytes that are not a profile: {e}",
                raw.len()
            ),
        })
    } else {
        if bytes.len() as u64 > max_decompressed_bytes {
            return Err(PprofError::TooLarge {
                limit: max_decompressed_bytes,
            });
        }
        check_shape(bytes)?;
        Profile::decode(bytes).map_err(|e| PprofError::NotProtobuf {
            detail: format!(
                "no gzip magic, and not raw protobuf either: {e}{}",
                text_hint(bytes)
            ),
        })
    }
}

/// What decoding may spend on message structs, beyond the bytes
/// themselves: an empty sample is 2 bytes on the wire but a 72-byte struct,
/// so a small body could otherwise inflate 36-fold inside a sidecar that
/// lives in 32Mi.
pub const MAX_DECODED_STRUCT_BYTES: usize = 24 << 20;

/// Counts the top-level repeated messages in one pass, allocating nothing,
/// and refuses a profile whose structs alone would exceed
/// [`MAX_DECODED_STRUCT_BYTES`]. Malformed framing is left for the decoder
/// to report.
fn check_shape(raw: &[u8]) -> Result<(), PprofError> {
    fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*i)?;
            *i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut i = 0;
    let mut bytes = 0usize;
    while i < raw.len() {
        let Some(key) = varint(raw, &mut i) else {
            break;
        };
        let size = match key >> 3 {
            2 => std::mem::size_of::<Sample>(),
            3 => std::mem::size_of::<Mapping>(),
            4 => std::mem::size_of::<Location>(),
            5 => std::mem::size_of::<Function>(),
            6 => std::mem::size_of::<String>(),
            _ => 0,
        };
        bytes = bytes.saturating_add(size);
        match key & 7 {
            0 => {
                if varint(raw, &mut i).is_none() {
                    break;
                }
            }
            1 => i += 8,
            2 => match varint(raw, &mut i) {
                Some(len) => i = i.saturating_add(len as usize),
                None => break,
            },
            5 => i += 4,
            _ => break,
        }
        if bytes > MAX_DECODED_STRUCT_BYTES {
            return Err(PprofError::TooLarge {
                limit: MAX_DECODED_STRUCT_BYTES as u64,
            });
        }
    }
    Ok(())
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

/// Reads and decodes a profile file (gzip'd or raw), with the default cap.
pub fn decode_file(path: impl AsRef<Path>) -> Result<Profile, PprofError> {
    let path = path.as_ref();
    let io_err = |source| PprofError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io_err)?
        // The compressed file is never larger than what it decompresses to,
        // bar a few header bytes, so the same cap bounds the read.
        .take(MAX_DECOMPRESSED_BYTES.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(PprofError::TooLarge {
            limit: MAX_DECOMPRESSED_BYTES,
        });
    }
    decode(&bytes)
}

// ---------------------------------------------------------------------------
// Symbolisation: sample → function names, guarded against bad indexes.
// ---------------------------------------------------------------------------

/// The string at `index` of the string table, or a placeholder.
fn string_at(p: &Profile, index: i64) -> String {
    usize::try_from(index)
        .ok()
        .and_then(|i| p.string_table.get(i))
        .cloned()
        .unwrap_or_else(|| format!("<bad string index {index}>"))
}

/// `type/unit` of a sample type, e.g. `inuse_space/bytes`.
fn value_type_name(p: &Profile, vt: &ValueType) -> String {
    format!("{}/{}", string_at(p, vt.r#type), string_at(p, vt.unit))
}

/// Turns samples into stacks of interned function names, leaf first.
///
/// Names, not function ids, identify a function: ids differ between
/// profiles, and one profile may hold several `Function`s of one name.
struct Symbols<'p> {
    profile: &'p Profile,
    locations: HashMap<u64, &'p Location>,
    functions: HashMap<u64, &'p Function>,
    /// Location id → its frames (interned names), inlined callee first.
    frames_of: HashMap<u64, Vec<u32>>,
    names: Vec<String>,
    index_of: HashMap<String, u32>,
}

impl<'p> Symbols<'p> {
    fn new(profile: &'p Profile) -> Self {
        Symbols {
            profile,
            locations: profile.location.iter().map(|l| (l.id, l)).collect(),
            functions: profile.function.iter().map(|f| (f.id, f)).collect(),
            frames_of: HashMap::new(),
            names: Vec::new(),
            index_of: HashMap::new(),
        }
    }

    fn intern(&mut self, name: String) -> u32 {
        if let Some(&i) = self.index_of.get(&name) {
            return i;
        }
        let i = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(name.clone());
        self.index_of.insert(name, i);
        i
    }

    fn name(&self, i: u32) -> &str {
        self.names.get(i as usize).map_or("<?>", String::as_str)
    }

    fn function_name(&self, id: u64) -> String {
        match self.functions.get(&id) {
            None => format!("<missing function {id}>"),
            Some(f) => {
                let name = string_at(self.profile, f.name);
                if name.is_empty() {
                    format!("<unnamed function {id}>")
                } else {
                    name
                }
            }
        }
    }

    /// The frames of one location, computed once per location id.
    fn location_frames(&mut self, id: u64) -> Vec<u32> {
        if let Some(f) = self.frames_of.get(&id) {
            return f.clone();
        }
        let names: Vec<String> = match self.locations.get(&id) {
            None => vec![format!("<missing location {id}>")],
            Some(loc) if loc.line.is_empty() => vec![if loc.address != 0 {
                format!("{:#x}", loc.address)
            } else {
                format!("<location {id} without lines>")
            }],
            Some(loc) => loc
                .line
                .iter()
                .map(|l| self.function_name(l.function_id))
                .collect(),
        };
        let frames: Vec<u32> = names.into_iter().map(|n| self.intern(n)).collect();
        self.frames_of.insert(id, frames.clone());
        frames
    }

    /// The frames of a sample, leaf first (inlined callees before callers),
    /// at most [`MAX_SAMPLE_FRAMES`]: a hostile profile can reference one
    /// location with thousands of lines thousands of times.
    fn sample_frames(&mut self, s: &Sample) -> Vec<u32> {
        let mut out = Vec::new();
        for &id in &s.location_id {
            if out.len() >= MAX_SAMPLE_FRAMES {
                break;
            }
            if !self.frames_of.contains_key(&id) {
                self.location_frames(id);
            }
            let frames = &self.frames_of[&id];
            let take = frames.len().min(MAX_SAMPLE_FRAMES - out.len());
            out.extend_from_slice(&frames[..take]);
        }
        out
    }
}

/// The value at `index` of a sample, or 0 when the sample is short.
fn value_at(s: &Sample, index: usize) -> i64 {
    s.value.get(index).copied().unwrap_or(0)
}

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
    let named = |vt: &ValueType| string_at(p, vt.r#type);
    let in_bytes = |vt: &ValueType| string_at(p, vt.unit) == "bytes";
    let pick = |index: usize, fallback: bool| Choice {
        index,
        name: value_type_name(p, &p.sample_type[index]),
        fallback,
    };
    if let Some(i) = p
        .sample_type
        .iter()
        .position(|vt| named(vt) == "inuse_space")
    {
        return Ok(pick(i, false));
    }
    if p.default_sample_type != 0 {
        let default = string_at(p, p.default_sample_type);
        if let Some(i) = p
            .sample_type
            .iter()
            .position(|vt| named(vt) == default && in_bytes(vt))
        {
            return Ok(pick(i, true));
        }
    }
    if let Some(i) = p.sample_type.iter().rposition(in_bytes) {
        return Ok(pick(i, true));
    }
    let found = if p.sample_type.is_empty() {
        "no sample types at all".to_string()
    } else {
        p.sample_type
            .iter()
            .map(|vt| value_type_name(p, vt))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(PprofError::NoBytesSampleType { found })
}

/// Per-function flat and cumulative values of one sample type.
struct FlatCum {
    total: u64,
    samples: usize,
    /// Function name → (flat, cum).
    by_function: HashMap<String, (u64, u64)>,
}

/// Name given to samples that have no locations at all.
const NO_STACK: &str = "<no stack>";

/// Sums one sample type per function. Negative values (never written by Go
/// for heap profiles) count as 0; sums saturate.
fn flat_cum(p: &Profile, index: usize) -> FlatCum {
    let mut sym = Symbols::new(p);
    let mut flat: Vec<u64> = Vec::new();
    let mut cum: Vec<u64> = Vec::new();
    // seen[f] == sample number + 1 when f was already counted in this sample.
    let mut seen: Vec<usize> = Vec::new();
    let mut no_stack = 0u64;
    let mut total = 0u64;
    for (n, s) in p.sample.iter().enumerate() {
        let v = u64::try_from(value_at(s, index)).unwrap_or(0);
        total = total.saturating_add(v);
        let frames = sym.sample_frames(s);
        let needed = sym.names.len();
        flat.resize(needed, 0);
        cum.resize(needed, 0);
        seen.resize(needed, 0);
        match frames.first() {
            None => no_stack = no_stack.saturating_add(v),
            Some(&leaf) => flat[leaf as usize] = flat[leaf as usize].saturating_add(v),
        }
        for &f in &frames {
            let f = f as usize;
            if seen[f] != n + 1 {
                seen[f] = n + 1;
                cum[f] = cum[f].saturating_add(v);
            }
        }
    }
    let mut by_function: HashMap<String, (u64, u64)> = HashMap::new();
    for (i, name) in sym.names.iter().enumerate() {
        by_function.insert(name.clone(), (flat[i], cum[i]));
    }
    if no_stack > 0 {
        let e = by_function.entry(NO_STACK.to_string()).or_default();
        e.0 = e.0.saturating_add(no_stack);
        e.1 = e.1.saturating_add(no_stack);
    }
    FlatCum {
        total,
        samples: p.sample.len(),
        by_function,
    }
}

/// `part` as a percentage of `whole`, rounded to 0.01; 0 when `whole` is 0.
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    (part as f64 * 100.0 / whole as f64 * 100.0).round() / 100.0
}

// ---------------------------------------------------------------------------
// Heap summary
// ---------------------------------------------------------------------------

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
/// (for inlined code, the first line of the leaf location), cumulative bytes
/// to every distinct function on the stack, once per sample.
pub fn heap_summary(p: &Profile, top_n: usize) -> Result<HeapSummary, PprofError> {
    let choice = choose_heap_sample_type(p)?;
    let fc = flat_cum(p, choice.index);
    let total = fc.total;
    let mut rows: Vec<FunctionBytes> = fc
        .by_function
        .into_iter()
        .map(|(function, (flat, cum))| FunctionBytes {
            function,
            flat_bytes: flat,
            flat_percent: percent(flat, total),
            cum_bytes: cum,
            cum_percent: percent(cum, total),
        })
        .collect();
    let function_count = rows.iter().filter(|r| r.function != NO_STACK).count();

    rows.sort_by(|a, b| {
        (b.flat_bytes, b.cum_bytes)
            .cmp(&(a.flat_bytes, a.cum_bytes))
            .then_with(|| a.function.cmp(&b.function))
    });
    let top_flat: Vec<FunctionBytes> = rows
        .iter()
        .filter(|r| r.flat_bytes > 0)
        .take(top_n)
        .cloned()
        .collect();
    rows.sort_by(|a, b| {
        (b.cum_bytes, b.flat_bytes)
            .cmp(&(a.cum_bytes, a.flat_bytes))
            .then_with(|| a.function.cmp(&b.function))
    });
    let top_cum: Vec<FunctionBytes> = rows
        .into_iter()
        .filter(|r| r.cum_bytes > 0)
        .take(top_n)
        .collect();

    Ok(HeapSummary {
        sample_type: choice.name,
        sample_type_fallback: choice.fallback,
        total_bytes: total,
        sample_count: fc.samples,
        function_count,
        top_flat,
        top_cum,
    })
}

// ---------------------------------------------------------------------------
// Goroutine summary
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

/// Summarises a goroutine profile: the count (the `goroutine` sample type,
/// else the first), and the top N distinct stacks by count.
pub fn goroutine_summary(p: &Profile, top_n: usize) -> GoroutineSummary {
    let index = p
        .sample_type
        .iter()
        .position(|vt| string_at(p, vt.r#type) == "goroutine")
        .unwrap_or(0);
    let mut sym = Symbols::new(p);
    let mut by_stack: HashMap<Vec<u32>, u64> = HashMap::new();
    let mut total = 0u64;
    for s in &p.sample {
        let v = u64::try_from(value_at(s, index)).unwrap_or(0);
        total = total.saturating_add(v);
        let frames = sym.sample_frames(s);
        let e = by_stack.entry(frames).or_default();
        *e = e.saturating_add(v);
    }
    let distinct_stacks = by_stack.len();
    let mut stacks: Vec<GoroutineStack> = by_stack
        .into_iter()
        .map(|(frames, goroutines)| GoroutineStack {
            goroutines,
            functions: if frames.is_empty() {
                vec![NO_STACK.to_string()]
            } else {
                frames
                    .iter()
                    .take(MAX_STACK_FRAMES)
                    .map(|&f| sym.name(f).to_string())
                    .collect()
            },
            omitted_frames: frames.len().saturating_sub(MAX_STACK_FRAMES),
        })
        .collect();
    stacks.sort_by(|a, b| {
        b.goroutines
            .cmp(&a.goroutines)
            .then_with(|| a.functions.cmp(&b.functions))
    });
    stacks.truncate(top_n);
    GoroutineSummary {
        total_goroutines: total,
        distinct_stacks,
        top_stacks: stacks,
    }
}

// ---------------------------------------------------------------------------
// Heap diff
// ---------------------------------------------------------------------------

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
    let cb = choose_heap_sample_type(base)?;
    let cc = choose_heap_sample_type(current)?;
    if cb.name != cc.name {
        return Err(PprofError::SampleTypeMismatch {
            base: cb.name,
            current: cc.name,
        });
    }
    let fb = flat_cum(base, cb.index);
    let fcur = flat_cum(current, cc.index);

    let mut growth: Vec<FunctionDelta> = Vec::new();
    let mut growth_bytes = 0u64;
    for (function, &(cur_flat, _)) in &fcur.by_function {
        let base_flat = fb.by_function.get(function).map_or(0, |&(f, _)| f);
        if cur_flat > base_flat {
            growth_bytes = growth_bytes.saturating_add(cur_flat - base_flat);
            growth.push(FunctionDelta {
                function: function.clone(),
                base_bytes: base_flat,
                current_bytes: cur_flat,
                delta_bytes: signed_delta(cur_flat, base_flat),
                growth_percent: 0.0,
            });
        }
    }
    growth.sort_by(|a, b| {
        b.delta_bytes
            .cmp(&a.delta_bytes)
            .then_with(|| a.function.cmp(&b.function))
    });
    growth.truncate(top_n);
    for g in &mut growth {
        g.growth_percent = percent(g.delta_bytes.unsigned_abs(), growth_bytes);
    }
    Ok(HeapDiff {
        sample_type: cc.name,
        base_total_bytes: fb.total,
        current_total_bytes: fcur.total,
        total_delta_bytes: signed_delta(fcur.total, fb.total),
        growth_bytes,
        top_growth: growth,
    })
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
mod tests {
    use super::*;
    use std::io::Write;

    /// A tiny profile builder: strings are interned into the string table.
    struct B {
        p: Profile,
    }

    impl B {
        fn new(types: &[(&str, &str)]) -> Self {
            let mut b = B {
                p: Profile {
                    string_table: vec![String::new()],
                    ..Default::default()
                },
            };
            for (t, u) in types {
                let vt = ValueType {
                    r#type: b.s(t),
                    unit: b.s(u),
                };
                b.p.sample_type.push(vt);
            }
            b
        }

        fn s(&mut self, s: &str) -> i64 {
            if let Some(i) = self.p.string_table.iter().position(|x| x == s) {
                return i as i64;
            }
            self.p.string_table.push(s.to_string());
            (self.p.string_table.len() - 1) as i64
        }

        /// Adds a function and a location with one line of it; both get `id`.
        fn func(&mut self, id: u64, name: &str) -> &mut Self {
            let name = self.s(name);
            self.p.function.push(Function {
                id,
                name,
                ..Default::default()
            });
            self.p.location.push(Location {
                id,
                line: vec![Line {
                    function_id: id,
                    ..Default::default()
                }],
                ..Default::default()
            });
            self
        }

        fn sample(&mut self, locs: &[u64], values: &[i64]) -> &mut Self {
            self.p.sample.push(Sample {
                location_id: locs.to_vec(),
                value: values.to_vec(),
                label: vec![],
            });
            self
        }
    }

    const HEAP: &[(&str, &str)] = &[
        ("alloc_objects", "count"),
        ("alloc_space", "bytes"),
        ("inuse_objects", "count"),
        ("inuse_space", "bytes"),
    ];

    /// main.main → main.grow → main.leaf (700) ; main.main → main.grow (300)
    /// main.main → main.other (0 in use, 5000 allocated)
    fn heap_profile() -> Profile {
        let mut b = B::new(HEAP);
        b.func(1, "main.main")
            .func(2, "main.grow")
            .func(3, "main.leaf")
            .func(4, "main.other")
            .sample(&[3, 2, 1], &[7, 7000, 1, 700])
            .sample(&[2, 1], &[3, 3000, 1, 300])
            .sample(&[4, 1], &[5, 5000, 0, 0]);
        b.p
    }

    fn find<'a>(rows: &'a [FunctionBytes], name: &str) -> &'a FunctionBytes {
        rows.iter().find(|r| r.function == name).unwrap()
    }

    #[test]
    fn heap_summary_flat_and_cum() {
        let s = heap_summary(&heap_profile(), 10).unwrap();
        assert_eq!(s.sample_type, "inuse_space/bytes");
        assert!(!s.sample_type_fallback);
        assert_eq!(s.total_bytes, 1000);
        assert_eq!(s.sample_count, 3);
        assert_eq!(s.function_count, 4);
        // main.other has no in-use bytes: not listed.
        assert_eq!(s.top_flat.len(), 2);
        assert_eq!(s.top_flat[0].function, "main.leaf");
        assert_eq!(s.top_flat[0].flat_bytes, 700);
        assert_eq!(s.top_flat[0].flat_percent, 70.0);
        assert_eq!(s.top_flat[1].function, "main.grow");
        assert_eq!(s.top_flat[1].flat_bytes, 300);
        assert_eq!(s.top_flat[1].cum_bytes, 1000);
        assert_eq!(s.top_cum[0].cum_bytes, 1000);
        assert_eq!(find(&s.top_cum, "main.main").cum_bytes, 1000);
        assert_eq!(find(&s.top_cum, "main.main").flat_bytes, 0);
        assert_eq!(find(&s.top_cum, "main.leaf").cum_bytes, 700);
        // top_n truncates
        let s1 = heap_summary(&heap_profile(), 1).unwrap();
        assert_eq!(s1.top_flat.len(), 1);
        assert_eq!(s1.top_cum.len(), 1);
    }

    #[test]
    fn recursion_counts_cum_once_per_sample() {
        let mut b = B::new(&[("inuse_space", "bytes")]);
        b.func(1, "main.rec").func(2, "main.main");
        b.sample(&[1, 1, 1, 2], &[100]);
        let s = heap_summary(&b.p, 5).unwrap();
        let rec = find(&s.top_cum, "main.rec");
        assert_eq!(rec.cum_bytes, 100);
        assert_eq!(rec.flat_bytes, 100);
        assert_eq!(rec.cum_percent, 100.0);
    }

    #[test]
    fn inlined_leaf_is_the_first_line() {
        let mut b = B::new(&[("inuse_space", "bytes")]);
        let callee = b.s("main.inlinedAlloc");
        let caller = b.s("main.caller");
        b.p.function.push(Function {
            id: 10,
            name: callee,
            ..Default::default()
        });
        b.p.function.push(Function {
            id: 11,
            name: caller,
            ..Default::default()
        });
        b.p.location.push(Location {
            id: 5,
            line: vec![
                Line {
                    function_id: 10,
                    line: 3,
                    column: 0,
                },
                Line {
                    function_id: 11,
                    line: 9,
                    column: 0,
                },
            ],
            ..Default::default()
        });
        b.sample(&[5], &[64]);
        let s = heap_summary(&b.p, 5).unwrap();
        assert_eq!(s.top_flat.len(), 1);
        assert_eq!(s.top_flat[0].function, "main.inlinedAlloc");
        assert_eq!(find(&s.top_cum, "main.caller").cum_bytes, 64);
        assert_eq!(find(&s.top_cum, "main.caller").flat_bytes, 0);
    }

    #[test]
    fn same_name_different_ids_is_one_function() {
        let mut b = B::new(&[("inuse_space", "bytes")]);
        b.func(1, "main.f").func(2, "main.f");
        b.sample(&[1], &[10]).sample(&[2], &[20]);
        let s = heap_summary(&b.p, 5).unwrap();
        assert_eq!(s.function_count, 1);
        assert_eq!(s.top_flat[0].flat_bytes, 30);
    }

    #[test]
    fn malformed_indexes_do_not_panic() {
        let mut b = B::new(&[("inuse_space", "bytes")]);
        // Function name out of the string table, negative string index.
        b.p.function.push(Function {
            id: 1,
            name: 999,
            ..Default::default()
        });
        b.p.function.push(Function {
            id: 2,
            name: -5,
            ..Default::default()
        });
        b.p.location.push(Location {
            id: 1,
            line: vec![Line {
                function_id: 1,
                ..Default::default()
            }],
            ..Default::default()
        });
        b.p.location.push(Location {
            id: 2,
            line: vec![Line {
                function_id: 2,
                ..Default::default()
            }],
            ..Default::default()
        });
        // A line pointing to a function that does not exist.
        b.p.location.push(Location {
            id: 3,
            line: vec![Line {
                function_id: 77,
                ..Default::default()
            }],
            ..Default::default()
        });
        // A location without lines, with and without an address.
        b.p.location.push(Location {
            id: 4,
            address: 0x4010,
            ..Default::default()
        });
        b.p.location.push(Location {
            id: 5,
            ..Default::default()
        });
        b.sample(&[1], &[1])
            .sample(&[2], &[2])
            .sample(&[3], &[4])
            .sample(&[4], &[8])
            .sample(&[5], &[16])
            .sample(&[42, 1], &[32]) // missing location 42
            .sample(&[], &[64]) // no stack
            .sample(&[1], &[]) // too few values
            .sample(&[1], &[-1000]); // negative: counts as 0
        let s = heap_summary(&b.p, 20).unwrap();
        assert_eq!(s.total_bytes, 127);
        let names: Vec<&str> = s.top_flat.iter().map(|r| r.function.as_str()).collect();
        for want in [
            "<bad string index 999>",
            "<bad string index -5>",
            "<missing function 77>",
            "0x4010",
            "<location 5 without lines>",
            "<missing location 42>",
            "<no stack>",
        ] {
            assert!(names.contains(&want), "{want} not in {names:?}");
        }
        let flat_sum: u64 = s.top_flat.iter().map(|r| r.flat_bytes).sum();
        assert_eq!(flat_sum, s.total_bytes);

        let g = goroutine_summary(&b.p, 3);
        assert_eq!(g.total_goroutines, 127);
        assert_eq!(g.top_stacks.len(), 3);
    }

    #[test]
    fn sample_type_with_bad_string_index() {
        let mut p = Profile {
            string_table: vec![String::new()],
            ..Default::default()
        };
        p.sample_type.push(ValueType {
            r#type: 12345,
            unit: -1,
        });
        p.sample.push(Sample {
            location_id: vec![1],
            value: vec![5],
            label: vec![],
        });
        let err = heap_summary(&p, 5).unwrap_err();
        assert!(
            err.to_string().contains("<bad string index 12345>"),
            "{err}"
        );
        let g = goroutine_summary(&p, 5);
        assert_eq!(g.total_goroutines, 5);
        assert_eq!(g.top_stacks[0].functions, vec!["<missing location 1>"]);
    }

    #[test]
    fn empty_profile() {
        let p = Profile::default();
        let err = heap_summary(&p, 5).unwrap_err();
        assert!(matches!(err, PprofError::NoBytesSampleType { .. }));
        assert!(err.to_string().contains("no sample types at all"), "{err}");
        let g = goroutine_summary(&p, 5);
        assert_eq!(g.total_goroutines, 0);
        assert_eq!(g.distinct_stacks, 0);
        assert!(g.top_stacks.is_empty());

        // Sample types but no samples.
        let b = B::new(HEAP);
        let s = heap_summary(&b.p, 5).unwrap();
        assert_eq!(s.total_bytes, 0);
        assert!(s.top_flat.is_empty() && s.top_cum.is_empty());
        assert_eq!(verdict(&s, None), "heap 0B in use, no samples");
    }

    #[test]
    fn fallback_when_no_inuse_space() {
        // A legacy-style heap profile.
        let mut b = B::new(&[("objects", "count"), ("space", "bytes")]);
        b.func(1, "main.f").sample(&[1], &[1, 4096]);
        let s = heap_summary(&b.p, 5).unwrap();
        assert_eq!(s.sample_type, "space/bytes");
        assert!(s.sample_type_fallback);
        assert_eq!(s.total_bytes, 4096);

        // The default sample type wins among several in bytes.
        let mut b = B::new(&[("a", "bytes"), ("b", "bytes")]);
        b.p.default_sample_type = b.s("a");
        b.func(1, "main.f").sample(&[1], &[1, 2]);
        let s = heap_summary(&b.p, 5).unwrap();
        assert_eq!(s.sample_type, "a/bytes");
        assert_eq!(s.total_bytes, 1);

        // Nothing in bytes: an error naming what there is.
        let mut b = B::new(&[("goroutine", "count")]);
        b.func(1, "main.f").sample(&[1], &[3]);
        let err = heap_summary(&b.p, 5).unwrap_err();
        assert!(err.to_string().contains("goroutine/count"), "{err}");
    }

    #[test]
    fn goroutine_stacks() {
        let mut b = B::new(&[("goroutine", "count")]);
        b.func(1, "runtime.gopark")
            .func(2, "main.parked")
            .func(3, "main.main")
            .func(4, "main.busy")
            .sample(&[1, 2], &[700])
            .sample(&[1, 2], &[300]) // same stack again: merged
            .sample(&[4, 3], &[1])
            .sample(&[], &[1]);
        let g = goroutine_summary(&b.p, 3);
        assert!(g
            .top_stacks
            .iter()
            .any(|s| s.functions == ["<no stack>"] && s.goroutines == 1));
        let g = goroutine_summary(&b.p, 1);
        assert_eq!(g.total_goroutines, 1002);
        assert_eq!(g.distinct_stacks, 3);
        assert_eq!(g.top_stacks.len(), 1);
        assert_eq!(g.top_stacks[0].goroutines, 1000);
        assert_eq!(
            g.top_stacks[0].functions,
            vec!["runtime.gopark", "main.parked"]
        );
        assert_eq!(g.top_stacks[0].omitted_frames, 0);
    }

    #[test]
    fn deep_goroutine_stacks_are_cut() {
        let mut b = B::new(&[("goroutine", "count")]);
        b.func(1, "main.rec");
        b.sample(&[1; MAX_STACK_FRAMES + 10], &[1]);
        let g = goroutine_summary(&b.p, 1);
        assert_eq!(g.top_stacks[0].functions.len(), MAX_STACK_FRAMES);
        assert_eq!(g.top_stacks[0].omitted_frames, 10);
    }

    #[test]
    fn diff_by_name_across_ids() {
        let mut base = B::new(HEAP);
        base.func(1, "main.main")
            .func(2, "main.grow")
            .func(3, "main.shrink")
            .func(4, "main.same")
            .sample(&[2, 1], &[0, 0, 0, 100])
            .sample(&[3, 1], &[0, 0, 0, 500])
            .sample(&[4, 1], &[0, 0, 0, 50]);
        // Same functions, other ids, plus a new one.
        let mut cur = B::new(HEAP);
        cur.func(11, "main.same")
            .func(12, "main.new")
            .func(13, "main.grow")
            .func(14, "main.main")
            .func(15, "main.shrink")
            .sample(&[13, 14], &[0, 0, 0, 1100])
            .sample(&[15, 14], &[0, 0, 0, 200])
            .sample(&[11, 14], &[0, 0, 0, 50])
            .sample(&[12, 14], &[0, 0, 0, 300]);
        let d = heap_diff(&base.p, &cur.p, 10).unwrap();
        assert_eq!(d.sample_type, "inuse_space/bytes");
        assert_eq!(d.base_total_bytes, 650);
        assert_eq!(d.current_total_bytes, 1650);
        assert_eq!(d.total_delta_bytes, 1000);
        assert_eq!(d.growth_bytes, 1300);
        let names: Vec<&str> = d.top_growth.iter().map(|g| g.function.as_str()).collect();
        assert_eq!(names, vec!["main.grow", "main.new"]);
        assert_eq!(d.top_growth[0].base_bytes, 100);
        assert_eq!(d.top_growth[0].current_bytes, 1100);
        assert_eq!(d.top_growth[0].delta_bytes, 1000);
        assert_eq!(d.top_growth[1].base_bytes, 0);
        assert_eq!(d.top_growth[1].delta_bytes, 300);

        let d1 = heap_diff(&base.p, &cur.p, 1).unwrap();
        assert_eq!(d1.top_growth.len(), 1);

        // Reversed: the heap shrank overall, but main.shrink grew.
        let r = heap_diff(&cur.p, &base.p, 10).unwrap();
        assert_eq!(r.total_delta_bytes, -1000);
        assert_eq!(r.top_growth[0].function, "main.shrink");
        assert_eq!(r.top_growth[0].delta_bytes, 300);
    }

    #[test]
    fn diff_refuses_mismatched_sample_types() {
        let mut a = B::new(HEAP);
        a.func(1, "f").sample(&[1], &[1, 1, 1, 1]);
        let mut b = B::new(&[("space", "bytes")]);
        b.func(1, "f").sample(&[1], &[1]);
        let err = heap_diff(&a.p, &b.p, 5).unwrap_err();
        assert!(
            matches!(err, PprofError::SampleTypeMismatch { .. }),
            "{err}"
        );
        assert!(heap_diff(&Profile::default(), &a.p, 5).is_err());
    }

    #[test]
    fn verdicts() {
        const MIB: i64 = 1024 * 1024;
        let mut base = B::new(&[("inuse_space", "bytes")]);
        base.func(1, "main.warm")
            .func(2, "main.(*cache).put")
            .sample(&[1], &[48 * MIB]);
        let mut cur = B::new(&[("inuse_space", "bytes")]);
        cur.func(1, "main.warm")
            .func(2, "main.(*cache).put")
            .func(3, "main.other")
            .sample(&[1], &[48 * MIB])
            .sample(&[2], &[129 * MIB])
            .sample(&[3], &[53 * MIB]);
        let s = heap_summary(&cur.p, 5).unwrap();
        assert_eq!(
            verdict(&s, None),
            "heap 230MiB in use, 56% in main.(*cache).put"
        );
        let d = heap_diff(&base.p, &cur.p, 5).unwrap();
        assert_eq!(
            verdict(&s, Some(&d)),
            "heap +182MiB since baseline, 71% in main.(*cache).put (230MiB in use)"
        );
        // Nothing grew.
        let d = heap_diff(&cur.p, &base.p, 5).unwrap();
        let s = heap_summary(&base.p, 5).unwrap();
        assert_eq!(
            verdict(&s, Some(&d)),
            "heap -182MiB since baseline, no function grew (48MiB in use)"
        );
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1024), "1KiB");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(182 * 1024 * 1024), "182MiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 / 2 * 1024), "1.5GiB");
        assert_eq!(human_bytes(1024 * 1024 - 1), "1MiB");
        assert_eq!(human_bytes(u64::MAX), "16EiB");
        assert_eq!(human_bytes_signed(0), "0B");
        assert_eq!(human_bytes_signed(182 * 1024 * 1024), "+182MiB");
        assert_eq!(human_bytes_signed(-5 * 1024 * 1024), "-5MiB");
        assert_eq!(human_bytes_signed(i64::MIN), "-8EiB");
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn decode_raw_and_gzip_round_trip() {
        let p = heap_profile();
        let raw = p.encode_to_vec();
        assert_eq!(decode(&raw).unwrap(), p);
        assert_eq!(decode(&gzip(&raw)).unwrap(), p);
    }

    #[test]
    fn repeated_scalars_are_packed() {
        let p = Profile {
            sample: vec![Sample {
                location_id: vec![1, 2, 3],
                value: vec![4, 5],
                label: vec![],
            }],
            ..Default::default()
        };
        let raw = p.encode_to_vec();
        // Profile.sample (2, LEN), then Sample.location_id as (1, LEN) packed.
        assert_eq!(&raw[..5], &[0x12, 0x09, 0x0a, 0x03, 0x01]);
        // Unpacked encodings are accepted too (protobuf requires it).
        let unpacked = [0x12, 0x06, 0x08, 0x07, 0x08, 0x08, 0x10, 0x09];
        let q = decode(&unpacked).unwrap();
        assert_eq!(q.sample[0].location_id, vec![7, 8]);
        assert_eq!(q.sample[0].value, vec![9]);
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(matches!(decode(&[]), Err(PprofError::Empty)));
        let err = decode(b"<html><body>404 page not found</body></html>").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("the profile is not gzip'd protobuf"),
            "{msg}"
        );
        assert!(msg.contains("looks like text"), "{msg}");
        let err = decode(&[0xff; 64]).unwrap_err();
        assert!(matches!(err, PprofError::NotProtobuf { .. }), "{err}");
        // Gzip'd garbage.
        let err = decode(&gzip(&[0xff; 64])).unwrap_err();
        assert!(matches!(err, PprofError::NotProtobuf { .. }), "{err}");
    }

    #[test]
    fn decode_rejects_truncated_gzip() {
        let gz = gzip(&heap_profile().encode_to_vec());
        for cut in [2, 10, gz.len() / 2, gz.len() - 4, gz.len() - 1] {
            let err = decode(&gz[..cut]).unwrap_err();
            assert!(matches!(err, PprofError::Gzip(_)), "cut at {cut}: {err}");
        }
    }

    #[test]
    fn decode_caps_decompressed_size() {
        let bomb = gzip(&vec![0u8; 1 << 20]);
        assert!(bomb.len() < 8 * 1024);
        let err = decode_with_limit(&bomb, 64 * 1024).unwrap_err();
        assert!(
            matches!(err, PprofError::TooLarge { limit: 65536 }),
            "{err}"
        );
        assert!(err.to_string().contains("65536"), "{err}");
        // Raw input over the cap as well.
        let raw = heap_profile().encode_to_vec();
        let err = decode_with_limit(&raw, 3).unwrap_err();
        assert!(matches!(err, PprofError::TooLarge { .. }), "{err}");
        // Exactly at the cap is fine.
        let gz = gzip(&raw);
        assert!(decode_with_limit(&gz, raw.len() as u64).is_ok());
    }

    #[test]
    fn decode_file_errors_name_the_path() {
        let err = decode_file("/nonexistent/oomsnap/heap.pb.gz").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/oomsnap/heap.pb.gz"), "{msg}");
    }

    #[test]
    fn pseudo_random_bytes_never_panic() {
        // A cheap, deterministic stand-in until the real fuzzer exists.
        let seed = heap_profile().encode_to_vec();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let mut bytes = seed.clone();
            for _ in 0..(next() % 8 + 1) {
                let i = (next() as usize) % bytes.len();
                bytes[i] = next() as u8;
            }
            if let Ok(p) = decode(&bytes) {
                let _ = heap_summary(&p, 5);
                let _ = goroutine_summary(&p, 5);
                let _ = heap_diff(&p, &heap_profile(), 5);
            }
        }
    }
}
