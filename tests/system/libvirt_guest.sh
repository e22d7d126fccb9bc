#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# A libvirt domain on a vpmd port (issue 14, docs/libvirt.md):
#
#   libvirt domain (QEMU/TCG, made from configs/libvirt/vpmd-vhostuser.xml)
#       ==vm0== vpmd (veth pair) ==vm1== plain QEMU guest
#
#  1. Debian's libvirtd: the one running, or one this test starts by hand with
#     virtlogd (and stops both). The domain XML is the documented file with only what a test
#     machine needs changed (python3 ElementTree): TCG instead of KVM, the test
#     kernel and initramfs instead of the disk, the serial console to a file, the
#     socket path under the test's directory, and the vectors=0 override that
#     QEMU 7.2 under TCG needs. Memory backing, interface type, role, MAC and MTU
#     are the file's.
#  2. vpmd gives vm0's socket to libvirt's QEMU user (socket_owner = libvirt-qemu,
#     mode 0600), as docs/libvirt.md says; virsh defines and starts the domain,
#     and QEMU (running as libvirt-qemu) connects: the port comes up.
#  3. At MTU 9000 (ports, the override the file shows, the peer's host_mtu) the
#     domain's eth0 has MTU 9000, it pings the guest on vm1 (which only answers)
#     with 56- and 8972-byte pings, 0% loss, and vpmd's accounting is exact.
#  If libvirtd cannot run a domain here, the test says why and falls back to
#  `virsh domxml-to-native qemu-argv`, booting exactly that command line if it has
#  a vhost-user netdev (libvirt 9.0's has not: it writes a tap netdev; then the
#  test fails saying so).
#
# Usage (from the repo root, as root): bash tests/system/libvirt_guest.sh
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
check_prereqs
[[ $(id -u) -eq 0 ]] || fail "run as root (libvirtd, socket owners)"
for b in virsh libvirtd python3; do
  command -v $b >/dev/null || fail "$b missing (run scripts/install-deps.sh: libvirt-daemon-system)"
