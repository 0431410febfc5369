#!/usr/bin/env bash
# Installs what uvm needs on a Debian/Ubuntu host, and nothing that is already there.
# Idempotent: a second run checks and exits. Uses sudo when not root.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
want() { have_pkg "$1" || need+=("$1"); }

want qemu-system-x86      # the hypervisor
want busybox-static       # a shell and tools inside the guest
want cpio
want gcc                  # the raw-boot baseline init, the kernel build
want make
want bc; want flex; want bison; want libelf-dev; want libssl-dev   # kernel build
want qemu-guest-agent     # benchmark peer
want qemu-utils           # qemu-img: disk images in tests
want e2fsprogs            # mkfs.ext4, debugfs: disk images for the runtime device tests
want squashfs-tools; want erofs-utils   # read-only images (mksquashfs, mkfs.erofs) for the device tests
want containerd           # the containerd shim tests run their own (ctr is the client)
want bsdutils             # script(1): a terminal for `ctr run -t` in the shim tests
want runc                 # the containerd benchmark baseline (io.containerd.runc.v2)
# Kernel source for the tuned guest kernel, and a stock kernel image.
if [ -r /etc/debian_version ] && grep -q '^12' /etc/debian_version; then
  want linux-source-6.1
  want linux-image-cloud-amd64
else
  ls /usr/src/linux-source-*.tar.* >/dev/null 2>&1 || need+=(linux-source)
  ls /boot/vmlinuz-* >/dev/null 2>&1 || need+=(linux-image-generic)
fi

if [ ${#need[@]} -eq 0 ]; then
  echo "deps: everything is installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "deps: missing ${need[*]}; run as root or install sudo" >&2; exit 1; }
  SUDO="sudo"
fi
echo "deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
