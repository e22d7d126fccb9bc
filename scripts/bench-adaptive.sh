#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Adaptive polling against busy polling, side by side in one run: the same vpmd
# (one veth pair, polling core 1) with `[pmd] sleep_after_us` at its default
# (1000: sleep until kicked once idle) and at 0 (busy-poll, DPDK's and OVS's way).
#
#   full load  vpmd-bench on core 0, 64 and 1518 B, two frontends:
#              ring-loop  the backend alone (rings filled once, only indexes
#                         moved, so the backend's core is the bottleneck); it kicks
#                         only after 1 ms without progress, whatever vpmd asks;
#              loopback   vpmd-bench's virtio-net driver forwarding back what it
#                         receives; it kicks whenever the device asks, as Linux
#                         and DPDK do.
#              Rounds alternate adaptive / busy (order rotates). Per cell: median
#              Mpps per direction, the spread, adaptive / busy, the sleeps vpmd's
#              thread took while measuring (each one a pause of the frontend
#              longer than sleep_after_us with the rings empty).
#   idle       DPDK testpmd's virtio-user frontend connected, ports up, not
#              forwarding: the CPU time vpmd's polling thread uses over IDLE_S
#              seconds (/proc/PID/task/TID/stat), and its sleeps.
#
# Results: bench/results/adaptive-STAMP.{md,json} and adaptive-latest.{md,json}.
# Usage: scripts/bench-adaptive.sh [--rounds N] [--duration S] [--sizes "64 1518"]
#        [--frontends "ring-loop loopback"] [--sleep-after US] [--idle S]
#        [--out DIR] [--no-build] [--keep-work]      (as root)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/bench-lib.sh
source "$REPO/scripts/bench-lib.sh"
# shellcheck source=scripts/vpmd-config.sh
source "$REPO/scripts/vpmd-config.sh"

ROUNDS=5 DURATION=4 WARMUP=1 SIZES="64 1518" IDLE_S=5 OUT=$REPO/bench/results BUILD=1
FRONTENDS="ring-loop loopback" SLEEP_AFTER=1000
while (($#)); do
  case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --sizes) SIZES=$2; shift ;;
    --idle) IDLE_S=$2; shift ;;
    --frontends) FRONTENDS=$2; shift ;;
    --sleep-after) SLEEP_AFTER=$2; shift ;;
    *) bl_common_option "$@"; shift $((BL_OPT_ARGS - 1)) ;;
  esac
  shift
done

bl_binaries
BACK_CORE=1 FRONT_CORE=0 P_FRONT=vbafront
[[ $(id -u) -eq 0 ]] || bl_die "must run as root (hugepages, apt-get)"
bl_work_dir bench-adaptive
BL_PREFIXES=("$P_FRONT")
bl_install_traps
bl_install dpdk jq
bl_build
"$REPO/scripts/hugepages.sh" 512 "${BL_PREFIXES[@]}" >/dev/null || bl_die "hugepages setup failed"
bl_clean_dpdk
MEAS=$W/measurements.jsonl
: >"$MEAS"

