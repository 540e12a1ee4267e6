//! A borrowed, lenient view of an AdmissionReview and the few pod fields the
//! injector reads.
//!
//! The request body enters as bytes and is parsed once, in place: strings
//! borrow from the body wherever JSON allows, and every field the injector
//! does not read is skipped without being built. No `serde_json::Value` tree
//! is made — for a pod of many small objects (thousands of env vars) that
//! tree costs many times the body, and under concurrent reviews it was what
//! pushed the injector over its memory limit.
//!
//! Lenient: a field of an unexpected JSON type reads as absent instead of
//! failing the whole review, so an odd pod gets a clear skip reason rather
//! than an HTTP error. Only malformed JSON (or a duplicated key) fails.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// The `visit_*` methods for JSON scalars, each answering `$none`: for the
/// visitors below that want an object or an array and treat anything else
/// as absent.
macro_rules! scalars_are {
    ($none:expr) => {
        fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($none)
        }
    };
}

/// Any JSON value, reduced to the scalars the view keeps; arrays and objects
/// are skipped (drained without being built).
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Bool(bool),
    Other,
}

struct ScalarVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for ScalarVisitor<'a> {
    type Value = Scalar<'a>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(Scalar::Other, Scalar::Int))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

fn scalar<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Scalar<'a>, D::Error> {
    d.deserialize_any(ScalarVisitor(PhantomData))
}

/// A string field; absent when missing or not a string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Str<'a>(pub Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Str(match scalar(d)? {
            Scalar::Str(s) => Some(s),
            _ => None,
        }))
    }
}

impl Str<'_> {
    pub fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// A whole-number field; absent when missing or not an integer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Int(pub Option<i64>);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Int(match scalar(d)? {
            Scalar::Int(i) => Some(i),
            _ => None,
        }))
    }
}

/// A boolean field; absent when missing or not a boolean.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bool(pub Option<bool>);

impl<'de> Deserialize<'de> for Bool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Bool(match scalar(d)? {
            Scalar::Bool(b) => Some(b),
            _ => None,
        }))
    }
}

/// An object field read as `T`; absent when missing or not an object.
#[derive(Debug, Clone, PartialEq)]
pub struct Obj<T>(pub Option<T>);

impl<T> Default for Obj<T> {
    fn default() -> Self {
        Obj(None)
    }
}

impl<T> Obj<T> {
    pub fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

struct ObjVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjVisitor<T> {
    type Value = Obj<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(|t| Obj(Some(t)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Obj(None))
    }
    scalars_are!(Obj(None));
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ObjVisitor(PhantomData))
    }
}

/// An array field of `T`s; absent when missing or not an array.
#[derive(Debug, Clone, PartialEq)]
pub struct Arr<T>(pub Option<Vec<T>>);

impl<T> Default for Arr<T> {
    fn default() -> Self {
        Arr(None)
    }
}

impl<T> Arr<T> {
    pub fn items(&self) -> &[T] {
        self.0.as_deref().unwrap_or_default()
    }
    /// Whether the field is present as an array (JSONPatch can append to it).
    pub fn is_array(&self) -> bool {
        self.0.is_some()
    }
}

struct ArrVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ArrVisitor<T> {
    type Value = Arr<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Vec::<T>::deserialize(SeqAccessDeserializer::new(seq)).map(|v| Arr(Some(v)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Arr(None))
    }
    scalars_are!(Arr(None));
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Arr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ArrVisitor(PhantomData))
    }
}

/// Keys of labels and annotations the injector reads; the rest of a map
/// (which may be 256 KiB of someone else's annotations) is skipped.
fn wanted_key(k: &str) -> bool {
    k.starts_with("oomsnap.dev/") || k.starts_with("profiles.grafana.com/memory.")
}

