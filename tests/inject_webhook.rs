//! The admission webhook over real HTTPS: a self-signed CA made in a temp
//! dir, the real server on 127.0.0.1, real AdmissionReview JSON from
//! `tests/data/admission/`, and each returned patch applied by an independent
//! JSONPatch implementation (Python `jsonpatch`) and the result checked by
//! `kubernetes-validate --strict`.
//!
//! Needs `python3` with `jsonpatch` and `kubernetes-validate` (both from pip).
//! Without them the test fails, naming the tool, unless
//! `OOMSNAP_ALLOW_SKIPS=1` lets the patch-application steps skip loudly.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::StreamExt as _;
use oomsnap::inject::server::{MUTATE_NAMESPACE_PATH, MUTATE_PATH};
use oomsnap::inject::{cert, serve, InjectSettings, ServeLimits, TlsFiles};
use serde_json::{json, Value};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/admission")
        .join(name)
}

/// Whether the external checkers are here; panics in CI when they are not.
fn live_tools() -> bool {
    let jsonpatch = Command::new("python3")
        .args(["-c", "import jsonpatch"])
        .status()
        .is_ok_and(|s| s.success());
    let validate = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if jsonpatch && validate {
        return true;
    }
    let msg = format!(
        "python3 -c 'import jsonpatch' ok: {jsonpatch}, kubernetes-validate ok: {validate}; \
         install them with `pip install jsonpatch kubernetes-validate`"
    );
    common::require_live(&format!("the patch checkers: {msg}"))
}

/// Writes `pod` for `kubernetes-validate`, which needs `metadata.name`; at
/// admission a ReplicaSet's pod has only `generateName`, so a name is filled in.
fn write_pod(file: &Path, pod: &Value) {
    let mut pod = pod.clone();
    if pod["metadata"].get("name").is_none() {
        let base = pod["metadata"]["generateName"]
            .as_str()
            .unwrap_or("pod-")
            .to_string();
        pod["metadata"]["name"] = json!(format!("{base}abcde"));
    }
    std::fs::write(file, serde_json::to_string_pretty(&pod).unwrap()).unwrap();
}

fn validate(file: &Path) {
    for version in ["1.29".to_string(), common::newest_kubernetes()] {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "-k", &version])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubernetes-validate --strict -k {version} {} failed:\n{}{}\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(file).unwrap()
        );
    }
}

/// Applies `patch` to `doc` with Python's `jsonpatch`, not our code.
fn apply_patch(dir: &Path, doc: &Value, patch: &Value) -> Value {
    let d = dir.join("doc.json");
    let p = dir.join("patch.json");
    std::fs::write(&d, doc.to_string()).unwrap();
    std::fs::write(&p, patch.to_string()).unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, jsonpatch\n\
             doc = json.load(open(sys.argv[1]))\n\
             patch = jsonpatch.JsonPatch(json.load(open(sys.argv[2])))\n\
             json.dump(patch.apply(doc), sys.stdout)",
        ])
        .arg(&d)
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "jsonpatch refused the patch:\n{}\npatch: {patch:#}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A client that trusts only `ca_pem` and reaches `localhost` at `addr`.
fn https_client(ca_pem: &str, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

struct Server {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), oomsnap::inject::InjectError>>,
    ca: String,
}

