#!/usr/bin/env bash
# Runs every oomsnap benchmark for real and collects the tables.
#
#   sudo scripts/bench.sh            # full: about 10–15 min on 2 cores
#   sudo scripts/bench.sh --quick    # fewer runs: about 4 min
#   sudo scripts/bench.sh oom_race   # one or more benches by name
#
# Knobs (environment): OOMSNAP_BENCH_RUNS (runs per OOM-race rate, big
# captures, app-effect captures), OOMSNAP_BENCH_CROSSINGS (reaction, default
# 200), OOMSNAP_BENCH_IDLE_SECS (footprint idle, default 60).
#
# Needs root (memory cgroups, v1) and Go (builds tests/leaky). Each bench
# writes target/bench/<name>.json and <name>.md; this script joins the
# tables into target/bench/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."

ARGS=()
BENCHES=()
for a in "$@"; do
  case "$a" in
    --quick) ARGS+=(--quick) ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) BENCHES+=("$a") ;;
  esac
done
[ ${#BENCHES[@]} -gt 0 ] || BENCHES=(oom_race reaction footprint app_effect)

if [ "$(id -u)" != 0 ]; then echo "bench.sh needs root to create memory cgroups" >&2; exit 1; fi
command -v go >/dev/null || { echo "bench.sh needs go (apt-get install golang-go)" >&2; exit 1; }

cargo build --release --quiet
mkdir -p target/bench
start=$(date +%s)
for b in "${BENCHES[@]}"; do
  echo "== cargo bench --bench $b ${ARGS[*]:-}" >&2
  cargo bench --quiet --bench "$b" -- "${ARGS[@]}"
done

{
  echo "# oomsnap benchmarks"
  echo
  echo "Machine: $(nproc) cores, kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "Run: $(date -u +%Y-%m-%dT%H:%M:%SZ), scripts/bench.sh ${ARGS[*]:-}, $(( $(date +%s) - start )) s"
  for b in "${BENCHES[@]}"; do
    [ -f "target/bench/$b.md" ] || continue
    echo
    echo "## $b"
    echo
    cat "target/bench/$b.md"
  done
} > target/bench/summary.md
echo "tables: target/bench/summary.md, raw data: target/bench/*.json" >&2
