//! Where the working set went: parts that add up, and the one that grew.
//!
//! Go's heap profile shows the heap as of the last completed GC; on a fast
//! climb that GC is long past, and the working set also holds GC headroom,
//! retained heap, stacks, runtime metadata, page cache and kernel memory.
//! So at each capture oomsnap reads two cheap sources — the cgroup's
//! `memory.stat` and the Go runtime's `MemStats` (the trailer of
//! `heap?debug=1`) — and this module splits the working set into parts:
//!
//! | part | from |
//! |---|---|
//! | `go_heap` | `HeapInuse`: live at the profiled GC, allocated since, and free space in spans |
//! | `go_heap_retained` | `HeapIdle − HeapReleased`: heap the runtime keeps but does not use |
//! | `go_stacks` | `StackInuse` |
//! | `go_runtime` | `MSpanInuse + MCacheInuse + BuckHashSys + GCSys + OtherSys` |
//! | `page_cache` | `active_file`: file pages the kernel counts in the working set |
//! | `kernel` | the cgroup's kernel memory (slab, kernel stacks, page tables…) and socket buffers |
//! | `other` | what is left: non-Go memory (cgo, other processes), and timing skew |
//!
//! Pure: numbers enter as [`Inputs`], a [`Breakdown`] leaves, and
//! [`Breakdown::verdict`] says in one line which part grew since the
//! baseline's breakdown. Without `MemStats` (not a Go app, or the request
//! failed) the cgroup's `anon` stands for the Go parts; without a cgroup
//! (the `process-rss` source) the page cache and kernel are unknown.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::pprof::human_bytes;
use crate::pprof::memstats::MemStats;

/// The cgroup's side, read at the moment of the capture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupMemory {
    pub usage: u64,
    pub working_set: u64,
    pub anon: Option<u64>,
    pub active_file: Option<u64>,
    /// All kernel memory, when the kernel says (v2 `kernel`, v1
    /// `memory.kmem.usage_in_bytes`).
    pub kernel: Option<u64>,
    /// Its parts, used when the total is not given.
    pub kernel_parts: Option<u64>,
    pub sock: Option<u64>,
}

/// What the breakdown is made from.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// The working set to split when there is no cgroup reading.
    pub working_set: u64,
    pub cgroup: Option<CgroupMemory>,
    pub go: Option<MemStats>,
    /// The heap profile's in-use total: the live heap at the last GC.
    pub heap_profile_bytes: Option<u64>,
    /// When the sources were read (for the age of the last GC).
    pub at: Option<SystemTime>,
}

/// One part of the working set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// A stable key: `go_heap`, `go_stacks`, `page_cache`, …
    pub name: String,
    pub bytes: u64,
}

/// The Go heap in detail, when `MemStats` was read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoHeap {
    /// `HeapInuse`.
    pub in_use_bytes: u64,
    /// The heap profile's total: live at the last completed GC.
    pub live_at_last_gc_bytes: Option<u64>,
    /// `HeapAlloc` now minus that: allocated since, not in the profile.
    pub allocated_since_gc_bytes: Option<u64>,
    pub next_gc_bytes: Option<u64>,
    pub num_gc: Option<u64>,
    /// How long before the reading the last GC finished.
    pub last_gc_seconds_ago: Option<f64>,
}

/// The working set, split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Breakdown {
    pub working_set_bytes: u64,
    /// In a fixed order; `other` last. They add up to the working set.
    pub parts: Vec<Part>,
    /// The named parts (all but `other`): what the sources explain.
    pub explained_bytes: u64,
    /// When the named parts add up to more than the working set (the
    /// sources were read a few milliseconds apart on a fast climb).
    #[serde(default)]
    pub overcounted_bytes: u64,
    /// Retained heap Go has mapped but the kernel never backed (Go's parts
    /// exceeded the cgroup's anonymous memory by this much): left out.
    #[serde(default)]
    pub go_mapped_not_resident_bytes: u64,
    pub go: Option<GoHeap>,
    pub sources: Vec<String>,
}

/// Human names of the parts, for sentences.
fn label(name: &str) -> &str {
    match name {
        "go_heap" => "Go heap",
        "go_heap_retained" => "retained heap",
        "go_stacks" => "stacks",
        "go_runtime" => "runtime",
        "anon" => "anonymous memory",
        "page_cache" => "page cache",
        "kernel" => "kernel",
        _ => "other",
    }
}

