//! SeaweedFS (`weed mini`) as the S3 store of a test: started on loopback
//! with every port moved to a free one, waited for until its bucket lists,
//! and stopped by its process group on drop. [`SeaweedFs::env`] is what
//! oomsnap needs to reach it.

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;

use super::files::temp_dir;
use super::http::{free_ports, http_request};
use super::objects::{get_bytes, list_keys, put_bytes, quick_retry};
use super::process::stop_group;
use super::skip::require_live;
use super::timing::block_on_thread;
use super::tools::which;

pub const S3_BUCKET: &str = "test-bucket";
pub const S3_ACCESS_KEY: &str = "k";
pub const S3_SECRET_KEY: &str = "s";

/// `weed mini` on loopback with every port moved to a free one, so several
/// tests can run their own SeaweedFS at once. Stopped on drop (SIGTERM to
/// its process group, 2 s, then SIGKILL).
pub struct SeaweedFs {
    child: Child,
    s3_port: u16,
    ports: Vec<u16>,
    dir: tempfile::TempDir,
    store: Arc<dyn ObjectStore>,
}

impl SeaweedFs {
    /// Starts SeaweedFS and waits until S3 answers and `test-bucket` lists.
    /// `None` (after [`require_live`]) when `weed` isn't on PATH.
    pub fn start() -> Option<SeaweedFs> {
        if which("weed").is_none() {
            require_live("SeaweedFS `weed` binary");
            return None;
        }
        let mut last_err = String::new();
        for _attempt in 0..3 {
            match Self::try_start() {
                Ok(s) => return Some(s),
                Err(e) => {
                    eprintln!("harness: weed mini failed to start: {e}; retrying");
                    last_err = e;
                }
            }
        }
        panic!("weed mini did not start: {last_err}");
    }

    fn try_start() -> Result<SeaweedFs, String> {
        let dir = temp_dir("weed");
        // Ports: master, master grpc, volume, volume grpc, filer, filer grpc,
        // s3, s3 grpc, admin grpc. The admin http port is chosen so that
        // port+10000 is free too: the embedded worker dials admin+10000.
        let p = free_ports(9);
        let admin = free_port_with_grpc_offset();
        let log = fs::File::create(dir.path().join("weed.log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("weed");
        cmd.arg("mini")
            .arg(format!("-dir={}", dir.path().display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-metricsPort=0",
            ])
            .arg(format!("-bucket={S3_BUCKET}"))
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .arg(format!("-admin.port={admin}"))
            .arg(format!("-admin.port.grpc={}", admin + 10000))
            .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0);
        let child = cmd.spawn().map_err(|e| format!("spawn weed: {e}"))?;
        let s3_port = p[6];
        let mut ports = p.clone();
        ports.push(admin);
        ports.push(admin + 10000);
        let store = s3_store(s3_port);
        let mut me = SeaweedFs {
            child,
            s3_port,
            ports,
            dir,
            store,
        };
        me.wait_ready(Duration::from_secs(30))?;
        Ok(me)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let url = format!("http://127.0.0.1:{}/", self.s3_port);
        // 1. S3 answers HTTP at all.
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("weed exited early: {st}; log:\n{}", self.log()));
            }
            if http_request("GET", &url, &[], &[], Duration::from_secs(1)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("S3 did not answer on {url}; log:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // 2. The bucket exists and signed requests work.
        loop {
            let store = self.store.clone();
            let res = block_on_thread(async move {
                use futures_util::TryStreamExt;
                store
                    .list(None)
                    .try_collect::<Vec<_>>()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
            match res {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("bucket not listable: {e}; log:\n{}", self.log()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn log(&self) -> String {
        let text = fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn s3_port(&self) -> u16 {
        self.s3_port
    }

    /// `http://127.0.0.1:<s3 port>`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Environment for the oomsnap process.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.to_string()),
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `s3://test-bucket/<prefix>`
    pub fn store_url(&self, prefix: &str) -> String {
        format!("s3://{S3_BUCKET}/{}", prefix.trim_start_matches('/'))
    }

    /// The harness's own client for the bucket.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Every key under `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Vec<String> {
        list_keys(&self.store, prefix).await
    }

    /// The bytes of `key` (panics if missing).
    pub async fn get(&self, key: &str) -> Vec<u8> {
        get_bytes(&self.store, key).await
    }

    /// Writes `key`.
    pub async fn put(&self, key: &str, data: Vec<u8>) {
        put_bytes(&self.store, key, data).await
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        stop_group(&mut self.child, Duration::from_secs(2));
        // weed leaves unix sockets named after its ports in /tmp.
        for kind in [
            "master-grpc",
            "volume-grpc",
            "filer",
            "filer-grpc",
            "s3",
            "s3-grpc",
            "admin-grpc",
        ] {
            for port in &self.ports {
                let _ = fs::remove_file(format!("/tmp/seaweedfs-{kind}-{port}.sock"));
            }
        }
    }
}

/// A free port `p` (≤ 55535) for which `p + 10000` is free as well.
fn free_port_with_grpc_offset() -> u16 {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = l.local_addr().unwrap().port();
        if p <= 55535 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair p, p+10000 found");
}

fn s3_store(port: u16) -> Arc<dyn ObjectStore> {
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name(S3_BUCKET)
        .with_access_key_id(S3_ACCESS_KEY)
        .with_secret_access_key(S3_SECRET_KEY)
        .with_retry(quick_retry())
        .build()
        .expect("build S3 client");
    Arc::new(s3)
}
