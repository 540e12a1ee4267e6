//! The full `memory.stat` breakdown of a cgroup, read once per capture.
//!
//! The watcher's samples keep only what the trigger needs (usage, inactive
//! file, anon, file). A capture's manifest wants to say *what* the working
//! set is made of: anonymous memory, page cache (active or not, dirty,
//! mapped), shared memory, and the kernel's own share (stacks, page tables,
//! slab, socket buffers). Bytes of `memory.stat` enter [`StatBreakdown::parse`]
//! (pure, tested against the real kernel files in `tests/data/cgroup/`);
//! [`StatBreakdown::read`] reads a cgroup directory. v1 names its
//! hierarchical totals `total_*`; v1's kernel memory is not in `memory.stat`
//! but in `memory.kmem.usage_in_bytes`, which `read` adds when present.
//!
//! One read costs the kernel about as much as a full sample's `memory.stat`
//! (tens of microseconds; see `docs/benchmarks.md`), which is why it is on
//! demand and never per sample.

use std::path::Path;

use super::cgroup::{self, CgroupError, Version};

/// Declares the breakdown's fields with their v2 and v1 key names (an empty
/// v1 name: v1 has no such key), the struct, and the key lookup, in one
/// place.
macro_rules! breakdown {
    ($( $(#[$doc:meta])* $field:ident: $v2:literal, $v1:literal; )*) => {
        /// What a cgroup's memory is made of, in bytes (counters in events).
        /// A field is `None` when the kernel did not report it.
        #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub struct StatBreakdown {
            pub version: Version,
            $(
                $(#[$doc])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<u64>,
            )*
        }

        impl StatBreakdown {
            /// Nothing known yet.
            pub fn empty(version: Version) -> StatBreakdown {
                StatBreakdown { version, $( $field: None, )* }
            }

            /// Stores `value` under `key`; false when the key is not one of
            /// ours.
            fn set(&mut self, key: &[u8], value: Option<u64>) -> bool {
                match self.version {
                    Version::V2 => match key {
                        $( $v2 => { self.$field = value; true } )*
                        _ => false,
                    },
                    Version::V1 => match key {
                        $( $v1 if !$v1.is_empty() => { self.$field = value; true } )*
                        _ => false,
                    },
                }
            }
        }
    };
}

breakdown! {
    /// Anonymous memory: the heap and stacks of the app (v1 `total_rss`).
    anon: b"anon", b"total_rss";
    /// Page cache, including shared memory (v1 `total_cache`).
    file: b"file", b"total_cache";
    /// All kernel memory charged to the cgroup (v2; v1 from
    /// `memory.kmem.usage_in_bytes`).
    kernel: b"kernel", b"";
    /// Kernel stacks of the cgroup's threads.
    kernel_stack: b"kernel_stack", b"";
    /// Page tables.
    pagetables: b"pagetables", b"";
    /// Per-CPU kernel allocations.
    percpu: b"percpu", b"";
    /// Socket buffers.
    sock: b"sock", b"";
    /// vmalloc'd kernel memory.
    vmalloc: b"vmalloc", b"";
    /// Shared memory and tmpfs (part of `file`, but not reclaimable without
    /// swap).
    shmem: b"shmem", b"total_shmem";
    /// Page cache mapped into processes.
    file_mapped: b"file_mapped", b"total_mapped_file";
    /// Page cache waiting to be written back.
    file_dirty: b"file_dirty", b"total_dirty";
    /// Page cache being written back.
    file_writeback: b"file_writeback", b"total_writeback";
    /// Anonymous memory in transparent huge pages.
    anon_thp: b"anon_thp", b"total_rss_huge";
    inactive_anon: b"inactive_anon", b"total_inactive_anon";
    active_anon: b"active_anon", b"total_active_anon";
    /// Page cache the kernel reclaims first: subtracted from usage to give
    /// the working set.
    inactive_file: b"inactive_file", b"total_inactive_file";
    /// Page cache in use: part of the working set.
    active_file: b"active_file", b"total_active_file";
    /// Memory that cannot be reclaimed (mlocked, ramfs).
    unevictable: b"unevictable", b"total_unevictable";
    /// Slab the kernel can reclaim (dentries, inodes).
    slab_reclaimable: b"slab_reclaimable", b"";
    /// Slab it cannot.
    slab_unreclaimable: b"slab_unreclaimable", b"";
    /// Swap cache.
    swapcached: b"swapcached", b"total_swapcached";
    /// Page-cache refaults: a working set thrashing against its limit
    /// (an event count).
    workingset_refault_file: b"workingset_refault_file", b"total_workingset_refault_file";
    /// Major page faults (an event count).
    pgmajfault: b"pgmajfault", b"total_pgmajfault";
}

impl StatBreakdown {
    /// Parses `memory.stat` of the given version; unknown keys and values
    /// that are not numbers are left out.
    pub fn parse(version: Version, content: &[u8]) -> StatBreakdown {
        let mut b = StatBreakdown::empty(version);
        for line in content.split(|&c| c == b'\n') {
            let mut parts = line.splitn(2, |&c| c == b' ');
            if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
                if !k.is_empty() {
                    b.set(k, cgroup::parse_u64(v));
                }
            }
        }
        b
    }

    /// Reads the breakdown of the cgroup at `dir` (v1 or v2, detected).
    pub fn read(dir: &Path) -> Result<StatBreakdown, CgroupError> {
        let version = cgroup::detect(dir)?;
        let file = dir.join("memory.stat");
        let content = std::fs::read(&file).map_err(|source| CgroupError::Io { file, source })?;
        let mut b = StatBreakdown::parse(version, &content);
        if version == Version::V1 {
            // Present only where kernel memory accounting is on.
            b.kernel = std::fs::read(dir.join("memory.kmem.usage_in_bytes"))
                .ok()
                .and_then(|c| cgroup::parse_u64(&c));
        }
        Ok(b)
    }

    /// Slab in total, when either half is known.
    pub fn slab(&self) -> Option<u64> {
        match (self.slab_reclaimable, self.slab_unreclaimable) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_names() {
        let b = StatBreakdown::parse(
            Version::V2,
            b"anon 1000\nfile 200\nkernel 50\nkernel_stack 8\nsock 4\nshmem 7\nactive_file 30\ninactive_file 150\nslab_reclaimable 10\nslab_unreclaimable 20\nslab 30\nnot_ours 9\n",
        );
        assert_eq!(b.anon, Some(1000));
        assert_eq!(b.file, Some(200));
        assert_eq!(b.kernel, Some(50));
        assert_eq!(b.kernel_stack, Some(8));
        assert_eq!(b.sock, Some(4));
        assert_eq!(b.shmem, Some(7));
        assert_eq!((b.active_file, b.inactive_file), (Some(30), Some(150)));
        assert_eq!(b.slab(), Some(30));
        assert_eq!(b.pagetables, None);
    }

    #[test]
    fn v1_reads_only_the_hierarchical_totals() {
        let b = StatBreakdown::parse(
            Version::V1,
            b"cache 1\nrss 2\ninactive_file 3\ntotal_cache 10\ntotal_rss 20\ntotal_inactive_file 30\ntotal_shmem 4\n",
        );
        assert_eq!(b.anon, Some(20));
        assert_eq!(b.file, Some(10));
        assert_eq!(b.inactive_file, Some(30));
        assert_eq!(b.shmem, Some(4));
        // v1 has no such keys: never confused with v2's.
        assert_eq!(b.kernel_stack, None);
        assert_eq!(b.slab(), None);
    }

    #[test]
    fn garbage_leaves_fields_unknown() {
        let b = StatBreakdown::parse(Version::V2, b"anon x\n\n file 5\n anon\nanon -1\n");
        assert_eq!(b, StatBreakdown::empty(Version::V2));
    }
}