done
QEMU_USER=libvirt-qemu
id "$QEMU_USER" >/dev/null 2>&1 || fail "no user $QEMU_USER (libvirt-daemon-system)"
VIRSH=(virsh -q -c qemu:///system)
DOM=vpmd-test-$$
COUNT=10
JUMBO=5
MTU=9000

# libvirt's QEMU must reach the sockets, the kernel, the initramfs and the log.
chmod 0755 "$WORK"
mkdir -m 0755 "$WORK/run" "$WORK/boot"
cp "$GUEST_DIR/vmlinuz" "$GUEST_DIR/initramfs.gz" "$WORK/boot/"
chmod 0644 "$WORK/boot/"*

cat >"$WORK/vpmd.toml" <<TOML
[pmd]
cores = [1]
control_socket = "$CONTROL"

[[port]]
name = "vm0"
socket = "$WORK/run/vm0.sock"
mac = "52:54:00:00:00:01"
mtu = $MTU
socket_owner = "$QEMU_USER"
socket_mode = "0600"

[[port]]
name = "vm1"
socket = "$WORK/run/vm1.sock"
mac = "52:54:00:00:00:02"
mtu = $MTU

[[veth]]
ports = ["vm0", "vm1"]
TOML
start_vpmd "$WORK/vpmd.toml"
[[ $(stat -c '%U %a' "$WORK/run/vm0.sock") == "$QEMU_USER 600" ]] ||
  fail "vm0.sock is $(stat -c '%U %a' "$WORK/run/vm0.sock"), want $QEMU_USER 600"

# ------------------------------------------------------------ 1. libvirtd
# start_daemon NAME ARGS...: NAME -d (pid file in $WORK), registered for cleanup.
start_daemon() {
  local name=$1 pid i
  shift
  "$name" -d -p "$WORK/$name.pid" "$@" >"$WORK/$name.log" 2>&1 || fail "$name did not start: $(cat "$WORK/$name.log")"
  for ((i = 0; i < 100; i++)); do [[ -s $WORK/$name.pid ]] && break; sleep 0.1; done
  pid=$(cat "$WORK/$name.pid" 2>/dev/null || true)
  [[ -n $pid ]] || fail "$name wrote no pid file"
  register_pid "$pid" "$name"
  log "1: started $name (pid $pid)"
}
if "${VIRSH[@]}" version >/dev/null 2>&1; then
  log "1: using the libvirtd already running"
else
  # Without systemd nothing starts virtlogd, which libvirtd needs for a domain's
  # QEMU log; its socket is where libvirtd looks for it.
  [[ -S /run/libvirt/virtlogd-sock ]] || start_daemon virtlogd
  start_daemon libvirtd
  for ((i = 0; i < 100; i++)); do "${VIRSH[@]}" version >/dev/null 2>&1 && break; sleep 0.2; done
  "${VIRSH[@]}" version >/dev/null 2>&1 || fail "libvirtd does not answer: $(cat "$WORK/libvirtd.log")"
fi
log "1: $("${VIRSH[@]}" version | tr -s ' ' | tr '\n' ';')"

# The domain: the documented file, adapted to this machine only where it must be.
CMDLINE="console=ttyS0 quiet ipv6.disable=1 panic=1 vpmd.ip=198.18.0.1/24 vpmd.peer=198.18.0.2 vpmd.mtu=$MTU vpmd.count=$COUNT vpmd.size=56 vpmd.size2=$((MTU - 28)) vpmd.count2=$JUMBO"
: >"$WORK/dom.log"
chown "$QEMU_USER" "$WORK/dom.log"
python3 - "$REPO/configs/libvirt/vpmd-vhostuser.xml" "$WORK/domain.xml" <<PY || fail "cannot adapt the domain XML"
import sys, xml.etree.ElementTree as ET
Q = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", Q)
tree = ET.parse(sys.argv[1]); d = tree.getroot()
d.set("type", "qemu")                       # TCG: no KVM on this machine
d.find("name").text = "$DOM"
d.find("memory").text = "256"
os_ = d.find("os")
for e in list(os_):
    if e.tag == "boot": os_.remove(e)
for tag, text in (("kernel", "$WORK/boot/vmlinuz"), ("initrd", "$WORK/boot/initramfs.gz"), ("cmdline", "$CMDLINE")):
    ET.SubElement(os_, tag).text = text
dev = d.find("devices")
for e in list(dev):
    if e.tag in ("disk", "serial", "console"): dev.remove(e)
serial = ET.SubElement(dev, "serial", type="file")
ET.SubElement(serial, "source", path="$WORK/dom.log")
src = dev.find("interface/source")
assert dev.find("interface").get("type") == "vhostuser" and src.get("mode") == "client"
src.set("path", "$WORK/run/vm0.sock")
assert d.find("memoryBacking/access").get("mode") == "shared"
assert dev.find("interface/alias").get("name") == "ua-vpmd0"
assert dev.find("interface/mtu") is None   # libvirt 9.0 cannot start it (docs/libvirt.md)
# The override the file shows (commented out) for MTU 9000, and vectors=0: QEMU 7.2
# under TCG crashes on vhost-user virtio-net with MSI-X (docs/libvirt.md).
ov = ET.SubElement(d, "{%s}override" % Q)
qd = ET.SubElement(ov, "{%s}device" % Q, alias="ua-vpmd0")
fe = ET.SubElement(qd, "{%s}frontend" % Q)
ET.SubElement(fe, "{%s}property" % Q, name="host_mtu", type="unsigned", value="$MTU")
ET.SubElement(fe, "{%s}property" % Q, name="vectors", type="unsigned", value="0")
ET.SubElement(fe, "{%s}property" % Q, name="romfile", type="string", value="")
tree.write(sys.argv[2])
PY
log "1: domain XML: $WORK/domain.xml ($(wc -c <"$WORK/domain.xml") bytes)"

# ------------------------------------------------------------ 2. define, start
undefine() {
  "${VIRSH[@]}" destroy "$DOM" >/dev/null 2>&1 || true
  "${VIRSH[@]}" undefine "$DOM" >/dev/null 2>&1 || true
}
# Keep the exit status for _cleanup (it keeps the logs of a failed run).
trap 'rc=$?; set +e; undefine; (exit $rc); _cleanup' EXIT
"${VIRSH[@]}" define "$WORK/domain.xml" >"$WORK/define.log" 2>&1 || fail "virsh define failed: $(cat "$WORK/define.log")"
VIA=libvirt
if ! "${VIRSH[@]}" start "$DOM" >"$WORK/start.log" 2>&1; then
  log "2: libvirtd cannot start the domain here: $(tr '\n' ' ' <"$WORK/start.log")"
  log "2: falling back to virsh domxml-to-native qemu-argv and booting that command line"
  "${VIRSH[@]}" domxml-to-native qemu-argv --domain "$DOM" >"$WORK/qemu-argv.sh" 2>"$WORK/argv.log" ||
    fail "domxml-to-native failed too: $(cat "$WORK/argv.log")"
  # libvirt 9.0 writes the vhostuser interface as a tap netdev there: say so.
  grep -q 'vhost-user' "$WORK/qemu-argv.sh" ||
    fail "libvirtd cannot start the domain ($(tr '\n' ' ' <"$WORK/start.log")), and the fallback's native command line has no vhost-user netdev (libvirt turns it into: $(grep -o -- "-netdev '[^']*'" "$WORK/qemu-argv.sh"))"
  setpriv --reuid="$QEMU_USER" --regid=kvm --clear-groups sh "$WORK/qemu-argv.sh" </dev/null >"$WORK/native.log" 2>&1 &
  register_pid $! qemu-system-x86
  VIA="virsh domxml-to-native"
