#!/bin/sh
# The live cgroup v2 scenarios, run inside the v2 VM by tests/live_v2.rs
# (through ../shared/tools/v2vm/run-in-v2vm.sh): real memory.max, memory.stat,
# memory.events and OOM kills. /opt/bin holds the static oomsnap (musl),
# leaky (tests/leaky) and nsrun (tests/v2vm/nsrun).
#
# It asserts nothing itself; it prints machine-checkable lines the test
# parses:
#   V2 <scenario> key=value ...          facts (one line, no spaces in values)
#   V2OUT <scenario> <text>              a line of a command's output
#   V2JSON <scenario> <label> <json>     a document (manifest, oom.json, /status) on one line
#   V2END <scenario> rc=<n>              the scenario ran to its end
# SCENARIOS="a b" (through V2VM_APPEND) runs only those.
set -u
R=/sys/fs/cgroup
ADMIN=127.0.0.1:9186
echo $$ > $R/sidecar/cgroup.procs

want() { [ -z "${SCENARIOS:-}" ] || echo " $SCENARIOS " | grep -q " $1 "; }
fact() { s=$1; shift; echo "V2 $s $*"; }
up() { cut -d' ' -f1 /proc/uptime; }
out() { s=$1; while IFS= read -r l; do echo "V2OUT $s $l"; done; }
doc() { echo "V2JSON $1 $2 $(tr -d '\n' < "$3")"; }
# A raw HTTP/1.0 GET of the admin port (busybox 1.35's wget crashes on
# hyper's responses); prints the status line and the body.
# nc's stdin stays open a moment: busybox nc stops reading once it closes.
admin() { (printf 'GET %s HTTP/1.0\r\nHost: oomsnap\r\n\r\n' "$1"; sleep 1) | nc -w 5 127.0.0.1 ${ADMIN#*:} | tr -d '\r'; }
status() { echo "V2JSON $1 status_$2 $(admin /status | sed '1,/^$/d' | tr -d '\n')"; }
healthz() { admin /healthz | head -n1 | cut -d' ' -f2; }
stat_of() { sed -n "s/^$2 //p" "$1/memory.stat"; }
events_of() { sed -n "s/^$2 //p" "$1/memory.events"; }
# Waits up to $2 tenths of a second for the command in $1 to succeed.
until_ok() { i=0; while ! eval "$1" >/dev/null 2>&1; do i=$((i+1)); [ $i -ge "$2" ] && return 1; sleep 0.1; done; }
manifests() { for m in $(find "$2" -name manifest.json | sort); do doc "$1" manifest "$m"; done; for o in $(find "$2" -name oom.json); do doc "$1" oom "$o"; done; }
# Starts leaky in cgroup $1 with args $2..; sets LEAKY to its pid.
leaky_in() { cg=$1; shift; sh -c "echo \$\$ > $cg/cgroup.procs; exec leaky -addr 127.0.0.1:6060 $*" > /tmp/leaky.log 2>&1 & LEAKY=$!; until_ok "wget -q -T 1 -O /dev/null http://127.0.0.1:6060/debug/pprof/cmdline" 100; }
# Starts `oomsnap run` watching cgroup $1 with its store under $2; the rest
# are extra VAR=value settings. Sets SNAP to its pid.
snap_run() { cg=$1; d=$2; shift 2; mkdir -p "$d"
  env OOMSNAP_CGROUP="$cg" OOMSNAP_STORE="file://$d/store" OOMSNAP_SPOOL_DIR="$d/spool" \
    OOMSNAP_ADMIN_ADDR=$ADMIN OOMSNAP_LOG_FORMAT=text OOMSNAP_ANNOTATIONS_FILE=/nonexistent "$@" \
    oomsnap run > "$d/oomsnap.log" 2>&1 & SNAP=$!
  until_ok "admin /healthz | grep -q '^HTTP/1.. 200'" 100; }
# Stops it with SIGTERM; SNAP_RC is its exit code (not in a subshell:
# only this shell can wait for it).
snap_stop() { kill -TERM "$SNAP" 2>/dev/null; wait "$SNAP"; SNAP_RC=$?; }
kill_cg() { echo 1 > "$1/cgroup.kill" 2>/dev/null; until_ok "grep -q '^populated 0' $1/cgroup.events" 100; }
mkcg() { mkdir -p "$1"; echo "$2" > "$1/memory.max"; [ -e "$1/memory.swap.max" ] && echo 0 > "$1/memory.swap.max"; }

fact env "kernel=$(uname -r) cgroup2=$(grep -c ' /sys/fs/cgroup cgroup2 ' /proc/mounts) psi=$([ -e $R/app/memory.pressure ] && echo yes || echo no)"

# --- check: the explicit cgroup, and the working set from memory.stat -------
if want check; then
  leaky_in $R/app -max 60
  sleep 1
  OOMSNAP_STORE=file:///tmp/checkstore OOMSNAP_CGROUP=$R/app oomsnap check > /tmp/check.out 2>&1; rc=$?
  out check < /tmp/check.out
  fact check "rc=$rc current=$(cat $R/app/memory.current) inactive_file=$(stat_of $R/app inactive_file) anon=$(stat_of $R/app anon) file=$(stat_of $R/app file) max=$(cat $R/app/memory.max)"
  kill_cg $R/app; wait $LEAKY 2>/dev/null
  echo "V2END check rc=$rc"
fi

# --- pod: a sidecar in its own container finds the app by its port -----------
# The kubelet's systemd layout, each container in its own cgroup namespace
# with its own cgroupfs mount; the node's cgroupfs is mounted in the sidecar
# at /host/cgroup (a hostPath). From the sidecar, the app's /proc/<pid>/cgroup
# reads 0::/../cri-containerd-app.scope.
if want pod; then
  UID_=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0; UIDU=$(echo $UID_ | tr - _)
  POD=$R/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod$UIDU.slice
  mkdir -p $POD/cri-containerd-app.scope $POD/cri-containerd-sidecar.scope
  for d in $R/kubepods.slice $R/kubepods.slice/kubepods-burstable.slice $POD; do echo +memory > $d/cgroup.subtree_control; done
  mkcg $POD/cri-containerd-app.scope 200M
  SIDE="mkdir -p /host/cgroup && mount --bind /sys/fs/cgroup /host/cgroup && umount /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup"
  CHECK="env OOMSNAP_STORE=file:///tmp/checkstore OOMSNAP_TARGET=http://127.0.0.1:6061/debug/pprof OOMSNAP_CGROUP_ROOT=/host/cgroup POD_UID=$UID_ oomsnap check"
  # a) the app has its own cgroupfs mount: found through /proc/<pid>/root.
  nsrun $POD/cri-containerd-app.scope sh -c 'umount /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && exec leaky -addr 127.0.0.1:6061 -max 30' > /tmp/leaky.log 2>&1 &
  until_ok "wget -q -T 1 -O /dev/null http://127.0.0.1:6061/debug/pprof/cmdline" 100
  nsrun $POD/cri-containerd-sidecar.scope sh -c "$SIDE && echo app_cgroup_seen_by_sidecar \$(cat /proc/\$(pidof leaky)/cgroup) && $CHECK" > /tmp/pod_a.out 2>&1; rc_a=$?
  out pod_own_mount < /tmp/pod_a.out
  fact pod_own_mount "rc=$rc_a"; echo "V2END pod_own_mount rc=$rc_a"
  kill_cg $POD/cri-containerd-app.scope
  # b) the app shares the node's mount view: only the hostPath and POD_UID
  #    resolve the path.
  nsrun $POD/cri-containerd-app.scope leaky -addr 127.0.0.1:6061 -max 30 > /tmp/leaky.log 2>&1 &
  until_ok "wget -q -T 1 -O /dev/null http://127.0.0.1:6061/debug/pprof/cmdline" 100
  nsrun $POD/cri-containerd-sidecar.scope sh -c "$SIDE && $CHECK" > /tmp/pod_b.out 2>&1; rc_b=$?
  out pod_host_path < /tmp/pod_b.out
  fact pod_host_path "rc=$rc_b"; echo "V2END pod_host_path rc=$rc_b"
  kill_cg $POD/cri-containerd-app.scope
  echo "V2END pod rc=0"
fi

# --- ladder: a slow leak fires 80, 90, 95 in order; the kill is confirmed ----
if want ladder; then
  D=/tmp/ladder; C=$R/ladder; mkcg $C 256M
  snap_run $C $D OOMSNAP_BASELINE_EVERY=0
  t0=$(up); leaky_in $C -rate 32 -delay 1s
  wait $LEAKY; lrc=$?
  fact ladder "snap_up_at=$t0 killed_at=$(up)"
  fact ladder "leaky_rc=$lrc oom_kill=$(events_of $C oom_kill) max_events=$(events_of $C max)"
  sleep 2; status ladder after_kill
  snap_stop; fact ladder "snap_rc=$SNAP_RC"
  manifests ladder $D
  sed 's/\x1b\[[0-9;]*m//g' $D/oomsnap.log | grep -E "WARN|ERROR" | head -20 | out ladder
  echo "V2END ladder rc=0"
fi

# --- fast: the VM's fastest leak fires "imminent" below the first rung ------
if want fast; then
  D=/tmp/fast; C=$R/fast; mkcg $C 256M
  snap_run $C $D
  t0=$(up); leaky_in $C -rate 0 -delay 2s
  wait $LEAKY; lrc=$?
  fact fast "snap_up_at=$t0 killed_at=$(up)"
  fact fast "leaky_rc=$lrc oom_kill=$(events_of $C oom_kill)"
  sleep 2
  snap_stop; fact fast "snap_rc=$SNAP_RC"
  manifests fast $D
  echo "V2END fast rc=0"
fi

# --- limit: the limit changes at run time ------------------------------------
if want limit; then
  D=/tmp/limit; C=$R/limit; mkcg $C 256M
  leaky_in $C -rate 64 -max 100
  snap_run $C $D OOMSNAP_BASELINE_EVERY=0
  until_ok "[ \$(cat $C/memory.current) -gt 104857600 ]" 100
  sleep 1; status limit before
  echo 120M > $C/memory.max
  until_ok "find $D -name manifest.json | grep -q ." 100
  sleep 1; status limit after
  snap_stop
  fact limit "oom_kill=$(events_of $C oom_kill) max=$(cat $C/memory.max) snap_rc=$SNAP_RC"
  manifests limit $D
  kill_cg $C
  echo "V2END limit rc=0"
fi

# --- gone: the cgroup disappears and comes back; oomsnap never exits ---------
if want gone; then
  D=/tmp/gone; C=$R/app2; mkcg $C 256M
  leaky_in $C -max 20
  snap_run $C $D OOMSNAP_BASELINE_EVERY=0
  sleep 1; status gone watching
  kill_cg $C; wait $LEAKY 2>/dev/null; rmdir $C
  sleep 3; status gone removed
  fact gone "healthz_while_gone=$(healthz)"
  mkcg $C 256M
  leaky_in $C -rate 64 -max 225
  until_ok "find $D -name manifest.json | grep -q ." 150
  sleep 1; status gone back
  fact gone "healthz_back=$(healthz)"
  snap_stop; fact gone "snap_rc=$SNAP_RC"
  manifests gone $D
  kill_cg $C; rmdir $C
  echo "V2END gone rc=0"
fi

# --- nolimit: memory.max is "max" until it is set ----------------------------
if want nolimit; then
  D=/tmp/nolimit; C=$R/app3; mkcg $C max
  leaky_in $C -rate 64 -max 60
  snap_run $C $D OOMSNAP_BASELINE_EVERY=0
  until_ok "[ \$(cat $C/memory.current) -gt 62914560 ]" 100
  sleep 1; status nolimit unlimited
  fact nolimit "healthz_unlimited=$(healthz)"
  echo 72M > $C/memory.max
  until_ok "find $D -name manifest.json | grep -q ." 100
  sleep 1; status nolimit limited
  snap_stop; fact nolimit "oom_kill=$(events_of $C oom_kill) snap_rc=$SNAP_RC"
  manifests nolimit $D
  kill_cg $C; rmdir $C
  echo "V2END nolimit rc=0"
fi

# --- oomsnap never wrote a control file of the app ---------------------------
for c in $(find $R -name memory.high); do
  d=$(dirname $c)
  fact untouched "cgroup=${d#$R} high=$(cat $d/memory.high) low=$(cat $d/memory.low) min=$(cat $d/memory.min)"
done
echo "V2END all rc=0"
