# Shared setup for mayfly's benchmarks; sourced by the bench/* scripts, run as root.
#
# Every benchmark runs mayfly and its peer as the same unprivileged user (mayfly-ci, from
# scripts/setup-host) against the local registries, so both pay the same costs. Debian's rootless
# Podman 4.3 needs /dev/net/tun usable by the user, overlay in its storage.conf and iptables;
# bench_podman_setup arranges that and bench_restore puts back what it changed.

set -euo pipefail

bench_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench_user=${MAYFLY_TEST_USER:-mayfly-ci}
bench_runs=${BENCH_RUNS:-5}
bench_work=/var/tmp/mayfly-bench
export PATH="$HOME/.cargo/bin:$PATH"

bench_restore_steps=()
bench_restore() {
  local step
  for step in "${bench_restore_steps[@]}"; do
    eval "$step" || echo "bench: failed to restore: $step" >&2
  done
}
trap bench_restore EXIT

# Installs the Debian packages the benchmarks use that the machine lacks: the peers (Podman,
# skopeo, passt for pasta, runc, slirp4netns) and the tools that time and read the results.
# Package names follow the command each one provides.
bench_install_tools() {
  local -A packages=(
    [podman]=podman [skopeo]=skopeo [pasta]=passt [runc]=runc [slirp4netns]=slirp4netns
    [hyperfine]=hyperfine [jq]=jq [mkfs.ext4]=e2fsprogs [losetup]=mount
  )
  local command missing=()
  for command in "${!packages[@]}"; do
    command -v "$command" >/dev/null || missing+=("${packages[$command]}")
  done
  if ((${#missing[@]})); then
    echo "bench: installing ${missing[*]}" >&2
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  fi
}
bench_install_tools

# Builds the release binary into a directory the bench user can read.
bench_build_mayfly() {
  export CARGO_TARGET_DIR=/var/cache/mayfly-ci/target
  (cd "$bench_repo" && cargo build --release -q -p mayfly)
  mayfly_bin=$CARGO_TARGET_DIR/release/mayfly
}

# Runs a command as the bench user with a private home under $bench_work.
as_bench_user() {
  local home=$bench_work/home
  mkdir -p "$home"
  chown "$bench_user:" "$bench_work" "$home"
  setpriv --reuid="$bench_user" --regid="$bench_user" --init-groups \
    env -u XDG_RUNTIME_DIR HOME="$home" USER="$bench_user" \
    MAYFLY_REGISTRIES_CONF=/var/lib/mayfly-ci/registries.conf \
    CONTAINERS_REGISTRIES_CONF=/var/lib/mayfly-ci/registries.conf \
    "$@"
}

bench_podman_setup() {
  local tun_mode
  tun_mode=$(stat -c %a /dev/net/tun)
  if [[ $tun_mode != 666 ]]; then
    chmod 0666 /dev/net/tun
    bench_restore_steps+=("chmod $tun_mode /dev/net/tun")
  fi
  local config=$bench_work/home/.config/containers
  mkdir -p "$config"
  cat >"$config/storage.conf" <<CONF
[storage]
driver = "overlay"
CONF
  chown -R "$bench_user:" "$bench_work/home"
}

# Prints the median of a hyperfine JSON export, in seconds.
bench_median() {
  jq -r '.results[0].median' "$1"
}

bench_ratio() {
  python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"
}

bench_machine() {
  printf '%s, %s cores, %s GiB, kernel %s\n' \
    "$(. /etc/os-release && echo "$PRETTY_NAME")" "$(nproc)" \
    "$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1048576))" "$(uname -r)"
}

# Prints the podman options that select the OCI runtime. crun 1.8 refuses to start a container
# when cgroups are in hybrid mode (v1 controllers plus a v2 hierarchy that has controllers
# enabled), so there runc is used instead: runc 1.1.5 starts rootless containers on such a host.
# The runtime only creates the container, so it is not in the data path that is measured.
podman_runtime_options() {
  local controllers=/sys/fs/cgroup/unified/cgroup.controllers
  if [[ -n $(cat "$controllers" 2>/dev/null) ]]; then
    if ! command -v runc >/dev/null; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q runc >/dev/null
    fi
    echo "--runtime runc"
  fi
}
