#!/usr/bin/env bash
# The main job, for real, on its embedded default: a Go app leaks inside a
# 256 MiB memory cgroup, oomsnap watches that cgroup, captures heap and
# goroutine profiles as the leak nears the limit, writes them to a local
# store, and the kernel OOM-kills the app. Then the capture is shown.
#
#   sudo scripts/demo.sh            # leak at 64 MiB/s
#   RATE=0 sudo scripts/demo.sh     # as fast as the leaker can go
#
# Needs root (to make a cgroup). Installs Go from apt if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RATE=${RATE:-64}
LIMIT_MIB=${LIMIT_MIB:-256}
WORK=$(mktemp -d /tmp/oomsnap-demo.XXXXXX)
CG=""
LEAKY_PID=""
SNAP_PID=""

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
  [ -n "$SNAP_PID" ] && kill "$SNAP_PID" 2>/dev/null || true
  [ -n "$LEAKY_PID" ] && kill -9 "$LEAKY_PID" 2>/dev/null || true
  if [ -n "$CG" ] && [ -d "$CG" ]; then
    for p in $(cat "$CG/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    sleep 0.2
    rmdir "$CG" 2>/dev/null || true
  fi
}
trap cleanup EXIT

if [ "$(id -u)" != 0 ]; then echo "demo.sh needs root to create a memory cgroup" >&2; exit 1; fi

say "1/6 tools"
if ! command -v go >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null
fi
go version
cargo build --release --quiet
OOMSNAP=$ROOT/target/release/oomsnap
$OOMSNAP --version

say "2/6 build the leaking Go app (tests/leaky)"
(cd tests/leaky && GOTOOLCHAIN=local GOPROXY=off CGO_ENABLED=0 go build -o "$WORK/leaky" .)
echo "built $WORK/leaky"

say "3/6 a ${LIMIT_MIB} MiB memory cgroup"
if grep -qE '^[0-9]+:memory:' /proc/self/cgroup; then
  CG=/sys/fs/cgroup/memory$(grep -E '^[0-9]+:memory:' /proc/self/cgroup | cut -d: -f3)/oomsnap-demo-$$
  mkdir "$CG"
  echo $((LIMIT_MIB << 20)) > "$CG/memory.limit_in_bytes"
else
  CG=/sys/fs/cgroup$(grep -E '^0::' /proc/self/cgroup | cut -d: -f3)/oomsnap-demo-$$
  mkdir "$CG"
  echo $((LIMIT_MIB << 20)) > "$CG/memory.max"
fi
echo "$CG"

say "4/6 start the app (leaks $RATE MiB/s after 3 s) and oomsnap"
sh -c "echo \$\$ > $CG/cgroup.procs; exec $WORK/leaky -addr 127.0.0.1:0 -rate $RATE -delay 3s -baseline 16" > "$WORK/leaky.out" 2>&1 &
LEAKY_PID=$!
for _ in $(seq 100); do grep -q listening "$WORK/leaky.out" 2>/dev/null && break; sleep 0.1; done
ADDR=$(sed -n 's/^leaky: listening on \([^ ]*\) .*/\1/p' "$WORK/leaky.out")
echo "app pid $LEAKY_PID serving pprof on $ADDR"
OOMSNAP_CGROUP=$CG \
OOMSNAP_TARGET=http://$ADDR/debug/pprof \
OOMSNAP_STORE=file://$WORK/store \
OOMSNAP_SPOOL_DIR=$WORK/spool \
OOMSNAP_ADMIN_ADDR=127.0.0.1:0 \
OOMSNAP_LOG_FORMAT=text \
POD_NAMESPACE=demo POD_NAME=leaky \
  $OOMSNAP run 2> >(tee "$WORK/oomsnap.log" >&2) &
SNAP_PID=$!

say "5/6 wait for the kernel's OOM kill"
OOM_FILE=$CG/memory.oom_control; [ -f "$OOM_FILE" ] || OOM_FILE=$CG/memory.events
for _ in $(seq 600); do
  k=$(awk '$1=="oom_kill"{print $2}' "$OOM_FILE")
  [ "${k:-0}" -gt 0 ] && break
  sleep 0.1
done
echo "oom_kill counter: $(awk '$1=="oom_kill"{print $2}' "$OOM_FILE")"
# Give oomsnap a moment to write oom.json and ship, then stop it (SIGTERM).
for _ in $(seq 100); do
  find "$WORK/store" -name oom.json 2>/dev/null | grep -q . && break
  sleep 0.1
done
kill -TERM "$SNAP_PID"; wait "$SNAP_PID" || true; SNAP_PID=""

say "6/6 what was captured"
(cd "$WORK/store" && find . -type f | sort)
$OOMSNAP ls "file://$WORK/store"
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
