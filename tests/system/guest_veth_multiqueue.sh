#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# System test: two real Linux guests (QEMU/TCG, -smp 2) with 2 queue pairs each
# (`queues = 2`; QEMU queues=2, mq=on) on a vpmd veth pair polled by two threads.
#
# Guest b runs 16 parallel iperf3 TCP streams against guest a, both ways, with XPS
# cleared so that its kernel spreads flows over its TX queues by hash (a's kernel
# does the same for the reverse runs). Then b goes down to one queue pair
# (`ethtool -L eth0 combined 1`) and runs the same again; then b's QEMU is stopped
# and started again, and the runs repeat with both pairs; then b resets its driver
# (unbind, bind: the reboot path) and runs them once more.
#
# Checks: both guests see 2 queue pairs in use (ethtool -l); every run moves data
# (received >= 1 MB, within what TCP leaves in flight of what was sent); after the
# first runs every queue pair of both ports carried frames both ways (vpmd's
# per-queue counters), each TX queue on the thread it was given (two cores); after
# b went down to one pair its second pair carries nothing more either way while
# traffic goes on (frames are never steered to a disabled queue); after b's QEMU
# restarted, and again after its driver reset, both its pairs carry frames; per port, the queues' counts add up
# to the port's, tx_packets = forwarded + drops, and the only drops are
# no_rx_buffer (TCP's losses at a full ring) and peer_down (b's restart).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
check_prereqs
require_guest_iperf

IPERF_TIME=4
MIN_BYTES=$((1 << 20))
IN_FLIGHT=$((32 << 20))
NET=198.18.23

mkdir -p "$WORK/sock"
# vm0's queue pairs pinned the other way round from what round-robin would give
# (queue_cores, like OVS's pmd-rxq-affinity); vm1's dealt out automatically.
vpmd_veth_config "0, 1" "$CONTROL" "$WORK/sock/vm0.sock" "$WORK/sock/vm1.sock" server 1500 |
  sed '/^mtu = /a queues = 2' |
  sed '0,/^queues = 2$/s//queues = 2\nqueue_cores = [1, 0]/' >"$WORK/vpmd.toml"
start_vpmd "$WORK/vpmd.toml"
# A runtime port naming a core vpmd does not poll on is refused, naming the field.
if out=$("$VPMD" port add --control "$CONTROL" x --socket "$WORK/sock/x.sock" \
  --mac 52:54:00:00:00:09 --queues 2 --queue-cores 0,7 2>&1); then
  fail "a port with queue_cores naming core 7 was added: $out"
fi
[[ $out == *"port.queue_cores[1]"* ]] || fail "the refusal does not name port.queue_cores[1]: $out"

field() { sed -nE "s/.*[ ]$2=([^ ]*).*/\\1/p" <<<"$1"; }

# check_runs GUEST N: the guest's iperf3 runs number N and more, the last two (one
# each way) finished and moved data.
check_runs() {
  local g=$1 n=$2 lines line sent got
  wait_for_log_count "$g" '^VPMD-IPERF ' "$n"
  lines=$(grep -a '^VPMD-IPERF ' "$WORK/$g.log" | tr -d '\r' | head -n "$n" | tail -n 2)
  while read -r line; do
    [[ $line != *error=* ]] || fail "guest $g: iperf3 failed: $line"
    sent=$(field "$line" sent_bytes) got=$(field "$line" received_bytes)
    [[ $sent =~ ^[0-9]+$ && $got =~ ^[0-9]+$ ]] || fail "guest $g: unparsable: $line"
    ((got >= MIN_BYTES)) || fail "guest $g: stalled: $got bytes received of $sent ($line)"
    ((got <= sent && sent - got <= IN_FLIGHT)) || fail "guest $g: sent $sent, received $got"
    log "guest $g: reverse=$(field "$line" reverse): $(awk -v b="$(field "$line" bits_per_second)" \
      'BEGIN { printf "%.0f", b / 1e6 }') Mbit/s, sent $sent received $got"
  done <<<"$lines"
}

