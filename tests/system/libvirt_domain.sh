#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# System test: two libvirt domains (real libvirtd from Debian, TCG) on a vpmd veth
# pair, built from the documented fragments in configs/libvirt/ and nothing else
# of the network: guest a with interface-vpmd-server.xml (vpmd listens, QEMU
# connects), guest b with interface-vpmd-client.xml (QEMU listens, vpmd
# connects), both with memory-backing.xml, MTU 9000. QEMU runs as libvirt's
# QEMU user (libvirt-qemu), vpmd as root with every capability dropped after
# start-up, so the socket ownership recipe of docs/libvirt.md is what lets them
# meet: vpmd's server socket is group libvirt-qemu, mode 0660; QEMU's socket
# directory is libvirt-qemu's and vpmd runs with libvirt-qemu as a supplementary
# group. Checks: both domains boot (virsh define + start), take MTU 9000 from
# vpmd, ping each other with 56- and 8972-byte pings (0% loss), and vpmd's
# counters agree with the guests'.
# libvirtd and virtlogd are started by the test (and stopped at its end) unless
# they already run; if they cannot start, the test fails with their logs.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
check_prereqs
for b in virsh libvirtd virtlogd setpriv; do
  command -v "$b" >/dev/null || fail "$b missing (run scripts/install-deps.sh)"
