//! Which store a command reads, and which capture its argument names.
//!
//! The `--store` flag and the environment enter; an open read-only [`Store`]
//! leaves. A capture argument (a full URL, a key or a bare id) enters; the
//! store and the capture folder's key leave ([`resolve`]). Going the other
//! way, a key becomes a URL or a local path to print ([`object_url`],
//! [`local_path`]). The key layout itself belongs to [`crate::keys`]; this
//! module only maps between a store's URL and its keys.

use std::path::PathBuf;

use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;

use super::{catalog, failed, CliError};
use crate::config::{Vars, DEFAULT_STORE, STORE};
use crate::manifest::MANIFEST_FILE;
use crate::store::{Store, StoreUrl};

/// `--store`, else `OOMSNAP_STORE`, else the sidecar's default.
pub fn store_url(arg: Option<&str>, env: &dyn Vars) -> String {
    arg.map(str::to_string)
        .or_else(|| env.get(STORE))
        .unwrap_or_else(|| DEFAULT_STORE.to_string())
}

/// Opens a store to read it; a missing `file://` directory is an error.
pub fn open(url: &str, env: &dyn Vars) -> Result<Store, CliError> {
    Store::open_read_only(url, env)
        .map_err(|e| CliError::Usage(format!("cannot open the store {url}: {e}")))
}

/// What a capture argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureArg {
    /// `s3://bucket/prefix/ns/pod/app/<id>`: a store and a key in it.
    Url { store: String, key: String },
    /// `ns/pod/app/<id>`, with or without the store's prefix.
    Key(String),
    /// `<id>` alone, found by listing the store's keys.
    Id(String),
}

impl CaptureArg {
    pub fn parse(arg: &str) -> Result<CaptureArg, CliError> {
        let arg = arg.trim();
        if arg.contains("://") {
            let (store, key) = split_url(arg)?;
            return Ok(CaptureArg::Url { store, key });
        }
        let key = arg.trim_matches('/');
        if key.is_empty() {
            return Err(CliError::Usage(
                "give a capture: its id, its key or its full URL (oomsnap ls lists them)".into(),
            ));
        }
        Ok(if key.contains('/') {
            CaptureArg::Key(key.to_string())
        } else {
            CaptureArg::Id(key.to_string())
        })
    }
}

/// `s3://bucket/a/b` → (`s3://bucket`, `a/b`); `file:///x/y` → (`file:///`, `x/y`).
pub fn split_url(url: &str) -> Result<(String, String), CliError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| CliError::Usage(format!("{url:?} is not a URL: {e}")))?;
    if parsed.scheme() == "file" {
        let path = parsed
            .to_file_path()
            .map_err(|_| CliError::Usage(format!("{url:?} is not an absolute file:// URL")))?;
        let key = path.to_string_lossy().trim_matches('/').to_string();
        return Ok(("file:///".to_string(), key));
    }
    let key = parsed.path().trim_matches('/').to_string();
    Ok((
        format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or("")),
        key,
    ))
}

/// A key's URL, which `oomsnap get` and `report` accept on their own.
pub fn object_url(store: &Store, key: &ObjectPath) -> String {
    match StoreUrl::parse(&store.url) {
        Ok(StoreUrl::File { root }) => format!("file://{}", root.join(key.as_ref()).display()),
        Ok(StoreUrl::S3 { bucket, .. }) => format!("s3://{bucket}/{key}"),
        Ok(StoreUrl::Gcs { bucket, .. }) => format!("gs://{bucket}/{key}"),
        Ok(StoreUrl::Azure { container, .. }) => format!("az://{container}/{key}"),
        Ok(StoreUrl::Memory { .. }) => format!("memory:///{key}"),
        Err(_) => key.to_string(),
    }
}

/// Where a key lies on this machine, for a `file://` store.
pub fn local_path(store: &Store, key: &ObjectPath) -> Option<PathBuf> {
    match StoreUrl::parse(&store.url) {
        Ok(StoreUrl::File { root }) => Some(root.join(key.as_ref())),
        _ => None,
    }
}

/// Whether a capture folder has its manifest (uploaded last, so the
/// capture is complete).
pub async fn has_manifest(store: &Store, key: &ObjectPath) -> Result<bool, CliError> {
    match store.inner.head(&key.clone().join(MANIFEST_FILE)).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(failed(format!(
            "cannot read {}: {e}",
            object_url(store, key)
        ))),
    }
}

