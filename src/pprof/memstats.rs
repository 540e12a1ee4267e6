//! Go's own memory numbers: the `# runtime.MemStats` trailer of
//! `/debug/pprof/heap?debug=1`.
//!
//! In: the text body in chunks of any size, as they arrive
//! ([`MemStatsParser::feed`]), or whole ([`parse`]).
//! Out: [`MemStats`], every field optional, since a Go version may print
//! more or fewer lines than Go 1.19 does.
//!
//! The trailer sits at the end of a body whose heap records, before it,
//! can run to megabytes. The parser keeps at most one line
//! ([`MAX_LINE`] bytes) and the 256 recent GC pauses: the records stream
//! through without being held, and a line too long to be a trailer line is
//! skipped. A final line without its newline is ignored, since Go ends
//! every line and a cut line could hold a cut number.
//!
//! Go prints `MemStats` with `%d` and `%v`, so every field is one number,
//! except `Stack`, `MSpan` and `MCache` (`inuse / sys`), the `PauseNs` and
//! `PauseEnd` rings (`[a b …]`) and `DebugGC` (a bool). `PauseTotalNs` is
//! not printed; it is rebuilt from the ring while the ring still holds
//! every GC.

use serde::{Deserialize, Serialize};

/// The longest line kept: a `PauseNs` line is 256 numbers of up to 20
/// digits, about 5.4 KiB.
pub const MAX_LINE: usize = 8 << 10;

/// Entries in Go's ring of recent GC pauses (`MemStats.PauseNs`).
const PAUSE_RING: usize = 256;

/// The line that opens the trailer.
const MARKER: &[u8] = b"# runtime.MemStats";

/// Go's `runtime.MemStats`, as `heap?debug=1` prints it. Bytes unless
/// said otherwise; `None` when the line is missing or does not parse.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemStats {
    pub alloc: Option<u64>,
    pub total_alloc: Option<u64>,
    /// Everything the Go runtime obtained from the OS.
    pub sys: Option<u64>,
    pub lookups: Option<u64>,
    pub mallocs: Option<u64>,
    pub frees: Option<u64>,
    pub heap_alloc: Option<u64>,
    pub heap_sys: Option<u64>,
    pub heap_idle: Option<u64>,
    pub heap_inuse: Option<u64>,
    /// Heap memory given back to the OS.
    pub heap_released: Option<u64>,
    /// Live heap objects (a count).
    pub heap_objects: Option<u64>,
    pub stack_inuse: Option<u64>,
    pub stack_sys: Option<u64>,
    pub mspan_inuse: Option<u64>,
    pub mspan_sys: Option<u64>,
    pub mcache_inuse: Option<u64>,
    pub mcache_sys: Option<u64>,
    pub buck_hash_sys: Option<u64>,
    pub gc_sys: Option<u64>,
    pub other_sys: Option<u64>,
    /// The heap size at which the next GC starts.
    pub next_gc: Option<u64>,
    /// When the last GC ended, in ns since the Unix epoch (0: never).
    pub last_gc: Option<u64>,
    pub num_gc: Option<u64>,
    pub num_forced_gc: Option<u64>,
    /// The share of CPU time spent in GC since the program started.
    pub gc_cpu_fraction: Option<f64>,
    pub debug_gc: Option<bool>,
    /// The process's peak RSS, from getrusage (Go 1.18+ on Linux).
    pub max_rss: Option<u64>,
    /// Total GC pause time in ns: the sum of the pause ring, known only
    /// while it still holds every GC (`num_gc` ≤ 256).
    pub pause_total_ns: Option<u64>,
    /// The most recent GC's pause in ns.
    pub last_pause_ns: Option<u64>,
}

/// Why no numbers came out.
#[derive(Debug, thiserror::Error)]
pub enum MemStatsError {
    #[error(
        "no \"# runtime.MemStats\" section in {scanned} bytes: not the text of a Go \
         /debug/pprof/heap?debug=1 answer"
    )]
    NoTrailer { scanned: u64 },
    #[error("the \"# runtime.MemStats\" section holds no line oomsnap can read")]
    NoFields,
}

