//! The admission webhook over real HTTPS: a self-signed CA made in a temp
//! dir, the real server on 127.0.0.1, real AdmissionReview JSON from
//! `tests/data/admission/`, and each returned patch applied by an independent
//! JSONPatch implementation (Python `jsonpatch`) and the result checked by
//! `kubernetes-validate --strict`.
//!
//! Needs `python3` with `jsonpatch` and `kubernetes-validate` (both from pip).
//! Without them the patch-application steps print a loud SKIP, unless
//! `OOMSNAP_REQUIRE_LIVE=1` (CI), which turns a missing tool into a failure.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use oomsnap::inject::{cert, serve, InjectSettings, TlsFiles};
use serde_json::{json, Value};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/admission")
        .join(name)
}

fn require_live() -> bool {
    std::env::var("OOMSNAP_REQUIRE_LIVE").as_deref() == Ok("1")
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
    if require_live() {
        panic!("OOMSNAP_REQUIRE_LIVE=1 but a checker is missing: {msg}");
    }
    eprintln!("\n*** SKIP: patch application and schema validation not run: {msg} ***\n");
    false
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
        let task = tokio::spawn(serve(listener, tls, settings, async {
            let _ = rx.await;
        }));
        Server {
            addr,
            dir,
            stop: Some(tx),
            task,
            ca: generated.ca_pem,
        }
    }

    fn client(&self, ca_pem: &str) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
            .resolve("localhost", self.addr)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    async fn post(&self, body: Vec<u8>) -> (u16, String) {
        let resp = self
            .client(&self.ca)
            .post(self.url("/mutate?timeout=10s"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the webhook answers over HTTPS");
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Posts a review and returns its `response`, checking the envelope.
    async fn review(&self, review: &Value) -> Value {
        let (status, text) = self.post(review.to_string().into_bytes()).await;
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
    let review = load(case);
    let response = server.review(&review).await;
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
    let second = server.review(&again).await;
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

    // No memory limit on the app: injected, warned, no resourceFieldRef.
    if let Some((pod, response)) = inject_and_check(&server, "no-memory-limit.json", live).await {
        let warnings = response["warnings"].as_array().expect("a warning");
        assert!(
            warnings[0].as_str().unwrap().contains("no memory limit"),
            "{warnings:?}"
        );
        assert!(!env_names(&sidecar(&pod)).contains(&"OOMSNAP_MEMORY_LIMIT".to_string()));
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
