//! What a live test does when a component it needs is missing. By default
//! it fails, naming the component: a test that did not run is never a pass.
//! Skipping is a choice the person running the suite makes, with
//! `OOMSNAP_ALLOW_SKIPS=1`; each skip is then printed loudly and noted in
//! `target/oomsnap-skips/`, which `scripts/test.sh` lists by test name.
//!
//! `OOMSNAP_REQUIRE_LIVE=1`, the older switch that made skips fail, is
//! still accepted and changes nothing: failing is the default now, and
//! every live test asks [`require_live`].

use super::report::{current_test, note};

/// The variable that lets live tests skip when a component is missing.
pub const ALLOW_SKIPS: &str = "OOMSNAP_ALLOW_SKIPS";

/// Whether the person running the tests allowed missing components to skip
/// the tests that need them.
pub fn skips_allowed() -> bool {
    std::env::var(ALLOW_SKIPS).as_deref() == Ok("1")
}

/// Call when `what` is missing. Panics (the test fails, naming `what`)
/// unless skips are allowed; then prints a loud skip message, notes the
/// skip for `scripts/test.sh`, and returns `false`.
///
/// ```ignore
/// if !common::go_available() && !common::require_live("go toolchain") { return; }
/// ```
pub fn require_live(what: &str) -> bool {
    let test = current_test();
    if !skips_allowed() {
        panic!(
            "{what} is not available, so the live test {test} cannot run. \
             scripts/install.sh installs everything the suite needs; to skip \
             such tests knowingly, set {ALLOW_SKIPS}=1 (scripts/test.sh then \
             lists every skip)."
        );
    }
    note("skips", &[&test, what]);
    eprintln!();
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!!! SKIPPED {test}: {what} is not available on this machine.");
    eprintln!("!!! This test did NOT run ({ALLOW_SKIPS}=1 allowed the skip).");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!();
    false
}
