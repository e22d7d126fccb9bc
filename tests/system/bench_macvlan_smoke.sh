#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# System test: the macvlan benchmark's pieces, briefly, against vpmd's macvlan.
#
#   vpmd-bench xdp-txonly (namespace, AF_XDP on out0) --veth--> uplink
#     --vpmd (macvlan bridge, 2 VM ports, [pmd] cores = [1])--> vpmd-bench rxonly x2
#
# The generator sends 100 kpps (a modest rate) for 2 s, in turn to the two VM
# MACs (weight 3 each) and two unknown MACs (weight 1 each). Checked:
#   - every frame for a VM MAC arrives at that VM's receiver, intact and in
#     order, and nothing else arrives there (no unknown-MAC frame, none of the
#     other VM's); a missing frame must be counted, by the kernel's AF_XDP
#     statistics or by vpmd (normally none is missing);
#   - every unknown-MAC frame reaches the host's stack (the uplink's rx
#     "otherhost" count, frames the host's IP stack saw for another MAC);
#   - vpmd's counters add up: on every port, uplink included, tx_packets =
#     forwarded + drops; the uplink brought in exactly the VM frames sent; each
#     VM port's rx_packets = what its receiver counted.
# About 15 s.
#
# Usage (from the repo root, as root): bash tests/system/bench_macvlan_smoke.sh
# Environment: VPMD, VPMD_BENCH (binaries, default target/release/...), KEEP_WORK=1.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

check_bench_prereqs

NS=vpmd-bms-$$
UP=vpmdbs$$               # vpmd's uplink (this namespace)
NSIF=out0                 # the generator's end (in $NS)
NS_MAC=02:00:00:00:32:fe
VM_MACS=(52:54:00:00:32:01 52:54:00:00:32:02)
UNKNOWN_MACS=(02:00:00:ff:32:01 02:00:00:ff:32:02)
RATE=100000 COUNT=200000

add_netns "$NS"
add_veth "$UP" "$NS" "$NSIF"
# No IPv6: its multicast chatter would reach the VMs through the group tap.
echo 1 >"/proc/sys/net/ipv6/conf/$UP/disable_ipv6"
ip netns exec "$NS" sh -c 'echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6'
ip link set "$UP" mtu 1504 up
ip -n "$NS" link set "$NSIF" mtu 1504 address "$NS_MAC" up

mkdir -p "$WORK/sock"
cat >"$WORK/vpmd.toml" <<EOF
[pmd]
cores = [1]
control_socket = "$CONTROL"
max_sleep_us = 50

[[port]]
name = "vm0"
socket = "$WORK/sock/vm0.sock"
mac = "${VM_MACS[0]}"

[[port]]
name = "vm1"
socket = "$WORK/sock/vm1.sock"
mac = "${VM_MACS[1]}"

[[macvlan]]
uplink = "$UP"
mode = "bridge"
ports = ["vm0", "vm1"]
EOF
start_vpmd "$WORK/vpmd.toml"

rx_pids=()
for i in 0 1; do
  start_bench "rx$i" rxonly "$WORK/sock/vm$i.sock" --dst-mac "${VM_MACS[i]}" --idle-timeout 2 --json
  rx_pids+=("$BENCH_PID")
done
for i in 0 1; do
  wait_for_log "$WORK/rx$i.log" "rxonly ready" 30 "${rx_pids[i]}" || fail "receiver $i did not start"
  wait_port_state "vm$i" up 10 || fail "port vm$i did not come up"
done

otherhost() { ip -s -s -j link show dev "$UP" | jq '.[0].stats64.rx.otherhost // 0'; }
host0=$(otherhost)
dsts="${VM_MACS[0]}*3,${VM_MACS[1]}*3,${UNKNOWN_MACS[0]},${UNKNOWN_MACS[1]}"
ip netns exec "$NS" "$BENCH" xdp-txonly --iface "$NSIF" --src-mac "$NS_MAC" --dst-mac "$dsts" \
  --rate "$RATE" --count "$COUNT" --json >"$WORK/gen.json" 2>"$WORK/gen.log" ||
  fail "xdp-txonly failed: $(tail -n 3 "$WORK/gen.log")"
log "generator: $(jq -c '{frames, mpps, bind_mode, destinations}' "$WORK/gen.json")"
[[ $(jq .frames "$WORK/gen.json") == "$COUNT" && $(jq .completed "$WORK/gen.json") == "$COUNT" ]] ||
  fail "generator did not send all $COUNT frames: $(cat "$WORK/gen.json")"
sent() { jq --arg m "$1" '.destinations[] | select(.mac == $m) | .frames' "$WORK/gen.json"; }

