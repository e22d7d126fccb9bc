#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Installs the Debian packages the system tests need (QEMU guests, DPDK as a
# reference backend, helpers). Idempotent: does nothing when everything is
# already installed, and runs `apt-get update` only when something is missing.
# Must run as root on Debian 12.
set -euo pipefail

PACKAGES=(
  qemu-system-x86    # runs the test guests (TCG)
  linux-image-amd64  # guest kernel (/boot/vmlinuz-*) and its virtio-net modules
  busybox-static     # the guest's userland inside the initramfs
  iperf3             # TCP throughput between guests (copied into the initramfs)
  ethtool            # the guests' offload state (copied into the initramfs)
  cpio gzip          # to pack the initramfs
  iputils-ping       # ping on the host (debugging; migration_macvlan.sh)
  dpdk dpdk-dev      # dpdk-testpmd: reference vhost-user backend
  socat              # poking unix sockets (QEMU's monitor in migration_macvlan.sh)
  iproute2           # ip(8)
  jq                 # parsing `vpmd stats --json`
  systemd            # systemd-analyze verify configs/vpmd.service (systemd_notify.sh)
  python3            # the NOTIFY_SOCKET listener of systemd_notify.sh
  curl               # scraping the metrics endpoint (metrics.sh)
  prometheus         # promtool check metrics (metrics.sh)
  libvirt-daemon-system libvirt-clients  # libvirtd and virsh (libvirt_domain.sh)
)

if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps.sh: must run as root" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  # dpkg-query prints "install ok installed" only for fully installed packages.
  if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps.sh: all packages already installed"
  exit 0
fi

echo "install-deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
