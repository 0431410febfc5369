#!/bin/bash
# Boots uvm-gcs as PID 1 in a real QEMU/TCG VM and runs the smoke test
# (examples/vm_smoke.rs). Usage:
#   crates/uvm-gcs/scripts/smoke-vm.sh tuned [VMLINUX]   # microvm + PVH vmlinux
#   crates/uvm-gcs/scripts/smoke-vm.sh stock [VMLINUZ]   # q35 + modules loaded by the agent
#   crates/uvm-gcs/scripts/smoke-vm.sh raw   [VMLINUX]   # baseline: /init writes one byte
# The default VMLINUX is the newest tuned kernel in the uvm cache. microvm under
# TCG needs `tsc_early_khz=<host TSC kHz>` (without it boots hang): taken from
# $UVM_TSC_KHZ, else from the cmdline `uvmctl image build` prints, else from
# /proc/cpuinfo. The tested, non-flaky version of the garbage-frame check is
# tests/real_vm_garbage.rs.
set -eu
mode=${1:-tuned}
root=$(cd "$(dirname "$0")/../../.." && pwd)
work=${SMOKE_WORK:-/tmp/uvm-gcs-smoke}
target=x86_64-unknown-linux-gnu
rm -rf "$work" && mkdir -p "$work/root"
cd "$root"
if [ "$mode" != raw ]; then
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p uvm-gcs --target $target
    # Keep the symbol table (symbolized DumpStacks frames), drop DWARF.
    strip --strip-debug -o "$work/root/init" target/$target/release/uvm-gcs
fi
cache=${UVM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/uvm}
# Newest <cache>/kernel/<hash>/vmlinux (not the build-*/src-* trees).
newest_tuned() {
    local k
    k=$(ls -t "$cache"/kernel/*/vmlinux 2>/dev/null | grep -v -e /build- -e /src- | head -1 || true)
    [ -n "$k" ] || { echo "no tuned kernel under $cache/kernel: run uvmctl image build" >&2; exit 1; }
    echo "$k"
}
tsc_khz() {
    local khz=${UVM_TSC_KHZ:-}
    if [ -z "$khz" ]; then
        khz=$(cargo run -q --release -p uvmctl -- image build 2>/dev/null |
            sed -n 's/^cmdline:.* tsc_early_khz=\([0-9]*\).*/\1/p' | head -1 || true)
    fi
    if [ -z "$khz" ]; then
        khz=$(awk -F: '/^cpu MHz/ { printf "%d\n", $2 * 1000; exit }' /proc/cpuinfo)
        echo "tsc_early_khz from /proc/cpuinfo: $khz" >&2
    fi
    echo "$khz"
}
add_tsc_hint() {
    case " ${SMOKE_APPEND:-} " in
    *" tsc_early_khz="*) ;;
    *) SMOKE_APPEND="${SMOKE_APPEND:-} tsc_early_khz=$(tsc_khz)" ;;
    esac
}
r="$work/root"
mkdir -p "$r/bin" "$r/dev" "$r/proc" "$r/sys" "$r/tmp" "$r/lib/modules"
cp /bin/busybox "$r/bin/busybox"
for a in sh cat true false echo sleep tty stty ps uname hostname seq kill ls grep; do ln -s busybox "$r/bin/$a"; done
case "$mode" in
tuned)
    kernel=${2:-$(newest_tuned)}; machine=microvm
    add_tsc_hint ;;
stock)
    kernel=${2:-$(ls /boot/vmlinuz-*-cloud-amd64 | head -1)}; machine=q35
    rel=$(basename "$kernel" | sed 's/^vmlinuz-//')
    : > "$r/lib/modules/uvm-load-order"
    for m in virtio/virtio_ring virtio/virtio virtio/virtio_pci_legacy_dev virtio/virtio_pci_modern_dev \
             virtio/virtio_pci char/virtio_console; do
        src=/lib/modules/$rel/kernel/drivers/$m.ko
        cp "$src" "$r/lib/modules/"
        echo "/lib/modules/$(basename "$src")" >> "$r/lib/modules/uvm-load-order"
    done ;;
raw)
    # Baseline: the same kernel and flags; /init writes one byte to the console and powers off.
    kernel=${2:-$(newest_tuned)}
    add_tsc_hint
    printf '#!/bin/sh\nprintf X > /dev/ttyS0\nexec poweroff -f\n' > "$r/init"
    ln -s busybox "$r/bin/poweroff"
    mknod "$r/dev/ttyS0" c 4 64 ;;
esac
chmod 755 "$r/init"
mknod "$r/dev/console" c 5 1 2>/dev/null || true
(cd "$r" && find . | sort | cpio -o -H newc --quiet) > "$work/initrd.cpio"
ls -l "$r/init" "$work/initrd.cpio"
if [ "$mode" = raw ]; then
    for i in 1 2 3 4 5; do
        start=$(date +%s%N)
        timeout 20 qemu-system-x86_64 -M microvm,x-option-roms=off -accel tcg -m 512 -smp 1 -nographic -nodefaults -no-reboot \
            -serial stdio -kernel "$kernel" -initrd "$work/initrd.cpio" -append "console=ttyS0 panic=-1 quiet reboot=t ${SMOKE_APPEND:-}" \
            </dev/null | { while IFS= read -r -n1 c; do [ "$c" = X ] && break; done; echo "raw boot to the init's byte: $(( ($(date +%s%N) - start) / 1000000 )) ms"; cat >/dev/null; }
    done
    exit 0
fi
echo "kernel $kernel, extra append:${SMOKE_APPEND:-}"
SMOKE_APPEND=${SMOKE_APPEND:-} cargo run -q -p uvm-gcs --example vm_smoke -- "$kernel" "$work/initrd.cpio" $machine 512
