//! The hostile bodies of `tests/pprof_budget.rs`, built in the test:
//! protobuf bombs as found (issue 11) and as we thought of them, and a
//! gzip bomb written bit by bit.

use std::io::Write;
use std::sync::OnceLock;

use oomsnap::pprof::{self, Budget, Function, Line, Location, Profile, Sample, ValueType};
use prost::Message;

use super::MIB;

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A length-delimited field `tag` holding `payload`.
fn field(tag: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 12);
    varint(tag << 3 | 2, &mut out);
    varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(raw).unwrap();
    e.finish().unwrap()
}

/// One `parent` message (a Profile field) holding `n` empty `child`
/// messages: 2 bytes each on the wire, a whole struct each decoded.
fn empty_children(parent: u64, child: u8, n: usize) -> Vec<u8> {
    field(parent, &[child << 3 | 2, 0].repeat(n))
}

/// A gzip member of about `body_len` bytes that inflates ~160-fold to
/// zeros: one fixed-Huffman block of a literal 0 and then matches of 258
/// bytes at distance 1, 13 bits each. Built by hand, because compressing
/// hundreds of MiB in a debug test would take minutes.
fn zero_bomb(body_len: usize) -> (Vec<u8>, u64) {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, value: u64, len: u32) {
            self.acc |= value << self.n;
            self.n += len;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// Huffman codes go most significant bit first.
        fn code(&mut self, code: u64, len: u32) {
            let reversed = (0..len).fold(0, |r, i| r | ((code >> i) & 1) << (len - 1 - i));
            self.put(reversed, len);
        }
    }
    let mut bits = Bits {
        out: vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff],
        acc: 0,
        n: 0,
    };
    bits.put(1, 1); // BFINAL
    bits.put(1, 2); // BTYPE 01: fixed Huffman codes
    bits.code(0x30, 8); // literal 0
    let matches = (body_len - 20) * 8 / 13;
    for _ in 0..matches {
        bits.code(0xc5, 8); // length symbol 285: 258 bytes
        bits.code(0, 5); // distance symbol 0: distance 1
    }
    bits.code(0, 7); // end of block
    if bits.n > 0 {
        bits.out.push(bits.acc as u8);
    }
    let inflated = 1 + 258 * matches as u64;
    // CRC-32 of the zeros: a MiB at a time, combined.
    let mut crc = flate2::Crc::new();
    let mut mib = flate2::Crc::new();
    mib.update(&vec![0; MIB as usize]);
    for _ in 0..inflated / MIB {
        crc.combine(&mib);
    }
    let mut tail = flate2::Crc::new();
    tail.update(&vec![0; (inflated % MIB) as usize]);
    crc.combine(&tail);
    bits.out.extend_from_slice(&crc.sum().to_le_bytes());
    bits.out.extend_from_slice(&(inflated as u32).to_le_bytes());
    (bits.out, inflated)
}

/// `n` goroutines, each on its own stack of 1024 frames: a distinct leaf
/// above one location with 1023 inlined lines. Small on the wire; the
/// summariser before the budget copied every distinct stack's frames.
fn deep_stacks(n: usize) -> Profile {
    let mut strings: Vec<String> = [
        "",
        "inuse_space",
        "bytes",
        "goroutine",
        "count",
        "main.deep",
    ]
    .map(String::from)
    .to_vec();
    let mut p = Profile {
        sample_type: vec![
            ValueType { r#type: 1, unit: 2 },
            ValueType { r#type: 3, unit: 4 },
        ],
        ..Default::default()
    };
    let func = |id: u64, name: usize| Function {
        id,
        name: name as i64,
        ..Default::default()
    };
    let location = |id: u64, function_id: u64, lines: usize| Location {
        id,
        line: vec![
            Line {
                function_id,
                ..Default::default()
            };
            lines
        ],
        ..Default::default()
    };
    p.function.push(func(1, 5));
    p.location.push(location(1, 1, 1023));
    for i in 0..n as u64 {
        strings.push(format!("main.leaf{i}"));
        p.function.push(func(i + 2, strings.len() - 1));
        p.location.push(location(i + 2, i + 2, 1));
        p.sample.push(Sample {
            location_id: vec![i + 2, 1],
            value: vec![1024, 1],
            label: vec![],
        });
    }
    p.string_table = strings;
    p
}

/// The most of `make(n)` that fits the sidecar's decode budget.
fn largest_that_fits(make: impl Fn(usize) -> Vec<u8>) -> (usize, Vec<u8>) {
    let fits = |n: usize| {
        pprof::estimate(&make(n), Budget::SIDECAR)
            .map(|e| e.check(Budget::SIDECAR).is_ok())
            .unwrap_or(false)
    };
    let (mut lo, mut hi) = (1usize, 1 << 16);
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo, make(lo))
}

/// What a capture of a body must record.
#[derive(Clone, Copy)]
pub enum Expect {
    /// Not summarised; each profile's note holds this.
    Refused(&'static str),
    /// Summarised: heap and goroutines, and the diff against itself unless
    /// the baseline is what does not fit.
    Summarised,
}

pub struct Body {
    pub name: String,
    pub gz: Vec<u8>,
    pub inflated: u64,
    pub expect: Expect,
}

fn body(name: impl Into<String>, raw: &[u8], expect: Expect) -> Body {
    Body {
        name: name.into(),
        gz: gzip(raw),
        inflated: raw.len() as u64,
        expect,
    }
}

/// The table, built once for both tests.
pub fn hostile_bodies() -> &'static [Body] {
    static BODIES: OnceLock<Vec<Body>> = OnceLock::new();
    BODIES.get_or_init(build_bodies)
}

/// Each body as found (issue 11) or as we thought of it.
fn build_bodies() -> Vec<Body> {
    // The old cap was 16 MiB inflated, so "as found" fills it.
    let as_found = (16 * MIB as usize - 16) / 2;
    let in_budget = (pprof::SIDECAR_RAW_BUDGET as usize - 16) / 2;
    let (zeros, zeros_inflated) = zero_bomb(2_000_000);
    let (n, deep) = largest_that_fits(|n| deep_stacks(n).encode_to_vec());
    vec![
        body(
            "nested Label bomb (as found)",
            &empty_children(2, 3, as_found),
            Expect::Refused("over 4MiB"),
        ),
        body(
            "Location line-table bomb (as found)",
            &empty_children(4, 4, as_found),
            Expect::Refused("over 4MiB"),
        ),
        body(
            "nested Label bomb, 4 MiB inflated",
            &empty_children(2, 3, in_budget),
            Expect::Refused("Label entries"),
        ),
        Body {
            name: "plain 2 MB gzip bomb".into(),
            gz: zeros,
            inflated: zeros_inflated,
            expect: Expect::Refused("over 4MiB"),
        },
        body(
            "packed 1-byte location ids, 4 MiB",
            &field(2, &field(1, &vec![1u8; in_budget * 2 - 16])),
            Expect::Refused("Sample location ids"),
        ),
        body(
            format!("{n} distinct 1024-frame stacks (fits)"),
            &deep,
            Expect::Summarised,
        ),
    ]
}
