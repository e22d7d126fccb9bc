#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# System test: `vpmd-bench ring-loop --tso` briefly against vpmd (a veth pair of
# two server ports, [pmd] cores = [1]), once per receiver variant: port B with
# GUEST_TSO4 + GUEST_CSUM (vpmd passes the 64 KiB frames whole), into one RX
# buffer each and into 4 KiB mergeable buffers (16 per frame), with GUEST_CSUM
# only and with neither (vpmd segments them). Counts only, no timing:
#   - frames arrived, the sampled checks found nothing wrong (whole frames as
#     sent; segments valid TCP segments at MSS boundaries with right lengths,
#     sequence numbers, payload and checksums), the drain went quiet;
#   - what the frontend saw adds up with vpmd's counters: taken from A = vm0
#     tx_packets, received on B (RX buffers) = vm1 rx_packets x buffers per
#     frame, B sent nothing; passed whole: vm0 tso_passed = vm1 rx_packets and
#     vm0's drops = taken - vm1 rx_packets; segmented:
#     vm0 sw_segmented + vm0's drops = taken (vpmd drops whole frames when B's RX
#     ring is full), vm1 rx_packets <= vm0 sw_segments, and the frontend's drop
#     count (in RX buffers) = taken x buffers per frame - received.
# About 10 s.
#
# Usage (from the repo root): bash tests/system/bench_tso_smoke.sh
# Environment: VPMD, VPMD_BENCH (binaries, default target/release/...), KEEP_WORK=1.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

check_bench_prereqs
SIZE=64294 MSS=1460 SEGS=44
write_config "$WORK/vpmd.toml" server 1500 "$WORK"
start_vpmd "$WORK/vpmd.toml"

# jfield FILE JQ_EXPR: a field of a JSON report, which must be there.
jfield() {
  local v
  v=$(jq -r "$2" "$1") || fail "bad JSON in $1"
  [[ -n $v && $v != null ]] || fail "no $2 in $1: $(head -c 400 "$1")"
  echo "$v"
}

# delta BEFORE AFTER PORT JQ_EXPR: how far a port's counter moved.
delta() {
  local a b
  a=$(port_stat "$1" "$3" "$4") b=$(port_stat "$2" "$3" "$4")
  [[ $a =~ ^[0-9]+$ && $b =~ ^[0-9]+$ ]] || fail "vpmd stats: no numeric $4 for port $3"
  echo $((b - a))
}

for v in tso tso-mrg csum none; do
  rx=${v%-mrg} per=1 extra=()
  [[ $rx == tso ]] || per=$SEGS
  [[ $v == tso-mrg ]] && per=16 extra=(--rx-buf 4096)
  out=$WORK/ring_loop_$v.json
  before=$(vpmd_stats_json) || fail "vpmd stats failed"
  "$BENCH" --json ring-loop "$WORK/vm0.sock" "$WORK/vm1.sock" --size $SIZE --tso $MSS \
    --rx-offloads "$rx" "${extra[@]}" --duration 1 --warmup 0.2 --check-every 64 --core 0 \
    >"$out" 2>"$WORK/ring_loop_$v.log" || fail "ring-loop $v failed: $(cat "$WORK/ring_loop_$v.log")"
  received=$(jfield "$out" '.totals[0].received')
  taken=$(jfield "$out" '.totals[0].taken')
  drops=$(jfield "$out" '.totals[0].backend_drops')
  ((received > 0)) || fail "$v: nothing received: $(cat "$out")"
  jq -e --arg rx "$rx" --argjson segs $SEGS --argjson per $per '.interrupted == false and .drained and
    .checks.rx_bad == 0 and .checks.tx_out_of_order == 0 and .checks.rx_sampled > 0 and
    .checks.rx_offload_completed == 0 and .tso.segments_per_frame == $segs and
    .tso.segmented == ($rx != "tso") and .tso.rx_entries_per_frame == $per and
    .totals[1].taken == 0 and .totals[1].received == 0' \
    "$out" >/dev/null || fail "$v: report wrong: $(jq -c '{drained, interrupted, checks, tso, totals}' "$out")"
  ((drops == taken * per - received)) || fail "$v: drops $drops != $taken x $per - $received"
  # vpmd's counters may lag a moment behind what the frontend saw.
  for ((i = 0; i < 20; i++)); do
    after=$(vpmd_stats_json) || fail "vpmd stats failed"
    v_tx=$(delta "$before" "$after" vm0 .tx_packets)
    v_rx=$(delta "$before" "$after" vm1 .rx_packets)
    v_drops=$(delta "$before" "$after" vm0 '[.drops[]] | add')
    v_back=$(($(delta "$before" "$after" vm1 .tx_packets) + $(delta "$before" "$after" vm0 .rx_packets)))
    v_passed=$(delta "$before" "$after" vm0 .offloads.tso_passed)
    v_seg=$(delta "$before" "$after" vm0 .offloads.sw_segmented)
    v_segs=$(delta "$before" "$after" vm0 .offloads.sw_segments)
    bad=""
    buffers=$v_rx
    [[ $rx == tso ]] && buffers=$((v_rx * per))
    [[ $v_tx == "$taken" && $buffers == "$received" && $v_back == 0 ]] ||
      bad="taken $taken / vm0 tx $v_tx, received $received / vm1 rx $v_rx (buffers $buffers), b -> a $v_back"
    if [[ $rx == tso ]]; then
      [[ $v_passed == "$v_rx" && $v_drops == $((taken - v_rx)) && $v_seg == 0 ]] ||
        bad+="; tso_passed $v_passed, vm0 drops $v_drops, sw_segmented $v_seg"
    else
      [[ $((v_seg + v_drops)) == "$taken" && $v_passed == 0 ]] && ((v_segs >= v_rx)) ||
        bad+="; sw_segmented $v_seg + vm0 drops $v_drops != taken $taken, or sw_segments $v_segs < vm1 rx $v_rx, or tso_passed $v_passed"
    fi
    [[ -z $bad ]] && break
    sleep 0.2
  done
  [[ -z $bad ]] || fail "$v: ring-loop counts differ from vpmd's: $bad"
  log "$v: $(jq -c '{payload_gbps: .tso.payload_gbps, segments_mpps: .tso.segments_mpps, received: .totals[0].received, backend_drops: .totals[0].backend_drops, rx_sampled: .checks.rx_sampled}' "$out"); counts agree with vpmd's"
done
pass "TSO frames passed whole and segmented, checked and counted"