# vpmd_start MODE (adaptive|busy): vpmd on core BACK_CORE; sets BACK_PID, SOCK_A/B.
vpmd_start() {
  local d=$W/$1 after=$SLEEP_AFTER
  [[ $1 == busy ]] && after=0
  mkdir -p "$d"
  SOCK_A=$d/vm0.sock SOCK_B=$d/vm1.sock CONTROL=$d/control.sock
  vpmd_veth_config "$BACK_CORE" "$CONTROL" "$SOCK_A" "$SOCK_B" server 1500 |
    sed "s/^\[pmd\]\$/[pmd]\nsleep_after_us = $after/" >"$d/vpmd.toml"
  bl_note "vpmd-$1" "$VPMD run --config vpmd.toml   # vpmd.toml:"
  bl_note "vpmd-$1" "$(sed 's/^/    /' "$d/vpmd.toml")"
  RUST_LOG=warn,vpmd=info "$VPMD" run --config "$d/vpmd.toml" >>"$d/vpmd.out" 2>>"$d/vpmd.log" &
  BACK_PID=$!
  bl_register "$BACK_PID"
  bl_wait_for 30 "vpmd ready" grep -q "vpmd ready" "$d/vpmd.log"
}
vpmd_stop() { bl_stop_registered "$BACK_PID" 15; }
vpmd_waits() { "$VPMD" stats --json --control "$CONTROL" | jq '[.threads[].waits] | add'; }
# pmd_ticks: CPU clock ticks (user + system) of vpmd's polling thread.
pmd_ticks() {
  local t
  for t in /proc/"$BACK_PID"/task/*; do
    [[ $(cat "$t/comm") == pmd-core* ]] || continue
    awk '{ sub(/.*\) /, ""); print $12 + $13 }' "$t/stat"
    return
  done
  echo 0
}

# full_load MODE FRONTEND SIZE ROUND: one measurement, one JSON line to MEAS.
full_load() {
  local mode=$1 front=$2 size=$3 round=$4 huge=() w0 w1
  ((${BENCH_HUGE:-1})) && huge=(--huge)
  local cmd=("$VPMD_BENCH" "$front" "$SOCK_A" "$SOCK_B" --size "$size" --duration "$DURATION"
    --warmup "$WARMUP" --core "$FRONT_CORE" "${huge[@]}" --json)
  bl_note "$front" "${cmd[*]}"
  "${cmd[@]}" >"$W/front.json" 2>"$W/front.err" &
  local fp=$!
  bl_register "$fp"
  sleep "$(awk -v w="$WARMUP" 'BEGIN { print w + 0.3 }')"
  w0=$(vpmd_waits)
  wait "$fp" || { bl_log "$front failed: $(tail -n 3 "$W/front.err")"; return 1; }
  w1=$(vpmd_waits)
  jq -c --arg m "$mode" --arg f "$front" --argjson s "$size" --argjson r "$round" --argjson w "$((w1 - w0))" \
    '{mode: $m, frontend: $f, size: $s, round: $r, mpps_ab: .directions[0].mpps, mpps_ba: .directions[1].mpps,
      mpps: ((.directions[0].mpps + .directions[1].mpps) / 2), front_busy_share: .frontend.busy_share,
      steal_s: .steal.seconds, vpmd_sleeps: $w}' "$W/front.json" >>"$MEAS"
  bl_log "  $mode <- $front ${size}B round $round: $(tail -n1 "$MEAS" | jq -r '"\(.mpps * 1000 | round / 1000) Mpps, \(.vpmd_sleeps) sleeps, frontend busy \(.front_busy_share)"')"
}

# idle MODE: testpmd's virtio-user ports up and idle for IDLE_S; one JSON line.
idle() {
  local mode=$1 log=$W/idle-$1.log t0 t1 w0 w1
  local args=(-l "$FRONT_CORE,$BACK_CORE" --main-lcore "$BACK_CORE" --no-pci --single-file-segments "--file-prefix=$P_FRONT"
    --vdev "net_virtio_user0,path=$SOCK_A" --vdev "net_virtio_user1,path=$SOCK_B"
    -- -i --total-num-mbufs=8192)
  bl_note testpmd-idle "dpdk-testpmd ${args[*]}   # ports up, never started"
  bl_tp_start idle "$log" "${args[@]}" || return 1
  local fpid=$TP_PID ffd=$TP_FD
  sleep 2
  w0=$(vpmd_waits) t0=$(pmd_ticks)
  sleep "$IDLE_S"
  w1=$(vpmd_waits) t1=$(pmd_ticks)
  bl_tp_quit "$fpid" "$ffd"
  local hz
  hz=$(getconf CLK_TCK)
  jq -nc --arg m "$mode" --argjson t "$((t1 - t0))" --argjson hz "$hz" --argjson s "$IDLE_S" \
    --argjson w "$((w1 - w0))" \
    '{mode: $m, idle: true, cpu_share: ($t / $hz / $s), vpmd_sleeps: $w}' >>"$MEAS"
  bl_log "  $mode idle: $(tail -n1 "$MEAS" | jq -r '"polling thread at \(.cpu_share * 100 | round)% of a core, \(.vpmd_sleeps) sleeps"')"
}

MODES=(adaptive busy)
for ((round = 1; round <= ROUNDS; round++)); do
  order=("${MODES[@]}")
  ((round % 2 == 0)) && order=(busy adaptive)
  for mode in "${order[@]}"; do
    bl_log "round $round: vpmd $mode"
    vpmd_start "$mode" || { vpmd_stop; continue; }
    for size in $SIZES; do
      for front in $FRONTENDS; do
        full_load "$mode" "$front" "$size" "$round" || true
      done
    done
    ((round == 1)) && { idle "$mode" || true; }
    vpmd_stop
  done
done

mkdir -p "$OUT"
STAMP=$(date +%Y%m%d-%H%M%S)
jq -n --argjson machine "$(bl_machine_json)" --arg date "$(date -Is)" \
  --argjson cmds "$(bl_cmds_json vpmd-adaptive vpmd-busy ring-loop loopback testpmd-idle)" \
  --arg cmdline "scripts/bench-adaptive.sh --rounds $ROUNDS --duration $DURATION --sizes \"$SIZES\" --frontends \"$FRONTENDS\" --sleep-after $SLEEP_AFTER --idle $IDLE_S" \
  --slurpfile m "$MEAS" \
  '{date: $date, machine: $machine, command: $cmdline, commands: $cmds, measurements: $m}' \
  >"$OUT/adaptive-$STAMP.json"
jq -r '
  def median: sort | if length == 0 then null else .[(length / 2 | floor)] end;
  def r3: if . == null then "-" else (. * 1000 | round / 1000 | tostring) end;
  . as $all
  | ($all.measurements | map(select(.idle | not))) as $load
  | "# Adaptive polling against busy polling, \($all.date)",
    "",
    "Machine: \($all.machine.cpu), \($all.machine.cores) cores, \($all.machine.os), kernel \($all.machine.kernel). Command: `\($all.command)`.",
    "vpmd polls on core 1; the frontend runs on core 0. ring-loop: the backend alone (its polling core is the bottleneck; the frontend busy share says how far the frontend is from being one), kicking only after 1 ms without progress. loopback: a driver that kicks when asked.",
    "",
    "| Frontend | Size (B) | adaptive Mpps/dir (min-max) | busy Mpps/dir (min-max) | adaptive / busy | sleeps while measuring, per run (adaptive) | frontend busy share |",
    "|---|---|---|---|---|---|---|",
    ($load | group_by([.frontend, .size])[] | . as $c
     | ($c | map(select(.mode == "adaptive")) | map(.mpps)) as $a
     | ($c | map(select(.mode == "busy")) | map(.mpps)) as $b
     | "| \($c[0].frontend) | \($c[0].size) | \($a | median | r3) (\($a | min | r3)-\($a | max | r3)) | \($b | median | r3) (\($b | min | r3)-\($b | max | r3)) | \(if ($b | median) > 0 then (($a | median) / ($b | median) | r3) else "-" end) | \($c | map(select(.mode == "adaptive")) | map(.vpmd_sleeps) | median) | \($c | map(.front_busy_share) | median | r3) |"),
    "",
    "Idle (DPDK virtio-user ports up, nothing sent):",
    "",
    "| mode | polling thread CPU (share of a core) | sleeps |",
    "|---|---|---|",
    ($all.measurements[] | select(.idle) | "| \(.mode) | \(.cpu_share * 100 | round)% | \(.vpmd_sleeps) |")
' "$OUT/adaptive-$STAMP.json" >"$OUT/adaptive-$STAMP.md"
cp "$OUT/adaptive-$STAMP.json" "$OUT/adaptive-latest.json"
cp "$OUT/adaptive-$STAMP.md" "$OUT/adaptive-latest.md"
cat "$OUT/adaptive-$STAMP.md"