impl Server {
    async fn start(settings: InjectSettings) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let generated = cert::generate(&["localhost".to_string()]).unwrap();
        cert::write(dir.path(), &generated).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let tls = TlsFiles {
            cert: dir.path().join(cert::CERT_FILE),
            key: dir.path().join(cert::KEY_FILE),
            reload_every: Duration::from_millis(100),
        };
        let task = tokio::spawn(serve(
            listener,
            tls,
            settings,
            ServeLimits::default(),
            async {
                let _ = rx.await;
            },
        ));
        Server {
            addr,
            dir,
            stop: Some(tx),
            task,
            ca: generated.ca_pem,
        }
    }

    fn client(&self, ca_pem: &str) -> reqwest::Client {
        https_client(ca_pem, self.addr)
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    async fn post(&self, body: Vec<u8>) -> (u16, String) {
        self.post_to(MUTATE_PATH, body).await
    }

    async fn post_to(&self, path: &str, body: Vec<u8>) -> (u16, String) {
        let resp = self
            .client(&self.ca)
            .post(self.url(&format!("{path}?timeout=10s")))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the webhook answers over HTTPS");
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Posts a review and returns its `response`, checking the envelope.
    async fn review(&self, review: &Value) -> Value {
        self.review_at(MUTATE_PATH, review).await
    }

    /// [`Server::review`] through the webhook entry at `path`.
    async fn review_at(&self, path: &str, review: &Value) -> Value {
        let (status, text) = self.post_to(path, review.to_string().into_bytes()).await;
        assert_eq!(status, 200, "{text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let response = answer["response"].clone();
        assert_eq!(
            response["uid"], review["request"]["uid"],
            "the uid is echoed"
        );
        assert_eq!(
            response["allowed"], true,
            "the injector never refuses a pod"
        );
        response
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the server stops on shutdown")
            .unwrap()
            .unwrap();
    }
}

fn load(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(data(name)).unwrap()).unwrap()
}

fn decode_patch(response: &Value) -> Value {
    assert_eq!(response["patchType"], "JSONPatch");
    let b64 = response["patch"]
        .as_str()
        .expect("the patch is a base64 string");
    serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

fn sidecar(pod: &Value) -> Value {
    pod["spec"]["initContainers"]
        .as_array()
        .expect("initContainers")
        .iter()
        .find(|c| c["name"] == "oomsnap")
        .expect("the oomsnap native sidecar")
        .clone()
}

fn env_names(container: &Value) -> Vec<String> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

/// Patch, apply independently, validate, and re-inject: the second pass must
/// be a no-op. Returns the patched pod and the first response.
async fn inject_and_check(server: &Server, case: &str, live: bool) -> Option<(Value, Value)> {
    inject_and_check_at(server, MUTATE_PATH, case, live).await
}

async fn inject_and_check_at(
    server: &Server,
    path: &str,
    case: &str,
    live: bool,
) -> Option<(Value, Value)> {
    let review = load(case);
    let response = server.review_at(path, &review).await;
    let patch = decode_patch(&response);
    assert!(
        patch.as_array().is_some_and(|a| !a.is_empty()),
        "{case}: empty patch"
    );
    if !live {
        return None;
    }
    let pod = &review["request"]["object"];
    let scratch = tempfile::tempdir().unwrap();
    let original = scratch.path().join("original.yaml");
    write_pod(&original, pod);
    validate(&original); // the fixture itself is a valid pod

    let patched = apply_patch(scratch.path(), pod, &patch);
    let file = scratch.path().join(format!("{case}.patched.yaml"));
    write_pod(&file, &patched);
    validate(&file);

    let mut again = review.clone();
    again["request"]["object"] = patched.clone();
    again["request"]["uid"] = json!("22222222-0000-4000-8000-000000000000");
    let second = server.review_at(path, &again).await;
    assert!(
        second.get("patch").is_none(),
        "{case}: injecting twice patched again: {second:#}"
    );
    Some((patched, response))
}

#[tokio::test]
async fn webhook_patches_opted_in_pods_and_leaves_the_rest_alone() {
    let live = live_tools();
    let server = Server::start(InjectSettings::default()).await;

    // Plain one-container pod.
    if let Some((pod, response)) = inject_and_check(&server, "plain.json", live).await {
        assert!(response.get("warnings").is_none(), "{response:#}");
        let c = sidecar(&pod);
        assert_eq!(c["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["shareProcessNamespace"], true);
        assert_eq!(
            pod["metadata"]["annotations"]["oomsnap.dev/status"],
            "injected"
        );
        let limit = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "OOMSNAP_MEMORY_LIMIT")
            .unwrap();
        assert_eq!(
            limit["valueFrom"]["resourceFieldRef"]["containerName"],
            "checkout"
        );
        for name in ["POD_NAME", "POD_NAMESPACE", "POD_UID", "NODE_NAME"] {
            assert!(env_names(&c).contains(&name.to_string()), "{name} missing");
        }
        let volumes: Vec<_> = pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].clone())
            .collect();
        assert_eq!(volumes, [json!("oomsnap-podinfo"), json!("oomsnap-spool")]);
    }

    // A pod with an init container, a sidecar proxy first, and port/UID set.
    if let Some((pod, _)) = inject_and_check(&server, "with-init-container.json", live).await {
        let inits: Vec<_> = pod["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        assert_eq!(
            inits,
            [json!("migrate"), json!("oomsnap")],
            "existing init containers keep their order"
        );
        let c = sidecar(&pod);
        let target = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "OOMSNAP_TARGET")
            .unwrap();
        assert_eq!(target["value"], "http://127.0.0.1:6060/debug/pprof");
        assert_eq!(
            c["securityContext"]["runAsUser"], 10001,
            "same UID as the app"
        );
        assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 3);
    }

    // No memory limit on the app: not injected; the pod carries the reason.
    let review = load("no-memory-limit.json");
    let response = server.review(&review).await;
    let warnings = response["warnings"].as_array().expect("a warning");
    assert!(
        warnings[0].as_str().unwrap().contains("no memory limit"),
        "{warnings:?}"
    );
    if live {
        let patch = decode_patch(&response);
        let pod = apply_patch(
            tempfile::tempdir().unwrap().path(),
            &review["request"]["object"],
            &patch,
        );
        assert_eq!(
            pod["metadata"]["annotations"]["oomsnap.dev/status"],
            "skipped: no memory limit (set resources.limits.memory or oomsnap.dev/memory-limit)"
        );
        assert!(pod["spec"].get("initContainers").is_none(), "{pod:#}");
        assert!(pod["spec"].get("shareProcessNamespace").is_none());
    }

    // Opted in by label only, no annotations at all: the annotations object
    // must be added whole (jsonpatch refuses a path under a missing parent).
    if let Some((pod, _)) = inject_and_check(&server, "label-opt-in.json", live).await {
        assert_eq!(
            pod["metadata"]["annotations"]["oomsnap.dev/status"],
            "injected"
        );
    }

    // Left alone.
    for case in [
        "already-injected.json",
        "not-opted-in.json",
        "no-annotations.json",
    ] {
        let response = server.review(&load(case)).await;
        assert!(response.get("patch").is_none(), "{case}: {response:#}");
        assert!(response.get("patchType").is_none(), "{case}: {response:#}");
    }

    server.stop().await;
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

