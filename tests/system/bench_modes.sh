#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# System test: every vpmd-bench mode, run briefly against a real backend, with
# its report checked.
#
#   vpmd-bench ==vm0== vpmd (veth pair, [pmd] cores = [1]) ==vm1== vpmd-bench
#
#  1. txonly -> rxonly at a modest rate: rxonly counts exactly the frames sent,
#     no loss, reordering, duplicates or corruption; vpmd's counters agree.
#  2. txonly --corrupt-every N (1500-byte frames): rxonly reports exactly the
#     damaged frames as corrupted, and no loss.
#  3. loopback: nonzero rates both ways, and vpmd's counters moved.
#  3b. ring-loop (the backend alone): frames both ways, no bad samples, and what
#     it saw taken / received / dropped per direction equals vpmd's tx_packets,
#     rx_packets and drop counters (counts only, no timing).
#  4. latency: a histogram, with p50 <= p99 <= p99.9 <= max.
#  5. With DPDK present (dpdk-testpmd, root for hugepages): the vpmd-bench
#     driver against DPDK's net_vhost in testpmd, the reference backend
#     (cargo test --release -p vpmd-bench --test dpdk_testpmd -- --ignored). SKIP_DPDK=1
#     leaves it out.
#
# Usage (from the repo root): bash tests/system/bench_modes.sh
# Environment: VPMD, VPMD_BENCH (binaries, default target/release/...),
# KEEP_WORK=1 (keep logs).
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SOCK0=$WORK/vm0.sock
SOCK1=$WORK/vm1.sock
RATE=20000

check_bench_prereqs

write_config "$WORK/vpmd.toml" server 1500 "$WORK"
start_vpmd "$WORK/vpmd.toml"

# jfield FILE JQ_EXPR: a field of a JSON report, which must be there.
jfield() {
  local v
  v=$(jq -er "$2" "$1" 2>/dev/null) || fail "no $2 in $1: $(cat "$1" 2>/dev/null)"
  echo "$v"
}

# port_counter JSON PORT FIELD: a numeric port counter of vpmd's stats.
port_counter() {
  local v
  v=$(port_stat "$1" "$2" ".$3")
  [[ $v =~ ^[0-9]+$ ]] || fail "vpmd stats: no numeric $3 for port $2"
  echo "$v"
}

# register_exec PID: register_pid once PID has exec'ed (until then its name is
# still the shell's, and cleanup, which matches names, would spare it).
register_exec() {
  local i
  for ((i = 0; i < 100; i++)); do
    [[ "$(cat "/proc/$1/comm" 2>/dev/null)" == bash ]] || break
    sleep 0.02
  done
  register_pid "$1"
}

# tx_to_rx NAME COUNT TXONLY_ARGS...: rxonly on vm1 (waiting on its eventfd),
# then txonly on vm0; leaves $WORK/NAME.rx.json and $WORK/NAME.tx.json.
tx_to_rx() {
  local name=$1 count=$2 rx_pid i
  shift 2
  "$BENCH" --json rxonly "$SOCK1" --count "$count" --idle-timeout 5 --first-timeout 30 \
    >"$WORK/$name.rx.json" 2>"$WORK/$name.rx.log" &
  rx_pid=$!
  register_exec "$rx_pid"
  wait_for_log "$WORK/$name.rx.log" "rxonly ready" 30 "$rx_pid" || fail "$name: rxonly did not start"
  wait_port_state vm1 up 10 || fail "$name: vm1 not up after rxonly connected"
  "$BENCH" --json txonly "$SOCK0" --count "$count" --rate "$RATE" "$@" \
    >"$WORK/$name.tx.json" 2>"$WORK/$name.tx.log" || fail "$name: txonly failed: $(cat "$WORK/$name.tx.log")"
  for ((i = 0; i < 150; i++)); do
    alive "$rx_pid" || break
    sleep 0.1
  done
  alive "$rx_pid" && fail "$name: rxonly still running 15 s after txonly ended"
  wait "$rx_pid" || fail "$name: rxonly failed: $(cat "$WORK/$name.rx.log")"
  log "$name: txonly $(jq -c '{frames, mpps, corrupted, drained}' "$WORK/$name.tx.json")"
  log "$name: rxonly $(jq -c '{frames, intact, corrupted, lost, reordered, duplicates, foreign, stopped_by}' "$WORK/$name.rx.json")"
}

# ---------------------------------------------------------------- 1. exact counts

