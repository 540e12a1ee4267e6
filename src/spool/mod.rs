//! The durable local queue of capture bundles (docs/how-it-works.md,
//! "Spool: the durability protocol").
//!
//! The capture stage writes a bundle through a [`BundleWriter`]; the ship
//! stage reads finished [`Bundle`]s and removes each only after every object
//! is stored. On disk:
//!
//! ```text
//! <spool>/<id>.partial/      being written: draft.json, heap.pb.gz.tmp, …
//! <spool>/<id>/              complete: .key, heap.pb.gz, …, manifest.json
//! ```
//!
//! Every file is written to `<name>.tmp`, fsynced, renamed, and the folder
//! fsynced, so a crash leaves either the old state or the new one. A bundle
//! is complete once its folder loses `.partial`, which happens only after
//! its manifest is in place.
//!
//! A bundle leaves the spool by being renamed to `<id>.removing` before its
//! files are deleted, so a kill in the middle never leaves a folder that
//! looks complete but has lost its `.key` (it could never ship, and would
//! hold its bytes for good); recovery finishes such removals.
//!
//! After a crash, a partial bundle that already holds finished profiles is
//! completed from its `draft.json` (its manifest says `recovered`), because a
//! profile spooled before the kill is exactly the evidence oomsnap exists
//! for; a partial bundle with nothing finished is removed.
//!
//! A provisional bundle (see `crate::speculative`) is complete but holds a
//! `.provisional` marker: [`Spool::bundles`] leaves it out, so it never
//! ships, until [`Spool::confirm`] records what confirmed it in its manifest
//! and removes the marker, or [`Spool::discard`] deletes it.
//!
//! The spool is bounded: when it holds more than `max_bytes`, the oldest
//! complete bundles are dropped (and counted) — never the newest, which is
//! the one closest to the OOM.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::manifest::{Manifest, ProfileRecord, MANIFEST_FILE};

const PARTIAL: &str = ".partial";
/// A shipped or dropped bundle whose files are being deleted.
const REMOVING: &str = ".removing";
const TMP: &str = ".tmp";
/// The object key prefix a bundle ships to.
pub const KEY_FILE: &str = ".key";
/// The manifest without its profiles, written when a bundle begins.
pub const DRAFT_FILE: &str = "draft.json";
/// Present in a complete bundle that must not ship yet: a provisional
/// capture waiting for confirmation (`crate::speculative`).
pub const PROVISIONAL_FILE: &str = ".provisional";

/// A spool operation that failed, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {op} failed for {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode {path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("a spool task failed: {0}")]
    Task(String),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// fsyncs a directory so renames inside it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync", dir))
}

/// Writes `bytes` to `dir/name` atomically and durably.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), SpoolError> {
    let tmp = dir.join(format!("{name}{TMP}"));
    let dst = dir.join(name);
    let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    fs::rename(&tmp, &dst).map_err(io("rename", &tmp))?;
    sync_dir(dir)
}

/// A finished bundle, ready to ship.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Bundle {
    pub id: String,
    #[serde(skip)]
    pub dir: PathBuf,
    /// Where in the store it goes.
    pub key: String,
    /// Files to upload, in order: the manifest (if any) last.
    pub files: Vec<(String, u64)>,
    pub bytes: u64,
}

/// What recovery found at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub complete: usize,
    pub completed_from_draft: usize,
    pub removed_partial: usize,
    /// Bundles already shipped or dropped whose deletion a kill interrupted.
    pub finished_removal: usize,
    /// Bundles recovery could not fix (a full disk, a read-only one); they
    /// are left as they are and recovery is tried again at the next start.
    pub errors: Vec<String>,
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    dropped: Arc<AtomicU64>,
}