# wait_for_log_count GUEST PATTERN N: at least N lines of PATTERN in the guest's log.
wait_for_log_count() {
  local deadline=$((SECONDS + 120)) n
  while ((SECONDS < deadline)); do
    n=$(grep -ac "$2" "$WORK/$1.log" || true)
    ((n >= $3)) && return 0
    alive "$(guest_pid "$1")" || fail "guest $1 exited; $(tail -n 5 "$WORK/$1.log")"
    sleep 1
  done
  fail "guest $1: fewer than $3 lines '$2' after 120 s"
}

# queue JSON PORT PAIR FIELD: one per-queue figure.
queue() { port_stat "$1" "$2" ".queues[] | select(.queue == $3) | .$4"; }

# assert_queue_sums JSON: per port, the queues add up to the port's counts.
assert_queue_sums() {
  local p
  for p in vm0 vm1; do
    port_stat "$1" "$p" '([.queues[].tx_packets] | add) == .tx_packets and ([.queues[].rx_packets] | add) == .rx_packets and ([.queues[].tx_dropped] | add) == ([.drops[]] | add) and .tx_packets == .forwarded + ([.drops[]] | add)' |
      grep -qx true || fail "$p: per-queue counts do not add up: $(port_stat "$1" "$p" '{tx_packets, rx_packets, forwarded, queues}' | tr -d ' \n')"
  done
}

A_ARGS="vpmd.ip=$NET.1/24 vpmd.peer=$NET.2 vpmd.count=3 vpmd.size=56 vpmd.iperf_server=1 vpmd.xps=off"
B_ARGS="vpmd.ip=$NET.2/24 vpmd.peer=$NET.1 vpmd.count=3 vpmd.size=56 vpmd.xps=off vpmd.iperf=$NET.1 vpmd.iperf_time=$IPERF_TIME vpmd.iperf_parallel=16 vpmd.iperf_reverse=both"
MQ=(--smp 2 --queues 2)
start_guest a "$WORK/sock/vm0.sock" server 52:54:00:00:00:01 "" "$A_ARGS" "${MQ[@]}"
start_guest b "$WORK/sock/vm1.sock" server 52:54:00:00:00:02 "" "$B_ARGS vpmd.combined=1" "${MQ[@]}"
for g in a b; do
  wait_guest "$g" '^VPMD-LINK' 120
  wait_guest "$g" '^VPMD-QUEUES' 10
  grep -aq '^VPMD-QUEUES combined=2 max=2' "$WORK/$g.log" ||
    fail "guest $g does not use 2 queue pairs: $(grep -a '^VPMD-QUEUES' "$WORK/$g.log" | tr -d '\r')"
done
log "both guests use 2 queue pairs"
assert_ping b 56 3

# 1. Both pairs, both ports.
check_runs b 2
wait_guest b '^VPMD-COMBINED' 30
grep -aq '^VPMD-COMBINED n=1 rc=0' "$WORK/b.log" || fail "ethtool -L combined 1 failed in b"
S1=$(vpmd_stats_json)
for p in vm0 vm1; do
  for q in 0 1; do
    for f in tx_packets rx_packets; do
      v=$(queue "$S1" "$p" "$q" "$f")
      ((v > 0)) || fail "$p queue pair $q: $f is $v after 16 streams each way"
    done
    log "$p q$q: core $(queue "$S1" "$p" "$q" core), tx $(queue "$S1" "$p" "$q" tx_packets), rx $(queue "$S1" "$p" "$q" rx_packets)"
  done
  [[ $(port_stat "$S1" "$p" '[.queues[].core] | sort | join(",")') == "0,1" ]] ||
    fail "$p: its TX queues are not on the two threads: $(port_stat "$S1" "$p" '[.queues[].core]' | tr -d ' \n')"
done
[[ $(queue "$S1" vm0 0 core) == 1 && $(queue "$S1" vm0 1 core) == 0 ]] ||
  fail "vm0's queue_cores = [1, 0] not followed: q0 on $(queue "$S1" vm0 0 core), q1 on $(queue "$S1" vm0 1 core)"