/// A labels or annotations map, keeping only the keys the injector reads
/// (`oomsnap.dev/*`, `profiles.grafana.com/memory.*`) with string values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys<'a> {
    /// Whether the map is present as an object (JSONPatch can add a key).
    pub present: bool,
    pub wanted: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
}

impl Keys<'_> {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.wanted.get(key).map(|v| v.as_ref())
    }
    /// The kept keys as owned strings, the form `annotations::rules` reads.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.wanted
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

struct KeysVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for KeysVisitor<'a> {
    type Value = Keys<'a>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut keys = Keys {
            present: true,
            wanted: BTreeMap::new(),
        };
        while let Some(Str(key)) = map.next_key::<Str<'a>>()? {
            match key.filter(|k| wanted_key(k)) {
                Some(k) => {
                    if let Str(Some(v)) = map.next_value::<Str<'a>>()? {
                        keys.wanted.insert(k, v);
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(keys)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Keys::default())
    }
    scalars_are!(Keys::default());
}

impl<'de: 'a, 'a> Deserialize<'de> for Keys<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KeysVisitor(PhantomData))
    }
}

/// The AdmissionReview envelope.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Review<'a> {
    #[serde(borrow)]
    pub api_version: Str<'a>,
    #[serde(borrow)]
    pub kind: Str<'a>,
    #[serde(borrow)]
    pub request: Obj<Request<'a>>,
}

/// The `request` of a review: only the fields the injector uses.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Request<'a> {
    /// Echoed in the response; the API server matches on it.
    #[serde(borrow)]
    pub uid: Str<'a>,
    #[serde(borrow)]
    pub kind: Obj<GroupVersionKind<'a>>,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    #[serde(borrow)]
    pub operation: Str<'a>,
    #[serde(borrow)]
    pub namespace: Str<'a>,
    /// The pod as it would be stored (for `CREATE`).
    #[serde(borrow)]
    pub object: Obj<Pod<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GroupVersionKind<'a> {
    #[serde(borrow)]
    pub group: Str<'a>,
    #[serde(borrow)]
    pub version: Str<'a>,
    #[serde(borrow)]
    pub kind: Str<'a>,
}

/// A pod: its metadata and spec.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Pod<'a> {
    #[serde(borrow)]
    pub metadata: Obj<Metadata<'a>>,
    #[serde(borrow)]
    pub spec: Obj<Spec<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Metadata<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
    /// Pods made by a ReplicaSet have no name at admission, only this.
    #[serde(borrow)]
    pub generate_name: Str<'a>,
    #[serde(borrow)]
    pub namespace: Str<'a>,
    #[serde(borrow)]
    pub labels: Keys<'a>,
    #[serde(borrow)]
    pub annotations: Keys<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Spec<'a> {
    #[serde(borrow)]
    pub containers: Arr<Obj<Container<'a>>>,
    #[serde(borrow)]
    pub init_containers: Arr<Obj<Named<'a>>>,
    #[serde(borrow)]
    pub volumes: Arr<Obj<Named<'a>>>,
    #[serde(rename = "hostPID")]
    pub host_pid: Bool,
    pub security_context: Obj<Ids>,
}

/// Anything with a name (init containers, volumes).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Named<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Container<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
    #[serde(borrow)]
    pub ports: Arr<Obj<Port<'a>>>,
    #[serde(borrow)]
    pub resources: Obj<Resources<'a>>,
    pub security_context: Obj<Ids>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Port<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
    pub container_port: Int,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Resources<'a> {
    #[serde(borrow)]
    pub limits: Obj<Limits<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Limits<'a> {
    #[serde(borrow)]
    pub memory: Str<'a>,
}

/// `runAsUser` / `runAsGroup` of a security context.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Ids {
    pub run_as_user: Int,
    pub run_as_group: Int,
}

/// The items of an optional array of optional objects.
pub fn each<T>(arr: &Arr<Obj<T>>) -> impl Iterator<Item = &T> {
    arr.items().iter().filter_map(Obj::get)
}

