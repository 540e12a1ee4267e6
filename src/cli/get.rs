//! `oomsnap get`: downloads every object of one capture into a directory.
//!
//! A capture argument (URL, key or id) and `--dir` enter; the files leave
//! on the local disk, each streamed to `.<name>.part` and renamed when
//! complete, so a broken download never leaves a truncated profile that
//! looks whole. Progress goes to stderr on a terminal; one line per file to
//! stdout.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use object_store::ObjectStoreExt;

use super::{address, failed, CliError, StoreArg};
use crate::config::Vars;
use crate::pprof::human_bytes;

#[derive(clap::Args, Debug, Clone)]
pub struct GetArgs {
    /// The capture: its full URL (s3://bucket/prefix/ns/pod/app/ID), its key, or its id within --store.
    pub capture: String,
    #[command(flatten)]
    pub store: StoreArg,
    /// The directory to put the files in. Defaults to ./<capture id>.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `oomsnap get`.
pub async fn get(a: GetArgs, env: &dyn Vars) -> Result<(), CliError> {
    let (store, key) = address::resolve(&a.capture, a.store.store.as_deref(), env).await?;
    let id = key.filename().unwrap_or("capture").to_string();
    let out = a.dir.clone().unwrap_or_else(|| PathBuf::from(&id));
    let mut objects = Vec::new();
    let mut stream = store.inner.list(Some(&key));
    while let Some(meta) = stream.next().await {
        objects.push(meta.map_err(|e| failed(format!("cannot list {key}: {e}")))?);
    }
    std::fs::create_dir_all(&out)
        .map_err(|e| failed(format!("cannot create {}: {e}", out.display())))?;
    let progress = Progress::new();
    for meta in &objects {
        // Only the folder's own files; a name never leaves `out`.
        let name = crate::keys::sanitize(meta.location.filename().unwrap_or("object"));
        let dst = out.join(&name);
        let part = out.join(format!(".{name}.part"));
        let done = download(&store, &meta.location, &part, meta.size, &name, &progress).await;
        let done = done.inspect_err(|_| {
            let _ = std::fs::remove_file(&part);
        })?;
        std::fs::rename(&part, &dst).map_err(|e| {
            failed(format!(
                "cannot rename {} to {}: {e}",
                part.display(),
                dst.display()
            ))
        })?;
        println!("{:>10}  {}", human_bytes(done), dst.display());
    }
    Ok(())
}

async fn download(
    store: &crate::store::Store,
    from: &object_store::path::Path,
    to: &Path,
    size: u64,
    name: &str,
    progress: &Progress,
) -> Result<u64, CliError> {
    let mut file = std::fs::File::create(to)
        .map_err(|e| failed(format!("cannot create {}: {e}", to.display())))?;
    let mut body = store
        .inner
        .get(from)
        .await
        .map_err(|e| failed(format!("cannot download {from}: {e}")))?
        .into_stream();
    let mut done = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| failed(format!("the download of {from} broke off: {e}")))?;
        file.write_all(&chunk)
            .map_err(|e| failed(format!("cannot write {}: {e}", to.display())))?;
        done += chunk.len() as u64;
        progress.show(name, done, size);
    }
    file.sync_all()
        .map_err(|e| failed(format!("cannot write {}: {e}", to.display())))?;
    progress.done();
    Ok(done)
}

/// A one-line progress, only on a terminal.
struct Progress {
    on: bool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            on: std::io::stderr().is_terminal(),
        }
    }
    fn show(&self, name: &str, done: u64, total: u64) {
        if self.on {
            let pct = (done * 100).checked_div(total).unwrap_or(100);
            eprint!(
                "\r  {name:<24} {:>10} / {:<10} {pct:>3}%",
                human_bytes(done),
                human_bytes(total)
            );
        }
    }
    fn done(&self) {
        if self.on {
            eprintln!();
        }
    }
}