/// Reads a `heap?debug=1` body chunk by chunk, keeping one line at most.
#[derive(Debug, Default)]
pub struct MemStatsParser {
    line: Vec<u8>,
    /// The current line is past [`MAX_LINE`]: skip to its end.
    skipping: bool,
    in_trailer: bool,
    fields: usize,
    scanned: u64,
    stats: MemStats,
    pauses: Vec<u64>,
}

impl MemStatsParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next bytes of the body.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        self.scanned += chunk.len() as u64;
        while !chunk.is_empty() {
            let end = chunk.iter().position(|&b| b == b'\n');
            let (part, rest) = match end {
                Some(i) => (&chunk[..i], &chunk[i + 1..]),
                None => (chunk, &[][..]),
            };
            if !self.skipping {
                if self.line.len() + part.len() > MAX_LINE {
                    self.skipping = true;
                    self.line = Vec::new();
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            if end.is_some() {
                if !self.skipping {
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line);
                    self.line = line;
                    self.line.clear();
                }
                self.skipping = false;
            }
            chunk = rest;
        }
    }

    fn line_done(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line == MARKER {
            // A later trailer (two bodies in one stream) wins.
            self.in_trailer = true;
            self.fields = 0;
            self.stats = MemStats::default();
            self.pauses.clear();
            return;
        }
        if !self.in_trailer {
            return;
        }
        let Some((key, value)) = std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.strip_prefix("# "))
            .and_then(|l| l.split_once(" = "))
        else {
            return;
        };
        if self.set(key.trim(), value.trim()) {
            self.fields += 1;
        }
    }

    /// Stores one `Key = value`; false when the key is unknown or the value
    /// does not parse.
    fn set(&mut self, key: &str, value: &str) -> bool {
        let s = &mut self.stats;
        let one = |slot: &mut Option<u64>| {
            *slot = value.parse().ok();
            slot.is_some()
        };
        let pair = |inuse: &mut Option<u64>, sys: &mut Option<u64>| {
            let (a, b) = value.split_once(" / ").unwrap_or((value, ""));
            *inuse = a.trim().parse().ok();
            *sys = b.trim().parse().ok();
            inuse.is_some() || sys.is_some()
        };
        match key {
            "Alloc" => one(&mut s.alloc),
            "TotalAlloc" => one(&mut s.total_alloc),
            "Sys" => one(&mut s.sys),
            "Lookups" => one(&mut s.lookups),
            "Mallocs" => one(&mut s.mallocs),
            "Frees" => one(&mut s.frees),
            "HeapAlloc" => one(&mut s.heap_alloc),
            "HeapSys" => one(&mut s.heap_sys),
            "HeapIdle" => one(&mut s.heap_idle),
            "HeapInuse" => one(&mut s.heap_inuse),
            "HeapReleased" => one(&mut s.heap_released),
            "HeapObjects" => one(&mut s.heap_objects),
            "Stack" => pair(&mut s.stack_inuse, &mut s.stack_sys),
            "MSpan" => pair(&mut s.mspan_inuse, &mut s.mspan_sys),
            "MCache" => pair(&mut s.mcache_inuse, &mut s.mcache_sys),
            "BuckHashSys" => one(&mut s.buck_hash_sys),
            "GCSys" => one(&mut s.gc_sys),
            "OtherSys" => one(&mut s.other_sys),
            "NextGC" => one(&mut s.next_gc),
            "LastGC" => one(&mut s.last_gc),
            "NumGC" => one(&mut s.num_gc),
            "NumForcedGC" => one(&mut s.num_forced_gc),
            "MaxRSS" => one(&mut s.max_rss),
            "GCCPUFraction" => {
                s.gc_cpu_fraction = value.parse().ok().filter(|f: &f64| f.is_finite());
                s.gc_cpu_fraction.is_some()
            }
            "DebugGC" => {
                s.debug_gc = value.parse().ok();
                s.debug_gc.is_some()
            }
            "PauseNs" => {
                let ring = value
                    .strip_prefix('[')
                    .and_then(|v| v.strip_suffix(']'))
                    .map(|v| {
                        v.split_ascii_whitespace()
                            .map(str::parse)
                            .collect::<Result<Vec<u64>, _>>()
                    });
                match ring {
                    Some(Ok(ring)) if ring.len() == PAUSE_RING => {
                        self.pauses = ring;
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }

    /// The numbers read, once the body has ended.
    pub fn finish(mut self) -> Result<MemStats, MemStatsError> {
        if !self.in_trailer {
            return Err(MemStatsError::NoTrailer {
                scanned: self.scanned,
            });
        }
        if self.fields == 0 {
            return Err(MemStatsError::NoFields);
        }
        if let (Some(n), false) = (self.stats.num_gc, self.pauses.is_empty()) {
            // The ring's newest entry is at (NumGC + 255) % 256.
            if n > 0 {
                let newest = (n as usize + PAUSE_RING - 1) % PAUSE_RING;
                self.stats.last_pause_ns = Some(self.pauses[newest]);
            }
            if n <= PAUSE_RING as u64 {
                let total = self.pauses.iter().fold(0u64, |a, &p| a.saturating_add(p));
                self.stats.pause_total_ns = Some(total);
            }
        }
        Ok(self.stats)
    }
}

/// Parses a whole body held in memory.
pub fn parse(body: &[u8]) -> Result<MemStats, MemStatsError> {
    let mut p = MemStatsParser::new();
    p.feed(body);
    p.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/pprof")
            .join(name)
    }

    fn read(name: &str) -> Vec<u8> {
        std::fs::read(fixture(name)).unwrap()
    }

    /// The 100 MiB leak: every number as the file prints it.
    #[test]
    fn reads_every_number_go_1_19_prints() {
        let m = parse(&read("heap_debug1_leak.txt")).unwrap();
        assert_eq!(m.alloc, Some(126050312));
        assert_eq!(m.total_alloc, Some(126193464));
        assert_eq!(m.sys, Some(142786840));
        assert_eq!(m.lookups, Some(0));
        assert_eq!(m.mallocs, Some(1900));
        assert_eq!(m.frees, Some(745));
        assert_eq!(m.heap_alloc, Some(126050312));
        assert_eq!(m.heap_sys, Some(129531904));
        assert_eq!(m.heap_idle, Some(2957312));
        assert_eq!(m.heap_inuse, Some(126574592));
        assert_eq!(m.heap_released, Some(2637824));
        assert_eq!(m.heap_objects, Some(1155));
        assert_eq!((m.stack_inuse, m.stack_sys), (Some(491520), Some(491520)));
        assert_eq!((m.mspan_inuse, m.mspan_sys), (Some(39456), Some(48816)));
        assert_eq!((m.mcache_inuse, m.mcache_sys), (Some(2400), Some(15600)));
        assert_eq!(m.buck_hash_sys, Some(1444821));
        assert_eq!(m.gc_sys, Some(10710136));
        assert_eq!(m.other_sys, Some(544043));
        assert_eq!(m.next_gc, Some(252373888));
        assert_eq!(m.last_gc, Some(1796031064608658751));
        assert_eq!(m.num_gc, Some(6));
        assert_eq!(m.num_forced_gc, Some(1));
        assert_eq!(m.gc_cpu_fraction, Some(0.04139973182334214));
        assert_eq!(m.debug_gc, Some(false));
        assert_eq!(m.max_rss, Some(137035776));
        // Six GCs: the ring holds them all; the newest is entry 5.
        assert_eq!(m.pause_total_ns, Some(244404));
        assert_eq!(m.last_pause_ns, Some(39529));
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        for name in ["heap_debug1_idle.txt", "heap_debug1_leak.txt"] {
            let body = read(name);
            let whole = parse(&body).unwrap();
            for size in [1, 2, 7, 64, 4096] {
                let mut p = MemStatsParser::new();
                for c in body.chunks(size) {
                    p.feed(c);
                }
                assert_eq!(p.finish().unwrap(), whole, "{name} in chunks of {size}");
            }
        }
    }

    #[test]
    fn the_idle_fixture_has_its_own_numbers() {
        let m = parse(&read("heap_debug1_idle.txt")).unwrap();
        assert_eq!(m.heap_alloc, Some(22237896));
        assert_eq!(m.num_gc, Some(4));
        assert_eq!(m.last_pause_ns, Some(10947));
        assert_eq!(m.pause_total_ns, Some(32168 + 4816571 + 89514 + 10947));
    }

    #[test]
    fn a_big_body_streams_through_one_line_of_memory() {
        // 20 MiB of heap records, one line of 1 MiB, then the trailer.
        let mut p = MemStatsParser::new();
        let record = b"1: 416 [1: 416] @ 0x441b28 0x441dde\n#\t0x441b27\truntime.malg+0x27\n";
        for _ in 0..(20 << 20) / record.len() {
            p.feed(record);
        }
        p.feed(&vec![b'x'; 1 << 20]);
        p.feed(b"\n\n# runtime.MemStats\n# HeapAlloc = 42\n");
        assert!(p.line.capacity() <= MAX_LINE, "{}", p.line.capacity());
        let m = p.finish().unwrap();
        assert_eq!(m.heap_alloc, Some(42));
        assert_eq!(m.sys, None);
    }

    #[test]
    fn missing_extra_and_broken_lines_are_tolerated() {
        let body = "# runtime.MemStats\r\n\
                    # HeapAlloc = 100\r\n\
                    # HeapSys = lots\n\
                    # Stack = 7 / x\n\
                    # Sys = 99999999999999999999999\n\
                    # GCCPUFraction = NaN\n\
                    # NewThing = 5\n\
                    not a comment\n\
                    # PauseNs = [1 2 3]\n\
                    # NumGC = 3\n\
                    # DebugGC = maybe\n";
        let m = parse(body.as_bytes()).unwrap();
        assert_eq!(m.heap_alloc, Some(100));
        assert_eq!(m.heap_sys, None);
        assert_eq!((m.stack_inuse, m.stack_sys), (Some(7), None));
        assert_eq!(m.sys, None, "overflows u64");
        assert_eq!(m.gc_cpu_fraction, None);
        assert_eq!(m.debug_gc, None);
        assert_eq!(m.num_gc, Some(3));
        // A ring that is not 256 entries is not trusted.
        assert_eq!((m.pause_total_ns, m.last_pause_ns), (None, None));
    }

    #[test]
    fn a_cut_last_line_and_a_second_trailer() {
        // Cut mid-number: the last line has no newline and is dropped.
        let m = parse(b"# runtime.MemStats\n# HeapAlloc = 100\n# Sys = 12").unwrap();
        assert_eq!((m.heap_alloc, m.sys), (Some(100), None));
        // Two bodies in one stream: the later trailer wins whole.
        let m =
            parse(b"# runtime.MemStats\n# Sys = 1\n# runtime.MemStats\n# HeapAlloc = 2\n").unwrap();
        assert_eq!((m.sys, m.heap_alloc), (None, Some(2)));
    }

    #[test]
    fn bodies_without_a_trailer_say_so() {
        for body in [
            &b"<html><body>404 page not found</body></html>"[..],
            &[0x1f, 0x8b, 8, 0, 0, 0],
            b"",
            b"heap profile: 1: 2 [3: 4] @ heap/1048576\n",
        ] {
            let err = parse(body).unwrap_err();
            assert!(matches!(err, MemStatsError::NoTrailer { .. }), "{err}");
            assert!(err.to_string().contains("heap?debug=1"), "{err}");
        }
        let err = parse(b"# runtime.MemStats\n# Nothing = here\n").unwrap_err();
        assert!(matches!(err, MemStatsError::NoFields), "{err}");
        // An over-long marker line is not a marker.
        let mut long = b"# runtime.MemStats".to_vec();
        long.extend(vec![b' '; MAX_LINE]);
        long.extend_from_slice(b"\n# HeapAlloc = 1\n");
        assert!(parse(&long).is_err());
    }
}
