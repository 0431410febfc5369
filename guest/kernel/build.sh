#!/usr/bin/env bash
# Build the tuned uvm guest kernel (an ELF vmlinux for `qemu -M microvm` PVH
# boot) from the distro kernel source, cached by content hash.
#
# Usage: build.sh [--print-path]
#   (no option)   build if needed; the final vmlinux path is the LAST line of
#                 stdout (progress goes to stderr). A second run does nothing.
#   --print-path  print where the vmlinux is/would be; exit 0 if it exists,
#                 1 otherwise. Builds nothing.
#
# Inputs (environment):
#   UVM_CACHE_DIR       cache root (else $XDG_CACHE_HOME/uvm, else ~/.cache/uvm)
#   UVM_KERNEL_SOURCE   source tarball (default /usr/src/linux-source-6.1.tar.xz)
#   UVM_KERNEL_FRAGMENT config fragment (default: uvm.config next to this script)
#   UVM_KERNEL_PATCHES  directory of *.patch files applied to the source, in name
#                       order, with `patch -p1` (default: patches/ next to this script)
#   UVM_KEEP_KERNEL_BUILD=1  keep the object dir after a successful build
#
# Output: $CACHE/kernel/<hash>/vmlinux (no symbols; System.map and config
#   beside it), hash = first 16 hex chars of
#   sha256(fragment bytes + this script's bytes + each patch's bytes in name
#   order + "<tarball name>:<size>:<mtime>\n").
# crates/uvm-image computes the same hash (keep the two in sync).
#
# Steps: unpack and patch the source once into $CACHE/kernel/src-<id> (shared
# by builds with the same source and patches; other src-* trees are removed),
# `make O=<objdir> tinyconfig`, append the fragment, `make olddefconfig`, check
# every `=y` line of the fragment survived, `make vmlinux`, strip, install
# atomically (tmp + rename). A lock serializes concurrent builds.
set -euo pipefail

die() { echo "build.sh: error: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
self="$here/$(basename "${BASH_SOURCE[0]}")"
fragment="${UVM_KERNEL_FRAGMENT:-$here/uvm.config}"
tarball="${UVM_KERNEL_SOURCE:-/usr/src/linux-source-6.1.tar.xz}"
patch_dir="${UVM_KERNEL_PATCHES:-$here/patches}"

mode=build
case "${1:-}" in
  "") ;;
  --print-path) mode=print ;;
  -h|--help) sed -n '2,20p' "$self"; exit 0 ;;
  *) die "unknown option '$1' (try --help)" ;;
esac

if [[ -n "${UVM_CACHE_DIR:-}" ]]; then cache="$UVM_CACHE_DIR"
elif [[ -n "${XDG_CACHE_HOME:-}" ]]; then cache="$XDG_CACHE_HOME/uvm"
else cache="$HOME/.cache/uvm"; fi

[[ -f "$fragment" ]] || die "config fragment not found: $fragment"
[[ -d "$patch_dir" ]] || die "kernel patch directory not found: $patch_dir"
patches=()
while IFS= read -r p; do patches+=("$p"); done < <(LC_ALL=C find "$patch_dir" -maxdepth 1 -name '*.patch' -type f | LC_ALL=C sort)
if [[ ! -f "$tarball" ]]; then
  die "kernel source $tarball not found.
  Fix: apt-get install linux-source-6.1 bc flex bison libelf-dev libssl-dev
  (or point UVM_KERNEL_SOURCE at a linux source .tar.xz)"
fi

