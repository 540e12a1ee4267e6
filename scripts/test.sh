#!/usr/bin/env bash
# The whole test suite: unit, fixture, live-cgroup, end-to-end (SeaweedFS,
# Azurite), fault, admin, CLI, webhook, manifest and image tests, then a
# short fuzz run. Needs root for the memory cgroups; `.ci/run` installs the
# rest. Set OOMSNAP_REQUIRE_LIVE=1 to turn skips into failures.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked -- --test-threads "${TEST_THREADS:-1}"
if [ -x scripts/fuzz.sh ] && [ "${OOMSNAP_SKIP_FUZZ:-0}" != 1 ]; then
  scripts/fuzz.sh "${FUZZ_SECONDS:-10}"
fi