fn sum(values: &[Option<u64>]) -> Option<u64> {
    values.iter().flatten().copied().reduce(u64::saturating_add)
}

/// Splits the working set.
pub fn compute(i: &Inputs) -> Breakdown {
    let ws = i.cgroup.map_or(i.working_set, |c| c.working_set);
    let mut parts: Vec<Part> = Vec::new();
    let mut sources = Vec::new();
    let mut push = |name: &str, bytes: Option<u64>| {
        if let Some(b) = bytes {
            parts.push(Part {
                name: name.into(),
                bytes: b,
            });
        }
    };
    let mut go = None;
    let mut not_resident = 0;
    if let Some(m) = &i.go {
        sources.push("go_memstats".to_string());
        let runtime = sum(&[
            m.mspan_inuse,
            m.mcache_inuse,
            m.buck_hash_sys,
            m.gc_sys,
            m.other_sys,
        ]);
        let mut retained = m
            .heap_idle
            .zip(m.heap_released)
            .map(|(i, r)| i.saturating_sub(r));
        // Go counts memory it has mapped; the kernel counts pages touched.
        // Idle spans the heap grew into but never used are mapped, not
        // resident: when Go's parts exceed the cgroup's anonymous memory,
        // the excess comes out of the retained heap first.
        let go_total = sum(&[m.heap_inuse, retained, m.stack_inuse, runtime]).unwrap_or(0);
        if let (Some(anon), Some(r)) = (i.cgroup.and_then(|c| c.anon), retained.as_mut()) {
            not_resident = go_total.saturating_sub(anon).min(*r);
            *r -= not_resident;
        }
        push("go_heap", m.heap_inuse);
        push("go_heap_retained", retained);
        push("go_stacks", m.stack_inuse);
        push("go_runtime", runtime);
        let age = match (m.last_gc, i.at) {
            (Some(ns), Some(at)) if ns > 0 => at
                .duration_since(SystemTime::UNIX_EPOCH + Duration::from_nanos(ns))
                .ok()
                .map(|d| (d.as_secs_f64() * 1e3).round() / 1e3),
            _ => None,
        };
        go = m.heap_inuse.map(|in_use| GoHeap {
            in_use_bytes: in_use,
            live_at_last_gc_bytes: i.heap_profile_bytes,
            allocated_since_gc_bytes: match (m.heap_alloc, i.heap_profile_bytes) {
                (Some(now), Some(at_gc)) => Some(now.saturating_sub(at_gc)),
                _ => None,
            },
            next_gc_bytes: m.next_gc,
            num_gc: m.num_gc,
            last_gc_seconds_ago: age,
        });
    }
    if let Some(c) = &i.cgroup {
        sources.push("cgroup_memory_stat".to_string());
        if i.go.is_none() {
            push("anon", c.anon);
        }
        push("page_cache", c.active_file);
        let kernel = c.kernel.or(c.kernel_parts);
        push("kernel", sum(&[kernel, c.sock]));
    }
    let explained: u64 = parts.iter().map(|p| p.bytes).fold(0, u64::saturating_add);
    parts.push(Part {
        name: "other".into(),
        bytes: ws.saturating_sub(explained),
    });
    Breakdown {
        working_set_bytes: ws,
        parts,
        explained_bytes: explained,
        overcounted_bytes: explained.saturating_sub(ws),
        go_mapped_not_resident_bytes: not_resident,
        go,
        sources,
    }
}

impl Breakdown {
    pub fn part(&self, name: &str) -> u64 {
        self.parts
            .iter()
            .find(|p| p.name == name)
            .map_or(0, |p| p.bytes)
    }

