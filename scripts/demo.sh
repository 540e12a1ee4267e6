#!/usr/bin/env bash
# The main job, for real, on its embedded default: a Go app leaks inside a
# 256 MiB memory cgroup, oomsnap watches that cgroup, captures heap and
# goroutine profiles as the leak nears the limit, writes them to a local
# store, and the kernel OOM-kills the app. Then the capture is shown.
#
#   sudo scripts/demo.sh            # leak at 64 MiB/s
#   RATE=0 sudo scripts/demo.sh     # as fast as the leaker can go
#
# Needs root (to make a memory cgroup) and a Rust toolchain (to build
# oomsnap); installs Go from apt if it is missing. The first run builds
# oomsnap in release mode, which takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RATE=${RATE:-64}
LIMIT_MIB=${LIMIT_MIB:-256}
CG=""
SNAP_PID=""
APP_SHELL=""
WORK=""

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { printf '\ndemo.sh: %s\n' "$*" >&2; exit 1; }

cleanup() {
  [ -n "$SNAP_PID" ] && kill "$SNAP_PID" 2>/dev/null || true
  if [ -n "$CG" ] && [ -d "$CG" ]; then
    for p in $(cat "$CG/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    [ -n "$APP_SHELL" ] && wait "$APP_SHELL" 2>/dev/null || true
    sleep 0.2
    rmdir "$CG" 2>/dev/null || true
  fi
}
trap cleanup EXIT

say "1/7 prerequisites"
[ "$(id -u)" = 0 ] || die "needs root, to make a memory cgroup: run sudo scripts/demo.sh"
if grep -qE '^[0-9]+:([^:]*,)?memory(,[^:]*)?:' /proc/self/cgroup; then
  CG_PARENT=/sys/fs/cgroup/memory$(grep -E '^[0-9]+:([^:]*,)?memory(,[^:]*)?:' /proc/self/cgroup | cut -d: -f3)
  CG_VERSION=v1
elif grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
  CG_PARENT=/sys/fs/cgroup$(grep -E '^0::' /proc/self/cgroup | cut -d: -f3)
  CG_VERSION=v2
else
  die "no memory cgroup controller here (neither a v1 memory hierarchy nor memory in /sys/fs/cgroup/cgroup.controllers)"
fi
echo "memory cgroup $CG_VERSION under $CG_PARENT"
RUST_MIN=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml)
command -v cargo >/dev/null ||
  die "needs a Rust toolchain ($RUST_MIN or newer) to build oomsnap, and cargo is not on root's PATH. Install it with rustup (https://rustup.rs), then run this again${SUDO_USER:+ (if $SUDO_USER has one, sudo may have dropped it from PATH)}"
RUST_HAVE=$(rustc --version | awk '{print $2}')
[ "$(printf '%s\n%s\n' "$RUST_MIN" "$RUST_HAVE" | sort -V | head -n1)" = "$RUST_MIN" ] ||
  die "Rust $RUST_HAVE is older than the $RUST_MIN oomsnap needs: rustup update stable"
echo "rust $RUST_HAVE (needs $RUST_MIN or newer)"
if ! command -v go >/dev/null; then
  echo "Go is missing: installing golang-go from apt"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null
fi
go version

say "2/7 building oomsnap (first time: a few minutes)"
cargo build --release --locked
OOMSNAP=$ROOT/target/release/oomsnap
$OOMSNAP --version

say "3/7 building the leaking Go app (tests/leaky)"
WORK=$(mktemp -d /tmp/oomsnap-demo.XXXXXX)
(cd tests/leaky && GOTOOLCHAIN=local GOPROXY=off CGO_ENABLED=0 go build -o "$WORK/leaky" .)
echo "built $WORK/leaky"

say "4/7 a ${LIMIT_MIB} MiB memory cgroup"
CG=$CG_PARENT/oomsnap-demo-$$
mkdir "$CG"
if [ "$CG_VERSION" = v1 ]; then
  echo $((LIMIT_MIB << 20)) > "$CG/memory.limit_in_bytes"
  OOM_FILE=$CG/memory.oom_control USAGE_FILE=$CG/memory.usage_in_bytes
else
  [ -f "$CG/memory.max" ] || die "$CG has no memory.max: the memory controller is not enabled for children of $CG_PARENT"
  echo $((LIMIT_MIB << 20)) > "$CG/memory.max"
  OOM_FILE=$CG/memory.events USAGE_FILE=$CG/memory.current
fi
echo "$CG"

