#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# System test: a real Linux guest (QEMU/TCG, -smp 2) with 2 queue pairs on a vpmd
# macvlan whose uplink (a veth into a namespace) has 2 queues, so 2 AF_XDP sockets
# on 2 polling threads.
#
#   guest (198.18.24.1, vm0: queues = 2) == macvlan (queues = 2) == uplink veth
#     (2 queues) -- namespace (198.18.24.254)
#
# The guest runs 16 parallel iperf3 streams to the namespace and back, XPS cleared
# so that both kernels spread flows over their TX queues by hash. Checks: the guest
# uses 2 queue pairs; both runs moved data; both of vm0's queue pairs carried frames
# both ways (frames from the uplink reach the VM's queues by flow hash; its TX
# queues are polled by the two shards); the queues add up to the port's counts;
# tx_packets = forwarded + drops on vm0 and the uplink, no drops but no_rx_buffer,
# uplink_busy and peer_down.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
check_prereqs
require_guest_iperf

IPERF_TIME=4
MIN_BYTES=$((1 << 20))
IN_FLIGHT=$((32 << 20))
NS=vpmd-mq-$$
UP=vpmdmq$$
OUT=out0
NET=198.18.24

add_netns "$NS"
add_veth "$UP" "$NS" "$OUT" 2
ip link set "$UP" up
ip -n "$NS" addr add "$NET.254/24" dev "$OUT"
ip -n "$NS" link set "$OUT" up
for f in /sys/class/net/"$UP"/queues/tx-*/xps_cpus; do echo 0 >"$f" 2>/dev/null || true; done
ip netns exec "$NS" sh -c "for f in /sys/class/net/$OUT/queues/tx-*/xps_cpus; do echo 0 > \$f 2>/dev/null; done; true"
ip netns exec "$NS" iperf3 -s >"$WORK/iperf3-server.log" 2>&1 &
register_pid $! iperf3

mkdir -p "$WORK/sock"
vpmd_macvlan_config "0, 1" "$CONTROL" "$UP" "$WORK/sock" vm0=52:54:00:00:24:01 |
  sed -e '/^mac = /a queues = 2' -e '/^uplink = /a queues = 2' >"$WORK/vpmd.toml"
start_vpmd "$WORK/vpmd.toml"

field() { sed -nE "s/.*[ ]$2=([^ ]*).*/\\1/p" <<<"$1"; }
queue() { port_stat "$1" "$2" ".queues[] | select(.queue == $3) | .$4"; }

start_guest g "$WORK/sock/vm0.sock" server 52:54:00:00:24:01 "" \
  "vpmd.ip=$NET.1/24 vpmd.peer=$NET.254 vpmd.count=3 vpmd.size=56 vpmd.xps=off vpmd.iperf=$NET.254 vpmd.iperf_time=$IPERF_TIME vpmd.iperf_parallel=16 vpmd.iperf_reverse=both" \
  --smp 2 --queues 2
wait_guest g '^VPMD-QUEUES' 120
grep -aq '^VPMD-QUEUES combined=2 max=2' "$WORK/g.log" ||
  fail "the guest does not use 2 queue pairs: $(grep -a '^VPMD-QUEUES' "$WORK/g.log" | tr -d '\r')"
assert_ping g 56 3
for r in 0 1; do
  wait_guest g "^VPMD-IPERF .*reverse=$r " 120
  line=$(grep -a "^VPMD-IPERF .*reverse=$r " "$WORK/g.log" | tail -n 1 | tr -d '\r')
  [[ $line != *error=* ]] || fail "iperf3 reverse=$r failed: $line"
  sent=$(field "$line" sent_bytes) got=$(field "$line" received_bytes)
  ((got >= MIN_BYTES && got <= sent && sent - got <= IN_FLIGHT)) ||
    fail "iperf3 reverse=$r: sent $sent, received $got ($line)"
  log "reverse=$r: $(awk -v b="$(field "$line" bits_per_second)" 'BEGIN { printf "%.0f", b / 1e6 }') Mbit/s, sent $sent received $got"
done
json=$(vpmd_stats_json)
for q in 0 1; do
  for f in tx_packets rx_packets; do
    v=$(queue "$json" vm0 "$q" "$f")
    ((v > 0)) || fail "vm0 queue pair $q: $f is $v after 16 streams each way"
  done
  log "vm0 q$q: core $(queue "$json" vm0 "$q" core), tx $(queue "$json" vm0 "$q" tx_packets), rx $(queue "$json" vm0 "$q" rx_packets)"
done
[[ $(port_stat "$json" vm0 '[.queues[].core] | join(",")') == "0,1" ]] ||
  fail "vm0's queue pairs are not polled by the two shards' threads (cores 0, 1): $(port_stat "$json" vm0 '[.queues[].core]' | tr -d ' \n')"
[[ $(port_stat "$json" "$UP" '.uplink.ports | join(",")') == vm0 ]] || fail "the uplink does not list vm0"
port_stat "$json" vm0 '([.queues[].tx_packets] | add) == .tx_packets and ([.queues[].rx_packets] | add) == .rx_packets and ([.queues[].tx_dropped] | add) == ([.drops[]] | add)' |
  grep -qx true || fail "vm0: per-queue counts do not add up: $(port_stat "$json" vm0 '{tx_packets, rx_packets, queues}' | tr -d ' \n')"
for p in vm0 "$UP"; do
  port_stat "$json" "$p" '.tx_packets == .forwarded + ([.drops[]] | add)' | grep -qx true ||
    fail "$p: tx_packets != forwarded + drops"
  v=$(port_stat "$json" "$p" '[.drops | to_entries[] | select(.key != "no_rx_buffer" and .key != "uplink_busy" and .key != "peer_down") | .value] | add')
  ((v == 0)) || fail "$p dropped $v frames for other reasons than a full queue"
done
PMD_VIEW=$("$VPMD" pmd --control "$CONTROL")
log "vpmd pmd:"$'\n'"$PMD_VIEW"
grep -Eq "port: vm0 +queue-id: +1 +to: $UP " <<<"$PMD_VIEW" || fail "vpmd pmd does not list vm0's queue pair 1 under its shard"
stop_pid "$(guest_pid g)" TERM 10
stop_vpmd
pass "a 2-queue guest on a 2-queue macvlan uplink: both queue pairs carry frames both ways, counts add up"