    /// `working set 243MiB = Go heap 170MiB (live at last GC 89MiB,
    /// allocated since 81MiB) + stacks 2MiB + …`
    pub fn equation(&self) -> String {
        let terms: Vec<String> = self
            .parts
            .iter()
            .filter(|p| p.bytes > 0 || p.name == "other")
            .map(|p| {
                let mut t = format!("{} {}", label(&p.name), human_bytes(p.bytes));
                if let (true, Some(g)) = (p.name == "go_heap", &self.go) {
                    if let (Some(live), Some(since)) =
                        (g.live_at_last_gc_bytes, g.allocated_since_gc_bytes)
                    {
                        t.push_str(&format!(
                            " (live at last GC {}, allocated since {})",
                            human_bytes(live),
                            human_bytes(since)
                        ));
                    }
                }
                t
            })
            .collect();
        format!(
            "working set {} = {}",
            human_bytes(self.working_set_bytes),
            terms.join(" + ")
        )
    }

    /// The part that grew most since `baseline` (or, without one, the
    /// largest part), and by how much.
    pub fn grew_most(&self, baseline: Option<&Breakdown>) -> Option<(String, i64)> {
        self.parts
            .iter()
            .filter(|p| p.name != "other")
            .map(|p| {
                let before = baseline.map_or(0, |b| b.part(&p.name));
                // Byte counts come from untrusted text: saturate, never wrap.
                let diff = i64::try_from(p.bytes)
                    .unwrap_or(i64::MAX)
                    .saturating_sub(i64::try_from(before).unwrap_or(i64::MAX));
                (p.name.clone(), diff)
            })
            .max_by_key(|(_, d)| *d)
            .filter(|(_, d)| *d > 0)
    }

    /// How stale the heap profile is, when that matters: a sentence, or
    /// `None` when less than a tenth of the heap was allocated since.
    pub fn staleness(&self) -> Option<String> {
        let g = self.go.as_ref()?;
        let since = g.allocated_since_gc_bytes?;
        if since.saturating_mul(10) < g.in_use_bytes.max(1) {
            return None;
        }
        let when = match (g.last_gc_seconds_ago, g.num_gc) {
            (Some(s), Some(n)) => format!(", GC {n}, {s:.1} s before the capture"),
            _ => String::new(),
        };
        Some(format!(
            "the heap profile shows the heap at the last GC{when}; {} allocated since is not in it",
            human_bytes(since)
        ))
    }

