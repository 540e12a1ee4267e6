//! Finds captures in a store and reads their manifests.
//!
//! One paginated key listing enters ([`find`]): capture folders are
//! recognised by their `manifest.json` key and split by
//! [`CaptureKey`](crate::keys::CaptureKey), so filters on namespace, pod and
//! time ([`Filter`]) run before any object is fetched. Then [`read`] fetches
//! the remaining manifests (and `oom.json` where one was listed) with at most
//! [`CONCURRENCY`] requests in flight, and [`Listed`] captures leave, newest
//! first.

use std::collections::BTreeMap;
use std::time::SystemTime;

use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;

use super::{failed, CliError};
use crate::keys::{self, CaptureKey};
use crate::manifest::{Manifest, OomRecord, MANIFEST_FILE, OOM_FILE};
use crate::store::Store;

/// Requests in flight while reading manifests: enough to hide an object
/// store's latency, few enough not to be throttled.
pub const CONCURRENCY: usize = 16;

/// A capture folder, known from the key listing alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub key: ObjectPath,
    pub parts: CaptureKey,
    pub has_oom: bool,
}

/// One capture as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    pub key: String,
    pub manifest: Manifest,
    pub oom: Option<OomRecord>,
}

/// Every complete capture (one with its manifest) under `under`, which lies
/// inside the store's prefix; newest first.
pub async fn find(store: &Store, under: &ObjectPath) -> Result<Vec<Found>, CliError> {
    // folder key → (has a manifest, has an oom.json)
    let mut folders: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    let mut stream = store.inner.list(Some(under));
    while let Some(meta) = stream.next().await {
        let meta = meta.map_err(|e| failed(format!("cannot list {}: {e}", store.url)))?;
        let loc = meta.location.as_ref();
        let Some((dir, file)) = loc.rsplit_once('/') else {
            continue;
        };
        match file {
            MANIFEST_FILE => folders.entry(dir.to_string()).or_default().0 = true,
            OOM_FILE => folders.entry(dir.to_string()).or_default().1 = true,
            _ => {}
        }
    }
    let mut found: Vec<Found> = folders
        .into_iter()
        .filter(|(_, (manifest, _))| *manifest)
        .filter_map(|(dir, (_, has_oom))| {
            let key = ObjectPath::from(dir.as_str());
            let parts = CaptureKey::parse(&store.prefix, &key)?;
            Some(Found {
                key,
                parts,
                has_oom,
            })
        })
        .collect();
    found.sort_by(|a, b| b.parts.id.cmp(&a.parts.id).then(a.key.cmp(&b.key)));
    Ok(found)
}

/// What `ls` narrows the listing to, all decided on the key.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub since: Option<SystemTime>,
}

impl Filter {
    /// The part of the store to list: `<prefix>/<namespace>[/<pod>]`, so a
    /// large bucket is not listed whole when a namespace is given.
    pub fn listing_prefix(&self, store_prefix: &ObjectPath) -> ObjectPath {
        let mut parts: Vec<String> = store_prefix
            .parts()
            .map(|p| p.as_ref().to_string())
            .collect();
        if let Some(ns) = &self.namespace {
            parts.push(keys::sanitize(ns));
            if let Some(pod) = &self.pod {
                parts.push(keys::sanitize(pod));
            }
        }
        ObjectPath::from_iter(parts)
    }

    pub fn keeps(&self, k: &CaptureKey) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|ns| k.namespace == keys::sanitize(ns))
            && self.pod.as_ref().is_none_or(|p| k.pod == keys::sanitize(p))
            && self.since.is_none_or(|t| k.time().is_some_and(|c| c >= t))
    }
}

pub async fn read_json<T: serde::de::DeserializeOwned>(
    store: &Store,
    key: &ObjectPath,
) -> Result<T, String> {
    let bytes = store
        .inner
        .get(key)
        .await
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{key} is not valid: {e}"))
}

