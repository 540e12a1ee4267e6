//! A Prometheus server of the Debian `prometheus` package on loopback, for
//! the monitoring kit's live test: started from a config text (checked by
//! `promtool check config` first), asked through its HTTP API, killed on
//! drop.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{common, run_ok};

/// A Prometheus server on loopback, killed on drop.
pub struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    pub fn start(config: &str, dir: tempfile::TempDir) -> Prometheus {
        let file = dir.path().join("prometheus.yml");
        fs::write(&file, config).unwrap();
        run_ok(
            Command::new("promtool")
                .args(["check", "config"])
                .arg(&file),
        );
        let addr = format!("127.0.0.1:{}", common::free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        let ready = common::wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            common::http_get(&format!("http://{}/-/ready", p.addr)).is_ok_and(|(s, _)| s == 200)
        });
        assert!(ready, "prometheus did not become ready:\n{}", p.log());
        p
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path; its `data`, after checking `status` is `success`.
    pub fn api(&self, path_and_query: &str) -> Value {
        let (code, body) = common::http_get(&format!("http://{}{path_and_query}", self.addr))
            .unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"));
        let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "GET {path_and_query}: {code} {e}: {}",
                String::from_utf8_lossy(&body)
            )
        });
        assert_eq!(v["status"], "success", "GET {path_and_query}: {v}");
        v["data"].clone()
    }

    /// An instant query's result vector.
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let data = self.api(&format!("/api/v1/query?query={encoded}"));
        data["result"].as_array().cloned().unwrap_or_default()
    }
}