N=20000
before=$(vpmd_stats_json) || fail "vpmd stats failed"
tx_to_rx exact "$N" --flows 4
[[ $(jfield "$WORK/exact.tx.json" .frames) == "$N" ]] || fail "txonly sent $(jfield "$WORK/exact.tx.json" .frames), not $N"
[[ $(jfield "$WORK/exact.tx.json" .drained) == true ]] || fail "vpmd did not take every frame txonly sent"
for f in frames:$N intact:$N lost:0 reordered:0 duplicates:0 corrupted:0 foreign:0; do
  got=$(jfield "$WORK/exact.rx.json" ".${f%%:*}")
  [[ $got == "${f#*:}" ]] || fail "rxonly ${f%%:*} = $got, expected ${f#*:}"
done
after=$(vpmd_stats_json) || fail "vpmd stats failed"
d_tx=$(($(port_counter "$after" vm0 tx_packets) - $(port_counter "$before" vm0 tx_packets)))
d_rx=$(($(port_counter "$after" vm1 rx_packets) - $(port_counter "$before" vm1 rx_packets)))
[[ $d_tx == "$N" && $d_rx == "$N" ]] || fail "vpmd counted vm0 tx +$d_tx, vm1 rx +$d_rx; expected +$N each"
log "1: $N frames txonly -> rxonly exactly, vpmd agrees"

# ---------------------------------------------------------------- 2. corruption

N=5000 K=100
tx_to_rx corrupt "$N" --size 1500 --corrupt-every $K
want=$((N / K))
[[ $(jfield "$WORK/corrupt.tx.json" .corrupted) == "$want" ]] || fail "txonly corrupted $(jfield "$WORK/corrupt.tx.json" .corrupted), not $want"
for f in frames:$N corrupted:$want intact:$((N - want)) lost:0 reordered:0 duplicates:0; do
  got=$(jfield "$WORK/corrupt.rx.json" ".${f%%:*}")
  [[ $got == "${f#*:}" ]] || fail "with --corrupt-every $K: rxonly ${f%%:*} = $got, expected ${f#*:}"
done
log "2: rxonly found exactly the $want frames damaged on purpose"

# ---------------------------------------------------------------- 3. loopback

before=$(vpmd_stats_json) || fail "vpmd stats failed"
"$BENCH" --json loopback "$SOCK0" "$SOCK1" --duration 2 --warmup 0.5 --core 0 \
  >"$WORK/loopback.json" 2>"$WORK/loopback.log" || fail "loopback failed: $(cat "$WORK/loopback.log")"
after=$(vpmd_stats_json) || fail "vpmd stats failed"
for d in 0 1; do
  mpps=$(jfield "$WORK/loopback.json" ".directions[$d].mpps")
  frames=$(jfield "$WORK/loopback.json" ".directions[$d].frames")
  awk -v m="$mpps" 'BEGIN { exit !(m > 0) }' && ((frames > 0)) ||
    fail "loopback direction $d: $frames frames, $mpps Mpps"
done
for p in vm0 vm1; do
  for c in tx_packets rx_packets; do
    ((($(port_counter "$after" $p $c) - $(port_counter "$before" $p $c)) > 0)) ||
      fail "vpmd $p $c did not move during loopback"
  done
done
moved=$(jq -n --argjson a "$before" --argjson b "$after" \
  '([$b.threads[].frames] | add) - ([$a.threads[].frames] | add)')
((moved > 0)) || fail "vpmd's thread frame counter did not move during loopback"
log "3: loopback $(jq -c '[.directions[] | {from, to, mpps}] + [{frontend_busy_cycles: .frontend.busy_cycles_per_frame}]' "$WORK/loopback.json"); vpmd threads moved $moved frames"

# ---------------------------------------------------------------- 3b. ring-loop

# port_drops JSON PORT: all of a port's drop counters, summed.
port_drops() {
  local v
  v=$(port_stat "$1" "$2" '[.drops[]] | add')
  [[ $v =~ ^[0-9]+$ ]] || fail "vpmd stats: no drop counters for port $2"
  echo "$v"
}

before=$(vpmd_stats_json) || fail "vpmd stats failed"
"$BENCH" --json ring-loop "$SOCK0" "$SOCK1" --duration 1.5 --warmup 0.3 --check-every 256 --core 0 \
  >"$WORK/ring_loop.json" 2>"$WORK/ring_loop.log" || fail "ring-loop failed: $(cat "$WORK/ring_loop.log")"
for d in 0 1; do
  frames=$(jfield "$WORK/ring_loop.json" ".directions[$d].frames")
  ((frames > 0)) || fail "ring-loop direction $d received nothing: $(cat "$WORK/ring_loop.json")"