fi
wait_port_state vm0 up 120 || fail "vm0 did not come up: domain log $(tail -n 5 "$WORK/dom.log" | tr -d '\r')"
log "2: domain $DOM started ($VIA); QEMU as $QEMU_USER connected to vm0: $(grep -a 'port vm0: rings started' "$VPMD_LOG" | sed 's/.*features/features/')"
if [[ $VIA == libvirt ]]; then
  "${VIRSH[@]}" dumpxml "$DOM" | grep -q "<interface type='vhostuser'>" || fail "the running domain has no vhostuser interface"
fi

# ------------------------------------------------------------ 3. ping the peer
# The peer only answers: on two cores shared with other TCG guests, two guests
# pinging at once time each other out; the domain's pings are the point here.
start_guest peer "$WORK/run/vm1.sock" server 52:54:00:00:00:02 "$MTU" \
  "vpmd.ip=198.18.0.2/24 vpmd.mtu=$MTU"
grep -aq "^VPMD-LINK mtu=$MTU " "$WORK/dom.log" ||
  { wait_for_log "$WORK/dom.log" "^VPMD-LINK" 120 && grep -aq "^VPMD-LINK mtu=$MTU " "$WORK/dom.log"; } ||
  fail "the domain's eth0 MTU is not $MTU: $(grep -a '^VPMD-LINK\|^VPMD-ERROR' "$WORK/dom.log" | tr -d '\r')"
for size in 56 $((MTU - 28)); do
  want=$COUNT; [[ $size == 56 ]] || want=$JUMBO
  wait_for_log "$WORK/dom.log" "^VPMD-RESULT ping size=$size " 240 || fail "the domain printed no ping result for size $size"
  read -r tx rx <<<"$(grep -a "^VPMD-RESULT ping size=$size " "$WORK/dom.log" | tail -n1 |
    sed -E 's/.*transmitted=([0-9]+) received=([0-9]+).*/\1 \2/')"
  [[ $tx == "$want" && $rx == "$want" ]] || fail "domain: ping -s $size transmitted=$tx received=$rx, want $want/$want"
  log "3: the libvirt domain pinged the peer guest with $size-byte pings: $rx/$tx replies"
done
grep -aq "^VPMD-LINK mtu=$MTU " "$WORK/peer.log" || fail "the peer's MTU is not $MTU"
sleep 4
json=$(vpmd_stats_json)
assert_port_accounting "$json" vm0 vm1
assert_port_accounting "$json" vm1 vm0
undefine
stop_pid "$(guest_pid peer)" TERM 10
stop_vpmd
pass "a domain from configs/libvirt/vpmd-vhostuser.xml ($VIA) on a vpmd port owned by $QEMU_USER pings its peer at MTU $MTU"
