#!/usr/bin/env bash
# The whole test suite: unit, fixture, live-cgroup, end-to-end (SeaweedFS,
# Azurite), fault, admin, CLI, webhook, manifest and image tests, then a
# short fuzz run. Needs root for the memory cgroups; `.ci/run` installs the
# rest. Set OOMSNAP_REQUIRE_LIVE=1 to turn skips into failures.
set -euo pipefail
cd "$(dirname "$0")/.."
# One test at a time: the OOM races are real races, and a second leaking
# Go app on a 2-core machine would be part of the result.
cargo test --locked -- --test-threads "${TEST_THREADS:-1}"

# A short fuzz run of every target (scripts/fuzz.sh 600 for a long one).
if [ "${OOMSNAP_SKIP_FUZZ:-0}" = 1 ]; then
  echo "fuzzing skipped (OOMSNAP_SKIP_FUZZ=1)"
elif cargo fuzz --version >/dev/null 2>&1; then
  scripts/fuzz.sh "${FUZZ_SECONDS:-10}"
elif [ "${OOMSNAP_REQUIRE_LIVE:-0}" = 1 ]; then
  echo "cargo-fuzz is missing (cargo install cargo-fuzz --locked)" >&2
  exit 1
else
  echo "!!! SKIPPED fuzzing: cargo-fuzz is not installed (cargo install cargo-fuzz --locked)" >&2
fi
