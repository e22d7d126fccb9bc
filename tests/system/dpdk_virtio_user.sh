#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# System test: DPDK's virtio-user PMD (dpdk-testpmd) as a real vhost-user
# frontend of vpmd's veth pair.
#
#   testpmd port 0 (net_virtio_user0) <-> vpmd vm0 ==veth== vm1 <-> testpmd port 1
#
# testpmd runs --forward-mode=io with one forwarding core: what port 0 receives
# it sends on port 1 and vice versa. `start tx_first` injects one burst on each
# port, and those frames then circulate through vpmd's veth pair until `stop`.
#
# Checks (numbers read after `stop`, once nothing moves any more):
#  * testpmd RX and TX packets grow on both ports during the run;
#  * vpmd stats: rx_packets and tx_packets > 0 on both ports, and
#      - exact: vpmd vmN.tx_packets/tx_bytes == testpmd port N TX-packets/TX-bytes
#        (every frame testpmd put on a TX ring has been taken by vpmd: at most
#        2 bursts are ever in flight, far fewer than a ring holds, so vpmd is
#        never held back by a full peer ring);
#      - bounded: 0 <= vpmd vmN.rx_packets - testpmd port N RX-packets <= ring
#        size (frames vpmd delivered into port N's RX ring after testpmd stopped
#        polling it);
#      - exact conservation: the sum of those two differences == frames injected
#        by tx_first - testpmd TX-dropped - vpmd drops (frames are never created,
#        so each injected frame is either dropped somewhere, counted, or sits
#        in an RX ring at the end);
#      - exact, docs/interfaces.md: vmN.tx_packets == peer rx_packets + vmN drops;
#  * testpmd `quit` exits 0 within a timeout; vpmd is still running, shows both
#    ports down, and exits 0 on SIGTERM.
#
# Usage (from the repo root): bash tests/system/dpdk_virtio_user.sh
# Environment:
#   VPMD         vpmd binary (default target/release/vpmd)
#   BACKEND      vpmd (default) | dpdk: DPDK's own vhost PMD (a second testpmd
#                with net_vhost ports, io forwarding) in place of vpmd, as a
#                reference. The same checks run against its port counters.
#   RUN_SECONDS  how long frames circulate (default 5)
#   QUEUES       queue pairs per port (default 1). With 2: vpmd ports `queues = 2`,
#                virtio-user `queues=2`, testpmd --rxq=2 --txq=2 and tx_first frames
#                of several flows (--txonly-multi-flow, so that vpmd's flow hash
#                spreads them); then also, per queue pair: vpmd took from each TX
#                queue exactly what testpmd put there (its tx_qN_good_packets),
#                every queue of both ports carried frames both ways, and vpmd's
#                per-queue counts add up to its port counts.
#   KEEP_WORK=1  keep the work dir (logs, config) even when the test passes
# Needs root (hugepages, apt-get when DPDK is missing).
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# dpdk-testpmd at its prompt, bl_install, bl_clean_dpdk.
# shellcheck source=scripts/bench-lib.sh
source "$REPO/scripts/bench-lib.sh"

