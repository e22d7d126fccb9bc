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
#   idle       side by side: vpmd adaptive, vpmd busy, DPDK testpmd (two
#              net_vhost ports, io forwarding) and OVS-DPDK with
#              other_config:pmd-maxsleep=10000 (OVS 3.1's name for pmd-sleep-max,
#              its longest), each with DPDK testpmd's virtio-user frontend
#              connected, ports up, nothing sent: the backend process's CPU time
#              over IDLE_S (30) seconds (/proc/PID/stat); then vpmd-bench latency
#              at 1 frame a second (each frame the first after 1 s of idle): its
#              one-way time through the backend, p50 / max; then, for vpmd, a
#              full-rate ring-loop run right after, which must lose nothing.
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

ROUNDS=5 DURATION=4 WARMUP=1 SIZES="64 1518" IDLE_S=30 OUT=$REPO/bench/results BUILD=1
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
bl_install dpdk jq openvswitch-switch-dpdk
P_BACK=vbaback P_OVS=vbaovs
BL_PREFIXES+=("$P_BACK" "$P_OVS")
bl_build
"$REPO/scripts/hugepages.sh" 1024 "${BL_PREFIXES[@]}" >/dev/null || bl_die "hugepages setup failed"
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
# proc_ticks PID: CPU clock ticks (user + system) of the whole process.
proc_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

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
    --argjson after_idle "${AFTER_IDLE:-false}" \
    '{mode: $m, frontend: $f, size: $s, round: $r, mpps_ab: .directions[0].mpps, mpps_ba: .directions[1].mpps,
      mpps: ((.directions[0].mpps + .directions[1].mpps) / 2), front_busy_share: .frontend.busy_share,
      steal_s: .steal.seconds, vpmd_sleeps: $w, after_idle: $after_idle,
      backend_drops: (.backend_drops // null), checks_bad: ((.checks.rx_bad // 0) + (.checks.tx_out_of_order // 0))}' \
    "$W/front.json" >>"$MEAS"
  bl_log "  $mode <- $front ${size}B round $round: $(tail -n1 "$MEAS" | jq -r '"\(.mpps * 1000 | round / 1000) Mpps, \(.vpmd_sleeps) sleeps, frontend busy \(.front_busy_share)"')"
}

# other_start testpmd|ovs: the other backends for the idle comparison; sets
# BACK_PID (and TP_* for testpmd), SOCK_A/B.
other_start() {
  local d=$W/$1
  mkdir -p "$d"
  case $1 in
    testpmd)
      SOCK_A=$d/vm0.sock SOCK_B=$d/vm1.sock
      rm -f "$SOCK_A" "$SOCK_B"
      local args=(-l "0,$BACK_CORE" --main-lcore 0 --no-pci --single-file-segments
        "--file-prefix=$P_BACK" --vdev "net_vhost0,iface=$SOCK_A" --vdev "net_vhost1,iface=$SOCK_B"
        -- -i --forward-mode=io --total-num-mbufs=16384)
      bl_note testpmd "dpdk-testpmd ${args[*]}"
      bl_note testpmd "testpmd> start"
      bl_tp_start back "$d/testpmd.log" "${args[@]}" || return 1
      BACK_PID=$TP_PID BACK_FD=$TP_FD
      bl_tp_cmd "$BACK_FD" "$d/testpmd.log" start
      ;;
    ovs)
      SOCK_A=$d/vhost0 SOCK_B=$d/vhost1
      bl_ovs_start "$d" "$BACK_CORE" "$P_OVS" pmd-maxsleep=10000 || return 1
      BACK_PID=$BL_OVS_PID
      ;;
  esac
}
other_stop() {
  case $1 in
    testpmd) bl_tp_quit "$BACK_PID" "$BACK_FD" ;;
    ovs) bl_ovs_stop ;;
  esac
}

