# Sourced by the container scripts: pick an engine and, for podman, project-local config and storage.
# A running Docker engine wins; otherwise podman with the settings these CI machines need (cgroupfs, file events,
# bounded ulimits, storage under build/containers) and whichever OCI runtime Debian installed: runc, else crun.
# With neither engine, install Debian's podman and friends where it can (root with apt, as `make install` does for
# chromium), else say what to install and stop.
engine_packages="podman buildah runc slirp4netns uidmap netavark aardvark-dns golang-github-containers-common \
iptables debootstrap"
install_hint="apt-get install -y --no-install-recommends $engine_packages   (or run a Docker engine)"
if ! command -v podman >/dev/null 2>&1 && ! (command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1) \
  && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "No container engine: installing Debian's podman ($engine_packages)" >&2
  # shellcheck disable=SC2086  # one package per word
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $engine_packages \
    || echo "could not install podman" >&2
fi
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  ENGINE=docker
elif command -v podman >/dev/null 2>&1; then
  ENGINE=podman
  runtime=$(command -v runc || command -v crun || true)
  if [ -z "$runtime" ]; then
    echo "podman is installed but no OCI runtime (runc or crun) is; install one: apt-get install -y runc" >&2
    exit 1
  fi
  root="$(pwd)/build/containers"
  mkdir -p "$root"
  cat > "$root/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "$(basename "$runtime")"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
  cat > "$root/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$root/storage"
runroot = "$root/run"
CONF
  export CONTAINERS_CONF="$root/containers.conf" CONTAINERS_STORAGE_CONF="$root/storage.conf" BUILDAH_ISOLATION=chroot
else
  echo "No container engine: neither a running Docker engine nor podman. Install one, e.g.:" >&2
  echo "  $install_hint" >&2
  exit 1
fi
export ENGINE
