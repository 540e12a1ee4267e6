// Command nsrun starts a command the way a container runtime starts a
// container on cgroup v2, for the v2 VM payloads (tests/v2vm/): it moves
// itself into the cgroup directory given, then starts the command in a new
// cgroup namespace (rooted at that cgroup) and a new mount namespace, so
// the command can mount its own view of cgroupfs.
//
//	nsrun CGROUP_DIR COMMAND [ARGS...]
//
// It waits for the command and exits with its status (128+signal when it
// was killed), so `nsrun … leaky &` followed by `wait` sees an OOM kill.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
)

// cloneNewCgroup is CLONE_NEWCGROUP from <linux/sched.h>.
const cloneNewCgroup = 0x02000000

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: nsrun CGROUP_DIR COMMAND [ARGS...]")
		os.Exit(2)
	}
	procs := filepath.Join(os.Args[1], "cgroup.procs")
	if err := os.WriteFile(procs, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "nsrun: cannot join %s: %v\n", os.Args[1], err)
		os.Exit(2)
	}
	cmd := exec.Command(os.Args[2], os.Args[3:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: cloneNewCgroup | syscall.CLONE_NEWNS}
	err := cmd.Run()
	if err == nil {
		os.Exit(0)
	}
	if ee, ok := err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			os.Exit(128 + int(ws.Signal()))
		}
		os.Exit(ee.ExitCode())
	}
	fmt.Fprintf(os.Stderr, "nsrun: %v\n", err)
	os.Exit(2)
}
