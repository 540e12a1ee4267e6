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
# crashing input to fuzz/artifacts/<target>/. Needs `cargo install
# cargo-fuzz --locked`.
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

# Build all targets once (the slow part), then run each.
cargo fuzz build --sanitizer "$sanitizer"

failed=()
for t in "${targets[@]}"; do
    work="fuzz/target/corpus/$t"
    mkdir -p "$work" "fuzz/artifacts/$t"
    dict=()
    [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
    echo "=== fuzz $t for ${per_target}s"
    # -timeout: one input taking over 10 s is a finding (a hang);
    # -rss_limit_mb: the sidecar's own limit is far lower, so 2 GiB is a
    # finding too; -max_len: room for a real heap profile.
    if ! cargo fuzz run --sanitizer "$sanitizer" "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$per_target" -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1 "${dict[@]}"; then
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz.sh: findings in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz.sh: ${#targets[@]} target(s), ${per_target}s each, no findings"
