//! Exercises every guard of `tests/common` against the real components.
//! Run: `cargo test --test harness_selftest -- --nocapture`

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// leaky's heap profile names the leak and the baseline function.
#[test]
fn leaky_heap_profile_names_leak_function() {
    if !go_available() && !require_live("go toolchain") {
        return;
    }
    let leaker = Leaker::spawn(None, &["-rate", "0", "-max", "48", "-baseline", "8"]);
    let dir = temp_dir("heap");
    let file = dir.path().join("heap.pb.gz");
    // -max runs a GC when it is reached; the profile then shows the leak.
    let ok = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let (code, body) = http_get(&format!("{}/heap", leaker.pprof_base())).unwrap();
        assert_eq!(code, 200);
        assert_eq!(&body[..2], &[0x1f, 0x8b], "heap profile is gzip");
        std::fs::write(&file, &body).unwrap();
        pprof_top(&file).contains("main.(*leakyCache).put")
    });
    assert!(ok, "leak function never appeared in the heap profile");
    let top = pprof_top(&file);
    let first = top
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .unwrap_or_default();
    assert!(first.ends_with("main.(*leakyCache).put"), "top:\n{top}");
    assert!(top.contains("main.warmCache"), "top:\n{top}");
}

/// A 64 MiB cgroup, leaky at full speed: OOM-killed, counted, cleaned up.
#[test]
fn cgroup_and_leaker_oom_kill() {
    if !go_available() && !require_live("go toolchain") {
        return;
    }
    leaky_binary(); // build outside the timed part
    let Some(cg) = MemCgroup::create(64 << 20) else {
        require_live("writable cgroup v1 memory controller");
        return;
    };
    let path = cg.path().to_path_buf();
    assert_eq!(cg.limit(), 64 << 20);
    assert_eq!(cg.oom_kill_count(), 0);

    let mut leaker = Leaker::spawn(Some(&cg), &["-rate", "0", "-delay", "200ms"]);
    assert!(
        cg.pids().contains(&(leaker.pid() as i32)),
        "leaky not in cgroup"
    );
    assert!(leaker.port() > 0);
    let (code, _) = http_get(&format!("{}/", leaker.pprof_base())).unwrap();
    assert_eq!(code, 200);

    let t0 = Instant::now();
    let status = leaker
        .wait_exit(Duration::from_secs(15))
        .expect("leaky was not OOM-killed within 15 s");
    eprintln!("leaky exited after {:?}: {status:?}", t0.elapsed());
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(cg.oom_kill_count() >= 1, "oom_kill not counted");

    drop(leaker);
    drop(cg);
    assert!(!path.exists(), "cgroup {} left behind", path.display());
}

/// A cgroup whose process is still running is emptied and removed on drop.
#[test]
fn cgroup_drop_kills_and_removes() {
    let Some(cg) = MemCgroup::create(512 << 20) else {
        require_live("writable cgroup v1 memory controller");
        return;
    };
    let path = cg.path().to_path_buf();
    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    cg.add_pid(child.id()).unwrap();
    assert_eq!(cg.pids(), vec![child.id() as i32]);
    let _ = cg.usage(); // parses (v1 does not move charges on attach, so it may be 0)
    drop(cg);
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert!(!path.exists());
}

#[tokio::test]
async fn seaweedfs_put_list_get() {
    let Some(s3) = SeaweedFs::start() else {
        return;
    };
    assert_eq!(s3.store_url("a/b"), "s3://test-bucket/a/b");
    s3.put("selftest/one.txt", b"hello".to_vec()).await;
    assert_eq!(s3.list("selftest").await, vec!["selftest/one.txt"]);
    assert_eq!(s3.get("selftest/one.txt").await, b"hello");

    // env() is enough for object_store's own from_env() (as oomsnap uses it).
    run_from_env_child(&s3.env(), "s3", "fromenv/s3.txt");
    assert_eq!(s3.get("fromenv/s3.txt").await, b"from env");
}

#[tokio::test]
async fn azurite_put_list_get() {
    let Some(az) = Azurite::start() else {
        return;
    };
    assert_eq!(az.store_url("x"), "az://test-container/x");
    az.put("selftest/one.txt", b"hello".to_vec()).await;
    assert_eq!(az.list("selftest").await, vec!["selftest/one.txt"]);
    assert_eq!(az.get("selftest/one.txt").await, b"hello");
    az.create_container(AZURE_CONTAINER)
        .expect("second create answers 409, treated as success");

    run_from_env_child(&az.env(), "az", "fromenv/az.txt");
    assert_eq!(az.get("fromenv/az.txt").await, b"from env");
}

/// Re-runs this test binary's ignored `from_env_child` with `env` set, so
/// the builders' `from_env()` see exactly what oomsnap would.
fn run_from_env_child(env: &[(String, String)], kind: &str, key: &str) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "from_env_child", "--ignored", "--nocapture"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("SELFTEST_KIND", kind)
        .env("SELFTEST_KEY", key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "from_env child failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
#[ignore = "helper run by run_from_env_child"]
async fn from_env_child() {
    use object_store::{ObjectStore, ObjectStoreExt};
    let kind = std::env::var("SELFTEST_KIND").unwrap();
    let key = std::env::var("SELFTEST_KEY").unwrap();
    let store: Box<dyn ObjectStore> = match kind.as_str() {
        "s3" => Box::new(
            object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(S3_BUCKET)
                .build()
                .unwrap(),
        ),
        "az" => Box::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_container_name(AZURE_CONTAINER)
                .build()
                .unwrap(),
        ),
        other => panic!("unknown kind {other}"),
    };
    store
        .put(&key.as_str().into(), b"from env".to_vec().into())
        .await
        .unwrap();
}
