#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Builds a tiny test guest: OUTDIR/vmlinuz (Debian's linux-image-amd64 kernel)
# and OUTDIR/initramfs.gz (busybox-static + the virtio-net modules + our /init,
# plus Debian's iperf3 and ethtool with the shared libraries they load, when
# they are installed: TCP throughput and offload state inside the guest).
# No disk image: the guest lives in RAM and reports over the serial console.
# Cached: does nothing when both outputs are newer than every input.
#
# Usage: scripts/guest/build-initramfs.sh OUTDIR
set -euo pipefail

OUTDIR=${1:?usage: build-initramfs.sh OUTDIR}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
INIT=$HERE/init
BUSYBOX=/bin/busybox

# virtio-net and its dependencies, in load order (modinfo shows no "depends"
# for them because they are loaded by hand; this order was measured to work).
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
         failover net_failover virtio_net)

# Newest /boot/vmlinuz-<ver> that has a matching /lib/modules/<ver>.
KVER=""
for k in $(for f in /boot/vmlinuz-*; do [[ -e $f ]] && echo "${f#/boot/vmlinuz-}"; done | sort -V -r); do
  if [[ -d /lib/modules/$k ]]; then KVER=$k; break; fi
done
if [[ -z $KVER ]]; then
  echo "build-initramfs.sh: no /boot/vmlinuz-* with /lib/modules/<ver>; install linux-image-amd64" >&2
  exit 1
fi
[[ -x $BUSYBOX ]] || { echo "build-initramfs.sh: $BUSYBOX missing; install busybox-static" >&2; exit 1; }

# Dynamically linked tools copied in with what `ldd` lists for them (the
# dynamic loader included), each at its own path. A missing tool is left out
# (the guest's /init then reports it when asked to use it); scripts/install-deps.sh
# installs both.
TOOLS=(/usr/bin/iperf3 /usr/sbin/ethtool)
TOOLFILES=()   # the tools present, then their libraries (symlinks as ldd names them)
for t in "${TOOLS[@]}"; do
  [[ -x $t ]] || { echo "build-initramfs.sh: $t missing, left out of the guest" >&2; continue; }
  TOOLFILES+=("$t")
  libs=$(ldd "$t" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }') ||
    { echo "build-initramfs.sh: ldd $t failed" >&2; exit 1; }
  for l in $libs; do
    [[ " ${TOOLFILES[*]} " == *" $l "* ]] || TOOLFILES+=("$l")
  done
done

# Locate each module file (.ko, or compressed .ko.xz/.ko.zst/.ko.gz).
MODFILES=()
for m in "${MODULES[@]}"; do
  f=$(find "/lib/modules/$KVER/kernel" -regextype posix-extended \
        -regex ".*/${m}\.ko(\.xz|\.zst|\.gz)?" -print -quit)
  [[ -n $f ]] || { echo "build-initramfs.sh: module $m not found for $KVER" >&2; exit 1; }
  MODFILES+=("$f")
done

mkdir -p "$OUTDIR"
OUT_K=$OUTDIR/vmlinuz
OUT_I=$OUTDIR/initramfs.gz

# Cache check: rebuild if an output is missing or any input is newer.
up_to_date() {
  [[ -f $OUT_K && -f $OUT_I ]] || return 1
  local in
  for in in "/boot/vmlinuz-$KVER" "$INIT" "${BASH_SOURCE[0]}" "$BUSYBOX" "${MODFILES[@]}" \
            "${TOOLFILES[@]}"; do
    [[ $in -nt $OUT_K || $in -nt $OUT_I ]] && return 1
  done
  # The set of tools counts too: one installed or removed since the last build.
  [[ "$(cat "$OUT_I.tools" 2>/dev/null)" == "${TOOLFILES[*]}" ]]
}
if up_to_date; then
  echo "build-initramfs.sh: $OUTDIR up to date (kernel $KVER)"
  exit 0
fi

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

mkdir -p "$STAGE"/{bin,sbin,dev,proc,sys,tmp,etc,lib/modules}
cp "$BUSYBOX" "$STAGE/bin/busybox"
ln -s busybox "$STAGE/bin/sh"   # /init's interpreter; the rest via busybox --install at boot

# Modules go in flat, with a list giving the load order. Compressed modules are
# decompressed here so the guest needs no decompressor (busybox insmod of a
# plain .ko always works).
: > "$STAGE/lib/modules/order"
for i in "${!MODULES[@]}"; do
  m=${MODULES[$i]}; f=${MODFILES[$i]}; dst=$STAGE/lib/modules/$m.ko
  case $f in
    *.ko.xz)  xz -dc "$f" > "$dst" ;;
    *.ko.zst) zstd -qdc "$f" > "$dst" ;;
    *.ko.gz)  gzip -dc "$f" > "$dst" ;;
    *)        cp "$f" "$dst" ;;
  esac
  echo "$m" >> "$STAGE/lib/modules/order"
done

install -m 0755 "$INIT" "$STAGE/init"

# The tools and their libraries at the paths ldd gave (-L: the files symlinks
# point to, under the names the loader looks for).
for f in "${TOOLFILES[@]}"; do
  mkdir -p "$STAGE$(dirname "$f")"
  cp -L "$f" "$STAGE$f"
done

# Minimal device nodes so the console works before devtmpfs is mounted.
mknod -m 600 "$STAGE/dev/console" c 5 1
mknod -m 666 "$STAGE/dev/null" c 1 3

# Write to temporaries and rename so a half-built output is never taken as cached.
(cd "$STAGE" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet | gzip -9) > "$OUT_I.tmp"
cp "/boot/vmlinuz-$KVER" "$OUT_K.tmp"
mv "$OUT_K.tmp" "$OUT_K"
mv "$OUT_I.tmp" "$OUT_I"
echo "${TOOLFILES[*]}" >"$OUT_I.tools"
echo "build-initramfs.sh: built $OUT_K and $OUT_I (kernel $KVER, $(stat -c %s "$OUT_I") bytes)"