say "5/7 starting the app (it leaks $RATE MiB/s after 3 s) and oomsnap beside it"
# The app runs in a subshell that records its exit status. The subshell's
# own stderr goes nowhere, so the kernel's kill is told by this script, not
# by bash's "Killed" job message.
{
  rc=0
  sh -c "echo \$\$ > $CG/cgroup.procs; exec $WORK/leaky -addr 127.0.0.1:0 -rate $RATE -delay 3s -baseline 16" \
    > "$WORK/leaky.out" 2>&1 || rc=$?
  echo "$rc" > "$WORK/leaky.status"
} 2>/dev/null &
APP_SHELL=$!
for _ in $(seq 100); do grep -q listening "$WORK/leaky.out" 2>/dev/null && break; sleep 0.1; done
ADDR=$(sed -n 's/^leaky: listening on \([^ ]*\) .*/\1/p' "$WORK/leaky.out")
APP_PID=$(sed -n 's/^leaky: listening on [^ ]* pid \([0-9]*\).*/\1/p' "$WORK/leaky.out")
[ -n "$ADDR" ] || die "the app did not start: $(cat "$WORK/leaky.out")"
echo "app pid $APP_PID serving pprof on $ADDR"
OOMSNAP_CGROUP=$CG \
OOMSNAP_TARGET=http://$ADDR/debug/pprof \
OOMSNAP_STORE=file://$WORK/store \
OOMSNAP_SPOOL_DIR=$WORK/spool \
OOMSNAP_ADMIN_ADDR=127.0.0.1:0 \
OOMSNAP_LOG_FORMAT=text NO_COLOR=1 \
POD_NAMESPACE=demo POD_NAME=leaky \
  $OOMSNAP run 2>"$WORK/oomsnap.log" &
SNAP_PID=$!
echo "oomsnap pid $SNAP_PID watching the cgroup (log: $WORK/oomsnap.log)"

say "6/7 leaking toward the ${LIMIT_MIB} MiB limit"
oom_kills() { awk '$1=="oom_kill"{n=$2} END{print n+0}' "$OOM_FILE"; }
last_pct=-1
for _ in $(seq 1200); do
  [ "$(oom_kills)" -gt 0 ] && break
  [ -f "$WORK/leaky.status" ] && break
  used=$(cat "$USAGE_FILE" 2>/dev/null || echo 0)
  pct=$(( used * 100 / (LIMIT_MIB << 20) ))
  # A line every 10 % of the limit, so the climb is visible but short.
  if [ $(( pct / 10 )) -ne $(( last_pct / 10 )) ]; then
    captures=$(find "$WORK/store" -name manifest.json 2>/dev/null | wc -l)
    printf '  app memory %4d MiB of %d MiB (%3d %%), captures in the store: %d\n' \
      $(( used >> 20 )) "$LIMIT_MIB" "$pct" "$captures"
    last_pct=$pct
  fi
  sleep 0.05
done
for _ in $(seq 100); do [ -f "$WORK/leaky.status" ] && break; sleep 0.1; done
status=$(cat "$WORK/leaky.status" 2>/dev/null || echo "?")
APP_SHELL=""
if [ "$(oom_kills)" -gt 0 ]; then
  printf '\n  \033[1mthe kernel OOM-killed the app (oom_kill=%s, exit status %s = SIGKILL)\033[0m\n' "$(oom_kills)" "$status"
  echo "  as expected: this is the moment oomsnap is there for."
else
  die "the app ended without an OOM kill (exit status $status): $(tail -5 "$WORK/leaky.out")"
fi
# Give oomsnap a moment to write oom.json and ship, then stop it (SIGTERM).
for _ in $(seq 100); do
  find "$WORK/store" -name oom.json 2>/dev/null | grep -q . && break
  sleep 0.1
done
kill -TERM "$SNAP_PID"; wait "$SNAP_PID" || true; SNAP_PID=""
echo
echo "what oomsnap did (from its log, times in UTC):"
# Each line: the time, the message, and for a capture its reason and level;
# the log itself has every field.
grep -E ' capturing | capture spooled| OOM-killed| provisional' "$WORK/oomsnap.log" |
  sed -E -e 's/^[0-9-]+T([0-9:]{8}\.[0-9]{3})[0-9]*Z +(INFO|WARN) +/  \1  /' \
    -e 's/capturing .* reason=([^ ]+) percent=([0-9.]+).*/capturing: \1 at \2 % of the limit/' \
    -e 's/ [a-z_]+=.*//' || true

say "7/7 what was captured"
(cd "$WORK/store" && find . -type f | sort)
$OOMSNAP ls --store "file://$WORK/store"
CAPTURE=$(dirname "$(find "$WORK/store" -name oom.json | head -1)")
if [ "$CAPTURE" = "." ] || [ -z "$CAPTURE" ]; then
  CAPTURE=$(dirname "$(find "$WORK/store" -name manifest.json | sort | tail -1)")
fi
echo
$OOMSNAP report "$CAPTURE"
say "go tool pprof -top $CAPTURE/heap.pb.gz"
go tool pprof -top "$CAPTURE/heap.pb.gz" 2>/dev/null | head -12
echo
echo "everything is in $WORK"
