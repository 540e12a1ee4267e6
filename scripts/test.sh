#!/usr/bin/env bash
# The README's test command: installs what the suite needs, runs every test,
# then a short fuzz run, and ends with a summary.
#
#   sudo scripts/test.sh                  # everything
#   sudo scripts/test.sh --test e2e       # arguments go to `cargo test`
#
# 1. scripts/install.sh: every component is checked, the missing ones are
#    installed (a few seconds when everything is there).
# 2. The static musl release binary, which the image test and the cgroup v2
#    VM tests put in their image and VM.
# 3. Every test, one at a time: the OOM races are real races, and a second
#    leaking Go app on a 2-core machine would be part of the result.
# 4. A short fuzz run of every target (scripts/fuzz.sh $FUZZ_SECONDS).
# 5. The summary: tests run, passed and failed; skipped tests by name;
#    timing races that needed another attempt; executions per fuzz target.
#
# A live test whose component is missing FAILS. To let such tests skip
# instead, knowingly, set OOMSNAP_ALLOW_SKIPS=1; the summary then lists
# every skip.
#
# Other knobs: FUZZ_SECONDS (per target, default 10), OOMSNAP_SKIP_FUZZ=1,
# TEST_THREADS (default 1). The full cargo output is also in
# target/oomsnap-test.log; fuzz logs are in fuzz/target/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
step() { printf '\n\033[1m=== test.sh [%ds] %s\033[0m\n' $(( $(date +%s) - t0 )) "$*"; }
mmss() { printf '%dm%02ds' $(( $1 / 60 )) $(( $1 % 60 )); }

TARGET=${CARGO_TARGET_DIR:-target}
allow_skips=0
[ "${OOMSNAP_ALLOW_SKIPS:-0}" = 1 ] && allow_skips=1
if [ "$(id -u)" != 0 ] && [ "$allow_skips" = 0 ]; then
  echo "test.sh: the live tests make memory cgroups, which needs root: run sudo scripts/test.sh" >&2
  echo "         (or OOMSNAP_ALLOW_SKIPS=1 scripts/test.sh to skip those tests, knowingly)" >&2
  exit 1
fi

step "install what the tests need (scripts/install.sh)"
if [ "$allow_skips" = 1 ]; then
  scripts/install.sh || echo "test.sh: install.sh failed; going on, since OOMSNAP_ALLOW_SKIPS=1" >&2
else
  scripts/install.sh
fi

step "build the static musl release binary (first time: a few minutes)"
if [ "$allow_skips" = 1 ]; then
  cargo build --release --locked --target x86_64-unknown-linux-musl ||
    echo "test.sh: the musl build failed; going on, since OOMSNAP_ALLOW_SKIPS=1" >&2
else
  cargo build --release --locked --target x86_64-unknown-linux-musl
fi

step "every test, one at a time"
rm -rf "$TARGET/oomsnap-skips" "$TARGET/oomsnap-races"
log=$TARGET/oomsnap-test.log
mkdir -p "$TARGET"
tests_t0=$(date +%s)
set +e
cargo test --locked --no-fail-fast "$@" -- --test-threads "${TEST_THREADS:-1}" 2>&1 | tee "$log"
test_rc=${PIPESTATUS[0]}
set -e
tests_secs=$(( $(date +%s) - tests_t0 ))

fuzz_rc=0
fuzz_note=""
rm -f fuzz/target/summary.tsv
if [ "${OOMSNAP_SKIP_FUZZ:-0}" = 1 ]; then
  fuzz_note="not run (OOMSNAP_SKIP_FUZZ=1)"
else
  step "a short fuzz run of every target"
  fuzz_t0=$(date +%s)
  scripts/fuzz.sh "${FUZZ_SECONDS:-10}" || fuzz_rc=$?
  fuzz_note="$(mmss $(( $(date +%s) - fuzz_t0 ))) with the build"
fi

