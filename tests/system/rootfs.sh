#!/usr/bin/env bash
# Build (once) and cache a Debian bookworm root file system for the system tests.
#
#   tests/system/rootfs.sh amd64 DEST   a root that boots under systemd-nspawn (systemd as PID 1,
#                                       python3-venv, mosquitto) -> DEST (a copy of the cache)
#   tests/system/rootfs.sh arm64 DEST   the same for arm64 (built through qemu-user-static) plus
#                                       Debian's arm64 kernel and a small initramfs for a virtio
#                                       disk, to boot in qemu-system-aarch64
#
# The cache lives in $EDGE_AGENT_SYSTEM_CACHE (default ~/.cache/edge-agent/system) as
# bookworm-ARCH.tar; delete it to rebuild. Packages come from the Debian mirror that apt on this
# host is configured with (first "deb" URI in /etc/apt/sources.list*), or $DEBIAN_MIRROR.
set -euo pipefail
ARCH=${1:?usage: rootfs.sh amd64|arm64 DEST}
DEST=${2:?usage: rootfs.sh amd64|arm64 DEST}
CACHE=${EDGE_AGENT_SYSTEM_CACHE:-$HOME/.cache/edge-agent/system}
TAR=$CACHE/bookworm-$ARCH.tar
say() { echo "rootfs.sh: $*" >&2; }
die() { echo "rootfs.sh: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"

mirror() {
  # the Debian archive apt uses here: deb822 .sources (URIs:) or one-line sources.list (deb URL)
  local f u
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    u=$(awk '/^URIs:/ {print $2}' "$f" | grep -v -- '-security' | head -n1)
    [ -n "$u" ] && { echo "$u"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    u=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' "$f" |
        grep -v -- '-security' | head -n1)
    [ -n "$u" ] && { echo "$u"; return; }
  done
  die "no Debian mirror found in /etc/apt/sources.list*; set DEBIAN_MIRROR"
}

unmount_under() {
  # debootstrap leaves /proc (and sometimes /sys, /dev/pts) mounted in the new root; copying a
  # root with /proc mounted follows /proc/<pid>/root back into itself and fills the disk
  local root=$1 m
  for m in $(awk -v r="$root" 'index($2, r "/") == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$m" || true
  done
}

in_root() { chroot "$ROOTDIR" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }

build() {
  local mirror_url
  mirror_url=$(mirror)
  mkdir -p "$CACHE"
  WORK=$(mktemp -d "$CACHE/build-$ARCH.XXXXXX")
  ROOTDIR=$WORK/root
  trap 'unmount_under "$ROOTDIR"; rm -rf "$WORK"' EXIT
  local pkgs=systemd,systemd-sysv,dbus,udev,kmod,python3,python3-venv,procps,iproute2,mosquitto
  say "debootstrap bookworm $ARCH from $mirror_url (a few minutes, once)"
  if [ "$ARCH" = "$(dpkg --print-architecture)" ]; then
    debootstrap --variant=minbase --include="$pkgs" bookworm "$ROOTDIR" "$mirror_url" >&2
  else
    command -v qemu-aarch64-static >/dev/null ||
      die "qemu-user-static is missing (apt-get install qemu-user-static binfmt-support)"
    [ -f /proc/sys/fs/binfmt_misc/status ] ||
      mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
      die "cannot mount binfmt_misc (needed to run arm64 programs while building the root)"
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null ||
      die "binfmt_misc has no enabled qemu-aarch64 handler (update-binfmts --enable qemu-aarch64)"
    local interp
    interp=$(awk '/^interpreter/ {print $2}' /proc/sys/fs/binfmt_misc/qemu-aarch64)
    debootstrap --foreign --arch=arm64 --variant=minbase --include="$pkgs,busybox-static" \
      bookworm "$ROOTDIR" "$mirror_url" >&2
    # the handler is registered without the F flag: its interpreter must exist inside the root
    mkdir -p "$ROOTDIR$(dirname "$interp")"
    cp "$(readlink -f "$interp")" "$ROOTDIR$interp"
    chroot "$ROOTDIR" /debootstrap/debootstrap --second-stage >&2
    arm64_kernel "$mirror_url"
    rm -f "$ROOTDIR$interp"
  fi
  common_setup
  unmount_under "$ROOTDIR"
  rm -rf "$ROOTDIR"/var/cache/apt/archives/*.deb "$ROOTDIR"/var/lib/apt/lists/*
  tar -C "$ROOTDIR" -cf "$TAR.tmp" . && mv "$TAR.tmp" "$TAR"
  say "cached $TAR ($(du -sh "$TAR" | cut -f1))"
}

arm64_kernel() {
  # Debian's arm64 kernel, with an initramfs holding only the modules a virtio disk needs:
  # MODULES=most under emulation takes ~15 minutes (twice); a listed handful takes a minute.
  local mirror_url=$1
  mkdir -p "$ROOTDIR/etc/initramfs-tools/conf.d"
  printf 'MODULES=list\nCOMPRESS=gzip\n' > "$ROOTDIR/etc/initramfs-tools/conf.d/edge-agent-vm.conf"
  printf 'virtio_pci\nvirtio_mmio\nvirtio_blk\nvirtio_net\next4\n' \
    > "$ROOTDIR/etc/initramfs-tools/modules"
  echo "deb $mirror_url bookworm main" > "$ROOTDIR/etc/apt/sources.list"
  cp /etc/resolv.conf "$ROOTDIR/etc/resolv.conf"
  in_root apt-get update -qq >&2
  in_root apt-get install -y -qq --no-install-recommends linux-image-arm64 initramfs-tools >&2
  : > "$ROOTDIR/etc/resolv.conf"
}

common_setup() {
  echo edge-sys > "$ROOTDIR/etc/hostname"
  # no getty on a console nobody reads; the VM's serial console shows the boot
  in_root systemctl mask console-getty.service getty@tty1.service >/dev/null 2>&1 || true
  in_root systemctl disable mosquitto.service >/dev/null 2>&1 || true
  if [ "$ARCH" != "$(dpkg --print-architecture)" ]; then
    echo "/dev/vda / ext4 defaults 0 1" > "$ROOTDIR/etc/fstab"
    mkdir -p "$ROOTDIR/etc/systemd/network"
    printf '[Match]\nName=en* eth*\n[Network]\nDHCP=ipv4\n' \
      > "$ROOTDIR/etc/systemd/network/80-vm.network"
    in_root systemctl enable systemd-networkd.service >/dev/null 2>&1
  fi
}

if [ ! -f "$TAR" ]; then build; else say "using the cached $TAR"; fi
mkdir -p "$DEST"
tar -C "$DEST" -xf "$TAR"
