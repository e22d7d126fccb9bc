#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Fault test: vpmd itself is killed (SIGKILL) while two real QEMU guests ping
# each other through it, and restarted. Its ports are in the client role (QEMU
# listens with server=on), so the new vpmd connects to the QEMUs that are still
# running; QEMU sets the device up again on the new connection.
#
#  - the guests keep running while vpmd is dead (their pings are lost);
#  - the new vpmd reconnects both ports and the guests' pings get answers again
#    (how long that took, from the restart to the first answer in each guest, is
#    logged, not asserted: no timing asserts in tests);
#  - once the guests are stopped, the new vpmd's counters are exact:
#    tx_packets = forwarded + drops, forwarded = peer's rx_packets.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
check_prereqs

DIR=$WORK/sockets
write_config "$WORK/client.toml" client 1500 "$DIR"
# 5 pings to show the path works, then single pings (vpmd.watch) for as long as
# the test needs them.
A_ARGS="vpmd.ip=198.18.0.1/24 vpmd.peer=198.18.0.2 vpmd.count=5 vpmd.size=56 vpmd.watch=400"
B_ARGS="vpmd.ip=198.18.0.2/24 vpmd.peer=198.18.0.1 vpmd.count=5 vpmd.size=56 vpmd.watch=400"

start_guest a "$DIR/vm0.sock" client 52:54:00:00:00:01 "" "$A_ARGS"
start_guest b "$DIR/vm1.sock" client 52:54:00:00:00:02 "" "$B_ARGS"
start_vpmd "$WORK/client.toml" --no-ready
assert_ping a 56 5
assert_ping b 56 5

wait_more a oks 5 60 || fail "guest a: no answered watch pings before the kill"
wait_more b oks 5 60 || fail "guest b: no answered watch pings before the kill"
log "both guests ping each other through vpmd (pid $VPMD_PID); killing vpmd (SIGKILL)"

kill -KILL "$VPMD_PID"
wait "$VPMD_PID" 2>/dev/null || true
VPMD_PID=""
killed_at=$SECONDS
# The outage is real: pings go unanswered, and QEMU keeps the guests running.
wait_more a losts 2 30 || fail "guest a: no lost pings while vpmd was dead"
wait_more b losts 2 30 || fail "guest b: no lost pings while vpmd was dead"
for g in a b; do alive "$(guest_pid $g)" || fail "guest $g's QEMU died with vpmd"; done
log "vpmd dead for $((SECONDS - killed_at)) s: both guests run on, their pings are lost"

oks_a=$(oks a) oks_b=$(oks b)
start_vpmd "$WORK/client.toml" --no-ready
restart=$SECONDS
resumed=()
for g in a b; do
  eval "from=\$oks_$g"
  deadline=$((SECONDS + 60))
  until (($(oks $g) > from)); do
    alive "$(guest_pid $g)" || fail "guest $g's QEMU exited"
    alive "$VPMD_PID" || fail "the restarted vpmd exited"
    ((SECONDS < deadline)) || fail "guest $g: no answered ping within 60 s of the restart"
    sleep 0.2
  done
  resumed+=("$g after $((SECONDS - restart)) s")
done
log "traffic resumed: guest ${resumed[0]}, guest ${resumed[1]} (from the restart)"
wait_port_state vm0 up 10 || fail "vm0 not up on the restarted vpmd"
wait_port_state vm1 up 10 || fail "vm1 not up on the restarted vpmd"
wait_more a oks 5 30 || fail "guest a: pings stopped again after resuming"
wait_more b oks 5 30 || fail "guest b: pings stopped again after resuming"
json=$(vpmd_stats_json) || fail "vpmd stats failed"
for p in vm0 vm1; do
  (($(port_stat "$json" $p .rx_packets) > 0)) || fail "the restarted vpmd delivered nothing to $p"
done
! grep -a '^VPMD-ERROR' "$WORK/a.log" "$WORK/b.log" || fail "errors inside a guest"

# Quiesce, then the new instance's books must balance exactly.
stop_pid "$(guest_pid a)" KILL 5 || fail "QEMU a did not stop"
stop_pid "$(guest_pid b)" KILL 5 || fail "QEMU b did not stop"
wait_port_state vm0 down 20 || fail "vm0 not down after its QEMU stopped"
wait_port_state vm1 down 20 || fail "vm1 not down after its QEMU stopped"
json=$(vpmd_stats_json) || fail "vpmd stats failed"
assert_port_accounting "$json" vm0 vm1
assert_port_accounting "$json" vm1 vm0
stop_vpmd
pass "vpmd killed and restarted under running guests: guests ran on, vpmd reconnected, pings resumed"
