//! Azurite (`azurite-blob`) as the Azure Blob store of a test: in memory on
//! a free loopback port, its container created with a Shared Key request
//! the harness signs itself, killed on drop. [`Azurite::env`] is what
//! oomsnap needs to reach it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use object_store::ObjectStore;

use super::http::{free_port, http_request};
use super::objects::{get_bytes, list_keys, put_bytes, quick_retry};
use super::process::stop_group;
use super::skip::require_live;
use super::tools::{is_executable, which};

pub const AZURE_CONTAINER: &str = "test-container";
pub const AZURE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development account key (public, documented).
pub const AZURE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Where `azurite-blob` is: PATH, then `OOMSNAP_AZURITE_BLOB`, then
/// `/tmp/npmaz/node_modules/.bin/azurite-blob`.
pub fn azurite_binary() -> Option<PathBuf> {
    which("azurite-blob")
        .or_else(|| {
            std::env::var_os("OOMSNAP_AZURITE_BLOB")
                .map(PathBuf::from)
                .filter(|p| is_executable(p))
        })
        .or_else(|| {
            let p = PathBuf::from("/tmp/npmaz/node_modules/.bin/azurite-blob");
            is_executable(&p).then_some(p)
        })
}

/// `azurite-blob` on a free loopback port, in memory, with the container
/// `test-container` created. Killed on drop.
pub struct Azurite {
    child: Child,
    port: u16,
    store: Arc<dyn ObjectStore>,
}

impl Azurite {
    /// `None` (after [`require_live`]) when Azurite isn't installed.
    pub fn start() -> Option<Azurite> {
        let Some(bin) = azurite_binary() else {
            require_live("Azurite (`azurite-blob`)");
            return None;
        };
        let mut last_err = String::new();
        for _attempt in 0..3 {
            match Self::try_start(&bin) {
                Ok(a) => return Some(a),
                Err(e) => {
                    eprintln!("harness: azurite failed to start: {e}; retrying");
                    last_err = e;
                }
            }
        }
        panic!("azurite did not start: {last_err}");
    }

    fn try_start(bin: &Path) -> Result<Azurite, String> {
        let port = free_port();
        let child = Command::new(bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(port.to_string())
            .args([
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--loose",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let mut me = Azurite {
            child,
            port,
            store: azure_store(port),
        };
        let url = format!("http://127.0.0.1:{port}/");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = me.child.try_wait() {
                return Err(format!("azurite exited early: {st}"));
            }
            if http_request("GET", &url, &[], &[], Duration::from_secs(1)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("azurite did not answer on {url}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        me.create_container(AZURE_CONTAINER)?;
        Ok(me)
    }

    /// `PUT /<account>/<container>?restype=container`, signed with Shared Key.
    /// 201 Created or 409 (already exists) are success.
    pub fn create_container(&self, name: &str) -> Result<(), String> {
        let date = http_date(SystemTime::now());
        let version = "2021-08-06";
        let resource = format!("/{AZURE_ACCOUNT}/{AZURE_ACCOUNT}/{name}\nrestype:container");
        // VERB, Content-Encoding, -Language, -Length (empty for 0), -MD5,
        // -Type, Date, If-Modified-Since, If-Match, If-None-Match,
        // If-Unmodified-Since, Range, canonical x-ms-* headers, resource.
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n{resource}"
        );
        let auth = format!(
            "SharedKey {AZURE_ACCOUNT}:{}",
            shared_key_signature(AZURE_KEY, &to_sign)
        );
        let url = format!(
            "http://127.0.0.1:{}/{AZURE_ACCOUNT}/{name}?restype=container",
            self.port
        );
        let (code, body) = http_request(
            "PUT",
            &url,
            &[
                ("x-ms-date", &date),
                ("x-ms-version", version),
                ("Authorization", &auth),
            ],
            &[],
            Duration::from_secs(10),
        )
        .map_err(|e| format!("create container: {e}"))?;
        match code {
            201 | 409 => Ok(()),
            _ => Err(format!(
                "create container {name}: HTTP {code}: {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`
    pub fn blob_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment for the oomsnap process. object_store's emulator mode
    /// (`AZURE_STORAGE_USE_EMULATOR=true`) reads the endpoint from
    /// `AZURITE_BLOB_STORAGE_URL` (default `http://127.0.0.1:10000`); the
    /// account name and key are Azurite's well-known ones.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AZURE_STORAGE_USE_EMULATOR", "true".to_string()),
            ("AZURE_STORAGE_ACCOUNT_NAME", AZURE_ACCOUNT.to_string()),
            ("AZURE_STORAGE_ACCOUNT_KEY", AZURE_KEY.to_string()),
            ("AZURITE_BLOB_STORAGE_URL", self.blob_url()),
            ("AZURE_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `az://test-container/<prefix>`
    pub fn store_url(&self, prefix: &str) -> String {
        format!("az://{AZURE_CONTAINER}/{}", prefix.trim_start_matches('/'))
    }

    /// The harness's own client for the container.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    pub async fn list(&self, prefix: &str) -> Vec<String> {
        list_keys(&self.store, prefix).await
    }

    pub async fn get(&self, key: &str) -> Vec<u8> {
        get_bytes(&self.store, key).await
    }

    pub async fn put(&self, key: &str, data: Vec<u8>) {
        put_bytes(&self.store, key, data).await
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        stop_group(&mut self.child, Duration::ZERO);
    }
}

/// The harness's Azure client. Not emulator mode: that reads the port from
/// the process environment (`AZURITE_BLOB_STORAGE_URL`), which tests must
/// not mutate. An explicit endpoint `http://127.0.0.1:PORT/devstoreaccount1`
/// gives the same path-style URLs and signatures.
fn azure_store(port: u16) -> Arc<dyn ObjectStore> {
    let az = object_store::azure::MicrosoftAzureBuilder::new()
        .with_endpoint(format!("http://127.0.0.1:{port}/{AZURE_ACCOUNT}"))
        .with_allow_http(true)
        .with_account(AZURE_ACCOUNT)
        .with_access_key(AZURE_KEY)
        .with_container_name(AZURE_CONTAINER)
        .with_retry(quick_retry())
        .build()
        .expect("build Azure client");
    Arc::new(az)
}

/// base64(HMAC-SHA256(base64decode(key), to_sign)), HMAC per RFC 2104 on
/// the crate's `sha2`.
fn shared_key_signature(key_b64: &str, to_sign: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let engine = base64::engine::general_purpose::STANDARD;
    let key = engine.decode(key_b64).expect("account key is base64");
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(&key));
    } else {
        block[..key.len()].copy_from_slice(&key);
    }
    let ipad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(to_sign.as_bytes())
        .finalize();
    let mac = Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize();
    engine.encode(mac)
}

/// RFC 1123 date (`Sun, 22 Nov 2026 03:26:34 GMT`).
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WD[days.rem_euclid(7) as usize],
        day,
        MON[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