    /// One line: what grew, in which function when it is the heap, and the
    /// equation. `heap_growth` is the heap diff's top function and its
    /// share, when there is one.
    pub fn verdict(
        &self,
        baseline: Option<&Breakdown>,
        heap_growth: Option<(&str, f64)>,
    ) -> String {
        let grew = match self.grew_most(baseline) {
            Some((name, d)) => {
                let mut s = format!(
                    "{} {}{}",
                    label(&name),
                    if baseline.is_some() {
                        format!("+{}", human_bytes(d as u64))
                    } else {
                        human_bytes(d as u64)
                    },
                    if baseline.is_some() {
                        " since baseline"
                    } else {
                        ", the largest part"
                    }
                );
                if name == "go_heap" {
                    if let Some((f, share)) = heap_growth {
                        s.push_str(&format!(", {share:.0}% in {f}"));
                    }
                }
                s
            }
            None => "nothing grew since baseline".into(),
        };
        let mut v = format!("{grew}; {}", self.equation());
        if let Some(st) = self.staleness() {
            v.push_str("; ");
            v.push_str(&st);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn go(heap_inuse: u64, heap_alloc: u64, stacks: u64) -> MemStats {
        MemStats {
            heap_inuse: Some(heap_inuse),
            heap_alloc: Some(heap_alloc),
            heap_idle: Some(4 * MIB),
            heap_released: Some(3 * MIB),
            stack_inuse: Some(stacks),
            mspan_inuse: Some(MIB),
            mcache_inuse: Some(10_000),
            buck_hash_sys: Some(MIB),
            gc_sys: Some(5 * MIB),
            other_sys: Some(MIB),
            num_gc: Some(12),
            last_gc: Some(1_800_000_000_000_000_000),
            ..MemStats::default()
        }
    }

    fn cg(ws: u64, anon: u64, active_file: u64) -> CgroupMemory {
        CgroupMemory {
            usage: ws + MIB,
            working_set: ws,
            anon: Some(anon),
            active_file: Some(active_file),
            kernel: Some(2 * MIB),
            kernel_parts: None,
            sock: Some(0),
        }
    }

    #[test]
    fn a_heap_leak_adds_up_and_names_the_heap_and_its_staleness() {
        let b = compute(&Inputs {
            cgroup: Some(cg(225 * MIB, 190 * MIB, 30 * MIB)),
            go: Some(go(170 * MIB, 165 * MIB, 2 * MIB)),
            heap_profile_bytes: Some(89 * MIB),
            at: Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(1_800_000_003_200_000_000)),
            ..Default::default()
        });
        let sum: u64 = b.parts.iter().map(|p| p.bytes).sum();
        assert_eq!(sum, b.working_set_bytes);
        assert!(b.explained_bytes * 10 >= b.working_set_bytes * 9, "{b:#?}");
        let base = compute(&Inputs {
            cgroup: Some(cg(60 * MIB, 30 * MIB, 20 * MIB)),
            go: Some(go(20 * MIB, 18 * MIB, 2 * MIB)),
            heap_profile_bytes: Some(17 * MIB),
            ..Default::default()
        });
        let v = b.verdict(Some(&base), Some(("main.(*cache).put", 93.0)));
        assert!(
            v.starts_with("Go heap +150MiB since baseline, 93% in main.(*cache).put"),
            "{v}"
        );
        assert!(
            v.contains("live at last GC 89MiB, allocated since 76MiB"),
            "{v}"
        );
        assert!(v.contains("GC 12, 3.2 s before the capture"), "{v}");
    }

    #[test]
    fn parked_goroutines_show_as_stacks() {
        let base = compute(&Inputs {
            cgroup: Some(cg(20 * MIB, 15 * MIB, MIB)),
            go: Some(go(8 * MIB, 7 * MIB, MIB)),
            ..Default::default()
        });
        let b = compute(&Inputs {
            cgroup: Some(cg(220 * MIB, 215 * MIB, MIB)),
            go: Some(go(12 * MIB, 10 * MIB, 190 * MIB)),
            ..Default::default()
        });
        assert_eq!(b.grew_most(Some(&base)).unwrap().0, "go_stacks");
        assert!(b.verdict(Some(&base), None).starts_with("stacks +189MiB"));
    }

    #[test]
    fn page_cache_is_its_own_part() {
        let b = compute(&Inputs {
            cgroup: Some(cg(190 * MIB, 4 * MIB, 180 * MIB)),
            go: Some(go(2 * MIB, MIB, MIB)),
            ..Default::default()
        });
        assert_eq!(b.grew_most(None).unwrap().0, "page_cache");
        assert!(b
            .verdict(None, None)
            .starts_with("page cache 180MiB, the largest part"));
    }

    #[test]
    fn without_memstats_anon_stands_for_the_app() {
        let b = compute(&Inputs {
            cgroup: Some(cg(100 * MIB, 90 * MIB, 5 * MIB)),
            ..Default::default()
        });
        assert_eq!(b.part("anon"), 90 * MIB);
        assert_eq!(b.go, None);
        assert_eq!(b.sources, ["cgroup_memory_stat"]);
    }

    #[test]
    fn an_overcount_is_said_not_hidden() {
        let b = compute(&Inputs {
            cgroup: Some(cg(50 * MIB, 40 * MIB, 0)),
            go: Some(go(60 * MIB, 55 * MIB, MIB)),
            ..Default::default()
        });
        assert_eq!(b.part("other"), 0);
        assert!(b.overcounted_bytes > 0);
    }

    #[test]
    fn retained_heap_that_was_never_touched_is_left_out() {
        let mut m = go(75 * MIB, 73 * MIB, 158 * MIB);
        m.heap_idle = Some(40 * MIB);
        m.heap_released = Some(4 * MIB);
        // Go's parts: 75 + 36 + 158 + ~8 runtime = ~277 MiB; resident: 245.
        let b = compute(&Inputs {
            cgroup: Some(cg(247 * MIB, 245 * MIB, 0)),
            go: Some(m),
            ..Default::default()
        });
        assert!(b.go_mapped_not_resident_bytes > 30 * MIB, "{b:#?}");
        assert_eq!(
            b.part("go_heap_retained"),
            36 * MIB - b.go_mapped_not_resident_bytes
        );
        assert!(b.explained_bytes <= 247 * MIB + 4 * MIB, "{b:#?}");
    }
}
