//! The harness's own object-store client calls, shared by the SeaweedFS
//! and Azurite guards: list, get and put with a short retry policy, and a
//! panic naming the key when the store refuses.

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, RetryConfig};

pub(super) fn quick_retry() -> RetryConfig {
    RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

pub(super) async fn list_keys(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    use futures_util::TryStreamExt;
    let prefix = prefix.trim_matches('/');
    let p = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
    let mut keys: Vec<String> = store
        .list(p.as_ref())
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("list {prefix:?}: {e}"));
    keys.sort();
    keys
}

pub(super) async fn get_bytes(store: &Arc<dyn ObjectStore>, key: &str) -> Vec<u8> {
    let r = store
        .get(&ObjectPath::from(key))
        .await
        .unwrap_or_else(|e| panic!("get {key:?}: {e}"));
    r.bytes()
        .await
        .unwrap_or_else(|e| panic!("read {key:?}: {e}"))
        .to_vec()
}

pub(super) async fn put_bytes(store: &Arc<dyn ObjectStore>, key: &str, data: Vec<u8>) {
    store
        .put(&ObjectPath::from(key), data.into())
        .await
        .unwrap_or_else(|e| panic!("put {key:?}: {e}"));
}
