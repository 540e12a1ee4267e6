//! The object store providers' own variables (`AWS_*`, `AZURE_*`,
//! `GOOGLE_*`), checked before `object_store` sees them.
//!
//! Variables enter through [`Vars`] (the process environment in production, a
//! map in tests); a configured builder leaves, or a [`StoreError::Env`] that
//! names the variable, shows the value (unless it may be a secret) and says
//! what form was expected. The builders are filled the way their `from_env`
//! fills them, key by key, except that an empty value counts as unset, as it
//! does for every `OOMSNAP_*` variable.
//!
//! Why the checks exist: `object_store` 0.14 builds requests from these
//! strings with `expect`, so a value it cannot turn into a URI or an HTTP
//! header (an endpoint without `http://`, a region with a space, a key with
//! a trailing newline from a Secret made with `echo`) aborts the process at
//! the first request instead of failing to build. Each rule below answers
//! one such case, found by reading the builders and trying the values.

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::ClientConfigKey;

use super::StoreError;
use crate::vars::Vars;

/// Azure's managed-identity endpoint, read by `from_env` without the prefix.
pub const IDENTITY_ENDPOINT: &str = "IDENTITY_ENDPOINT";
/// Azurite's address, read by `object_store` itself when the emulator is on.
pub const AZURITE_BLOB_STORAGE_URL: &str = "AZURITE_BLOB_STORAGE_URL";
/// A service-account key path, read by the GCS `from_env` without the prefix.
pub const SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";

const URL_FORM: &str =
    "a URL such as http://127.0.0.1:9000 or https://s3.example.com: http:// or https://, a host, \
     an optional port and path, no spaces, no query";
const REGION_FORM: &str = "a region name such as us-east-1 (ASCII letters, digits, '-', '.', '_')";
const RELATIVE_URI_FORM: &str = "a path such as /v2/credentials/… (starting with /, no spaces)";
const ACCOUNT_FORM: &str =
    "a storage account name such as oomevidence (ASCII letters, digits, '-')";
const TENANT_FORM: &str =
    "a tenant ID such as 72f988bf-86f1-41af-91ab-2d7cd011db47 or contoso.onmicrosoft.com";

/// The S3 builder, configured from `AWS_*`.
pub fn s3(vars: &dyn Vars) -> Result<AmazonS3Builder, StoreError> {
    let mut b = AmazonS3Builder::new();
    for (var, value) in prefixed(vars, "AWS_") {
        let Ok(key) = var.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() else {
            continue;
        };
        if !matches!(
            key,
            AmazonS3ConfigKey::Client(ClientConfigKey::ProxyCaCertificate)
        ) {
            check_text(&var, &value)?;
        }
        match key {
            AmazonS3ConfigKey::Endpoint
            | AmazonS3ConfigKey::S3Endpoint
            | AmazonS3ConfigKey::MetadataEndpoint
            | AmazonS3ConfigKey::ContainerCredentialsFullUri
            | AmazonS3ConfigKey::StsEndpoint => check_url(&var, &value)?,
            AmazonS3ConfigKey::Region | AmazonS3ConfigKey::DefaultRegion => {
                check_name(&var, &value, &['-', '.', '_'], REGION_FORM)?
            }
            AmazonS3ConfigKey::ContainerCredentialsRelativeUri => check_relative_uri(&var, &value)?,
            _ => {}
        }
        b = b.with_config(key, value);
    }
    Ok(b)
}