done
getent passwd libvirt-qemu >/dev/null || fail "no libvirt-qemu user (libvirt-daemon-system not installed)"
QEMU_GID=$(getent group libvirt-qemu | cut -d: -f3)
VIRSH=(virsh -q -c qemu:///system)
MTU=9000
COUNT=10
DOMAINS=()

# libvirt's QEMU user must reach the kernel, the initrd and the socket dirs.
chmod 0711 "$WORK"
mkdir -p "$WORK/guest" "$WORK/srv" "$WORK/qemu"
cp "$GUEST_DIR/vmlinuz" "$GUEST_DIR/initramfs.gz" "$WORK/guest/"
chmod 0755 "$WORK/guest" "$WORK/srv"
chown libvirt-qemu:libvirt-qemu "$WORK/qemu"
chmod 0770 "$WORK/qemu"

_lv_cleanup() {
  local d
  for d in "${DOMAINS[@]}"; do
    "${VIRSH[@]}" destroy "$d" >/dev/null 2>&1
    "${VIRSH[@]}" undefine "$d" >/dev/null 2>&1
  done
}
trap 'rc=$?; set +e; _lv_cleanup; (exit $rc); _cleanup' EXIT

# A daemon of libvirt's: started here (and stopped at exit) unless one runs.
start_daemon() {
  local name=$1 pidfile=/run/$1.pid
  if [[ -f $pidfile ]] && alive "$(cat "$pidfile")"; then
    log "$name already running (pid $(cat "$pidfile"))"
    return 0
  fi
  "$name" --daemon >"$WORK/$name.log" 2>&1 || return 1
  local i
  for ((i = 0; i < 50; i++)); do
    [[ -f $pidfile ]] && alive "$(cat "$pidfile")" && break
    sleep 0.1
  done
  [[ -f $pidfile ]] || return 1
  register_pid "$(cat "$pidfile")" "$name"
  log "$name started (pid $(cat "$pidfile"))"
}

start_daemon virtlogd || fail "virtlogd did not start"
start_daemon libvirtd || fail "libvirtd did not start"
for _ in $(seq 50); do "${VIRSH[@]}" version >/dev/null 2>&1 && break; sleep 0.2; done
"${VIRSH[@]}" version >/dev/null || fail "virsh cannot reach libvirtd"

cat >"$WORK/vpmd.toml" <<TOML
[pmd]
cores = [1]
control_socket = "$CONTROL"

[[port]]
name = "vm0"
socket = "$WORK/srv/vm0.sock"
mac = "52:54:00:00:00:01"
mtu = $MTU
socket_mode = "0660"
socket_group = "libvirt-qemu"

[[port]]
name = "vm1"
socket = "$WORK/qemu/vm1.sock"
mode = "client"
mac = "52:54:00:00:00:02"
mtu = $MTU

[[veth]]
ports = ["vm0", "vm1"]
TOML
# vpmd keeps no capability after start-up: it reaches QEMU's socket through
# the supplementary group (docs/libvirt.md), like systemd's SupplementaryGroups=.
mkdir -p "$WORK/bin"
printf '#!/bin/sh\nexec setpriv --groups 0,%s %q "$@"\n' "$QEMU_GID" "$VPMD" >"$WORK/bin/vpmd"
chmod 0755 "$WORK/bin/vpmd"
REAL_VPMD=$VPMD VPMD=$WORK/bin/vpmd
start_vpmd "$WORK/vpmd.toml"
VPMD=$REAL_VPMD
grep -q "privileges: kept none" "$VPMD_LOG" || fail "vpmd did not drop its capabilities"

# domain_xml NAME FRAGMENT SOCKET MAC IP PEER: a TCG domain around the
# documented fragments, with the socket path and MAC put in.
domain_xml() {
  local name=$1 fragment=$2 sock=$3 mac=$4 ip=$5 peer=$6 iface
  iface=$(sed -e "s#path='[^']*'#path='$sock'#" -e "s#address='[^']*'#address='$mac'#" \
    "$REPO/configs/libvirt/$fragment")
  cat <<XML
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$name</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
$(cat "$REPO/configs/libvirt/memory-backing.xml")
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$WORK/guest/vmlinuz</kernel>
    <initrd>$WORK/guest/initramfs.gz</initrd>
    <cmdline>console=ttyS0 quiet ipv6.disable=1 panic=1 vpmd.ip=$ip vpmd.peer=$peer vpmd.mtu=$MTU vpmd.count=$COUNT vpmd.size=56 vpmd.size2=$((MTU - 28)) vpmd.count2=5</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>$(command -v qemu-system-x86_64)</emulator>
$iface
    <serial type='file'><source path='$WORK/$name.log'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
$(sed -n '/<qemu:override>/,/<\/qemu:override>/p' "$REPO/configs/libvirt/mtu-override.xml" |
    sed "s/value='1500'/value='$MTU'/")
</domain>
XML
}

domain_xml a interface-vpmd-server.xml "$WORK/srv/vm0.sock" 52:54:00:00:00:01 198.18.0.1/24 198.18.0.2 >"$WORK/a.xml"
domain_xml b interface-vpmd-client.xml "$WORK/qemu/vm1.sock" 52:54:00:00:00:02 198.18.0.2/24 198.18.0.1 >"$WORK/b.xml"

# boot NAME: define and start the domain; leaves the QEMU pid in $WORK/NAME.pid.
boot() {
  local name=$1 user
  "${VIRSH[@]}" define "$WORK/$name.xml" >/dev/null || fail "virsh define $name failed"
  DOMAINS+=("$name")
  "${VIRSH[@]}" start "$name" >/dev/null || fail "virsh start $name failed"
  cp "/run/libvirt/qemu/$name.pid" "$WORK/$name.pid"
  user=$(ps -o user= -p "$(cat "$WORK/$name.pid")")
  [[ $user == libvirt-qemu ]] || fail "domain $name: QEMU runs as $user, not libvirt-qemu"
  log "domain $name running (qemu pid $(cat "$WORK/$name.pid"), user $user)"
}

boot a
boot b
for g in a b; do
  wait_guest "$g" '^VPMD-LINK' 120
  grep -aq "^VPMD-LINK mtu=$MTU " "$WORK/$g.log" ||
    fail "guest $g: eth0 MTU is not $MTU: $(grep -a '^VPMD-LINK' "$WORK/$g.log" | tr -d '\r')"
done
for g in a b; do
  assert_ping "$g" 56 "$COUNT"
  assert_ping "$g" $((MTU - 28)) 5
done
wait_port_state vm0 up 10 || fail "port vm0 not up"
wait_port_state vm1 up 10 || fail "port vm1 not up"
assert_counters_agree 60 a:vm0 b:vm1
assert_accounting vm0 vm1
assert_accounting vm1 vm0
for g in a b; do "${VIRSH[@]}" destroy "$g" >/dev/null; done
stop_vpmd
pass "libvirt domains from configs/libvirt/ on both socket roles, MTU $MTU, ping 0% loss, counters agree"
