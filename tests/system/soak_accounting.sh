#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Soak test (bounded, SOAK_SECONDS, default 150): nothing lost, all accounted.
#
#   vpmd-bench loopback (full speed, 64 B) ==p0a== vpmd ==p0b== (same process)
#   txonly sessions, one after another ==p1a== vpmd ==p1b== rxonly (checking)
#
# One polling thread serves both pairs. Pair 0 circulates frames as fast as the
# loopback frontend and vpmd go. On pair 1, port p1a reconnects over and over:
# each session is a new txonly process (connect, 2000 frames at 20 kpps,
# disconnect), and the sessions carry consecutive sequence numbers, so the
# rxonly on p1b checks them as one stream across all reconnects.
#
# Asserted at the end, with everything quiet:
#  - the checked stream: 0 corrupted, 0 reordered, 0 duplicates, 0 foreign;
#  - every frame the sessions sent was taken by vpmd (p1a tx_packets = sum of
#    the sessions' frames), and each is either delivered (p1b rx_packets =
#    frames rxonly counted) or in one of p1a's named drop counters, exactly;
#  - on all four ports: tx_packets = forwarded + sum of drops, and forwarded =
#    peer's rx_packets (docs/interfaces.md), exactly.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
check_bench_prereqs

SOAK_SECONDS=${SOAK_SECONDS:-150}
PER=2000
DIR=$WORK/sock
write_pairs_config "$WORK/vpmd.toml" "$DIR" 2
start_vpmd "$WORK/vpmd.toml"

# The checking receiver: a 1024-entry ring rides out scheduling gaps (it shares
# core 0 with the spinning loopback); what it still misses is counted by vpmd.
start_bench rx --json rxonly "$DIR/p1b.sock" --queue-size 1024 --idle-timeout 3600
RX=$BENCH_PID
wait_for_log "$WORK/rx.log" "rxonly ready" 30 "$RX" || fail "rxonly did not start"
wait_port_state p1b up 20 || fail "p1b not up"

start_bench loop --json loopback "$DIR/p0a.sock" "$DIR/p0b.sock" --size 64 \
  --duration "$SOAK_SECONDS" --warmup 1
LOOP=$BENCH_PID
wait_port_state p0a up 20 || fail "p0a not up after loopback connected"
log "soaking for $SOAK_SECONDS s: loopback on pair 0, p1a reconnecting on pair 1"

sessions=0 sent=0 next_report=$((SECONDS + 30))
while alive "$LOOP"; do
  "$BENCH" --json txonly "$DIR/p1a.sock" --count $PER --first-seq $((sessions * PER)) \
    --rate 20000 >"$WORK/session.json" 2>"$WORK/session.log" ||
    fail "session $sessions: txonly failed: $(cat "$WORK/session.log")"
  [[ $(jq -r .drained "$WORK/session.json") == true ]] ||
    fail "session $sessions: vpmd did not take every frame: $(cat "$WORK/session.json")"
  sent=$((sent + $(jq -r .frames "$WORK/session.json")))
  sessions=$((sessions + 1))
  alive "$VPMD_PID" || fail "vpmd exited during the soak"
  if ((SECONDS >= next_report)); then
    next_report=$((SECONDS + 30))
    json=$(vpmd_stats_json) || fail "vpmd stats failed"
    log "$sessions sessions, $sent frames on p1a; p0a->p0b $(port_stat "$json" p0b .rx_packets) frames; vpmd $(fd_count "$VPMD_PID") fds, RSS $(rss_kib "$VPMD_PID") KiB"
  fi
done
wait "$LOOP" || fail "loopback failed: $(cat "$WORK/loop.log")"
log "loopback: $(jq -c '[.directions[] | {from, to, mpps, tx_dropped}]' "$WORK/loop.out")"
log "$sessions sessions of $PER frames ($sent frames) on p1a"

wait_port_state p0a down 20 || fail "p0a not down after loopback ended"
wait_port_state p0b down 20 || fail "p0b not down after loopback ended"
wait_port_state p1a down 20 || fail "p1a not down after the last session"
json=$(vpmd_stats_json) || fail "vpmd stats failed"
got=$(port_stat "$json" p1b .rx_packets)
kill -TERM "$RX"
wait "$RX" || fail "rxonly failed: $(cat "$WORK/rx.log")"
log "rxonly: $(jq -c '{frames, intact, corrupted, lost, reordered, duplicates, foreign}' "$WORK/rx.out")"

for f in corrupted:0 reordered:0 duplicates:0 foreign:0 frames:$got intact:$got; do
  v=$(jq -r ".${f%%:*}" "$WORK/rx.out")
  [[ $v == "${f#*:}" ]] || fail "checked stream: ${f%%:*} = $v, expected ${f#*:}"
done
[[ $(port_stat "$json" p1a .tx_packets) == "$sent" ]] ||
  fail "the sessions sent $sent frames, vpmd took $(port_stat "$json" p1a .tx_packets) from p1a"
drops=$(port_stat "$json" p1a '[.drops[]] | add')
[[ $((got + drops)) == "$sent" ]] ||
  fail "p1a: sent $sent != delivered $got + dropped $drops"
log "checked stream: $sent sent = $got delivered in order and intact + $drops dropped ($(port_stat "$json" p1a '.drops | with_entries(select(.value > 0)) | tostring'))"
for pair in p0a:p0b p0b:p0a p1a:p1b p1b:p1a; do
  assert_port_accounting "$json" "${pair%%:*}" "${pair#*:}"
done
stop_vpmd
pass "soak ${SOAK_SECONDS}s: $sessions reconnects beside a full-speed loopback, every frame accounted, none corrupted or reordered"