/// The Azure builder, configured from `AZURE_*` and `IDENTITY_ENDPOINT`.
pub fn azure(vars: &dyn Vars) -> Result<MicrosoftAzureBuilder, StoreError> {
    let mut b = MicrosoftAzureBuilder::new();
    let mut emulator = false;
    for (var, value) in prefixed(vars, "AZURE_") {
        let Ok(key) = var.to_ascii_lowercase().parse::<AzureConfigKey>() else {
            continue;
        };
        if !matches!(
            key,
            AzureConfigKey::Client(ClientConfigKey::ProxyCaCertificate)
        ) {
            check_text(&var, &value)?;
        }
        match key {
            AzureConfigKey::Endpoint
            | AzureConfigKey::AuthorityHost
            | AzureConfigKey::MsiEndpoint
            | AzureConfigKey::FabricTokenServiceUrl => check_url(&var, &value)?,
            AzureConfigKey::AccountName => check_name(&var, &value, &['-'], ACCOUNT_FORM)?,
            AzureConfigKey::AuthorityId => check_name(&var, &value, &['-', '.'], TENANT_FORM)?,
            // object_store's own reading of a true value.
            AzureConfigKey::UseEmulator => {
                emulator = matches!(
                    value.to_ascii_lowercase().as_str(),
                    "1" | "true" | "on" | "yes" | "y"
                )
            }
            _ => {}
        }
        b = b.with_config(key, value);
    }
    if let Some(v) = vars.get(IDENTITY_ENDPOINT) {
        check_text(IDENTITY_ENDPOINT, &v)?;
        check_url(IDENTITY_ENDPOINT, &v)?;
        b = b.with_msi_endpoint(v);
    }
    // object_store reads this one from the process itself; in production
    // `vars` is that same environment.
    if emulator {
        if let Some(v) = vars.get(AZURITE_BLOB_STORAGE_URL) {
            check_text(AZURITE_BLOB_STORAGE_URL, &v)?;
            check_url(AZURITE_BLOB_STORAGE_URL, &v)?;
        }
    }
    Ok(b)
}

/// The GCS builder, configured from `GOOGLE_*` and `SERVICE_ACCOUNT`.
pub fn gcs(vars: &dyn Vars) -> Result<GoogleCloudStorageBuilder, StoreError> {
    let mut b = GoogleCloudStorageBuilder::new();
    if let Some(v) = vars.get(SERVICE_ACCOUNT) {
        check_text(SERVICE_ACCOUNT, &v)?;
        b = b.with_service_account_path(v);
    }
    for (var, value) in prefixed(vars, "GOOGLE_") {
        let Ok(key) = var.to_ascii_lowercase().parse::<GoogleConfigKey>() else {
            continue;
        };
        if !matches!(
            key,
            GoogleConfigKey::ServiceAccountKey
                | GoogleConfigKey::Client(ClientConfigKey::ProxyCaCertificate)
        ) {
            check_text(&var, &value)?;
        }
        if matches!(key, GoogleConfigKey::BaseUrl) {
            check_url(&var, &value)?;
        }
        b = b.with_config(key, value);
    }
    Ok(b)
}

/// Every set variable with `prefix`, in a stable order (when two aliases of
/// one setting are both set, the later name wins, as it would in `from_env`
/// for whichever the environment listed last).
fn prefixed(vars: &dyn Vars, prefix: &str) -> Vec<(String, String)> {
    let mut keys: Vec<String> = vars
        .keys()
        .into_iter()
        .filter(|k| k.starts_with(prefix))
        .collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| vars.get(&k).map(|v| (k, v)))
        .collect()
}

/// Credentials are never echoed into a log or a terminal.
fn may_be_secret(var: &str) -> bool {
    ["KEY", "SECRET", "TOKEN", "PASSWORD", "SAS"]
        .iter()
        .any(|w| var.contains(w))
}

fn error(var: &str, value: &str, problem: String, expected: &'static str) -> StoreError {
    StoreError::Env {
        var: var.to_string(),
        value: (!may_be_secret(var)).then(|| value.to_string()),
        problem,
        expected,
    }
}

/// Nearly every value ends up in a URI or an HTTP header somewhere, where a
/// control character (typically a trailing newline) is fatal inside
/// object_store. The exceptions are parsed as documents, where newlines
/// belong: a PEM certificate and a service-account JSON key; callers skip
/// this check for them.
fn check_text(var: &str, value: &str) -> Result<(), StoreError> {
    match value.chars().enumerate().find(|(_, c)| c.is_control()) {
        None => Ok(()),
        Some((i, c)) => Err(error(
            var,
            value,
            format!(
                "it holds the control character U+{:04X} at character {}",
                c as u32,
                i + 1
            ),
            "printable text (a value copied with its trailing newline has one)",
        )),
    }
}

