//! Where settings come from: [`Vars`], a source of key→value strings.
//!
//! The process environment in production ([`ProcessEnv`]), a map in tests.
//! Its own module, below `config` and `store`, because both read variables
//! (`OOMSNAP_*`, and the cloud SDKs' `AWS_*`, `AZURE_*`, `GOOGLE_*`) and
//! `config` checks a store URL with `store`'s parser: with the trait in
//! `config`, the two would depend on each other.

use std::collections::BTreeMap;

/// A source of configuration strings. Tests hand in a map.
pub trait Vars {
    /// The value of `key`, if set (an empty value counts as unset).
    fn get(&self, key: &str) -> Option<String>;
    /// Every key that is set, so unknown `OOMSNAP_*` names can be warned about.
    fn keys(&self) -> Vec<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Vars for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.trim().is_empty())
    }
    fn keys(&self) -> Vec<String> {
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect()
    }
}

impl<S: std::hash::BuildHasher> Vars for std::collections::HashMap<String, String, S> {
    fn get(&self, key: &str) -> Option<String> {
        std::collections::HashMap::get(self, key)
            .filter(|v| !v.trim().is_empty())
            .cloned()
    }
    fn keys(&self) -> Vec<String> {
        std::collections::HashMap::keys(self).cloned().collect()
    }
}

impl Vars for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key)
            .filter(|v| !v.trim().is_empty())
            .cloned()
    }
    fn keys(&self) -> Vec<String> {
        BTreeMap::keys(self).cloned().collect()
    }
}
