# Sourced by the container scripts: pick an engine and, for podman, project-local config and storage.
# A running Docker engine wins; otherwise podman with the settings these CI machines need
# (runc + cgroupfs, file events, bounded ulimits, storage under build/containers).
if docker info >/dev/null 2>&1; then
  ENGINE=docker
else
  ENGINE=podman
  root="$(pwd)/build/containers"
  mkdir -p "$root"
  cat > "$root/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
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
fi
export ENGINE
