#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Makes sure DPDK (testpmd, OVS-DPDK) has 2 MiB hugepages to run with.
# Idempotent: safe to run before every test or benchmark.
#
# Usage: scripts/hugepages.sh [NR_PAGES] [FILE_PREFIX...]
#   NR_PAGES     minimum number of 2 MiB hugepages to reserve (default 1024,
#                or $HUGEPAGES). An existing larger reservation is kept.
#   FILE_PREFIX  DPDK --file-prefix values whose stale map files to remove
#                (e.g. vpmdtest vpmdback). None given: nothing is removed.
#
# Why the cleanup: with --single-file-segments DPDK keeps its memory in
# /dev/hugepages/<file-prefix>map_<N> files and does not delete them when the
# process exits. They hold their hugepages until removed, so after a few runs
# the pool is empty and EAL fails to allocate memory. A map file is only
# removed when no running process has it open (a live DPDK process with the
# same prefix keeps its memory).
# Must run as root.
set -euo pipefail

HUGEDIR=/dev/hugepages
NR=${1:-${HUGEPAGES:-1024}}
shift || true
SYSFS=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages

if [[ ! $NR =~ ^[0-9]+$ ]]; then
  echo "hugepages.sh: NR_PAGES must be a number, got '$NR'" >&2
  exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "hugepages.sh: must run as root" >&2
  exit 1
fi

# 1. Mount hugetlbfs (2 MiB pages) if nothing is mounted at /dev/hugepages.
mkdir -p "$HUGEDIR"
if ! findmnt -n -t hugetlbfs "$HUGEDIR" >/dev/null 2>&1; then
  mount -t hugetlbfs -o pagesize=2M nodev "$HUGEDIR"
fi

# 2. Remove stale map files of the given prefixes (before counting free pages,
#    since they are what usually eats the pool).
for prefix in "$@"; do
  [[ -n $prefix && $prefix != */* ]] || { echo "hugepages.sh: bad prefix '$prefix'" >&2; exit 2; }
  for f in "$HUGEDIR/${prefix}map_"*; do
    [[ -e $f ]] || continue
    # fuser exits 0 when some process has the file open or mapped; without
    # fuser (psmisc missing) fall back to scanning /proc/*/maps.
    if command -v fuser >/dev/null 2>&1; then
      fuser -s "$f" 2>/dev/null && continue
    elif grep -qsF "$f" /proc/[0-9]*/maps; then
      continue
    fi
    rm -f "$f"
  done
done

# 3. Reserve at least NR pages. Only grow, never shrink: another DPDK user may
#    rely on a bigger pool. The kernel may grant fewer than asked (fragmented
#    memory), so read back and check.
cur=$(cat "$SYSFS")
if (( cur < NR )); then
  echo "$NR" > "$SYSFS"
  cur=$(cat "$SYSFS")
  if (( cur < NR )); then
    echo "hugepages.sh: asked for $NR hugepages, kernel gave $cur" >&2
    exit 1
  fi
fi

free=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages)
echo "hugepages.sh: $cur x 2 MiB hugepages reserved, $free free, hugetlbfs on $HUGEDIR"