for i in 0 1; do
  k=0
  while alive "${rx_pids[i]}" && ((k++ < 100)); do sleep 0.1; done
  stop_pid "${rx_pids[i]}" INT 5
  jq -e . "$WORK/rx$i.out" >/dev/null || fail "receiver $i: no report"
done

# Every VM frame at its own VM, intact and in order; nothing else there. A frame
# missing at a receiver must be one the kernel's AF_XDP path counted as dropped
# (XDP_STATISTICS, checked below with vpmd's counters): a short stall of the
# polling thread on a shared 2-core VM can overflow the socket's rings in copy
# mode before vpmd sees the frames. vpmd itself must lose nothing uncounted.
vm_total=0 arrived=0
for i in 0 1; do
  r=$WORK/rx$i.out want=$(sent "${VM_MACS[i]}")
  vm_total=$((vm_total + want))
  for f in corrupted reordered duplicates foreign other_dst; do
    [[ $(jq ".$f" "$r") == 0 ]] || fail "vm$i: $f = $(jq ".$f" "$r"): $(cat "$r")"
  done
  got=$(jq .frames "$r")
  [[ $(jq .intact "$r") == "$got" && $got -le $want && $got -gt 0 ]] ||
    fail "vm$i: $got of $want frames arrived, $(jq .intact "$r") intact: $(cat "$r")"
  [[ $(jq .last_seq "$r") -le $((want - 1)) ]] || fail "vm$i: last seq $(jq .last_seq "$r"), wanted at most $((want - 1))"
  arrived=$((arrived + got))
  log "vm$i: $got of $want frames for ${VM_MACS[i]} arrived intact and in order, nothing else"
done

# Every unknown-MAC frame at the host.
unknown=$(($(sent "${UNKNOWN_MACS[0]}") + $(sent "${UNKNOWN_MACS[1]}")))
host=$(($(otherhost) - host0))
[[ $host -ge $unknown ]] || fail "the host saw $host frames for other MACs, $unknown unknown-MAC frames were sent"
log "the host's stack got the $unknown unknown-MAC frames (uplink rx otherhost +$host)"

# vpmd's counters add up.
json=$(vpmd_stats_json) || fail "vpmd stats failed"
bad=$(jq -r '.ports[] | select(.tx_packets != .forwarded + ([.drops[]] | add))
             | "\(.name): tx=\(.tx_packets) forwarded=\(.forwarded) drops=\([.drops[]] | add)"' <<<"$json")
[[ -z $bad ]] || fail "counters do not add up: $bad"
kernel_drops=$(jq --arg up "$UP" '.ports[] | select(.name == $up) | .uplink.xsk_kernel
  | (.rx_dropped + .rx_ring_full)' <<<"$json")
[[ $kernel_drops =~ ^[0-9]+$ ]] || fail "no uplink.xsk_kernel in vpmd stats: $json"
[[ $(($(port_stat "$json" "$UP" .tx_packets) + kernel_drops)) == "$vm_total" ]] ||
  fail "uplink brought in $(port_stat "$json" "$UP" .tx_packets) frames and the kernel dropped $kernel_drops; $vm_total VM frames were sent"
uplink_drops=$(jq --arg up "$UP" '.ports[] | select(.name == $up) | [.drops[]] | add' <<<"$json")
[[ $((vm_total - arrived)) == $((kernel_drops + uplink_drops)) ]] ||
  fail "$((vm_total - arrived)) VM frames missing, but the kernel counted $kernel_drops and vpmd $uplink_drops"
if ((vm_total > arrived)); then
  log "NOTE: $((vm_total - arrived)) of $vm_total VM frames dropped and counted (kernel AF_XDP $kernel_drops, vpmd $uplink_drops)"
fi
for i in 0 1; do
  [[ $(port_stat "$json" "vm$i" .rx_packets) == $(jq .frames "$WORK/rx$i.out") ]] ||
    fail "vm$i: vpmd delivered $(port_stat "$json" "vm$i" .rx_packets), the receiver counted $(jq .frames "$WORK/rx$i.out")"
done
log "counters add up: $(jq -c '[.ports[] | {(.name): {tx: .tx_packets, fwd: .forwarded, rx: .rx_packets}}] | add' <<<"$json")"
stop_vpmd
! ip -d link show dev "$UP" | grep -q "prog/xdp" || fail "an XDP program is still attached to $UP"
pass "generator -> uplink -> VMs: $arrived of $vm_total VM frames delivered, every other one counted, $unknown unknown-MAC frames to the host only, counters exact"