#[tokio::test]
async fn namespace_opt_in_pyroscope_and_skips_over_https() {
    let live = live_tools();
    let server = Server::start(InjectSettings::default()).await;

    // A pod that says nothing: left alone by the pod entry, injected by the
    // namespace entry.
    let quiet = load("namespace-no-opt-in.json");
    let response = server.review_at(MUTATE_PATH, &quiet).await;
    assert!(response.get("patch").is_none(), "{response:#}");
    if let Some((pod, _)) = inject_and_check_at(
        &server,
        MUTATE_NAMESPACE_PATH,
        "namespace-no-opt-in.json",
        live,
    )
    .await
    {
        assert_eq!(sidecar(&pod)["restartPolicy"], "Always");
    }
    // In an enabled namespace a pod may still opt out.
    let out = server
        .review_at(MUTATE_NAMESPACE_PATH, &load("namespace-opt-out.json"))
        .await;
    assert!(out.get("patch").is_none(), "{out:#}");

    // Pyroscope's annotations, the port found by its name.
    if let Some((pod, _)) = inject_and_check(&server, "pyroscope.json", live).await {
        assert_eq!(
            env_value(&sidecar(&pod), "OOMSNAP_TARGET").as_deref(),
            Some("http://127.0.0.1:7070/debug/pprof")
        );
    }

    // Skipped once, admitted again with a limit: injected, status replaced.
    if let Some((pod, _)) = inject_and_check(&server, "skipped-then-limited.json", live).await {
        assert_eq!(
            pod["metadata"]["annotations"]["oomsnap.dev/status"],
            "injected"
        );
    }

    // Issue 10's shapes. A path with a query never becomes OOMSNAP_TARGET.
    if let Some((pod, response)) = inject_and_check(&server, "path-with-query.json", live).await {
        assert_eq!(env_value(&sidecar(&pod), "OOMSNAP_TARGET"), None);
        let warnings = response["warnings"].to_string();
        assert!(warnings.contains("oomsnap.dev/path"), "{warnings}");
    }
    // A memory limit of 0 for an app without one: only the status.
    let review = load("memory-limit-zero.json");
    let response = server.review(&review).await;
    let patch = decode_patch(&response);
    assert_eq!(patch.as_array().unwrap().len(), 1, "{patch:#}");
    let status = patch[0]["value"].as_str().unwrap();
    assert!(
        status.starts_with("skipped: no memory limit, and oomsnap.dev/memory-limit=\"0\""),
        "{status}"
    );
    server.stop().await;
}

