//! Waiting in tests: polling a condition with a deadline, running a future
//! from sync code, and [`retry_race`], the one sanctioned way to assert a
//! timing race (it states how many lost races it tolerates, logs every
//! attempt, and records each lost one for `scripts/test.sh`'s summary).

use std::time::{Duration, Instant};

/// Polls `f` every `poll` until it returns true or `timeout` passes.
/// Returns whether it became true.
pub fn wait_until(timeout: Duration, poll: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(poll);
    }
}

/// Runs a future to completion on a fresh current-thread runtime in its own
/// OS thread, so it works both from sync code and inside `#[tokio::test]`.
pub fn block_on_thread<F, T>(fut: F) -> T
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(fut)
    })
    .join()
    .expect("block_on_thread: future panicked")
}

/// Asserts a timing race that load on the machine can legitimately lose.
/// Runs `attempt(1)`, `attempt(2)`, … up to `attempts` times, until one
/// returns `Ok` (the race was won). `Err(why)` is a lost race: logged, noted
/// in `target/oomsnap-races/` for `scripts/test.sh`'s summary, and tried
/// again; losing every attempt fails the test with each reason. A panic
/// inside `attempt` is a bug, not a lost race, and fails at once.
///
/// The policy this states: the race is tolerated to be lost `attempts - 1`
/// times in a row, never more. Say next to each call why that number.
pub fn retry_race<T>(
    attempts: u32,
    what: &str,
    mut attempt: impl FnMut(u32) -> Result<T, String>,
) -> T {
    assert!(attempts >= 1, "retry_race needs at least one attempt");
    let mut lost: Vec<String> = Vec::new();
    for i in 1..=attempts {
        eprintln!("race `{what}`: attempt {i} of {attempts}");
        match attempt(i) {
            Ok(v) => {
                eprintln!("race `{what}`: won on attempt {i} of {attempts}");
                if !lost.is_empty() {
                    note_lost(what, &lost, attempts, "won");
                }
                return v;
            }
            Err(why) => {
                eprintln!("race `{what}`: LOST attempt {i} of {attempts}: {why}");
                lost.push(why);
            }
        }
    }
    note_lost(what, &lost, attempts, "failed");
    let reasons: Vec<String> = lost
        .iter()
        .enumerate()
        .map(|(i, why)| format!("attempt {}: {why}", i + 1))
        .collect();
    panic!(
        "race `{what}` was lost on all {attempts} attempts:\n{}",
        reasons.join("\n")
    );
}

fn note_lost(what: &str, lost: &[String], attempts: u32, outcome: &str) {
    let first = lost[0].lines().next().unwrap_or_default();
    let first: String = first.chars().take(160).collect();
    super::report::note(
        "races",
        &[
            &super::report::current_test(),
            what,
            &format!("lost {} of {attempts}, {outcome}", lost.len()),
            &first,
        ],
    );
}