/// Reads the manifests of `found`, [`CONCURRENCY`] at a time, keeping the
/// order. A manifest that cannot be read is skipped with a warning, so one
/// bad object does not hide the rest.
pub async fn read(store: &Store, found: Vec<Found>) -> Vec<Listed> {
    let reads = found.into_iter().map(|f| async move {
        let manifest: Manifest = match read_json(store, &f.key.clone().join(MANIFEST_FILE)).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("skipping {}: {e}", f.key);
                return None;
            }
        };
        let oom = if f.has_oom {
            read_json(store, &f.key.clone().join(OOM_FILE)).await.ok()
        } else {
            None
        };
        Some(Listed {
            key: f.key.to_string(),
            manifest,
            oom,
        })
    });
    futures_util::stream::iter(reads)
        .buffered(CONCURRENCY)
        .filter_map(|l| async move { l })
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(ns: &str, pod: &str, id: &str) -> CaptureKey {
        CaptureKey {
            namespace: ns.into(),
            pod: pod.into(),
            container: "app".into(),
            id: id.into(),
        }
    }

    #[test]
    fn filters_decide_on_the_key_alone() {
        let t = keys::parse_compact_time("20261122T033456.123Z").unwrap();
        let f = Filter {
            namespace: Some("shop".into()),
            pod: Some("cart/1".into()),
            since: Some(t),
        };
        assert!(f.keeps(&key("shop", "cart_1", "20261122T033456.123Z_manual")));
        assert!(!f.keeps(&key("shop", "cart_1", "20261122T033456.122Z_manual")));
        assert!(!f.keeps(&key("shop", "cart_2", "20261122T033456.123Z_manual")));
        assert!(!f.keeps(&key("other", "cart_1", "20261122T033456.123Z_manual")));
        // A folder whose id has no time is not "since" anything.
        assert!(!f.keeps(&key("shop", "cart_1", "manual")));
        let pod_only = Filter {
            pod: Some("cart_1".into()),
            since: Some(t - Duration::from_secs(1)),
            ..Filter::default()
        };
        assert!(pod_only.keeps(&key("any", "cart_1", "20261122T033456.123Z_x")));
        assert!(Filter::default().keeps(&key("a", "b", "c")));
    }

    #[test]
    fn the_listing_narrows_to_the_namespace_and_pod() {
        let p = ObjectPath::from("team/oom");
        let f = Filter {
            namespace: Some("shop".into()),
            pod: Some("cart".into()),
            ..Filter::default()
        };
        assert_eq!(f.listing_prefix(&p).as_ref(), "team/oom/shop/cart");
        let pod_only = Filter {
            pod: Some("cart".into()),
            ..Filter::default()
        };
        assert_eq!(pod_only.listing_prefix(&p).as_ref(), "team/oom");
    }

    #[tokio::test]
    async fn find_reads_keys_only_and_read_keeps_the_order() {
        let store = Store::open_with(
            "memory://p",
            &BTreeMap::<String, String>::new(),
            crate::store::Access::ReadOnly,
        )
        .unwrap();
        let manifest = |id: &str| serde_json::to_vec(&crate::spool::tests::manifest(id)).unwrap();
        let ids = [
            "20261122T010000.000Z_baseline",
            "20261122T020000.000Z_threshold-80",
            "20261122T030000.000Z_threshold-90",
        ];
        for id in ids {
            let k = ObjectPath::from(format!("p/shop/cart/app/{id}/{MANIFEST_FILE}"));
            store.inner.put(&k, manifest(id).into()).await.unwrap();
        }
        // Still uploading (no manifest yet), and an oom.json.
        let partial = ObjectPath::from("p/shop/cart/app/20261122T040000.000Z_imminent/heap.pb.gz");
        store.inner.put(&partial, vec![1u8].into()).await.unwrap();
        let oom = ObjectPath::from(format!("p/shop/cart/app/{}/{OOM_FILE}", ids[2]));
        store.inner.put(&oom, b"{}".to_vec().into()).await.unwrap();

        let found = find(&store, &store.prefix).await.unwrap();
        let got: Vec<&str> = found.iter().map(|f| f.parts.id.as_str()).collect();
        assert_eq!(got, [ids[2], ids[1], ids[0]]);
        assert!(found[0].has_oom && !found[1].has_oom);

        let listed = read(&store, found).await;
        let got: Vec<&str> = listed
            .iter()
            .map(|l| l.manifest.capture_id.as_str())
            .collect();
        assert_eq!(got, [ids[2], ids[1], ids[0]]);
        // The oom.json above is not a valid record: skipped, not fatal.
        assert!(listed[0].oom.is_none());
    }
}
