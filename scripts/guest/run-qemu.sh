#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Starts one test guest under QEMU (TCG) in the background, with one
# virtio-net device on a vhost-user socket, and returns at once.
#
# Usage: scripts/guest/run-qemu.sh --socket PATH --role server|client \
#          --mac MAC --serial LOGFILE --pidfile PIDFILE \
#          [--append "vpmd.ip=198.18.0.1/24 vpmd.peer=198.18.0.2 ..."] \
#          [--host-mtu N] [--guest-dir DIR] [--mem 256M] [--smp N] [--queues N] \
#          [--monitor PATH] [--incoming URI] [--device-props PROPS]
#
#   --role server  the backend (vpmd) listens on PATH; QEMU connects to it.
#   --role client  the backend connects; QEMU listens on PATH (it removes a
#                  stale socket file first). QEMU waits for the backend before
#                  it starts the guest.
#   --host-mtu N   sets the device's host_mtu: QEMU then offers VIRTIO_NET_F_MTU
#                  (if the backend offers it too) and the guest driver takes N
#                  as its MTU and maximum MTU. Needed for MTU > 1500.
#   --guest-dir    where vmlinuz/initramfs.gz are (built there if missing or
#                  stale); default <repo>/target/guest.
#   --smp N        vCPUs (default 1).
#   --queues N     queue pairs of the netdev (queues=N, mq=on; default 1).
#   --monitor PATH QEMU's human monitor on a unix socket at PATH (server, no
#                  wait; reconnectable, e.g. `echo 'info status' | socat - UNIX-CONNECT:PATH`)
#                  instead of none.
#   --incoming URI start as a migration destination (-incoming URI, e.g.
#                  unix:/tmp/mig.sock): the guest runs once a source has migrated
#                  into it, and its console continues in this QEMU's LOGFILE. Give
#                  it the same options as the source (mac, mem, append, props).
#   --device-props PROPS  more virtio-net-pci properties, appended to -device
#                  (e.g. guest_announce=off).
# The serial console and QEMU's own messages both go to LOGFILE.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

SOCKET="" ROLE="" MAC="" SERIAL="" PIDFILE="" APPEND="" HOST_MTU="" MEM=256M SMP=1 QUEUES=1
MONITOR="" INCOMING="" DEVICE_PROPS=""
GUEST_DIR=$REPO/target/guest
while [[ $# -gt 0 ]]; do
  case $1 in
    --socket)    SOCKET=$2; shift 2 ;;
    --role)      ROLE=$2; shift 2 ;;
    --mac)       MAC=$2; shift 2 ;;
    --serial)    SERIAL=$2; shift 2 ;;
    --pidfile)   PIDFILE=$2; shift 2 ;;
    --append)    APPEND=$2; shift 2 ;;
    --host-mtu)  HOST_MTU=$2; shift 2 ;;
    --guest-dir) GUEST_DIR=$2; shift 2 ;;
    --mem)       MEM=$2; shift 2 ;;
    --smp)       SMP=$2; shift 2 ;;
    --queues)    QUEUES=$2; shift 2 ;;
    --monitor)   MONITOR=$2; shift 2 ;;
    --incoming)  INCOMING=$2; shift 2 ;;
    --device-props) DEVICE_PROPS=$2; shift 2 ;;
    -h|--help)   sed -n '2,33p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "run-qemu.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
for v in SOCKET ROLE MAC SERIAL PIDFILE; do
  [[ -n ${!v} ]] || { echo "run-qemu.sh: --${v,,} is required" >&2; exit 2; }
done

case $ROLE in
  server) CHARDEV="socket,id=c0,path=$SOCKET" ;;
  client) CHARDEV="socket,id=c0,path=$SOCKET,server=on,wait=off" ;;
  *) echo "run-qemu.sh: --role must be server or client" >&2; exit 2 ;;
esac

"$HERE/build-initramfs.sh" "$GUEST_DIR" >/dev/null

# romfile=: no iPXE option ROM, the guest boots from -kernel anyway (faster).
DEVICE="virtio-net-pci,netdev=n0,mac=$MAC,romfile="
# vectors=0 (no MSI-X): QEMU 7.2 under TCG crashes in msix_set_vector_notifiers
# when the guest starts a vhost-user virtio-net device that has MSI-X.
DEVICE+=",vectors=0"
[[ -n $HOST_MTU ]] && DEVICE+=",host_mtu=$HOST_MTU"
NETDEV="vhost-user,id=n0,chardev=c0"
if ((QUEUES > 1)); then
  NETDEV+=",queues=$QUEUES"
  DEVICE+=",mq=on"
fi
[[ -n $DEVICE_PROPS ]] && DEVICE+=",$DEVICE_PROPS"

MONITOR_ARG=none
[[ -n $MONITOR ]] && MONITOR_ARG="unix:$MONITOR,server=on,wait=off"
EXTRA=()
[[ -n $INCOMING ]] && EXTRA+=(-incoming "$INCOMING")

# ipv6.disable=1: no router solicitations/MLD reports to disturb the counters.
# panic=1 + -no-reboot: if /init dies, QEMU exits instead of hanging.
CMDLINE="console=ttyS0 quiet ipv6.disable=1 panic=1 $APPEND"

# vhost-user needs guest RAM the backend can map: a shared memfd backend.
qemu-system-x86_64 \
  -machine q35,accel=tcg -smp "$SMP" -m "$MEM" \
  -object "memory-backend-memfd,id=mem,size=$MEM,share=on" -numa node,memdev=mem \
  -chardev "$CHARDEV" \
  -netdev "$NETDEV" \
  -device "$DEVICE" \
  -nographic -no-reboot -nodefaults -serial stdio -monitor "$MONITOR_ARG" \
  -kernel "$GUEST_DIR/vmlinuz" -initrd "$GUEST_DIR/initramfs.gz" \
  -append "$CMDLINE" "${EXTRA[@]}" \
  </dev/null >"$SERIAL" 2>&1 &
echo $! >"$PIDFILE"