done
jq -e '.interrupted == false' "$WORK/ring_loop.json" >/dev/null || fail "ring-loop was interrupted"
for f in checks.rx_bad:0 checks.tx_out_of_order:0 drained:true; do
  got=$(jfield "$WORK/ring_loop.json" ".${f%%:*}")
  [[ $got == "${f#*:}" ]] || fail "ring-loop ${f%%:*} = $got, expected ${f#*:}: $(jq -c .checks "$WORK/ring_loop.json")"
done
(($(jfield "$WORK/ring_loop.json" .checks.rx_sampled) > 0)) || fail "ring-loop sampled no frame"
# What the frontend saw the backend take and deliver, against vpmd's own counters:
# taken from A = vm0 tx_packets, received on B = vm1 rx_packets, taken - received =
# vm0's drops (and the same the other way). vpmd's counters may lag a moment.
for ((i = 0; i < 20; i++)); do
  after=$(vpmd_stats_json) || fail "vpmd stats failed"
  bad=""
  for d in 0 1; do
    src=vm$d dst=vm$((1 - d))
    taken=$(jfield "$WORK/ring_loop.json" ".totals[$d].taken")
    received=$(jfield "$WORK/ring_loop.json" ".totals[$d].received")
    drops=$(jfield "$WORK/ring_loop.json" ".totals[$d].backend_drops")
    v_tx=$(($(port_counter "$after" $src tx_packets) - $(port_counter "$before" $src tx_packets)))
    v_rx=$(($(port_counter "$after" $dst rx_packets) - $(port_counter "$before" $dst rx_packets)))
    v_drops=$(($(port_drops "$after" $src) - $(port_drops "$before" $src)))
    [[ $taken == "$v_tx" && $received == "$v_rx" && $drops == "$v_drops" ]] ||
      bad+=" $src->$dst: taken $taken / vpmd tx $v_tx, received $received / vpmd rx $v_rx, drops $drops / vpmd $v_drops;"
  done
  [[ -z $bad ]] && break
  sleep 0.2
done
[[ -z $bad ]] || fail "ring-loop counts differ from vpmd's:$bad"
log "3b: ring-loop $(jq -c '{total_mpps, backend_drops, busy_share: .frontend.busy_share, rx_sampled: .checks.rx_sampled}' "$WORK/ring_loop.json"); counts agree with vpmd's"

# ---------------------------------------------------------------- 4. latency

"$BENCH" latency "$SOCK0" "$SOCK1" --rate 5000 --duration 1.5 --warmup 0.3 --core 0 \
  >"$WORK/latency.txt" 2>"$WORK/latency.log" || fail "latency failed: $(cat "$WORK/latency.log")"
read -r p50 p99 p999 max < <(sed -nE \
  's/.* p50 ([0-9.]+) us +p99 ([0-9.]+) us +p99\.9 ([0-9.]+) us +max ([0-9.]+) us.*/\1 \2 \3 \4/p' "$WORK/latency.txt")
[[ -n ${max:-} ]] || fail "latency printed no percentiles: $(cat "$WORK/latency.txt")"
awk -v a="$p50" -v b="$p99" -v c="$p999" -v d="$max" 'BEGIN { exit !(0 < a && a <= b && b <= c && c <= d) }' ||
  fail "latency percentiles out of order: p50 $p50, p99 $p99, p99.9 $p999, max $max"
rows=$(grep -cE '^ +[0-9.]+ \.\. +[0-9.]+ us +[0-9]+ +#+$' "$WORK/latency.txt" || true)
((rows > 0)) || fail "latency printed no histogram: $(cat "$WORK/latency.txt")"
grep -qE ' 0 lost' "$WORK/latency.txt" || log "WARN: latency lost frames: $(head -n1 "$WORK/latency.txt")"
log "4: latency p50 $p50 us <= p99 $p99 us <= p99.9 $p999 us <= max $max us, $rows histogram rows"

stop_vpmd

# ---------------------------------------------------------------- 5. DPDK reference

if [[ ${SKIP_DPDK:-0} != 1 ]] && command -v dpdk-testpmd >/dev/null && [[ $(id -u) -eq 0 ]]; then
  "$REPO/scripts/hugepages.sh" 1024 >/dev/null || fail "hugepages setup failed"
  log "5: vpmd-bench against DPDK net_vhost (cargo test --test dpdk_testpmd -- --ignored)"
  (cd "$REPO" && cargo test --release --quiet -p vpmd-bench --test dpdk_testpmd -- --ignored --test-threads=1) \
    >"$WORK/dpdk_testpmd.log" 2>&1 || fail "vpmd-bench against DPDK net_vhost failed (see $WORK/dpdk_testpmd.log)"
  log "5: $(grep -E '^test result' "$WORK/dpdk_testpmd.log" | tail -n1)"
else
  log "5: skipped (no dpdk-testpmd, not root, or SKIP_DPDK=1)"
fi

pass