impl Spool {
    /// Opens (creating) the spool and recovers what a crash left.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Spool, Recovery), SpoolError> {
        let spool = Spool::attach(dir, max_bytes)?;
        let rec = spool.recover()?;
        Ok((spool, rec))
    }

    /// Opens the spool without recovery: for `oomsnap capture`, which may
    /// share the spool with a running sidecar whose half-written bundle is
    /// not a crash's leftover.
    pub fn attach(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(io("create", dir))?;
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Bundles dropped to keep the spool bounded, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Recovers what a crash left, bundle by bundle: one that cannot be
    /// fixed (ENOSPC, EROFS) is reported and left alone, never a reason to
    /// stop — a spool that is full after a crash must still ship what it
    /// holds, which is what frees the space.
    fn recover(&self) -> Result<Recovery, SpoolError> {
        let mut rec = Recovery::default();
        for entry in fs::read_dir(&self.dir).map_err(io("list", &self.dir))? {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !path.is_dir() {
                continue;
            }
            // A bundle's folder without its `.key` can never ship: only an
            // older version's interrupted removal leaves one, as `.removing`
            // does now, and both are finished here. A keyless folder not
            // named like a capture (`lost+found` when the spool is a
            // volume's root) is not ours: it is neither counted nor deleted.
            let keyless = !name.ends_with(PARTIAL) && !path.join(KEY_FILE).exists();
            if keyless && crate::keys::capture_time(&name).is_none() {
                continue;
            }
            if keyless || name.ends_with(REMOVING) {
                match fs::remove_dir_all(&path) {
                    Ok(()) => rec.finished_removal += 1,
                    Err(e) => rec.errors.push(io("remove", &path)(e).to_string()),
                }
                continue;
            }
            if let Some(id) = name.strip_suffix(PARTIAL) {
                let done = self.complete_from_draft(id, &path).and_then(|kept| {
                    if !kept {
                        fs::remove_dir_all(&path).map_err(io("remove", &path))?;
                    }
                    Ok(kept)
                });
                match done {
                    Ok(true) => rec.completed_from_draft += 1,
                    Ok(false) => rec.removed_partial += 1,
                    Err(e) => rec.errors.push(e.to_string()),
                }
            } else {
                // Leftover temporaries inside a complete bundle are junk.
                if let Ok(files) = fs::read_dir(&path) {
                    for f in files.flatten() {
                        if f.file_name().to_string_lossy().ends_with(TMP) {
                            let _ = fs::remove_file(f.path());
                        }
                    }
                }
                rec.complete += 1;
            }
        }
        if let Err(e) = sync_dir(&self.dir) {
            rec.errors.push(e.to_string());
        }
        Ok(rec)
    }

    /// Completes a crashed bundle whose draft and at least one profile made
    /// it to disk. Returns false when there is nothing worth keeping.
    fn complete_from_draft(&self, id: &str, path: &Path) -> Result<bool, SpoolError> {
        let Ok(draft) = fs::read(path.join(DRAFT_FILE)) else {
            return Ok(false);
        };
        let Ok(mut manifest) = serde_json::from_slice::<Manifest>(&draft) else {
            return Ok(false);
        };
        let mut records = Vec::new();
        for f in fs::read_dir(path).map_err(io("list", path))?.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.ends_with(TMP) {
                let _ = fs::remove_file(f.path());
                continue;
            }
            if name == DRAFT_FILE || name == KEY_FILE || name == MANIFEST_FILE {
                continue;
            }
            let (bytes, sha256) = hash_file(&f.path())?;
            let profile = name
                .strip_suffix(".pb.gz")
                .or_else(|| name.strip_suffix(".txt"))
                .unwrap_or(&name)
                .to_string();
            records.push(ProfileRecord {
                name: profile,
                file: Some(name),
                bytes,
                sha256: Some(sha256),
                ..Default::default()
            });
        }
        if records.is_empty() {
            return Ok(false);
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        // Profiles that never finished are named so a reader knows.
        for p in &manifest.profiles {
            if !records.iter().any(|r| r.name == p.name) {
                records.push(ProfileRecord {
                    error: Some("oomsnap stopped before this profile was spooled".into()),
                    ..p.clone()
                });
            }
        }
        manifest.profiles = records;
        manifest.reason = format!("{} (recovered)", manifest.reason);
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(|source| SpoolError::Json {
            path: path.join(MANIFEST_FILE),
            source,
        })?;
        write_atomic(path, MANIFEST_FILE, &bytes)?;
        let _ = fs::remove_file(path.join(DRAFT_FILE));
        let done = self.dir.join(id);
        fs::rename(path, &done).map_err(io("rename", path))?;
        tracing::warn!(bundle = id, "completed a capture that a crash interrupted");
        Ok(true)
    }

    /// `id`, or `id-2`, `id-3`…: two decisions in the same millisecond get
    /// distinct folders.
    pub fn unique_id(&self, id: &str) -> String {
        let mut candidate = id.to_string();
        let mut n = 1;
        while self.dir.join(&candidate).exists()
            || self.dir.join(format!("{candidate}{PARTIAL}")).exists()
            || self.dir.join(format!("{candidate}{REMOVING}")).exists()
        {
            n += 1;
            candidate = format!("{id}-{n}");
        }
        candidate
    }

    /// Starts a bundle that will ship under `key`.
    pub fn begin(&self, id: &str, key: &str, draft: &Manifest) -> Result<BundleWriter, SpoolError> {
        let partial = self.dir.join(format!("{id}{PARTIAL}"));
        fs::create_dir_all(&partial).map_err(io("create", &partial))?;
        let bytes = serde_json::to_vec(draft).map_err(|source| SpoolError::Json {
            path: partial.join(DRAFT_FILE),
            source,
        })?;
        // Written now but fsynced by the first profile's commit, not here:
        // the requests to the target must not wait on the disk. Recovery
        // needs them only once a profile is durable, and by then they are.
        fs::write(partial.join(KEY_FILE), key).map_err(io("write", &partial))?;
        fs::write(partial.join(DRAFT_FILE), &bytes).map_err(io("write", &partial))?;
        Ok(BundleWriter {
            id: id.to_string(),
            partial,
            final_dir: self.dir.join(id),
            provisional: false,
            meta_durable: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Adds a one-file bundle (e.g. `oom.json`) that ships into an existing
    /// capture's folder.
    pub fn add_single(
        &self,
        id: &str,
        key: &str,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), SpoolError> {
        let partial = self.dir.join(format!("{id}{PARTIAL}"));
        fs::create_dir_all(&partial).map_err(io("create", &partial))?;
        write_atomic(&partial, KEY_FILE, key.as_bytes())?;
        write_atomic(&partial, name, bytes)?;
        let done = self.dir.join(id);
        fs::rename(&partial, &done).map_err(io("rename", &partial))?;
        sync_dir(&self.dir)
    }

    /// Complete bundles, oldest first.
    pub fn bundles(&self) -> Result<Vec<Bundle>, SpoolError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)
            .map_err(io("list", &self.dir))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.ends_with(PARTIAL)
                || name.ends_with(REMOVING)
                || !path.is_dir()
                || path.join(PROVISIONAL_FILE).exists()
            {
                continue;
            }
            let Ok(key) = fs::read_to_string(path.join(KEY_FILE)) else {
                continue;
            };
            let mut files = Vec::new();
            let mut manifest = None;
            let mut bytes = 0;
            let Ok(list) = fs::read_dir(&path) else {
                continue;
            };
            for f in list.flatten() {
                let fname = f.file_name().to_string_lossy().into_owned();
                if fname == KEY_FILE || fname.ends_with(TMP) || fname == DRAFT_FILE {
                    continue;
                }
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                bytes += size;
                if fname == MANIFEST_FILE {
                    manifest = Some((fname, size));
                } else {
                    files.push((fname, size));
                }
            }
            files.sort();
            files.extend(manifest);
            out.push(Bundle {
                id: name,
                dir: path,
                key: key.trim().to_string(),
                files,
                bytes,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Complete bundles held back as provisional, oldest first.
    pub fn provisional(&self) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join(PROVISIONAL_FILE).exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(PARTIAL) && !n.ends_with(REMOVING))
            .collect();
        out.sort();
        out
    }

    /// Makes a provisional bundle shippable: its manifest records what
    /// confirmed it, then the marker goes. The profiles are untouched: the
    /// bytes that ship are the bytes spooled before the kill.
    pub fn confirm(&self, id: &str, by: &str) -> Result<(), SpoolError> {
        let dir = self.dir.join(id);
        let path = dir.join(MANIFEST_FILE);
        let bytes = fs::read(&path).map_err(io("read", &path))?;
        let mut m: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| SpoolError::Json {
                path: path.clone(),
                source,
            })?;
        m.confirmed_by = Some(by.to_string());
        let bytes = serde_json::to_vec_pretty(&m).map_err(|source| SpoolError::Json {
            path: path.clone(),
            source,
        })?;
        write_atomic(&dir, MANIFEST_FILE, &bytes)?;
        let marker = dir.join(PROVISIONAL_FILE);
        fs::remove_file(&marker).map_err(io("remove", &marker))?;
        sync_dir(&dir)
    }

    /// Deletes a provisional bundle nothing confirmed.
    pub fn discard(&self, id: &str) -> Result<(), SpoolError> {
        self.delete(&self.dir.join(id))
    }

    /// Bytes held by complete and partial bundles.
    pub fn usage_bytes(&self) -> u64 {
        dir_bytes(&self.dir)
    }

    /// Removes a shipped bundle.
    pub fn remove(&self, b: &Bundle) -> Result<(), SpoolError> {
        self.delete(&b.dir)
    }

    /// Takes a bundle out of the spool in one rename, then deletes its
    /// files: a kill between the two leaves a `.removing` folder that
    /// nothing ships and recovery deletes, never a half-deleted bundle.
    fn delete(&self, dir: &Path) -> Result<(), SpoolError> {
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(REMOVING);
        let gone = self.dir.join(name);
        fs::rename(dir, &gone).map_err(io("rename", dir))?;
        sync_dir(&self.dir)?;
        fs::remove_dir_all(&gone).map_err(io("remove", &gone))
    }

    /// Drops the oldest bundles until the spool fits; never drops `keep`
    /// (the newest). Returns the ids dropped.
    pub fn enforce_bound(&self, keep: &str) -> Result<Vec<String>, SpoolError> {
        let mut dropped = Vec::new();
        let mut bundles = self.bundles()?;
        // A provisional bundle is not the bound's to delete (its fate is
        // the confirmation window's), so its bytes do not push shippable
        // captures out either.
        let mut total: u64 = fs::read_dir(&self.dir)
            .map_err(io("list", &self.dir))?
            .flatten()
            .filter(|e| !e.path().join(PROVISIONAL_FILE).exists())
            .map(|e| entry_bytes(&e))
            .sum();
        while total > self.max_bytes {
            let Some(pos) = bundles.iter().position(|b| b.id != keep) else {
                break;
            };
            let b = bundles.remove(pos);
            self.remove(&b)?;
            total = total.saturating_sub(b.bytes);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                bundle = %b.id,
                bytes = b.bytes,
                max_bytes = self.max_bytes,
                "the spool is full; dropped the oldest unshipped capture"
            );
            dropped.push(b.id);
        }
        Ok(dropped)
    }
}

