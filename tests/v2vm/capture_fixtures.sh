#!/bin/sh
# Captures real cgroup v2 files for tests/data/cgroup/v2_vm_*/ (run by hand,
# not by the tests):
#
#   ../shared/tools/v2vm/run-in-v2vm.sh BINDIR tests/v2vm/capture_fixtures.sh > /tmp/fx.txt
#   awk '/^FILE /{f="tests/data/cgroup/"$2; system("mkdir -p $(dirname " f ")"); next}
#        /^ENDFILE$/{close(f); f=""; next} f{print > f}' /tmp/fx.txt
#
# BINDIR holds a static tests/leaky. Each case is one cgroup of the VM's
# 6.1 kernel, its files copied as the kernel printed them.
R=/sys/fs/cgroup
echo $$ > $R/sidecar/cgroup.procs
dump() { for f in memory.current memory.max memory.stat memory.events memory.events.local memory.pressure memory.peak memory.high; do
  [ -e "$2/$f" ] || continue; echo "FILE $1/$f"; cat "$2/$f"; echo ENDFILE; done; }
leak() { sh -c "echo \$\$ > $1/cgroup.procs; exec leaky -addr 127.0.0.1:6060 $2" > /dev/null 2>&1 & }
settle() { sleep 3; }

# A Go app holding 60 MiB of a 256 MiB limit.
mkdir $R/running; echo 256M > $R/running/memory.max; echo 0 > $R/running/memory.swap.max
leak $R/running "-max 60"; settle
dump v2_vm_running $R/running
echo 1 > $R/running/cgroup.kill

# The same after the kernel OOM-killed the leak, with the app restarted
# holding 40 MiB (the kill counter stays).
mkdir $R/killed; echo 256M > $R/killed/memory.max; echo 0 > $R/killed/memory.swap.max
leak $R/killed "-rate 0"; while ! grep -q '^oom_kill [1-9]' $R/killed/memory.events; do sleep 0.2; done
sleep 1; leak $R/killed "-addr 127.0.0.1:6061 -max 40"; settle
dump v2_vm_after_oom_kill $R/killed
echo 1 > $R/killed/cgroup.kill

# No limit: memory.max is "max".
mkdir $R/unlimited
leak $R/unlimited "-max 30"; settle
dump v2_vm_unlimited $R/unlimited
echo 1 > $R/unlimited/cgroup.kill