src_id="$(basename "$tarball"):$(stat -c '%s:%Y' "$tarball")"
patch_bytes() { if (( ${#patches[@]} )); then cat "${patches[@]}"; fi; }
hash="$({ cat "$fragment"; cat "$self"; patch_bytes; printf '%s\n' "$src_id"; } | sha256sum | cut -c1-16)"
out_dir="$cache/kernel/$hash"
out="$out_dir/vmlinux"

if [[ "$mode" == print ]]; then
  echo "$out"
  [[ -f "$out" ]] && exit 0 || exit 1
fi
if [[ -f "$out" ]]; then echo "$out"; exit 0; fi

for tool in make gcc bc flex bison strip tar patch; do
  command -v "$tool" >/dev/null || die "missing tool '$tool'.
  Fix: apt-get install build-essential bc flex bison libelf-dev libssl-dev"
done

mkdir -p "$cache/kernel"
exec 9>"$cache/kernel/.lock"
log "waiting for the kernel build lock ($cache/kernel/.lock)"
flock 9
if [[ -f "$out" ]]; then echo "$out"; exit 0; fi   # built while we waited

src_hash="$({ printf '%s' "$src_id"; patch_bytes; } | sha256sum | cut -c1-16)"
src="$cache/kernel/src-$src_hash"
if [[ ! -f "$src/Makefile" ]]; then
  log "unpacking $tarball -> $src"
  rm -rf "$src.tmp"; mkdir -p "$src.tmp"
  tar -xf "$tarball" -C "$src.tmp" --strip-components=1
  for p in "${patches[@]}"; do
    # A patch written for another kernel version is skipped, not fatal: the
    # patches only make the guest boot faster (see NOTES.md).
    if patch -d "$src.tmp" -p1 --batch --forward --dry-run --quiet < "$p" >/dev/null 2>&1; then
      log "applying $(basename "$p")"
      patch -d "$src.tmp" -p1 --batch --forward --quiet < "$p" >&2
    else
      log "warning: $(basename "$p") does not apply to $(basename "$tarball"); building without it"
    fi
  done
  rm -rf "$src"; mv "$src.tmp" "$src"
  # Trees of other sources or patch sets (1.5 GB each) are not needed again
  # unless those change back; a build of them unpacks anew.
  for old in "$cache"/kernel/src-*; do
    [[ "$old" == "$src" ]] || { log "removing stale source tree $old"; rm -rf "$old"; }
  done
fi

obj="$cache/kernel/build-$hash"
mkdir -p "$obj"
jobs="$(nproc)"
log "configuring in $obj (tinyconfig + $(basename "$fragment"))"
make -C "$src" O="$obj" tinyconfig >&2
cat "$fragment" >> "$obj/.config"
make -C "$src" O="$obj" olddefconfig >&2

missing=()
while IFS= read -r line; do
  opt="${line%%=*}"
  grep -qx "$opt=y" "$obj/.config" || missing+=("$opt")
done < <(grep -E '^CONFIG_[A-Za-z0-9_]+=y\s*$' "$fragment" | sed 's/\s*$//')
if (( ${#missing[@]} )); then
  for opt in "${missing[@]}"; do
    echo "build.sh: missing from final .config: $opt=y (now: $(grep -E "^(# )?$opt[= ]" "$obj/.config" || echo 'absent'))" >&2
  done
  die "${#missing[@]} option(s) of $(basename "$fragment") did not survive olddefconfig (unmet dependencies?)"
fi
# Non-boolean lines (numbers, strings) are only checked with a warning.
while IFS= read -r line; do
  grep -qxF "$line" "$obj/.config" || log "warning: '$line' not applied (now: $(grep -E "^${line%%=*}=" "$obj/.config" || echo absent))"
done < <(grep -E '^CONFIG_[A-Za-z0-9_]+=[^y]' "$fragment" | sed 's/\s*$//')

log "building vmlinux with make -j$jobs (several minutes on few cores)"
make -C "$src" O="$obj" -j"$jobs" vmlinux >&2

mkdir -p "$out_dir"
tmp="$(mktemp "$out_dir/.vmlinux.XXXXXX")"
# --strip-all: QEMU reads and sorts an ELF's symbol table when it loads it
# (3-4 ms of every boot); the symbols stay beside it in System.map.
strip --strip-all -o "$tmp" "$obj/vmlinux"
cp "$obj/.config" "$out_dir/config"
cp "$obj/System.map" "$out_dir/System.map"
chmod 0644 "$tmp"
mv -f "$tmp" "$out"
log "installed $(du -h "$out" | cut -f1) vmlinux"
if [[ "${UVM_KEEP_KERNEL_BUILD:-}" != 1 ]]; then rm -rf "$obj"; fi
echo "$out"