[[ $VPMD == /* ]] || VPMD=$REPO/$VPMD          # relative paths are from the repo root
BACKEND=${BACKEND:-vpmd}
RUN_SECONDS=${RUN_SECONDS:-5}
QUEUES=${QUEUES:-1}
FRONT_PREFIX=vpmdtest          # --file-prefix of the frontend testpmd
BACK_PREFIX=vpmdtestback       # --file-prefix of the reference backend (BACKEND=dpdk)
RING_SIZE=256                  # virtio-user's default queue_size (we do not change it)
TESTPMD_EXIT_TIMEOUT=30        # seconds for `quit` (stops ports over vhost-user)

SOCK0=$WORK/vm0.sock
SOCK1=$WORK/vm1.sock
FRONT_LOG=$WORK/testpmd-front.log
BACK_LOG=$WORK/backend.log     # vpmd's or the reference testpmd's output
FRONT_PID="" BACK_PID=""
FRONT_FD="" BACK_FD=""         # write ends of the fifos feeding testpmd's prompt
BL_WORK=$WORK                  # where bl_tp_start puts its fifos
BL_NAME=$TEST_NAME             # in bench-lib.sh's messages

# wait_exit PID TIMEOUT_S: wait for one of our children to exit and set
# EXIT_RC to its exit status. Returns 1 if it is still running at the timeout.
# (Not usable as $(wait_exit ...): a subshell cannot wait for our children.)
EXIT_RC=""
wait_exit() {
  local pid=$1 t=$2 i
  for ((i = 0; i < t * 10; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  alive "$pid" && return 1
  EXIT_RC=0
  wait "$pid" 2>/dev/null || EXIT_RC=$?
}

# At exit, before lib.sh's cleanup: the testpmds, then their hugepage files.
stop_testpmds() {
  # Closing a fifo's write end gives testpmd EOF at its prompt, which makes it
  # quit by itself; the signals are for whatever did not.
  [[ -n $FRONT_FD ]] && exec {FRONT_FD}>&-
  [[ -n $BACK_FD ]] && exec {BACK_FD}>&-
  [[ -n $FRONT_PID ]] && stop_pid "$FRONT_PID" TERM 5
  [[ -n $BACK_PID ]] && stop_pid "$BACK_PID" TERM 5
  wait 2>/dev/null
  # --single-file-segments leaves <prefix>map_* hugepage files behind (they
  # keep their hugepages reserved); also drop DPDK's runtime dir of our prefixes.
  BL_PREFIXES=("$FRONT_PREFIX" "$BACK_PREFIX")
  bl_clean_dpdk
}
on_exit stop_testpmds

# ---------------------------------------------------------------- helpers

# log_has_after LOG OFFSET STRING: STRING occurs in LOG after byte OFFSET.
log_has_after() {
  tail -c "+$(($2 + 1))" "$1" 2>/dev/null | grep -qF -- "$3"
}

# tp_cmd FD LOG COMMAND [TIMEOUT_S]: type COMMAND at a testpmd prompt and wait
# until testpmd has printed its next prompt (the command is done). Sets CMD_OFF
# to the byte offset in LOG where this command's output starts.
tp_cmd() { bl_tp_cmd "$@" || fail "testpmd did not finish '$3' within ${4:-20}s ($2)"; }

# tp_port_stat LOG OFFSET PORT FIELD: value of FIELD (RX-packets, TX-bytes, ...)
# in the first `show port stats` block of PORT after byte OFFSET of LOG.
tp_port_stat() {
  local v
  v=$(bl_tp_port_stat "$@")
  [[ $v =~ ^[0-9]+$ ]] || fail "no $4 for port $3 in the output of 'show port stats all' ($1)"
  echo "$v"
}

# accum_stat LOG OFFSET FIELD: FIELD (TX-dropped, ...) of the "Accumulated
# forward statistics for all ports" block that `stop` prints.
accum_stat() {
  local v
  v=$(tail -c "+$(($2 + 1))" "$1" | awk -v f="$3:" '
    /Accumulated forward statistics/ { inb = 1; next }
    /^ *\+\+\+/ { inb = 0 }
    inb { for (i = 1; i < NF; i++) if ($i == f) { print $(i + 1); exit } }')
  [[ $v =~ ^[0-9]+$ ]] || fail "no accumulated $3 in the output of 'stop' ($1)"
  echo "$v"
}

# start_testpmd NAME LOG EAL_ARGS... -- APP_ARGS...: start dpdk-testpmd at its
# interactive prompt, fed from a fifo, and wait for the prompt. Sets TP_PID and
# TP_FD (our write end).
start_testpmd() { bl_tp_start "$@" || fail "testpmd $1 did not reach its prompt ($2)"; }

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND every 0.2 s.
wait_for() { bl_wait_for "$@" || fail "timed out after ${1}s waiting for $2"; }

sockets_exist() { [[ -S $SOCK0 && -S $SOCK1 ]]; }
log_has() { grep -qF -- "$2" "$1" 2>/dev/null; }
log_count_ge() { (($(grep -cF -- "$2" "$1" 2>/dev/null || true) >= $3)); }
back_alive() { alive "$BACK_PID" || fail "$BACKEND backend exited early"; }

vpmd_stats() { "$VPMD" stats --json --control "$CONTROL"; }
# vpmd_ports_state STATE: both ports report "state": STATE.
vpmd_ports_state() {
  local s
  s=$(vpmd_stats 2>/dev/null) || return 1
  [[ $(jq -r --arg st "$1" '[.ports[] | select(.state == $st)] | length' <<<"$s") == 2 ]]
}

# ---------------------------------------------------------------- setup

[[ $(id -u) -eq 0 ]] || fail "must run as root (hugepages, apt-get)"
case $BACKEND in vpmd | dpdk) ;; *) fail "BACKEND must be vpmd or dpdk, got '$BACKEND'" ;; esac

# DPDK and jq come from Debian; install them only when missing.
bl_install dpdk jq
command -v dpdk-testpmd >/dev/null || fail "dpdk-testpmd not found after installing dpdk"
# 1024 hugepages, hugetlbfs mounted, stale map files of our prefixes removed.
"$REPO/scripts/hugepages.sh" 1024 "$FRONT_PREFIX" "$BACK_PREFIX" >/dev/null ||
  fail "could not set up hugepages (scripts/hugepages.sh)"
# A testpmd of an earlier run with our prefix would share (and corrupt) our
# DPDK runtime state; refuse rather than kill something we did not start.
for p in "$FRONT_PREFIX" "$BACK_PREFIX"; do
  if fuser -s /var/run/dpdk/$p/config 2>/dev/null; then
    FRONT_PREFIX=none BACK_PREFIX=none   # not ours: leave its files alone
    fail "a DPDK process with --file-prefix=$p is already running"
  fi
done

# The frontend: two virtio-user ports; main lcore 1 sits at the prompt, lcore 0
# forwards. Few mbufs are needed: at most 2 bursts are ever in flight.
MQ_VDEV="" MQ_APP=()
if ((QUEUES > 1)); then
  MQ_VDEV=",queues=$QUEUES"
  MQ_APP=(--rxq="$QUEUES" --txq="$QUEUES" --txonly-multi-flow)
fi
FRONT_ARGS=(-l 0,1 --main-lcore 1 --no-pci --single-file-segments --file-prefix="$FRONT_PREFIX"
  --vdev "net_virtio_user0,path=$SOCK0$MQ_VDEV" --vdev "net_virtio_user1,path=$SOCK1$MQ_VDEV"
  -- -i --forward-mode=io --total-num-mbufs=16384 "${MQ_APP[@]}")

if [[ $BACKEND == vpmd ]]; then
  [[ -x $VPMD ]] || fail "vpmd binary $VPMD not found (cargo build --release, or set VPMD)"
  write_config "$WORK/vpmd.toml" server 1500 "$WORK"
  ((QUEUES > 1)) && sed -i "/^mtu = /a queues = $QUEUES" "$WORK/vpmd.toml"
  log "starting vpmd ($VPMD)"
  "$VPMD" run --config "$WORK/vpmd.toml" >"$BACK_LOG" 2>&1 &
  BACK_PID=$!
  wait_for 30 "vpmd's sockets $SOCK0 and $SOCK1" eval 'back_alive; sockets_exist'
  # docs/interfaces.md: "vpmd ready" once every socket listens. A socket file
  # can exist a moment before listen(), so give the line a few seconds.
  for ((i = 0; i < 25; i++)); do log_has "$BACK_LOG" "vpmd ready" && break; sleep 0.2; done
  log_has "$BACK_LOG" "vpmd ready" || log "WARN: no 'vpmd ready' line in the vpmd log; going on"
  wait_for 10 "vpmd stats --json to show both ports down (no frontend yet)" vpmd_ports_state down
else
  # Reference backend: DPDK's vhost PMD, io forwarding vhost0 <-> vhost1
  # (exactly a veth pair). Main lcore 0, forwarding lcore 1.
  log "starting the reference backend (testpmd with net_vhost ports)"
  start_testpmd backend "$BACK_LOG" -l 0,1 --main-lcore 0 --no-pci --single-file-segments \
    --file-prefix="$BACK_PREFIX" --vdev "net_vhost0,iface=$SOCK0$MQ_VDEV" --vdev "net_vhost1,iface=$SOCK1$MQ_VDEV" \
    -- -i --forward-mode=io --total-num-mbufs=16384 "${MQ_APP[@]:0:2}"
  BACK_PID=$TP_PID BACK_FD=$TP_FD
  sockets_exist || fail "the backend testpmd did not create $SOCK0 and $SOCK1"
  tp_cmd "$BACK_FD" "$BACK_LOG" start
fi

log "starting the frontend: dpdk-testpmd ${FRONT_ARGS[*]}"
start_testpmd frontend "$FRONT_LOG" "${FRONT_ARGS[@]}"
FRONT_PID=$TP_PID FRONT_FD=$TP_FD
log_has "$FRONT_LOG" "No probed ethernet devices" && fail "the frontend testpmd found no virtio-user ports"
log_has "$FRONT_LOG" "Port 1: " || fail "the frontend testpmd did not configure port 1"
back_alive

# Both ends must have their queues running before tx_first, or the first
# burst is dropped (peer_down) and nothing circulates.
if [[ $BACKEND == vpmd ]]; then
  wait_for 15 "vpmd to show both ports up" vpmd_ports_state up
else
  wait_for 15 "the backend to see both devices ready" \
    log_count_ge "$BACK_LOG" "virtio is now ready for processing" 2
fi

# ---------------------------------------------------------------- traffic

tp_cmd "$FRONT_FD" "$FRONT_LOG" "start tx_first"
START_OFF=$CMD_OFF
log_has_after "$FRONT_LOG" "$START_OFF" "nb forwarding ports=2" || fail "testpmd is not forwarding between 2 ports"
BURST=$(tail -c "+$((START_OFF + 1))" "$FRONT_LOG" | sed -n 's/.*packets\/burst=\([0-9]\+\).*/\1/p' | head -n1)
[[ $BURST =~ ^[0-9]+$ ]] || fail "could not read packets/burst from testpmd"
INJECTED=$((2 * QUEUES * BURST)) # tx_first: one burst on each TX queue of the 2 ports
log "forwarding; tx_first injected $BURST frames on each port; running ${RUN_SECONDS}s"

sleep "$(awk -v s="$RUN_SECONDS" 'BEGIN { print s / 2 }')"
tp_cmd "$FRONT_FD" "$FRONT_LOG" "show port stats all"
MID_OFF=$CMD_OFF
sleep "$(awk -v s="$RUN_SECONDS" 'BEGIN { print s / 2 }')"
alive "$FRONT_PID" || fail "frontend testpmd died while forwarding"
back_alive

tp_cmd "$FRONT_FD" "$FRONT_LOG" stop
STOP_OFF=$CMD_OFF
# The backend keeps polling: give it a moment to take what is left on the TX
# rings, then nothing moves any more and both sides' counters can be compared.
sleep 1
tp_cmd "$FRONT_FD" "$FRONT_LOG" "show port stats all"
END_OFF=$CMD_OFF

declare -A TP      # testpmd counters: TP[mid,RX-packets,0], TP[end,TX-bytes,1], ...
for p in 0 1; do
  for f in RX-packets TX-packets RX-bytes TX-bytes; do
    TP[end,$f,$p]=$(tp_port_stat "$FRONT_LOG" "$END_OFF" $p $f)
  done
  for f in RX-packets TX-packets; do
    TP[mid,$f,$p]=$(tp_port_stat "$FRONT_LOG" "$MID_OFF" $p $f)
  done
done
TP_TX_DROPPED=$(accum_stat "$FRONT_LOG" "$STOP_OFF" TX-dropped)
for p in 0 1; do
  log "testpmd port $p: RX-packets ${TP[mid,RX-packets,$p]} -> ${TP[end,RX-packets,$p]}," \
    "TX-packets ${TP[mid,TX-packets,$p]} -> ${TP[end,TX-packets,$p]}"
done
log "testpmd TX-dropped (whole run): $TP_TX_DROPPED"

# Backend counters, named from the guest's point of view like vpmd's stats:
# B_TX[p] frames taken from port p's guest, B_RX[p] frames delivered to it.
declare -A B_TX B_RX B_TXB
B_DROPS=0
if [[ $BACKEND == vpmd ]]; then
  # Read twice: equal counters prove vpmd has finished with the rings.
  s1=$(vpmd_stats) || fail "vpmd stats --json failed"
  sleep 0.5
  s2=$(vpmd_stats) || fail "vpmd stats --json failed"
  echo "$s2" >"$WORK/vpmd-stats.json"
  log "vpmd stats: $(jq -c '[.ports[] | {name, state, rx_packets, tx_packets, drops}]' <<<"$s2")"
  [[ "$(jq -c .ports <<<"$s1")" == "$(jq -c .ports <<<"$s2")" ]] ||
    fail "vpmd counters still move 1.5 s after testpmd stopped forwarding: $s1 / $s2"
  # vpmd_field PORT EXPR: EXPR of port vmPORT in the last stats, must be a number.
  vpmd_field() {
    local v
    v=$(jq -r --arg n "vm$1" ".ports[] | select(.name == \$n) | $2" <<<"$s2")
    [[ $v =~ ^[0-9]+$ ]] || fail "vpmd stats --json: no numeric $2 for port vm$1: $s2"
    echo "$v"
  }
  for p in 0 1; do
    B_TX[$p]=$(vpmd_field $p .tx_packets)
    B_RX[$p]=$(vpmd_field $p .rx_packets)
    B_TXB[$p]=$(vpmd_field $p .tx_bytes)
    drops=$(vpmd_field $p '[.drops[]] | add')
    B_DROPS=$((B_DROPS + drops))
    # docs/interfaces.md: tx_packets = peer's rx_packets + this port's drops.
    peer_rx=$(vpmd_field $((1 - p)) .rx_packets)
    ((B_TX[$p] == peer_rx + drops)) ||
      fail "vpmd accounting: vm$p tx_packets ${B_TX[$p]} != vm$((1 - p)) rx_packets $peer_rx + vm$p drops $drops"
  done
else
  tp_cmd "$BACK_FD" "$BACK_LOG" "show port stats all"
  for p in 0 1; do
    B_TX[$p]=$(tp_port_stat "$BACK_LOG" "$CMD_OFF" $p RX-packets)
    B_RX[$p]=$(tp_port_stat "$BACK_LOG" "$CMD_OFF" $p TX-packets)
    B_TXB[$p]=$(tp_port_stat "$BACK_LOG" "$CMD_OFF" $p RX-bytes)
  done
  # The vhost PMD's port counters count only frames it enqueued; io forwarding
  # counts the ones it could not enqueue (and freed) as TX-dropped on `stop`.
  tp_cmd "$BACK_FD" "$BACK_LOG" stop
  B_DROPS=$(accum_stat "$BACK_LOG" "$CMD_OFF" TX-dropped)
fi
log "backend ($BACKEND): vm0 from guest ${B_TX[0]} to guest ${B_RX[0]}," \
  "vm1 from guest ${B_TX[1]} to guest ${B_RX[1]}, drops $B_DROPS"

# ---------------------------------------------------------------- checks

in_ring_total=0
for p in 0 1; do
  # Frames moved on both ports, and kept moving (not just the first burst).
  for f in RX-packets TX-packets; do
    ((TP[mid,$f,$p] > 0)) || fail "testpmd port $p $f is 0 half-way through the run"
    ((TP[end,$f,$p] > TP[mid,$f,$p])) ||
      fail "testpmd port $p $f did not grow in the second half of the run (${TP[mid,$f,$p]} -> ${TP[end,$f,$p]})"
  done
  ((B_TX[$p] > 0 && B_RX[$p] > 0)) || fail "$BACKEND port vm$p: rx ${B_RX[$p]} / tx ${B_TX[$p]} packets, both must be > 0"
  # Exact: everything testpmd put on port p's TX ring was taken by the backend.
  ((B_TX[$p] == TP[end,TX-packets,$p])) ||
    fail "vm$p: $BACKEND took ${B_TX[$p]} frames from the guest, testpmd port $p sent ${TP[end,TX-packets,$p]}"
  ((B_TXB[$p] == TP[end,TX-bytes,$p])) ||
    fail "vm$p: $BACKEND took ${B_TXB[$p]} bytes from the guest, testpmd port $p sent ${TP[end,TX-bytes,$p]}"
  # Bounded: frames delivered into port p's RX ring that testpmd has not
  # polled (it stopped); a ring holds at most RING_SIZE.
  in_ring=$((B_RX[$p] - TP[end,RX-packets,$p]))
  ((in_ring >= 0 && in_ring <= QUEUES * RING_SIZE)) ||
    fail "vm$p: $BACKEND delivered ${B_RX[$p]} frames, testpmd port $p received ${TP[end,RX-packets,$p]}" \
      "(difference $in_ring must be within 0..$((QUEUES * RING_SIZE)))"
  in_ring_total=$((in_ring_total + in_ring))
done
# Exact conservation: frames are injected only by tx_first; each is then either
# dropped (counted by testpmd or the backend) or still in an RX ring.
expect=$((INJECTED - TP_TX_DROPPED - B_DROPS))
((in_ring_total == expect)) ||
  fail "frames left in RX rings: $in_ring_total, expected $expect" \
    "(= $INJECTED injected - $TP_TX_DROPPED testpmd TX-dropped - $B_DROPS $BACKEND drops)"
log "counters agree: TX exact on both ports, $in_ring_total frames left in RX rings as expected"

if ((QUEUES > 1)) && [[ $BACKEND == vpmd ]]; then
  tp_cmd "$FRONT_FD" "$FRONT_LOG" "show port xstats all"
  XSTATS_OFF=$CMD_OFF
  # tp_xstat PORT NAME: one of testpmd's extended counters of PORT in that output.
  tp_xstat() {
    local v
    v=$(tail -c "+$((XSTATS_OFF + 1))" "$FRONT_LOG" | awk -v port="$1" -v name="$2:" '
      /NIC extended statistics for port/ { inp = ($NF == port) }
      inp && $1 == name { print $2; exit }')
    [[ $v =~ ^[0-9]+$ ]] || fail "no xstat $2 for testpmd port $1"
    echo "$v"
  }
  for p in 0 1; do
    jq -e --arg n "vm$p" '.ports[] | select(.name == $n) |
      ([.queues[].tx_packets] | add) == .tx_packets and ([.queues[].rx_packets] | add) == .rx_packets and
      ([.queues[].tx_dropped] | add) == ([.drops[]] | add)' "$WORK/vpmd-stats.json" >/dev/null ||
      fail "vm$p: per-queue counts do not add up: $(jq -c --arg n "vm$p" '.ports[] | select(.name == $n) | .queues' "$WORK/vpmd-stats.json")"
    for ((q = 0; q < QUEUES; q++)); do
      v_tx=$(vpmd_field $p ".queues[$q].tx_packets")
      v_rx=$(vpmd_field $p ".queues[$q].rx_packets")
      t_tx=$(tp_xstat $p "tx_q${q}_good_packets")
      ((v_tx > 0 && v_rx > 0)) || fail "vm$p queue pair $q: tx $v_tx rx $v_rx, both must be > 0"
      ((v_tx == t_tx)) || fail "vm$p queue pair $q: vpmd took $v_tx frames, testpmd put $t_tx on that TX queue"
      log "vm$p q$q: tx $v_tx (testpmd tx_q${q}_good_packets $t_tx), rx $v_rx"
    done
  done
fi

# ---------------------------------------------------------------- shutdown

# `quit` stops and closes both virtio-user ports (GET_VRING_BASE etc. over
# vhost-user), then testpmd exits.
echo quit >&"$FRONT_FD"
wait_exit "$FRONT_PID" "$TESTPMD_EXIT_TIMEOUT" ||
  fail "frontend testpmd did not exit within ${TESTPMD_EXIT_TIMEOUT}s of 'quit'"
FRONT_PID=""
exec {FRONT_FD}>&-
FRONT_FD=""
[[ $EXIT_RC == 0 ]] || fail "frontend testpmd exited with status $EXIT_RC"
log "frontend testpmd exited 0"

alive "$BACK_PID" || fail "$BACKEND exited after the frontend went away"
if [[ $BACKEND == vpmd ]]; then
  # docs/interfaces.md: "down" when the guest driver has no queues ready.
  wait_for 10 "vpmd to show both ports down after the frontend quit" vpmd_ports_state down
  kill -TERM "$BACK_PID"
  wait_exit "$BACK_PID" 15 || fail "vpmd did not exit within 15s of SIGTERM"
  BACK_PID=""
  [[ $EXIT_RC == 0 ]] || fail "vpmd exited with status $EXIT_RC on SIGTERM"
  log "vpmd exited 0 on SIGTERM"
else
  echo quit >&"$BACK_FD"
  wait_exit "$BACK_PID" "$TESTPMD_EXIT_TIMEOUT" || fail "backend testpmd did not exit after 'quit'"
  BACK_PID=""
  [[ $EXIT_RC == 0 ]] || fail "backend testpmd exited with status $EXIT_RC"
fi

pass
