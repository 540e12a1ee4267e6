#!/usr/bin/env bash
# Runs every cargo-fuzz target of oomsnap for a bounded time.
#
#   scripts/fuzz.sh              # 20 s per target (CI)
#   scripts/fuzz.sh 600          # 10 min per target (a longer run)
#   scripts/fuzz.sh 60 pprof     # one target
#
# Works on a stable toolchain: cargo-fuzz passes nightly `-Z` flags, which
# RUSTC_BOOTSTRAP=1 lets stable rustc accept. The default sanitizer is none
# (libFuzzer with coverage, plus Rust's own checks: panics, overflow in
# debug-assertions builds, OOM, timeouts); set OOMSNAP_FUZZ_SANITIZER=address
# for ASan, which the fuzzed code (no unsafe of its own) rarely needs.
#
# The committed seeds in fuzz/corpus/<target> are read, never written; what
# a run discovers goes to fuzz/target/corpus/<target> (gitignored), and a
# crashing input to fuzz/artifacts/<target>/. Output is one line per target
# (executions, seconds, new inputs, any finding); libFuzzer's own output is
# in fuzz/target/logs/<target>.log and is printed only for a finding. The
# same lines, tab-separated, are in fuzz/target/summary.tsv. Needs
# `cargo install cargo-fuzz --locked` (scripts/install.sh does it).
set -euo pipefail

per_target="${1:-20}"
shift || true
cd "$(dirname "$0")/.."

sanitizer="${OOMSNAP_FUZZ_SANITIZER:-none}"
# A nightly toolchain would not need it; stable does, and it is harmless.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is not installed; run: cargo install cargo-fuzz --locked" >&2
    exit 2
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# libFuzzer's progress (thousands of lines a minute) goes to a log per
# target; the terminal gets one line per target, and the log only when
# there is a finding. test.sh reads the summary file for its own summary.
logs=fuzz/target/logs
summary=fuzz/target/summary.tsv
mkdir -p "$logs"
: >"$summary"

# With the sanitizer `none` there is no sanitizer runtime, so libFuzzer
# warns at start-up that it cannot find the hooks one would provide
# (`WARNING: Failed to find function "__sanitizer_acquire_crash_state"`,
# `…print_stack_trace`, `…set_death_callback`). They only add a sanitizer's
# stack trace and death callback; a Rust panic prints its own backtrace and
# libFuzzer still writes the crashing input. So they are dropped from any
# log this script prints.
show_log() {
  grep -v 'Failed to find function "__sanitizer_' "$1" | tail -n "${2:-60}" | sed 's/^/    /'
}

# Build all targets once (the slow part), then run each.
# The first build takes minutes; a line every 30 s says it is moving.
echo "fuzz.sh: building the fuzz targets, sanitizer $sanitizer (log: $logs/build.log)"
cargo fuzz build --sanitizer "$sanitizer" >"$logs/build.log" 2>&1 &
build=$!
waited=0
while kill -0 "$build" 2>/dev/null; do
    sleep 1
    waited=$((waited + 1))
    if [ $((waited % 30)) = 0 ]; then
        echo "fuzz.sh: still building after ${waited}s ($(grep -c '^ *Compiling' "$logs/build.log") crates compiled)"
    fi
done
if ! wait "$build"; then
    show_log "$logs/build.log"
    echo "fuzz.sh: the build of the fuzz targets failed (log: $logs/build.log)" >&2
    exit 1
fi

failed=()
for t in "${targets[@]}"; do
    work="fuzz/target/corpus/$t"
    log="$logs/$t.log"
    mkdir -p "$work" "fuzz/artifacts/$t"
    dict=()
    [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
    # -timeout: one input taking over 10 s is a finding (a hang);
    # -rss_limit_mb: the sidecar's own limit is far lower, so 2 GiB is a
    # finding too; -max_len: room for a real heap profile.
    result="no findings"
    if ! cargo fuzz run --sanitizer "$sanitizer" "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$per_target" -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1 "${dict[@]}" >"$log" 2>&1; then
        failed+=("$t")
        if grep -q 'Test unit written to\|ERROR: libFuzzer\|panicked at' "$log"; then
            result="FINDING (input in fuzz/artifacts/$t/, log $log)"
        else
            result="FAILED to run (log $log)"
        fi
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n1)
    added=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -n1)
    printf 'fuzz %-12s %10s execs in %3s s, %4s new inputs: %s\n' \
        "$t" "${execs:-?}" "${secs:-?}" "${added:-?}" "$result"
    printf '%s\t%s\t%s\t%s\n' "$t" "${secs:-?}" "${execs:-?}" "$result" >>"$summary"
    if [ "$result" != "no findings" ]; then
        show_log "$log"
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz.sh: findings or failures in: ${failed[*]} (inputs in fuzz/artifacts/, logs in $logs/)" >&2
    exit 1
fi
echo "fuzz.sh: ${#targets[@]} target(s), ${per_target}s each, no findings (logs in $logs/)"