PMD_VIEW=$("$VPMD" pmd --control "$CONTROL")
log "vpmd pmd:"$'\n'"$PMD_VIEW"
grep -Eq "port: vm0 +queue-id: +1 +to: vm1 " <<<"$PMD_VIEW" || fail "vpmd pmd does not list vm0's queue pair 1"
log "stats:"$'\n'"$("$VPMD" stats --control "$CONTROL" | sed -n '/queue pairs/,/^$/p')"

# 2. b down to one pair: its pair 1 is left alone both ways.
check_runs b 4
S2=$(vpmd_stats_json)
for f in tx_packets rx_packets; do
  [[ $(queue "$S2" vm1 1 "$f") == "$(queue "$S1" vm1 1 "$f")" ]] ||
    fail "vm1 pair 1 $f moved from $(queue "$S1" vm1 1 "$f") to $(queue "$S2" vm1 1 "$f") after b disabled it"
  (($(queue "$S2" vm1 0 "$f") > $(queue "$S1" vm1 0 "$f"))) || fail "vm1 pair 0 $f did not move"
done
log "b on one pair: vm1 q1 unchanged, q0 carried tx +$(($(queue "$S2" vm1 0 tx_packets) - $(queue "$S1" vm1 0 tx_packets))) rx +$(($(queue "$S2" vm1 0 rx_packets) - $(queue "$S1" vm1 0 rx_packets)))"
assert_queue_sums "$S2"

# 3. b's QEMU restarts: both pairs again.
stop_pid "$(guest_pid b)" TERM 10
wait_port_state vm1 down 10 || fail "vm1 did not go down after b's QEMU stopped"
start_guest b2 "$WORK/sock/vm1.sock" server 52:54:00:00:00:02 "" "$B_ARGS vpmd.rebind=1" "${MQ[@]}"
wait_guest b2 '^VPMD-QUEUES' 120
grep -aq '^VPMD-QUEUES combined=2 max=2' "$WORK/b2.log" ||
  fail "b after its restart does not use 2 queue pairs: $(grep -a '^VPMD-QUEUES' "$WORK/b2.log" | tr -d '\r')"
check_runs b2 2
S3=$(vpmd_stats_json)
for f in tx_packets rx_packets; do
  (($(queue "$S3" vm1 1 "$f") > $(queue "$S2" vm1 1 "$f"))) ||
    fail "vm1 pair 1 $f did not move after b's restart"
done
log "b restarted: vm1 q1 tx +$(($(queue "$S3" vm1 1 tx_packets) - $(queue "$S2" vm1 1 tx_packets))) rx +$(($(queue "$S3" vm1 1 rx_packets) - $(queue "$S2" vm1 1 rx_packets)))"
assert_queue_sums "$S3"

# 4. b's driver reset in the guest (unbind, bind: the device is stopped and set up
# again over the same connection, as on a reboot): both pairs again.
wait_guest b2 '^VPMD-REBIND' 60
grep -aq '^VPMD-REBIND ok' "$WORK/b2.log" || fail "rebinding virtio_net in b failed"
wait_for_log_count b2 '^VPMD-QUEUES combined=2 max=2' 2
check_runs b2 4
S4=$(vpmd_stats_json)
for q in 0 1; do
  for f in tx_packets rx_packets; do
    (($(queue "$S4" vm1 "$q" "$f") > $(queue "$S3" vm1 "$q" "$f"))) ||
      fail "vm1 pair $q $f did not move after b's driver reset"
  done
done
log "b's driver reset: vm1 q0 tx +$(($(queue "$S4" vm1 0 tx_packets) - $(queue "$S3" vm1 0 tx_packets))), q1 tx +$(($(queue "$S4" vm1 1 tx_packets) - $(queue "$S3" vm1 1 tx_packets)))"
assert_queue_sums "$S4"
assert_no_drops --allow no_rx_buffer --allow peer_down vm0 vm1
! grep -a '^VPMD-ERROR' "$WORK/a.log" "$WORK/b.log" "$WORK/b2.log" || fail "errors inside a guest"
stop_pid "$(guest_pid b2)" TERM 10
stop_pid "$(guest_pid a)" TERM 10
stop_vpmd
pass "2 queue pairs per guest on a veth pair: every pair carries traffic both ways, a disabled pair gets nothing, a restarted QEMU and a reset driver get both back"