/// Bytes of the files under `p`, recursively; unreadable entries count 0.
fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(p) else { return 0 };
    rd.flatten().map(|e| entry_bytes(&e)).sum()
}

/// Bytes of one directory entry: a file's length, a folder's contents.
fn entry_bytes(e: &fs::DirEntry) -> u64 {
    match e.metadata() {
        Ok(m) if m.is_dir() => dir_bytes(&e.path()),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// sha256 and size of a file, streamed.
pub fn hash_file(path: &Path) -> Result<(u64, String), SpoolError> {
    let mut f = File::open(path).map_err(io("open", path))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).map_err(io("read", path))?;
    Ok((n, hex(&h.finalize())))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes one bundle.
#[derive(Debug)]
pub struct BundleWriter {
    pub id: String,
    partial: PathBuf,
    final_dir: PathBuf,
    provisional: bool,
    /// The key and draft have been fsynced: once per bundle is enough.
    meta_durable: Arc<AtomicBool>,
}

/// A file being written into a bundle; hashes as it goes.
pub struct SpoolFile {
    name: String,
    tmp: PathBuf,
    file: File,
    hash: Sha256,
    pub bytes: u64,
    meta_durable: Arc<AtomicBool>,
}

impl SpoolFile {
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), SpoolError> {
        self.file.write_all(chunk).map_err(io("write", &self.tmp))?;
        self.hash.update(chunk);
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    /// fsyncs and renames into place; returns the sha256. Blocking: call it
    /// from a blocking task.
    pub fn commit(self) -> Result<String, SpoolError> {
        let dir = self
            .tmp
            .parent()
            .expect("spool file has a parent")
            .to_path_buf();
        // The bundle's key and draft are made durable before any profile
        // is, so a crash never leaves a profile recovery cannot place. Two
        // profiles committing at once may both do it; that is harmless.
        if !self.meta_durable.load(Ordering::Acquire) {
            for meta in [KEY_FILE, DRAFT_FILE] {
                let p = dir.join(meta);
                File::open(&p)
                    .and_then(|f| f.sync_all())
                    .map_err(io("fsync", &p))?;
            }
            // And the bundle's own entry in the spool directory.
            if let Some(spool) = dir.parent() {
                sync_dir(spool)?;
            }
            self.meta_durable.store(true, Ordering::Release);
        }
        // fdatasync: the data and its length; the mtime can wait.
        self.file.sync_data().map_err(io("fsync", &self.tmp))?;
        let dst = dir.join(&self.name);
        fs::rename(&self.tmp, &dst).map_err(io("rename", &self.tmp))?;
        sync_dir(&dir)?;
        Ok(hex(&self.hash.finalize()))
    }

    /// Throws away a failed file.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

impl BundleWriter {
    /// The folder files are written into until the bundle is finished.
    pub fn dir(&self) -> &Path {
        &self.partial
    }

    pub fn create(&self, name: &str) -> Result<SpoolFile, SpoolError> {
        let tmp = self.partial.join(format!("{name}{TMP}"));
        let file = File::create(&tmp).map_err(io("create", &tmp))?;
        Ok(SpoolFile {
            name: name.to_string(),
            tmp,
            file,
            hash: Sha256::new(),
            bytes: 0,
            meta_durable: self.meta_durable.clone(),
        })
    }

    /// Holds the bundle back from shipping once complete, until it is
    /// confirmed or discarded.
    pub fn provisional(mut self, yes: bool) -> Self {
        self.provisional = yes;
        self
    }

    /// Writes the manifest and makes the bundle complete.
    pub fn finish(self, manifest: &Manifest) -> Result<PathBuf, SpoolError> {
        // The marker is durable before the bundle is complete, so neither
        // the shipper nor a restart can take it for a shippable one.
        if self.provisional {
            write_atomic(&self.partial, PROVISIONAL_FILE, b"")?;
        }
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|source| SpoolError::Json {
            path: self.partial.join(MANIFEST_FILE),
            source,
        })?;
        write_atomic(&self.partial, MANIFEST_FILE, &bytes)?;
        let _ = fs::remove_file(self.partial.join(DRAFT_FILE));
        fs::rename(&self.partial, &self.final_dir).map_err(io("rename", &self.partial))?;
        sync_dir(self.final_dir.parent().expect("bundle has a parent"))?;
        Ok(self.final_dir)
    }
}

#[cfg(test)]
pub(crate) mod tests;