/// Resolves a capture argument to an open store and the capture's key.
pub async fn resolve(
    arg: &str,
    store_arg: Option<&str>,
    env: &dyn Vars,
) -> Result<(Store, ObjectPath), CliError> {
    match CaptureArg::parse(arg)? {
        CaptureArg::Url { store, key } => {
            let store = open(&store, env)?;
            let key = ObjectPath::from(key);
            if has_manifest(&store, &key).await? {
                Ok((store, key))
            } else {
                Err(failed(format!(
                    "there is no capture at {arg} (no {MANIFEST_FILE} under it)"
                )))
            }
        }
        CaptureArg::Key(key) => {
            let url = store_url(store_arg, env);
            let store = open(&url, env)?;
            let direct = ObjectPath::from(key.as_str());
            let within = ObjectPath::from_iter(store.prefix.parts().chain(direct.parts()));
            for candidate in [within, direct] {
                if has_manifest(&store, &candidate).await? {
                    return Ok((store, candidate));
                }
            }
            Err(failed(format!(
                "there is no capture {key} in {url}; `oomsnap ls --store {url}` lists them"
            )))
        }
        CaptureArg::Id(id) => {
            let url = store_url(store_arg, env);
            let store = open(&url, env)?;
            let found = catalog::find(&store, &store.prefix).await?;
            let mut hits: Vec<ObjectPath> = found
                .into_iter()
                .filter(|f| f.parts.id == id)
                .map(|f| f.key)
                .collect();
            match hits.len() {
                1 => Ok((store, hits.remove(0))),
                0 => Err(failed(format!(
                    "no capture {id} in {url}; `oomsnap ls --store {url}` lists them"
                ))),
                n => Err(failed(format!(
                    "{id} names {n} captures in {url}; give one of their keys instead: {}",
                    hits.iter()
                        .map(|k| k.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vars as env;

    #[test]
    fn the_store_comes_from_the_flag_then_the_environment_then_the_default() {
        let e = env(&[(STORE, "s3://from-env/p")]);
        assert_eq!(store_url(Some("gs://flag"), &e), "gs://flag");
        assert_eq!(store_url(None, &e), "s3://from-env/p");
        assert_eq!(store_url(None, &env(&[(STORE, "  ")])), DEFAULT_STORE);
        assert_eq!(store_url(None, &env(&[])), DEFAULT_STORE);
    }

    #[test]
    fn a_capture_argument_is_a_url_a_key_or_an_id() {
        assert_eq!(
            CaptureArg::parse("s3://bucket/prod/shop/cart/app/ID").unwrap(),
            CaptureArg::Url {
                store: "s3://bucket".into(),
                key: "prod/shop/cart/app/ID".into()
            }
        );
        assert_eq!(
            CaptureArg::parse("file:///tmp/my%20store/shop/cart/app/ID").unwrap(),
            CaptureArg::Url {
                store: "file:///".into(),
                key: "tmp/my store/shop/cart/app/ID".into()
            }
        );
        assert_eq!(
            CaptureArg::parse("/shop/cart/app/ID/").unwrap(),
            CaptureArg::Key("shop/cart/app/ID".into())
        );
        assert_eq!(
            CaptureArg::parse("20261122T033456.123Z_threshold-95").unwrap(),
            CaptureArg::Id("20261122T033456.123Z_threshold-95".into())
        );
        assert!(matches!(CaptureArg::parse(" / "), Err(CliError::Usage(_))));
        assert!(matches!(
            CaptureArg::parse("s3://["),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn a_key_prints_as_a_url_that_parses_back_to_it() {
        let e = env(&[]);
        let store = Store::open_with("memory://", &e, crate::store::Access::ReadOnly).unwrap();
        let key = ObjectPath::from("prod/shop/cart/app/ID");
        assert_eq!(object_url(&store, &key), "memory:///prod/shop/cart/app/ID");
        assert_eq!(local_path(&store, &key), None);

        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = open(&url, &e).unwrap();
        let printed = object_url(&store, &key);
        assert_eq!(
            local_path(&store, &key).unwrap(),
            dir.path().join("prod/shop/cart/app/ID")
        );
        let CaptureArg::Url {
            store: base,
            key: back,
        } = CaptureArg::parse(&printed).unwrap()
        else {
            panic!("{printed} is not a URL")
        };
        assert_eq!(base, "file:///");
        assert_eq!(PathBuf::from("/").join(back), dir.path().join(key.as_ref()));
    }

    #[test]
    fn a_missing_local_store_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/typo", dir.path().display());
        let Err(CliError::Usage(msg)) = open(&url, &env(&[])) else {
            panic!("a missing store opened")
        };
        assert!(
            msg.contains(&format!("{}/typo", dir.path().display())),
            "{msg}"
        );
        assert!(!dir.path().join("typo").exists());
    }
}