/// The endpoint strings are pasted into request URIs as they are, so the
/// value itself (not only what a URL parser makes of it) must be plain.
fn check_url(var: &str, value: &str) -> Result<(), StoreError> {
    let bad = |problem: &str| Err(error(var, value, problem.to_string(), URL_FORM));
    if !value.chars().all(|c| c.is_ascii_graphic()) {
        return bad("it holds a space or a character outside ASCII");
    }
    let url = match reqwest::Url::parse(value) {
        Ok(u) => u,
        Err(e) => {
            return Err(error(
                var,
                value,
                format!("it is not a URL ({e})"),
                URL_FORM,
            ))
        }
    };
    if !matches!(url.scheme(), "http" | "https") {
        return bad("it does not start with http:// or https://");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return bad("it has no host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return bad("it carries a user name or password");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return bad("it has a query (?…) or fragment (#…)");
    }
    Ok(())
}

fn check_name(
    var: &str,
    value: &str,
    also: &[char],
    expected: &'static str,
) -> Result<(), StoreError> {
    match value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || also.contains(c)))
    {
        None => Ok(()),
        Some(c) => Err(error(
            var,
            value,
            format!("{c:?} is not allowed in it"),
            expected,
        )),
    }
}

/// ECS and EKS append this to `http://169.254.170.2`.
fn check_relative_uri(var: &str, value: &str) -> Result<(), StoreError> {
    if value.starts_with('/') && value.chars().all(|c| c.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(error(
            var,
            value,
            "it is not a path that starts with /".to_string(),
            RELATIVE_URI_FORM,
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use object_store::ObjectStoreExt;

    use crate::store::{Access, Store, StoreError};

    const CLOSED: &str = "http://127.0.0.1:1";

    fn open(url: &str, vars: &[(&str, &str)]) -> Result<Store, StoreError> {
        let map: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Store::open_with(url, &map, Access::ReadOnly)
    }

    /// Static credentials and a closed loopback port: a request fails fast
    /// instead of reaching a metadata service.
    fn s3_with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v = vec![
            ("AWS_ACCESS_KEY_ID", "k"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ENDPOINT", CLOSED),
        ];
        for (k, val) in extra {
            v.retain(|(name, _)| name != k);
            v.push((k, val));
        }
        v
    }

    fn env_error(r: Result<Store, StoreError>) -> (String, Option<String>, String) {
        match r {
            Err(e @ StoreError::Env { .. }) => {
                let text = e.to_string();
                let StoreError::Env { var, value, .. } = e else {
                    unreachable!()
                };
                (var, value, text)
            }
            Err(other) => panic!("expected an Env error, got {other}"),
            Ok(_) => panic!("expected an Env error, the store opened"),
        }
    }

    #[test]
    fn an_endpoint_without_a_scheme_names_the_variable_and_the_form() {
        // The case found first: object_store aborts the process on it.
        let (var, value, text) = env_error(open(
            "s3://b/p",
            &s3_with(&[("AWS_ENDPOINT", "127.0.0.1:9000")]),
        ));
        assert_eq!(var, "AWS_ENDPOINT");
        assert_eq!(value.as_deref(), Some("127.0.0.1:9000"));
        assert!(text.contains("AWS_ENDPOINT=\"127.0.0.1:9000\""), "{text}");
        assert!(text.contains("http://127.0.0.1:9000"), "{text}");
    }

    #[test]
    fn endpoints_that_would_abort_object_store_are_refused() {
        for bad in [
            "localhost:9000",
            "http://",
            "http://host:99999",
            "http://a b",
            "http://ä.example",
            "http://h/?x=1",
            "http://user:pw@h",
            "ftp://h",
        ] {
            for var in [
                "AWS_ENDPOINT",
                "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3",
                "AWS_METADATA_ENDPOINT",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_ENDPOINT_URL_STS",
            ] {
                let (named, _, text) = env_error(open("s3://b/p", &s3_with(&[(var, bad)])));
                assert_eq!(named, var, "{var}={bad}: {text}");
            }
        }
    }

    #[test]
    fn a_region_with_a_space_is_refused() {
        for var in ["AWS_REGION", "AWS_DEFAULT_REGION"] {
            let (named, value, text) = env_error(open("s3://b/p", &s3_with(&[(var, "us east")])));
            assert_eq!((named.as_str(), value.as_deref()), (var, Some("us east")));
            assert!(text.contains("us-east-1"), "{text}");
        }
    }

    #[test]
    fn a_trailing_newline_in_a_credential_is_refused_without_showing_it() {
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
        ] {
            let (named, value, text) =
                env_error(open("s3://b/p", &s3_with(&[(var, "AKIAsecret\n")])));
            assert_eq!(named, var);
            assert_eq!(value, None, "a credential is never echoed");
            assert!(!text.contains("AKIAsecret"), "{text}");
            assert!(
                text.contains("U+000A") && text.contains("character 11"),
                "{text}"
            );
        }
        let (_, value, _) = env_error(open(
            "s3://b/p",
            &s3_with(&[("AWS_DEFAULT_CONTENT_TYPE", "a\u{1}b")]),
        ));
        assert_eq!(value.as_deref(), Some("a\u{1}b"));
    }

    #[test]
    fn documents_may_span_lines() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert!(!matches!(
            open("s3://b/p", &s3_with(&[("AWS_PROXY_CA_CERTIFICATE", pem)])),
            Err(StoreError::Env { .. })
        ));
        let key = "{\n  \"type\": \"service_account\"\n}\n";
        assert!(!matches!(
            open("gs://b/p", &[("GOOGLE_SERVICE_ACCOUNT_KEY", key)]),
            Err(StoreError::Env { .. })
        ));
    }

    #[test]
    fn a_relative_credentials_uri_must_be_a_path() {
        let (named, _, _) = env_error(open(
            "s3://b/p",
            &s3_with(&[("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "v2/creds")]),
        ));
        assert_eq!(named, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
        assert!(open(
            "s3://b/p",
            &s3_with(&[("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/creds")]),
        )
        .is_ok());
    }

    #[test]
    fn an_empty_endpoint_counts_as_unset() {
        // from_env passed "" on, and the first request aborted.
        assert!(open("s3://b/p", &s3_with(&[("AWS_ENDPOINT", "")])).is_ok());
    }

    #[test]
    fn azure_values_that_would_abort_object_store_are_refused() {
        let base = [
            ("AZURE_STORAGE_ACCOUNT_NAME", "acct"),
            ("AZURE_STORAGE_ACCOUNT_KEY", "a2V5"),
            ("AZURE_ALLOW_HTTP", "true"),
            ("AZURE_STORAGE_ENDPOINT", CLOSED),
        ];
        let cases: [(&str, &str); 8] = [
            ("AZURE_STORAGE_ACCOUNT_NAME", "acct\n"),
            ("AZURE_STORAGE_ACCOUNT_NAME", "a b"),
            ("AZURE_STORAGE_TOKEN", "t\n"),
            ("AZURE_TENANT_ID", "t t"),
            ("AZURE_AUTHORITY_HOST", "login"),
            ("AZURE_MSI_ENDPOINT", "x y"),
            ("AZURE_STORAGE_ENDPOINT", "127.0.0.1:10000"),
            ("IDENTITY_ENDPOINT", "169.254.169.254/token"),
        ];
        for (var, bad) in cases {
            let mut vars: Vec<(&str, &str)> =
                base.iter().copied().filter(|(k, _)| *k != var).collect();
            vars.push((var, bad));
            let (named, _, text) = env_error(open("az://c/p", &vars));
            assert_eq!(named, var, "{text}");
        }
        let (named, _, _) = env_error(open(
            "az://c/p",
            &[
                ("AZURE_STORAGE_USE_EMULATOR", "true"),
                ("AZURITE_BLOB_STORAGE_URL", "localhost:10000"),
            ],
        ));
        assert_eq!(named, "AZURITE_BLOB_STORAGE_URL");
    }

    #[test]
    fn gcs_values_that_would_abort_object_store_are_refused() {
        let (named, _, _) = env_error(open(
            "gs://b/p",
            &[
                ("GOOGLE_BASE_URL", "127.0.0.1:1"),
                ("GOOGLE_BEARER_TOKEN", "x"),
            ],
        ));
        assert_eq!(named, "GOOGLE_BASE_URL");
        let (named, value, _) = env_error(open(
            "gs://b/p",
            &[("GOOGLE_BASE_URL", CLOSED), ("GOOGLE_BEARER_TOKEN", "x\n")],
        ));
        assert_eq!((named.as_str(), value), ("GOOGLE_BEARER_TOKEN", None));
    }

    #[test]
    fn bucket_names_that_would_abort_object_store_are_refused() {
        for url in [
            "s3://b%7Cc/p",
            "s3://b:99/p",
            "az://c%20d/p",
            "gs://b%7Cc/p",
        ] {
            assert!(
                matches!(open(url, &s3_with(&[])), Err(StoreError::BadBucket { .. })),
                "{url}"
            );
        }
        assert!(open("s3://my-bucket.v2_x/p", &s3_with(&[])).is_ok());
    }

    /// Whatever passes the checks may fail, but never panics, when used.
    #[test]
    fn hostile_values_never_panic_when_opened_and_used() {
        let hostile = [
            "",
            " ",
            "127.0.0.1:9000",
            "http://",
            "http://[::1",
            "http://h:0",
            "https://h:65535/p",
            "/x",
            "\u{0}",
            "é",
            "%ff",
            "true",
            "999999999999999999999",
        ];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut used = 0;
        for (url, vars) in [
            (
                "s3://b/p",
                vec![
                    "AWS_ENDPOINT",
                    "AWS_REGION",
                    "AWS_SESSION_TOKEN",
                    "AWS_CHECKSUM_ALGORITHM",
                    "AWS_DEFAULT_CONTENT_TYPE",
                    "AWS_USER_AGENT",
                    "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
                    "AWS_SKIP_SIGNATURE",
                    "AWS_TIMEOUT",
                    "AWS_PROXY_URL",
                    "AWS_CONDITIONAL_PUT",
                ],
            ),
            (
                "gs://b/p",
                vec!["GOOGLE_BASE_URL", "GOOGLE_BEARER_TOKEN", "GOOGLE_TIMEOUT"],
            ),
        ] {
            for var in vars {
                for value in hostile {
                    let mut pairs: Vec<(&str, &str)> = if url.starts_with("s3") {
                        s3_with(&[])
                    } else {
                        vec![
                            ("GOOGLE_BASE_URL", CLOSED),
                            ("GOOGLE_BEARER_TOKEN", "x"),
                            ("GOOGLE_ALLOW_HTTP", "true"),
                        ]
                    };
                    pairs.retain(|(k, _)| *k != var);
                    pairs.push((var, value));
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let Ok(store) = open(url, &pairs) else {
                            return false;
                        };
                        rt.block_on(async {
                            let _ = tokio::time::timeout(
                                // A panic comes while the request is built,
                                // on the first poll; no need to wait for the
                                // network.
                                Duration::from_millis(20),
                                store.inner.head(&"x/y".into()),
                            )
                            .await;
                        });
                        true
                    }));
                    match outcome {
                        Ok(true) => used += 1,
                        Ok(false) => {}
                        Err(_) => panic!("{var}={value:?} panicked inside object_store"),
                    }
                }
            }
        }
        assert!(
            used > 10,
            "only {used} stores opened; the test no longer uses them"
        );
    }
}