#[tokio::test]
async fn malformed_reviews_get_a_400_with_a_sentence_and_the_server_lives_on() {
    let server = Server::start(InjectSettings::default()).await;
    for (case, needle) in [
        ("garbage-truncated.json", "not an AdmissionReview"),
        ("garbage-v1beta1.json", "admission.k8s.io/v1beta1"),
        ("garbage-no-uid.json", "uid"),
    ] {
        let (status, text) = server.post(std::fs::read(data(case)).unwrap()).await;
        assert_eq!(status, 400, "{case}: {text}");
        assert!(text.contains(needle), "{case}: {text}");
    }
    let (status, _) = server.post(b"\x00\xffnot json at all".to_vec()).await;
    assert_eq!(status, 400);

    // Bodies beyond the bound are refused without being read whole.
    let huge = vec![b' '; oomsnap::inject::MAX_BODY_BYTES + 1];
    let (status, _) = server.post(huge).await;
    assert_eq!(status, 413);

    // Still serving.
    let response = server.review(&load("plain.json")).await;
    assert!(response.get("patch").is_some());
    let health = server
        .client(&server.ca)
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn native_sidecars_off_adds_a_regular_container() {
    let settings = InjectSettings {
        native_sidecar: false,
        ..InjectSettings::default()
    };
    let server = Server::start(settings).await;
    let response = server.review(&load("plain.json")).await;
    let patch = decode_patch(&response);
    let op = patch
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["path"] == "/spec/containers/-")
        .expect("appended container");
    assert_eq!(op["value"]["name"], "oomsnap");
    assert!(op["value"].get("restartPolicy").is_none());
    server.stop().await;
}

