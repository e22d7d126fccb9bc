#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Fault test: frontends killed with SIGKILL in the middle of bursts.
#
#   vpmd-bench txonly (full speed) ==p0a== vpmd ==p0b== vpmd-bench rxonly
#
#  1. The receiver is killed while its peer sends at full speed: vpmd keeps
#     running, the peer's frames are counted as peer_down from then on, and the
#     dead connection's fds, guest-memory mappings (its memfd's inode) and
#     threads are released: /proc/<vpmd>/fd and /proc/<vpmd>/task counts return
#     exactly to what they were with only the sender connected.
#  2. A new receiver connects to the same port and gets frames again; then the
#     sender is killed mid-burst (vpmd is reading its TX ring at full speed).
#  3. The receiver stops cleanly: vpmd is back to its start-up fd and thread
#     counts, maps no memfd at all, and on both ports tx_packets = forwarded +
#     drops, forwarded = peer's rx_packets.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
check_bench_prereqs

DIR=$WORK/sock
write_pairs_config "$WORK/vpmd.toml" "$DIR" 1
start_vpmd "$WORK/vpmd.toml"
fds0=$(fd_count "$VPMD_PID") thr0=$(thread_count "$VPMD_PID")
log "vpmd at start: $fds0 fds, $thr0 threads"

# start_receiver NAME: rxonly NAME on p0b, ready, p0b up and its rx_packets
# moving; sets RX_PID, and RX_RATE to the frames it got in a second.
start_receiver() {
  start_bench "$1" rxonly "$DIR/p0b.sock" --duration 120 --idle-timeout 120
  RX_PID=$BENCH_PID
  wait_for_log "$WORK/$1.log" "rxonly ready" 30 "$RX_PID" || fail "rxonly $1 did not start"
  wait_port_state p0b up 20 || fail "p0b not up after rxonly $1 connected"
  RX_RATE=$(counter_delta p0b .rx_packets)
  ((RX_RATE > 0)) || fail "rxonly $1 is not receiving (p0b rx_packets +$RX_RATE in a second)"
}

# --------------------------------------------------------------- 1. kill the receiver
start_bench tx txonly "$DIR/p0a.sock" --duration 120
TX_PID=$BENCH_PID
wait_port_state p0a up 20 || fail "p0a not up after txonly connected"
read -r fdsA thrA <<<"$(settled "$VPMD_PID")"
log "with the sender connected: $fdsA fds, $thrA threads"

start_receiver rx1
rx_inodes=$(memfd_inodes "$RX_PID")
[[ -n $rx_inodes ]] || fail "rxonly maps no memfd"
for ino in $rx_inodes; do
  memfd_inodes "$VPMD_PID" | grep -qx "$ino" || fail "vpmd does not map rxonly's memfd (inode $ino)"
done
log "receiving $RX_RATE frames/s; vpmd maps rxonly's guest memory (memfd inode $rx_inodes)"

kill -KILL "$RX_PID"
wait "$RX_PID" 2>/dev/null || true
log "rxonly killed (SIGKILL) mid-burst"
wait_port_state p0b down 20 || fail "vpmd did not see p0b go down after its frontend was killed"
alive "$VPMD_PID" || fail "vpmd exited when a frontend was killed"
alive "$TX_PID" || fail "the sender died with its peer"
wait_value 20 "$fdsA $thrA" settled "$VPMD_PID" ||
  fail "vpmd holds '$WAIT_GOT' (fds threads) after the receiver died, not '$fdsA $thrA'"
for ino in $rx_inodes; do
  ! memfd_inodes "$VPMD_PID" | grep -qx "$ino" || fail "vpmd still maps the dead rxonly's memfd (inode $ino)"
done
log "dead receiver released: $fdsA fds, $thrA threads, its memfd unmapped"
p=$(counter_delta p0a .drops.peer_down)
((p > 0)) || fail "p0a's frames are not counted as peer_down after its peer died (+$p in a second)"
log "the sender's frames now count as peer_down: +$p in a second"

# --------------------------------------------------------------- 2. kill the sender
start_receiver rx2
tx_inodes=$(memfd_inodes "$TX_PID")
kill -KILL "$TX_PID"
wait "$TX_PID" 2>/dev/null || true
log "txonly killed (SIGKILL) mid-burst"
wait_port_state p0a down 20 || fail "vpmd did not see p0a go down after its frontend was killed"
alive "$VPMD_PID" || fail "vpmd exited when the sender was killed"
for ino in $tx_inodes; do
  wait_value 20 "" sh -c "awk '\$6 ~ /^\\/memfd:/ && \$5 == $ino' /proc/$VPMD_PID/maps" ||
    fail "vpmd still maps the dead txonly's memfd (inode $ino)"
done

# --------------------------------------------------------------- 3. back to the start
kill -TERM "$RX_PID"
wait "$RX_PID" || fail "rxonly failed: $(cat "$WORK/rx2.log")"
wait_port_state p0b down 20 || fail "p0b not down after rxonly stopped"
wait_value 20 "$fds0 $thr0" settled "$VPMD_PID" ||
  fail "vpmd holds '$WAIT_GOT' (fds threads) with no frontend, not '$fds0 $thr0' as at start"
[[ -z $(memfd_inodes "$VPMD_PID") ]] || fail "vpmd still maps memfds: $(memfd_inodes "$VPMD_PID")"
json=$(vpmd_stats_json) || fail "vpmd stats failed"
assert_port_accounting "$json" p0a p0b
assert_port_accounting "$json" p0b p0a
log "p0a: $(port_stat "$json" p0a '"tx \(.tx_packets) forwarded \(.forwarded) drops \(.drops | tostring)"')"
stop_vpmd
pass "frontends killed mid-burst: vpmd runs on, peer_down counted, fds/threads/mappings released"