# ---- summary ---------------------------------------------------------------
# cargo prints one `test result:` line per test binary and doc-test run,
# each under `Running <file> (<binary>)` or `Doc-tests <crate>`.
read -r passed failed ignored < <(awk '
  /^test result:/ {
    for (i = 1; i <= NF; i++) {
      if ($(i+1) ~ /^passed;?$/)  p += $i
      if ($(i+1) ~ /^failed;?$/)  f += $i
      if ($(i+1) ~ /^ignored;?$/) g += $i
    }
  }
  END { print p + 0, f + 0, g + 0 }' "$log")
# A failed test's name is taken from the list cargo prints after the last
# `failures:` heading before each `test result:` (child processes of the
# tests write to the terminal too, and can split a `test NAME ... FAILED`
# line).
mapfile -t failed_names < <(awk '
  /^ *Running / { bin = $NF; gsub(/[()]/, "", bin); sub(/.*\//, "", bin); sub(/-[0-9a-f]+$/, "", bin) }
  /^ *Doc-tests / { bin = "doc-tests " $2 }
  /^failures:$/ { n = 0; listing = 1; next }
  listing && /^    [^ ]/ { names[++n] = substr($0, 5); next }
  /^test result:/ { if (listing) for (i = 1; i <= n; i++) print bin "::" names[i]; listing = 0; n = 0 }' "$log")
skips=()
# One line per skipped test; a test that noted two missing components (a
# guard and then the test itself) is one skip with both reasons.
[ -d "$TARGET/oomsnap-skips" ] && mapfile -t skips < <(cat "$TARGET"/oomsnap-skips/*.txt 2>/dev/null |
  awk -F'\t' '{ w[$1] = w[$1] (w[$1] == "" ? "" : "; ") $2 } END { for (n in w) print n "\t" w[n] }' | sort)
races=()
[ -d "$TARGET/oomsnap-races" ] && mapfile -t races < <(cat "$TARGET"/oomsnap-races/*.txt 2>/dev/null | sort)

ok=1
echo
echo "================================ test summary ================================"
ran=$(( passed + failed ))
printf 'tests   %d run in %s: %d passed, %d failed' "$ran" "$(mmss "$tests_secs")" "$(( passed - ${#skips[@]} ))" "$failed"
[ "${#skips[@]}" -gt 0 ] && printf ', %d skipped' "${#skips[@]}"
printf ' (%d ignored)\n' "$ignored"
if [ "$test_rc" != 0 ] || [ "$failed" != 0 ]; then
  ok=0
  for n in "${failed_names[@]}"; do echo "        FAILED  $n"; done
  [ "$failed" = 0 ] && echo "        cargo test exited with $test_rc (a build error? see $log)"
fi
if [ "${#skips[@]}" -gt 0 ]; then
  echo "skipped ${#skips[@]} test(s) did NOT run (OOMSNAP_ALLOW_SKIPS=1):"
  for s in "${skips[@]}"; do
    IFS=$'\t' read -r name what <<<"$s"
    echo "        $name: no $what"
  done
else
  echo "skipped none"
fi
if [ "${#races[@]}" -gt 0 ]; then
  echo "races   ${#races[@]} timing race(s) needed another attempt:"
  for r in "${races[@]}"; do
    IFS=$'\t' read -r name what outcome why <<<"$r"
    echo "        $name: $what: $outcome ($why)"
  done
fi
if [ -n "$fuzz_note" ] && [ -s fuzz/target/summary.tsv ]; then
  echo "fuzz    $(wc -l <fuzz/target/summary.tsv) target(s), $fuzz_note:"
  while IFS=$'\t' read -r t secs execs result; do
    printf '        %-12s %10s execs in %3s s: %s\n' "$t" "$execs" "$secs" "$result"
  done <fuzz/target/summary.tsv
else
  echo "fuzz    ${fuzz_note:-not run}$([ "$fuzz_rc" = 0 ] || echo ": failed before running a target (see above, fuzz/target/logs/build.log)")"
fi
[ "$fuzz_rc" = 0 ] || ok=0
if [ "$ok" = 1 ]; then
  echo "result  PASS in $(mmss $(( $(date +%s) - t0 )))"
else
  echo "result  FAIL in $(mmss $(( $(date +%s) - t0 ))) (full cargo output: $log)"
fi
echo "=============================================================================="
[ "$ok" = 1 ]