#[tokio::test]
async fn a_replaced_certificate_is_served_without_a_restart() {
    let server = Server::start(InjectSettings::default()).await;
    let old_ca = server.ca.clone();
    let ok = |ca: String| {
        let client = server.client(&ca);
        let url = server.url("/healthz");
        async move {
            client
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    };
    assert!(ok(old_ca.clone()).await, "the first certificate is served");

    let fresh = cert::generate(&["localhost".to_string()]).unwrap();
    cert::write(server.dir.path(), &fresh).unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok(fresh.ca_pem.clone()).await {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!ok(old_ca).await, "the old certificate is no longer served");
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Under load: the real binary, many big reviews at once
// ---------------------------------------------------------------------------

/// The injector's memory limit in deploy/injector/base/deployment.yaml.
fn injector_memory_limit() -> u64 {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/injector/base/deployment.yaml"),
    )
    .unwrap();
    let after = text
        .split("limits:")
        .nth(1)
        .expect("the injector has resource limits");
    let line = after
        .lines()
        .find(|l| l.trim().starts_with("memory:"))
        .expect("a memory limit");
    oomsnap::config::parse_size(line.trim().trim_start_matches("memory:").trim())
        .expect("the limit is a size")
}

/// The binary under test; `OOMSNAP_TEST_INJECTOR_BIN` points the load test at
/// another build (how the report shows the old code failing it).
fn injector_bin() -> PathBuf {
    std::env::var_os("OOMSNAP_TEST_INJECTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(common::oomsnap_bin)
}

/// A real `oomsnap inject` process on loopback, killed on drop.
struct InjectorProcess {
    child: std::process::Child,
    port: u16,
    ca: String,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl InjectorProcess {
    fn start(extra_env: &[(&str, &str)]) -> InjectorProcess {
        let dir = tempfile::tempdir().unwrap();
        let generated = cert::generate(&["localhost".to_string()]).unwrap();
        cert::write(dir.path(), &generated).unwrap();
        let port = common::free_port();
        let log = dir.path().join("injector.log");
        let mut cmd = Command::new(injector_bin());
        cmd.args([
            "inject",
            &format!("--listen=127.0.0.1:{port}"),
            &format!("--tls-cert={}", dir.path().join(cert::CERT_FILE).display()),
            &format!("--tls-key={}", dir.path().join(cert::KEY_FILE).display()),
        ])
        .env_clear()
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start oomsnap inject");
        InjectorProcess {
            child,
            port,
            ca: generated.ca_pem,
            _dir: dir,
            log,
        }
    }

    fn client(&self) -> reqwest::Client {
        https_client(&self.ca, SocketAddr::from(([127, 0, 0, 1], self.port)))
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    async fn wait_healthy(&self) {
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get(self.url("/healthz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the injector never became healthy:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Peak resident memory so far (`VmHWM`), in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status");
        kib * 1024
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for InjectorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An opted-in pod review of about `size` bytes, shaped like the biggest real
/// pods: a large `last-applied-configuration` annotation and thousands of
/// environment variables (many small JSON objects, the costly shape to parse).
fn big_review(uid: &str, size: usize) -> Vec<u8> {
    let mut review = load("plain.json");
    review["request"]["uid"] = json!(uid);
    let pod = &mut review["request"]["object"];
    pod["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
        json!("x".repeat(size / 5));
    let mut env = Vec::new();
    let mut total = review.to_string().len();
    let mut i = 0;
    while total < size - 100 {
        let e = json!({"name": format!("SETTING_{i:06}"), "value": format!("value-{i}")});
        total += e.to_string().len() + 1;
        env.push(e);
        i += 1;
    }
    review["request"]["object"]["spec"]["containers"][0]["env"] = json!(env);
    let body = review.to_string().into_bytes();
    assert!(body.len() <= size, "{} > {size}", body.len());
    body
}

/// Fires `bodies` at once, one connection each (as the API server's
/// concurrent calls would be), and counts the answers: (patched, busy).
async fn burst(injector: &InjectorProcess, bodies: Vec<Vec<u8>>) -> (usize, usize) {
    let mut tasks = Vec::new();
    for body in bodies {
        let client = injector.client();
        let url = injector.url("/mutate?timeout=5s");
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            match r {
                Ok(r) => {
                    let status = r.status().as_u16();
                    (status, r.text().await.unwrap_or_default())
                }
                Err(e) => (0, e.to_string()),
            }
        }));
    }
    let (mut patched, mut busy) = (0, 0);
    for t in tasks {
        let (status, text) = t.await.unwrap();
        match status {
            200 => {
                let answer: Value = serde_json::from_str(&text).expect("a review");
                assert_eq!(answer["response"]["allowed"], true, "{text:.300}");
                assert!(answer["response"]["patch"].is_string(), "{text:.300}");
                patched += 1;
            }
            // Overloaded: a clean error, which the API server turns into
            // failurePolicy Ignore (the pod is created unchanged).
            503 => {
                assert!(text.contains("busy"), "{text}");
                busy += 1;
            }
            other => panic!("unexpected answer {other}: {text:.300}"),
        }
    }
    (patched, busy)
}

#[tokio::test]
async fn sixty_concurrent_one_megabyte_reviews_stay_under_the_injectors_memory_limit() {
    let limit = injector_memory_limit();
    let injector = InjectorProcess::start(&[]);
    injector.wait_healthy().await;
    let idle = injector.peak_rss();

    // A burst of ordinary pods is served whole: nothing is turned away.
    let small: Vec<_> = (0..60)
        .map(|i| big_review(&format!("44444444-0000-4000-8000-{i:012}"), 20_000))
        .collect();
    let (patched, busy) = burst(&injector, small).await;
    assert_eq!((patched, busy), (60, 0), "{}", injector.logs());

    const N: usize = 60;
    // Just under the 1 MiB body cap, so every one is read and parsed (by the
    // old code too).
    let bodies: Vec<Vec<u8>> = (0..N)
        .map(|i| big_review(&format!("33333333-0000-4000-8000-{i:012}"), 1_000_000))
        .collect();
    let started = Instant::now();
    let (patched, busy) = burst(&injector, bodies).await;
    let elapsed = started.elapsed();
    let peak = injector.peak_rss();
    println!(
        "{N} reviews of ~1 MB: {patched} patched, {busy} answered busy, in {elapsed:?}; \
         idle RSS {:.1} MiB, peak RSS {:.1} MiB, limit {:.0} MiB",
        idle as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        limit as f64 / 1048576.0
    );
    assert!(patched > 0, "no review was answered:\n{}", injector.logs());
    assert!(
        peak < limit,
        "peak RSS {peak} bytes is over the injector's {limit}-byte limit"
    );
}

#[tokio::test]
async fn a_full_injector_answers_busy_and_a_stalled_body_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let generated = cert::generate(&["localhost".to_string()]).unwrap();
    cert::write(dir.path(), &generated).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = ServeLimits {
        max_concurrent: 1,
        queue_wait: Duration::from_millis(300),
        body_timeout: Duration::from_secs(2),
        ..ServeLimits::default()
    };
    let tls = TlsFiles {
        cert: dir.path().join(cert::CERT_FILE),
        key: dir.path().join(cert::KEY_FILE),
        reload_every: Duration::from_secs(60),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listener,
        tls,
        InjectSettings::default(),
        limits,
        async {
            let _ = stopped.await;
        },
    ));
    let client = || https_client(&generated.ca_pem, addr);
    let url = format!("https://localhost:{}/mutate", addr.port());
    let body = load("plain.json").to_string().into_bytes();

    // The only turn, held by a body that arrives in part and then stalls.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let half = body[..body.len() / 2].to_vec();
    let stalled = futures_util::stream::once(async move { Ok::<_, std::io::Error>(half) }).chain(
        futures_util::stream::once(async move {
            let _ = released.await;
            Err(std::io::Error::other("never sent"))
        }),
    );
    let holder = {
        let request = client()
            .post(&url)
            .header("content-length", body.len())
            .body(reqwest::Body::wrap_stream(stalled));
        tokio::spawn(async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let r = client().post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("busy") && text.contains("failurePolicy"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "it waited only briefly"
    );

    // The stalled body gives its turn back after body_timeout.
    let (status, text) = holder.await.unwrap();
    assert_eq!(status, 408, "{text}");
    drop(release);
    let r = client().post(&url).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200, "the turn is free again");

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