# idle BACKEND: testpmd's virtio-user ports up and idle for IDLE_S (the backend's
# CPU), then one frame a second for 15 s (the latency of each, the first after
# 1 s of idle); one JSON line.
idle() {
  local back=$1 log=$W/idle-$1.log t0 t1 w0=0 w1=0 no_config=() vpmd=1
  [[ $back == adaptive || $back == busy ]] || { no_config=(--no-config); vpmd=0; }
  local args=(-l "$FRONT_CORE,$BACK_CORE" --main-lcore "$BACK_CORE" --no-pci --single-file-segments "--file-prefix=$P_FRONT"
    --vdev "net_virtio_user0,path=$SOCK_A" --vdev "net_virtio_user1,path=$SOCK_B"
    -- -i --total-num-mbufs=8192)
  bl_note testpmd-idle "dpdk-testpmd ${args[*]}   # ports up, never started"
  bl_tp_start idle "$log" "${args[@]}" || return 1
  local fpid=$TP_PID ffd=$TP_FD
  sleep 2
  ((vpmd)) && w0=$(vpmd_waits)
  t0=$(proc_ticks "$BACK_PID")
  sleep "$IDLE_S"
  t1=$(proc_ticks "$BACK_PID")
  ((vpmd)) && w1=$(vpmd_waits)
  bl_tp_quit "$fpid" "$ffd"
  sleep 1
  local cmd=("$VPMD_BENCH" "${no_config[@]}" latency "$SOCK_A" "$SOCK_B" --rate 1 --duration 15
    --warmup 1 --drain 2 --core "$FRONT_CORE" --json)
  bl_note latency-idle "${cmd[*]}"
  "${cmd[@]}" >"$W/lat.json" 2>"$W/lat.err" || { bl_log "latency failed: $(tail -n 3 "$W/lat.err")"; echo '{}' >"$W/lat.json"; }
  local hz
  hz=$(getconf CLK_TCK)
  jq -c --arg m "$back" --argjson t "$((t1 - t0))" --argjson hz "$hz" --argjson s "$IDLE_S" \
    --argjson w "$((w1 - w0))" \
    '{mode: $m, idle: true, cpu_share: ($t / $hz / $s), vpmd_sleeps: $w,
      latency: {received: .received, lost: .lost, p50_us: .p50_us, max_us: .max_us}}' "$W/lat.json" >>"$MEAS"
  bl_log "  $back idle: $(tail -n1 "$MEAS" | jq -r '"\(.cpu_share * 1000 | round / 10)% of a core, \(.vpmd_sleeps) sleeps; after 1 s idle p50 \(.latency.p50_us) us max \(.latency.max_us) us"')"
}

MODES=(adaptive busy)
for ((round = 1; round <= ROUNDS; round++)); do
  order=("${MODES[@]}")
  ((round % 2 == 0)) && order=(busy adaptive)
  for mode in "${order[@]}"; do
    bl_log "round $round: vpmd $mode"
    vpmd_start "$mode" || { vpmd_stop; continue; }
    AFTER_IDLE=false
    if ((round == 1)); then
      idle "$mode" || true
      AFTER_IDLE=true
    fi
    for size in $SIZES; do
      for front in $FRONTENDS; do
        full_load "$mode" "$front" "$size" "$round" || true
        AFTER_IDLE=false
      done
    done
    vpmd_stop
  done
done
for other in testpmd ovs; do
  bl_log "idle: $other"
  if other_start "$other"; then
    idle "$other" || true
  fi
  other_stop "$other"
done

mkdir -p "$OUT"
STAMP=$(date +%Y%m%d-%H%M%S)
jq -n --argjson machine "$(bl_machine_json)" --arg date "$(date -Is)" \
  --argjson cmds "$(bl_cmds_json vpmd-adaptive vpmd-busy testpmd ovs ring-loop loopback testpmd-idle latency-idle)" \
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
    "Idle (DPDK virtio-user ports up, nothing sent), then one frame a second (each the first after 1 s of idle), side by side:",
    "",
    "| backend | CPU of the backend process (share of a core over the idle window) | vpmd sleeps | one-way latency after 1 s idle: p50 / max (us) | frames received / lost |",
    "|---|---|---|---|---|",
    ($all.measurements[] | select(.idle)
     | "| \(if .mode == "adaptive" or .mode == "busy" then "vpmd \(.mode)" elif .mode == "ovs" then "OVS-DPDK, pmd-maxsleep=10000" else "DPDK testpmd" end) | \(.cpu_share * 1000 | round / 10)% | \(.vpmd_sleeps) | \(.latency.p50_us // "-") / \(.latency.max_us // "-") | \(.latency.received // "-") / \(.latency.lost // "-") |"),
    "",
    "Full-rate runs right after the idle phase (vpmd): " + ([$all.measurements[] | select(.after_idle == true) | "\(.mode) <- \(.frontend) \(.size) B: \(.mpps | r3) Mpps/dir, backend drops \(.backend_drops // "-"), bad checks \(.checks_bad)"] | join("; "))
' "$OUT/adaptive-$STAMP.json" >"$OUT/adaptive-$STAMP.md"
cp "$OUT/adaptive-$STAMP.json" "$OUT/adaptive-latest.json"
cp "$OUT/adaptive-$STAMP.md" "$OUT/adaptive-latest.md"
cat "$OUT/adaptive-$STAMP.md"