/// The names in an array of named things.
pub fn names<'s>(arr: &'s Arr<Obj<Named<'_>>>) -> impl Iterator<Item = &'s str> {
    each(arr).filter_map(|n| n.name.get())
}

impl<'a> Metadata<'a> {
    /// `name`, else `generateName` followed by `*`, else `?`: for logs.
    pub fn display_name(&self) -> String {
        match (self.name.get(), self.generate_name.get()) {
            (Some(n), _) => n.to_string(),
            (None, Some(g)) => format!("{g}*"),
            (None, None) => "?".to_string(),
        }
    }
}

impl<'a> Container<'a> {
    /// `resources.limits.memory` as written.
    pub fn memory_limit(&self) -> Option<&str> {
        self.resources.get()?.limits.get()?.memory.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_it_needs_and_borrows_from_the_body() {
        let body = r#"{"metadata": {"generateName": "web-", "annotations": {
                "oomsnap.dev/inject": "true", "other": "x",
                "profiles.grafana.com/memory.port": "7070"},
                "labels": {"app": "web"}},
             "spec": {"hostPID": true, "containers": [
                {"name": "app", "env": [{"name": "A", "value": "1"}],
                 "ports": [{"name": "pprof", "containerPort": 6061}],
                 "resources": {"limits": {"memory": "512Mi"}},
                 "securityContext": {"runAsUser": 1000}}],
              "volumes": [{"name": "v"}]}}"#;
        let pod: Pod = serde_json::from_str(body).unwrap();
        let meta = pod.metadata.get().unwrap();
        assert_eq!(meta.display_name(), "web-*");
        assert!(meta.annotations.present && meta.labels.present);
        assert_eq!(meta.annotations.wanted.len(), 2, "only wanted keys");
        assert!(matches!(
            meta.annotations.wanted.get("oomsnap.dev/inject"),
            Some(Cow::Borrowed("true"))
        ));
        let spec = pod.spec.get().unwrap();
        assert_eq!(spec.host_pid, Bool(Some(true)));
        let c = each(&spec.containers).next().unwrap();
        assert_eq!(c.memory_limit(), Some("512Mi"));
        assert_eq!(
            each(&c.ports).next().unwrap().container_port,
            Int(Some(6061))
        );
        assert_eq!(
            c.security_context.get().unwrap().run_as_user,
            Int(Some(1000))
        );
        assert!(!spec.init_containers.is_array());
        assert_eq!(names(&spec.volumes).collect::<Vec<_>>(), ["v"]);
    }

    #[test]
    fn wrong_types_read_as_absent_instead_of_failing() {
        let body = r#"{"metadata": {"name": 5, "annotations": ["x"], "labels": "y"},
             "spec": {"hostPID": "yes", "containers": {"name": "app"},
                      "volumes": [3, {"name": 4}, null], "securityContext": []}}"#;
        let pod: Pod = serde_json::from_str(body).unwrap();
        let meta = pod.metadata.get().unwrap();
        assert_eq!(meta.name, Str(None));
        assert!(!meta.annotations.present && !meta.labels.present);
        let spec = pod.spec.get().unwrap();
        assert_eq!(spec.host_pid, Bool(None));
        assert!(!spec.containers.is_array());
        assert!(spec.volumes.is_array());
        assert_eq!(names(&spec.volumes).count(), 0);
        assert!(spec.security_context.get().is_none());

        let not_a_pod: Obj<Pod> = serde_json::from_str("[1, 2]").unwrap();
        assert!(not_a_pod.get().is_none());
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let pod: Pod = serde_json::from_str(
            r#"{"metadata": {"annotations": {"oomsnap.dev/port": "\u0038080"}}}"#,
        )
        .unwrap();
        let meta = pod.metadata.get().unwrap();
        assert_eq!(meta.annotations.get("oomsnap.dev/port"), Some("8080"));
    }
}
