#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# System test: `vpmd-bench ring-loop --queues 2` briefly against vpmd ports with
# `queues = 2` (a veth pair of two server ports, [pmd] cores = [1]), then
# `--queues 1` against the same ports. Counts only, no timing:
#   - --queues 2: both ports negotiated MQ with two pairs; frames were taken from
#     both TX queues and received on both RX queues of each port (vpmd's flow
#     hash spread the 64 flows per TX queue), the sampled checks found nothing
#     wrong, the drain went quiet; per queue, what the frontend counted equals
#     vpmd's per-queue counters (`vpmd stats --json` .ports[].queues[]: vm0's
#     TX queue q = frames taken from a's TX queue q, vm1's RX queue r = frames b
#     received on RX queue r, and the other way), and per port the queues add up
#     to the port's totals;
#   - --queues 1 on the same ports (pair 1 never started): everything goes over
#     pair 0, nothing is steered to RX queue 1;
#   - --queues 2 --enable-queues 1 (pair 1 set up, its rings filled, left
#     disabled, as after `ethtool -L combined 1`): nothing arrives on RX queue 1
#     of either port (the frontend watches it) and vpmd takes nothing from TX
#     queue 1.
# About 8 s.
#
# Usage (from the repo root): bash tests/system/bench_mq_smoke.sh
# Environment: VPMD, VPMD_BENCH (binaries, default target/release/...), KEEP_WORK=1.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

check_bench_prereqs
write_config "$WORK/vpmd.base.toml" server 1500 "$WORK"
sed '/^mtu = /a queues = 2' "$WORK/vpmd.base.toml" >"$WORK/vpmd.toml"
start_vpmd "$WORK/vpmd.toml"

# ring_loop NAME QUEUES [ARGS...]: a short ring-loop run, its JSON report in
# $WORK/NAME.json.
ring_loop() {
  "$BENCH" --json ring-loop "$WORK/vm0.sock" "$WORK/vm1.sock" --queues "$2" "${@:3}" --size 64 \
    --duration 1 --warmup 0.2 --check-every 64 --core 0 \
    >"$WORK/$1.json" 2>"$WORK/$1.log" || fail "ring-loop $1 failed: $(cat "$WORK/$1.log")"
  jq -e --argjson q "$2" '.interrupted == false and .drained and .queue_pairs == $q and
    .checks.rx_bad == 0 and .checks.tx_out_of_order == 0 and .checks.rx_sampled > 0 and
    all(.totals[]; (.taken_per_queue | length) == $q and (.received_per_queue | length) == $q and
      (.taken_per_queue | add) == .taken and (.received_per_queue | add) == .received and
      .received > 0)' "$WORK/$1.json" >/dev/null ||
    fail "$1: report wrong: $(jq -c '{queue_pairs, drained, interrupted, checks, totals}' "$WORK/$1.json")"
}

# queue_delta BEFORE AFTER PORT QUEUE FIELD: how far a queue's counter moved.
queue_delta() {
  local a b
  a=$(port_stat "$1" "$3" "[.queues[] | select(.queue == $4) | .$5] | first // 0")
  b=$(port_stat "$2" "$3" "[.queues[] | select(.queue == $4) | .$5] | first // 0")
  [[ $a =~ ^[0-9]+$ && $b =~ ^[0-9]+$ ]] || fail "vpmd stats: no numeric queues[$4].$5 for $3"
  echo $((b - a))
}

# wait_counts BEFORE REPORT QUEUES: vpmd's per-queue counters moved by exactly
# what REPORT counted (they may lag a moment behind the frontend); leaves the
# last stats in AFTER.
wait_counts() {
  local before=$1 report=$2 n=$3 i p from to q want got bad
  for ((i = 0; i < 20; i++)); do
    AFTER=$(vpmd_stats_json) || fail "vpmd stats failed"
    bad=""
    for p in 0 1; do
      from=vm$p to=vm$((1 - p))
      for ((q = 0; q < n; q++)); do
        want=$(jq -r ".totals[$p].taken_per_queue[$q]" "$report")
        got=$(queue_delta "$before" "$AFTER" "$from" "$q" tx_packets)
        [[ $got == "$want" ]] || bad+=" $from TX queue $q: vpmd $got, frontend $want;"
        want=$(jq -r ".totals[$p].received_per_queue[$q]" "$report")
        got=$(queue_delta "$before" "$AFTER" "$to" "$q" rx_packets)
        [[ $got == "$want" ]] || bad+=" $to RX queue $q: vpmd $got, frontend $want;"
      done
    done
    [[ -z $bad ]] && return 0
    sleep 0.2
  done
  fail "per-queue counts differ:$bad"
}

# --queues 2: every queue of both ports carries frames.
BEFORE=$(vpmd_stats_json) || fail "vpmd stats failed"
ring_loop mq 2
jq -e 'all(.totals[]; all(.taken_per_queue[]; . > 0) and all(.received_per_queue[]; . > 0))' \
  "$WORK/mq.json" >/dev/null ||
  fail "a queue carried nothing: $(jq -c '[.totals[] | {from, taken_per_queue, received_per_queue}]' "$WORK/mq.json")"
wait_counts "$BEFORE" "$WORK/mq.json" 2
for p in vm0 vm1; do
  [[ $(port_stat "$AFTER" "$p" '.queues | length') == 2 ]] ||
    fail "$p: not two queues in vpmd stats: $(port_stat "$AFTER" "$p" '.queues' | tr -d ' \n')"
  port_stat "$AFTER" "$p" '([.queues[].tx_packets] | add) == .tx_packets and
    ([.queues[].rx_packets] | add) == .rx_packets and ([.queues[].tx_dropped] | add) == ([.drops[]] | add)' |
    grep -qx true || fail "$p: per-queue counts do not add up to the port's: $(port_stat "$AFTER" "$p" '{tx_packets, rx_packets, drops, queues}' | tr -d ' \n')"
done

# --queues 1 on the same ports: pair 1 never starts, so nothing is steered to it.
BEFORE=$AFTER
ring_loop sq 1
wait_counts "$BEFORE" "$WORK/sq.json" 1
for p in vm0 vm1; do
  for f in tx_packets rx_packets; do
    d=$(queue_delta "$BEFORE" "$AFTER" "$p" 1 "$f")
    [[ $d == 0 ]] || fail "$p: queue 1 $f moved by $d with one pair running"
  done
done

# --queues 2 --enable-queues 1: pair 1 set up but disabled gets nothing, sends nothing.
BEFORE=$AFTER
ring_loop disabled 2 --enable-queues 1
jq -e '.enabled_pairs == 1 and all(.totals[]; .received_per_queue[1] == 0 and .received_per_queue[0] > 0)' \
  "$WORK/disabled.json" >/dev/null ||
  fail "frames on a disabled queue: $(jq -c '[.totals[] | {from, taken_per_queue, received_per_queue}]' "$WORK/disabled.json")"
wait_counts "$BEFORE" "$WORK/disabled.json" 2
for p in vm0 vm1; do
  for f in tx_packets rx_packets; do
    d=$(queue_delta "$BEFORE" "$AFTER" "$p" 1 "$f")
    [[ $d == 0 ]] || fail "$p: queue 1 $f moved by $d while pair 1 was disabled"
  done
done

pass "two queue pairs per port: both RX queues of each port received frames, per-queue counts match vpmd's and add up; one pair, or pair 1 disabled: nothing on queue 1"
