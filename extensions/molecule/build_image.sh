#!/usr/bin/env bash
# Build (once) the Debian bookworm image with systemd as PID 1 that the role scenario converges.
# The image comes from debootstrap (no registry needed) and is tagged with a hash of this script,
# so editing the package list rebuilds it and an unchanged script reuses the cached image.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$HERE/containers.conf}"
MIRROR="${NETREAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-yaml,kmod,iproute2,procps,sudo
TAG="$(sha256sum "$0" | cut -c1-12)"
IMAGE="localhost/netreap-cilium-node:bookworm-$TAG"

if podman image exists "$IMAGE"; then
  echo "$IMAGE"
  exit 0
fi
ROOTFS="$(mktemp -d /var/tmp/netreap-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
echo "build_image: debootstrap bookworm into $ROOTFS (about a minute)" >&2
debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS" "$MIRROR" >&2
# A container needs none of the console/udev/timer units; masking them keeps boot quick and quiet.
for unit in getty@.service console-getty.service systemd-udevd.service systemd-udev-trigger.service \
            systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
            e2scrub_all.timer fstrim.timer systemd-tmpfiles-clean.timer; do
  ln -sf /dev/null "$ROOTFS/etc/systemd/system/$unit"
done
: > "$ROOTFS/etc/machine-id"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
# Old images of this scenario are superseded by this one (one still in use by a container stays).
podman images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/netreap-cilium-node:' \
  | xargs -r podman rmi >/dev/null 2>&1 || true
tar -C "$ROOTFS" -c . | podman import --change 'CMD ["/lib/systemd/systemd"]' - "$IMAGE" >&2
echo "$IMAGE"
